"""Unit tests for dhtd.node: the six operations on an in-process network (tests/unit/simnet.py).

Each test builds the network its promise is about (a hung peer, peers that
refuse, holders of outdated records), runs under trio's MockClock, and checks
what the promise says: when the call ends, what it returns, and what the other
peers hold afterwards. The same promises are checked across real processes in
tests/integration; these run in milliseconds and let `./dev mutate` see them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from itertools import pairwise

import pytest
import trio
import trio.testing

from dhtd import liveness
from dhtd.app import build_validators
from dhtd.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidRecord,
    NotFound,
    Unavailable,
)
from dhtd.ids import kad_key, peer_id_to_str, xor_distance
from dhtd.kadmsg import MessageType, add_peers, new_message, new_record
from dhtd.lookup import EventType, PeerRecord, PeerRequestError, QueryEvent
from dhtd.node import DhtNode, Observer
from dhtd.state import Loaded, NodeState
from dhtd.stores import ValueStore
from dhtd.wire.kad_pb2 import Message
from tests.ipns import Ed25519Identity, ipns_key, ipns_record
from tests.unit.simnet import EPOCH, SimNet, running, settle, sim_addr, sim_id, sim_node, star

# A CID's multihash (sha2-256), the key of provider records.
KEY = b"\x12\x20" + bytes(range(32))
# How long any one test's operation may take in virtual time.
BOUND = 120.0
# The peer request timeout of dhtd.lookup, stated literally: a hung peer costs this.
PEER_TIMEOUT = 10.0


def run(fn: Callable[[], Awaitable[object]]) -> object:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def nearest(nodes: list[DhtNode], key: bytes, count: int) -> list[DhtNode]:
    target = kad_key(key)
    return sorted(nodes, key=lambda n: xor_distance(kad_key(n.self_id), target))[:count]


def types(events: list[QueryEvent]) -> list[EventType]:
    return [e.type for e in events]


# --- FindProvs ---------------------------------------------------------------------


def provider_network(net: SimNet) -> tuple[DhtNode, DhtNode, DhtNode, DhtNode]:
    """s (bootstrap), p (provides KEY, stored on s and h), h (hangs later), q (asks)."""
    s = sim_node(net, "s")
    p, h = sim_node(net, "p", [s]), sim_node(net, "h", [s])
    q = sim_node(net, "q", [s])
    return s, p, h, q


@pytest.mark.parametrize(("count", "ends_at"), [(1, 0.0), (20, 0.5)])
def test_find_providers_stops_once_it_has_enough(count: int, ends_at: float) -> None:
    """Asked for 1 provider, the walk ends with the first; asked for 20, it waits for
    every peer, here for as long as its patience with one that stopped answering
    (0.5 s, MIN_PATIENCE: it answered at once before), not the 10 s peer timeout."""
    net = SimNet()
    s, p, h, q = provider_network(net)
    found: list[PeerRecord] = []

    async def main() -> float:
        async with running([s, p, h]):
            await settle([s, p, h])
            await p.provide([KEY], lambda i, e: None, BOUND)
            assert s.records.providers.get(KEY, p.clock())
            assert h.records.providers.get(KEY, p.clock())
            async with running([q]):
                await settle([q])
                assert set(q.table.peers()) == {s.self_id, p.self_id, h.self_id}
                net.hung.add(h.self_id)
                start = trio.current_time()
                assert await q.find_providers(KEY, count, found.append, BOUND) == 1
                return trio.current_time() - start

    elapsed = run(main)
    assert [r.id for r in found] == [p.self_id]
    assert found[0].addrs == (p.host.listen_addrs()[0],)
    assert elapsed == pytest.approx(ends_at, abs=0.01)


def test_find_providers_of_an_unknown_key_is_not_found_after_the_walk() -> None:
    net = SimNet()
    nodes = star(net, 8)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            with pytest.raises(NotFound, match="no provider"):
                await nodes[3].find_providers(KEY, 20, lambda r: None, BOUND)
            assert sum(net.received(n.self_id, MessageType.GET_PROVIDERS) for n in nodes) >= 7

    run(main)


def test_find_providers_answers_its_own_provides_and_stored_records_first() -> None:
    net = SimNet()
    nodes = star(net, 6)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await nodes[1].provide([KEY], lambda i, e: None, BOUND)
            before = len(net.log)
            own: list[PeerRecord] = []
            assert await nodes[1].find_providers(KEY, 1, own.append, BOUND) == 1
            provider = PeerRecord(nodes[1].self_id, (nodes[1].host.listen_addrs()[0],))
            assert own == [provider]  # itself, with the addresses it listens on
            held: list[PeerRecord] = []
            assert await nodes[2].find_providers(KEY, 1, held.append, BOUND) == 1
            assert held == [provider]
            assert len(net.log) == before  # both answered without asking anyone

    run(main)


# --- Query ---------------------------------------------------------------------------


def test_query_finds_the_true_closest_and_ends_with_final_peers() -> None:
    net = SimNet()
    nodes = star(net, 22)
    events: list[QueryEvent] = []

    async def main() -> list[PeerRecord]:
        async with running(nodes):
            await settle(nodes)
            return await nodes[4].query(nodes[9].self_id, events.append, BOUND)

    closest = run(main)
    assert isinstance(closest, list)
    others = [n for n in nodes if n is not nodes[4]]
    assert [r.id for r in closest] == [n.self_id for n in nearest(others, nodes[9].self_id, 20)]
    finals = [e.peer for e in events if e.type is EventType.FINAL_PEER]
    assert finals == [r.id for r in closest]
    first_final = types(events).index(EventType.FINAL_PEER)
    assert set(types(events)[first_final:]) == {EventType.FINAL_PEER}


def test_query_is_not_found_when_no_peer_answers() -> None:
    net = SimNet()
    nodes = star(net, 5)
    events: list[QueryEvent] = []

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.refusing.update(n.self_id for n in nodes[1:])
            with pytest.raises(NotFound, match="no peer answered"):
                await nodes[0].query(nodes[2].self_id, events.append, BOUND)

    run(main)
    assert types(events).count(EventType.QUERY_ERROR) == 4
    assert EventType.FINAL_PEER not in types(events)


def test_an_operation_on_an_empty_table_is_unavailable() -> None:
    net = SimNet()
    lonely = sim_node(net, "lonely")

    async def main() -> None:
        async with running([lonely]):
            with pytest.raises(Unavailable, match="--bootstrap"):
                await lonely.query(KEY, lambda e: None, BOUND)
            with pytest.raises(Unavailable, match="--bootstrap"):
                await lonely.provide([KEY], lambda i, e: None, BOUND)

    run(main)


# --- Get -----------------------------------------------------------------------------


def test_get_stops_at_a_quorum_of_16_answers() -> None:
    net = SimNet()
    nodes = star(net, 22)
    key = b"/demo/quorum"

    async def main() -> bytes:
        async with running(nodes):
            await settle(nodes)
            for n in nodes[1:]:
                n.records.values.put(key, b"v", n.clock())
            return await nodes[0].get_value(key, BOUND)

    assert run(main) == b"v"
    asked = sum(net.received(n.self_id, MessageType.GET_VALUE) for n in nodes)
    # 16 answers end the walk. Once the 3 nearest answered (beta), the rest of the
    # k nearest are asked at once (the follow-up): at most k were asked.
    assert 16 <= asked <= 20


def test_get_returns_the_best_record_and_corrects_stale_holders() -> None:
    net = SimNet()
    nodes = star(net, 12)
    key = b"/demo/stale"

    async def main() -> bytes:
        async with running(nodes):
            await settle(nodes)
            stale, fresh = nodes[1:8], nodes[8:]
            for n in stale:
                n.records.values.put(key, b"old", EPOCH + 1)
            for n in fresh:
                n.records.values.put(key, b"new", EPOCH + 2)
            got = await nodes[0].get_value(key, BOUND)
            await trio.sleep(1)  # corrections run in the background
            for n in nodes[1:]:
                held = n.records.values.get(key, n.clock())
                assert held is not None and held.value == b"new", n.host.self_id.hex()
            return got

    assert run(main) == b"new"
    assert sum(net.received(n.self_id, MessageType.PUT_VALUE) for n in nodes[1:8]) == 7
    assert sum(net.received(n.self_id, MessageType.PUT_VALUE) for n in nodes[8:]) == 0


def test_get_of_a_missing_key_is_not_found_and_a_bad_key_is_invalid() -> None:
    net = SimNet()
    nodes = star(net, 5)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            with pytest.raises(NotFound, match="no peer holds"):
                await nodes[1].get_value(b"/demo/missing", BOUND)
            with pytest.raises(InvalidRecord):
                await nodes[1].get_value(b"no-namespace", BOUND)

    run(main)


# --- Put and Provide -------------------------------------------------------------------


def test_put_stores_on_the_k_closest_and_here() -> None:
    net = SimNet()
    nodes = star(net, 22)
    key = b"/demo/put"
    events: list[QueryEvent] = []

    async def main() -> int:
        async with running(nodes):
            await settle(nodes)
            return await nodes[0].put_value(key, b"hello", events.append, BOUND)

    assert run(main) == 20
    holders = {n.self_id for n in nodes if n.records.values.get(key, EPOCH + 1000) is not None}
    others = [n for n in nodes if n is not nodes[0]]
    assert holders == {nodes[0].self_id} | {n.self_id for n in nearest(others, key, 20)}
    assert types(events).count(EventType.FINAL_PEER) == 20


def test_put_and_provide_are_unavailable_when_every_peer_refuses() -> None:
    net = SimNet()
    nodes = star(net, 6)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            refusers = nodes[1:]
            # Without /demo/ they still answer the walk, then refuse the PUT_VALUE.
            for n in refusers:
                n.handlers.validators = build_validators(())
            with pytest.raises(Unavailable, match="0 of the 5 closest"):
                await nodes[0].put_value(b"/demo/refused", b"x", lambda e: None, BOUND)
            net.refusing.update(n.self_id for n in refusers)
            with pytest.raises(Unavailable, match="1 of 1 CIDs"):
                await nodes[0].provide([KEY], lambda i, e: None, BOUND)
            # Still committed (the caller was answered), never announced: retried later.
            assert nodes[0].provided[KEY] == 0.0

    run(main)


def test_put_refuses_to_replace_a_better_record_held_here() -> None:
    net = SimNet()
    nodes = star(net, 3)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await nodes[0].put_value(b"/demo/k", b"first", lambda e: None, BOUND)
            nodes[0].records.values.put(b"/demo/k", b"future", EPOCH + 10**9)
            with pytest.raises(FailedPrecondition, match="better record"):
                await nodes[0].put_value(b"/demo/k", b"second", lambda e: None, BOUND)

    run(main)


def test_provide_announces_to_the_k_closest_and_remembers_the_key() -> None:
    net = SimNet()
    nodes = star(net, 22)

    async def main() -> list[int]:
        async with running(nodes):
            await settle(nodes)
            return await nodes[0].provide([KEY], lambda i, e: None, BOUND)

    assert run(main) == [20]
    holders = {n.self_id for n in nodes if n.records.providers.get(KEY, EPOCH + 1000)}
    others = [n for n in nodes if n is not nodes[0]]
    assert holders == {n.self_id for n in nearest(others, KEY, 20)}
    assert KEY in nodes[0].provided


# --- FindPeer ---------------------------------------------------------------------------


def test_find_peer_across_a_hop_and_not_found_for_a_stranger() -> None:
    net = SimNet()
    nodes = star(net, 10)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            target = nodes[7]
            asker = nodes[2]
            asker.host.connected.discard(target.self_id)  # type: ignore[attr-defined]
            found = await asker.find_peer(target.self_id, BOUND)
            assert found.addrs == (target.host.listen_addrs()[0],)
            me = await asker.find_peer(asker.self_id, BOUND)
            assert me.addrs == (asker.host.listen_addrs()[0],)
            stranger = b"\x12\x20" + b"\x77" * 32
            with pytest.raises(NotFound) as err:
                await asker.find_peer(stranger, BOUND)
            assert str(err.value) == (
                f"no peer on the walk knows an address of {peer_id_to_str(stranger)}")

    run(main)


# --- bookkeeping: outcomes, metrics hooks, reprovide, GC, protection --------------------


def test_operations_report_their_outcome_and_first_result() -> None:
    net = SimNet()
    nodes = star(net, 6)
    seen: list[tuple[str, object]] = []
    observer = Observer(
        op_started=lambda op: seen.append(("started", op)),
        op_finished=lambda op, outcome, s: seen.append(("finished", (op, outcome))),
        first_result=lambda op, s: seen.append(("first", op)),
        event=lambda kind: seen.append(("event", kind)),
        outbound=lambda kind, ok: seen.append(("outbound", (kind, ok))),
    )
    asker = nodes[2]
    asker.observer = observer

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await nodes[1].provide([KEY], lambda i, e: None, BOUND)
            seen.clear()
            await asker.find_providers(KEY, 1, lambda r: None, BOUND)
            assert seen[0] == ("started", "find_providers")
            assert ("first", "find_providers") in seen
            assert seen[-1] == ("finished", ("find_providers", "ok"))
            assert asker.queries_in_flight() == 0

            seen.clear()
            with pytest.raises(NotFound):
                await asker.get_value(b"/demo/none", BOUND)
            assert seen[-1] == ("finished", ("get_value", "not_found"))
            assert ("outbound", (MessageType.GET_VALUE, True)) in seen
            assert ("first", "get_value") not in seen

            seen.clear()
            net.hung.update(n.self_id for n in nodes if n is not asker)
            with pytest.raises(DeadlineExceeded, match=r"query did not finish within 2s"):
                await asker.query(KEY, lambda e: None, 2.0)
            assert seen[-1] == ("finished", ("query", "deadline"))
            assert ("event", EventType.SENDING_QUERY) in seen
            net.hung.clear()

            seen.clear()
            with trio.move_on_after(0.5):
                net.hung.update(n.self_id for n in nodes if n is not asker)
                await asker.query(KEY, lambda e: None, BOUND)
            assert seen[-1] == ("finished", ("query", "cancelled"))
            assert asker.queries_in_flight() == 0
            net.hung.clear()

            seen.clear()
            net.refusing.update(n.self_id for n in nodes if n is not asker)
            with pytest.raises(NotFound):
                await asker.query(KEY, lambda e: None, BOUND)
            assert ("outbound", (MessageType.FIND_NODE, False)) in seen
            assert seen[-1] == ("finished", ("query", "not_found"))


    run(main)


def test_provided_keys_are_announced_again_each_interval() -> None:
    net = SimNet()
    first = sim_node(net, "r0")
    nodes = [first] + [sim_node(net, f"r{i}", [first]) for i in range(1, 6)]
    nodes[1].reprovide_interval = 1000.0

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await nodes[1].provide([KEY], lambda i, e: None, BOUND)
            announced = nodes[1].provided[KEY]
            sent = sum(net.received(n.self_id, MessageType.ADD_PROVIDER) for n in nodes)
            assert sent == 5
            await trio.sleep(900)
            assert sum(net.received(n.self_id, MessageType.ADD_PROVIDER) for n in nodes) == 5
            await trio.sleep(200)  # checked every interval/10 = 100 s
            assert sum(net.received(n.self_id, MessageType.ADD_PROVIDER) for n in nodes) == 10
            assert nodes[1].provided[KEY] >= announced + 1000

    run(main)


def test_expired_records_are_collected_every_minute() -> None:
    net = SimNet()
    nodes = star(net, 3)
    holder = nodes[1]
    old = b"\x12\x20" + b"\x0a" * 32

    async def main() -> None:
        async with running(nodes):
            start = holder.clock()
            # Received 48 h - 30 s ago: it expires 30 s from now.
            holder.records.providers.add(old, nodes[2].self_id, (), start - 172_800 + 30)
            holder.records.values.put(b"/demo/old", b"v", start - 172_800 + 30,
                                      owner=nodes[2].self_id)
            await trio.sleep(59)
            # expired, not yet swept
            assert len(holder.records.providers) == 1 and len(holder.records.values) == 1
            await trio.sleep(2)
            assert len(holder.records.providers) == 0 and len(holder.records.values) == 0

    run(main)


def test_the_k_closest_table_peers_are_protected_and_pinned() -> None:
    net = SimNet()
    nodes = star(net, 24)
    me = nodes[0]

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            host = me.host
            closest = set(me.table.closest(kad_key(me.self_id), 20))
            protected = {p for p, tags in host.protected.items() if "dhtd-closest" in tags}  # type: ignore[attr-defined]
            assert protected == closest
            assert host.pinned == set(me.table.peers())  # type: ignore[attr-defined]
            gone = sorted(closest)[0]
            me.forget(gone)
            assert gone not in host.pinned  # type: ignore[attr-defined]
            assert "dhtd-closest" not in host.protected[gone]  # type: ignore[attr-defined]
            now = {p for p, tags in host.protected.items() if "dhtd-closest" in tags}  # type: ignore[attr-defined]
            assert now == set(me.table.closest(kad_key(me.self_id), 20))
            assert len(now) == 20  # the next closest took its place

    run(main)


def test_connect_adds_a_dht_server_and_reports_a_dead_address() -> None:
    net = SimNet()
    a, b = sim_node(net, "ca"), sim_node(net, "cb")
    client = sim_node(net, "cc", server=False)

    async def main() -> None:
        async with running([a, b, client]):
            record, added = await a.connect(b.self_id, b.host.listen_addrs()[0], BOUND)
            assert added and record == PeerRecord(b.self_id, (b.host.listen_addrs()[0],))
            assert b.self_id in a.table and a.self_id in b.table
            info = a.info()
            assert (info.routing_table_size, info.connected_peers, info.server) == (1, 1, True)
            _, added = await a.connect(client.self_id, client.host.listen_addrs()[0], BOUND)
            assert not added and client.self_id not in a.table
            assert a.self_id in client.table  # a client still uses servers
            ghost = b"\x12\x20" + b"\x66" * 32
            with pytest.raises(Unavailable, match="could not connect"):
                await a.connect(ghost, b.host.listen_addrs()[0], BOUND)

    run(main)


def test_find_peer_answers_a_connected_peer_without_a_walk() -> None:
    net = SimNet()
    nodes = star(net, 5)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            before = len(net.log)
            found = await nodes[0].find_peer(nodes[3].self_id, BOUND)
            assert found.addrs == (nodes[3].host.listen_addrs()[0],)
            assert len(net.log) == before

    run(main)


def test_get_discards_an_invalid_record_and_keeps_the_peer_that_sent_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """The record is not the answer, the debug log says it was discarded, and the
    peer keeps its place and standing: it may hold what another implementation's
    validator took (as go-libp2p-kad-dht's getValues, which only discards it)."""
    caplog.set_level(logging.DEBUG, logger="dhtd")
    net = SimNet()
    nodes = star(net, 4)
    key = b"/pk/" + nodes[1].self_id  # a /pk/ record must be the key's public key

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            liar = nodes[2]
            liar.records.values.put(key, b"not a public key", liar.clock())
            asker = nodes[3]
            with pytest.raises(NotFound):
                await asker.get_value(key, BOUND)
            assert liar.self_id in asker.table
            assert not asker.book.is_dead(liar.self_id, asker.clock())

    run(main)
    discarded = [r.getMessage() for r in caplog.records if "discarded" in r.getMessage()]
    assert any("invalid record" in m for m in discarded), discarded


# --- what FindProvs and FindPeer return --------------------------------------------------


def test_find_providers_returns_count_distinct_providers_with_addresses() -> None:
    """Three providers, asked for two: two, each once, each with addresses, whether
    the record carried them or the node knew them from elsewhere."""
    net = SimNet()
    nodes = star(net, 8)
    asker, holder = nodes[1], nodes[2]
    p1, p2, p3 = nodes[5], nodes[6], nodes[7]

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            now = holder.clock()
            holder.records.providers.add(KEY, p1.self_id, (p1.host.listen_addrs()[0],), now)
            holder.records.providers.add(KEY, p2.self_id, (), now)  # addrs known to the holder
            holder.records.providers.add(KEY, p3.self_id, (), now)
            seen: list[PeerRecord] = []
            assert await asker.find_providers(KEY, 2, seen.append, BOUND) == 2
            assert len({r.id for r in seen}) == 2
            assert {r.id for r in seen} <= {p1.self_id, p2.self_id, p3.self_id}
            for record in seen:
                owner = next(n for n in nodes if n.self_id == record.id)
                assert record.addrs == (owner.host.listen_addrs()[0],)
            # From its own store, with addresses it knows.
            mine: list[PeerRecord] = []
            asker.records.providers.add(KEY, p2.self_id, (), now)
            assert await asker.find_providers(KEY, 1, mine.append, BOUND) == 1
            assert mine == [PeerRecord(p2.self_id, (p2.host.listen_addrs()[0],))]

    run(main)


def test_find_providers_fills_in_addresses_the_answer_left_out() -> None:
    net = SimNet()
    nodes = star(net, 5)
    asker, holder, provider = nodes[1], nodes[2], nodes[3]

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            holder.records.providers.add(KEY, provider.self_id, (), holder.clock())
            holder.host.known.pop(provider.self_id)  # type: ignore[attr-defined]
            seen: list[PeerRecord] = []
            await asker.find_providers(KEY, 1, seen.append, BOUND)
            assert seen == [PeerRecord(provider.self_id, (provider.host.listen_addrs()[0],))]

    run(main)


def test_find_peer_results_name_the_target() -> None:
    net = SimNet()
    nodes = star(net, 6)
    ops: list[str] = []
    asker = nodes[1]
    asker.observer = Observer(op_started=ops.append)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            me = await asker.find_peer(asker.self_id, BOUND)
            assert me == PeerRecord(asker.self_id, (asker.host.listen_addrs()[0],))
            near = await asker.find_peer(nodes[4].self_id, BOUND)  # connected
            assert near == PeerRecord(nodes[4].self_id, (nodes[4].host.listen_addrs()[0],))
            asker.host.connected.discard(nodes[5].self_id)  # type: ignore[attr-defined]
            far = await asker.find_peer(nodes[5].self_id, BOUND)  # found on the walk
            assert far == PeerRecord(nodes[5].self_id, (nodes[5].host.listen_addrs()[0],))
            assert ops == ["find_peer"] * 3

    run(main)


def test_only_the_first_40_closer_peers_of_an_answer_are_read() -> None:
    """A peer answering with 50 closer peers is read up to 40 (twice k): a target it
    names 40th is found, one it names 41st is not."""
    net = SimNet()
    nodes = star(net, 3)
    asker, liar = nodes[1], nodes[2]
    addr = b"\x04\x7f\x00\x00\x01\x06\x00\x09"
    fillers = [PeerRecord(b"\x12\x20" + bytes([i]) * 32, (addr,)) for i in range(1, 50)]
    at_40, at_41 = b"\x12\x20" + b"\x55" * 32, b"\x12\x20" + b"\x56" * 32

    async def handler(sender: bytes, request: Message) -> Message | None:
        answer = new_message(request.type, request.key)
        peers = list(fillers)
        peers.insert(39, PeerRecord(at_40, (addr,)))
        peers.insert(40, PeerRecord(at_41, (addr,)))
        add_peers(answer.closerPeers, peers, frozenset())
        return answer

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            asker.host.connected.clear()  # type: ignore[attr-defined]
            net.hosts[liar.self_id].handler = handler
            assert (await asker.find_peer(at_40, BOUND)).id == at_40
            with pytest.raises(NotFound):
                await asker.find_peer(at_41, BOUND)
            # Nor does any walk hear of it: a query for it never contacts it. (The
            # 40th failed in the walk before: remembered, it would not be asked.)
            asker.book.alive(at_40)
            events: list[QueryEvent] = []
            await asker.query(at_41, events.append, BOUND)
            assert at_40 in {e.peer for e in events}
            assert at_41 not in {e.peer for e in events}

    run(main)


def test_a_peer_that_went_away_is_pinged_then_forgotten_and_a_live_one_kept() -> None:
    net = SimNet()
    nodes = star(net, 5)
    me, gone, alive = nodes[0], nodes[3], nodes[4]

    async def main() -> None:
        async with running(nodes[:3]), running([alive]):
            async with running([gone]):
                await settle(nodes)
                assert gone.self_id in me.table and alive.self_id in me.table
                me.host.disconnect(alive.self_id)  # type: ignore[attr-defined]  # closed, still up
            # gone's host closed: its connections dropped, as a killed process's would
            pings_before = net.received(alive.self_id, MessageType.PING)
            await trio.sleep(10)  # 1 s grace, then a ping with a 5 s timeout
            assert gone.self_id not in me.table
            assert alive.self_id in me.table
            assert net.received(alive.self_id, MessageType.PING) == pings_before + 1

    run(main)


def test_get_answers_from_its_own_store_when_it_has_no_peers() -> None:
    net = SimNet()
    lonely = sim_node(net, "alone")

    async def main() -> None:
        async with running([lonely]):
            with pytest.raises(Unavailable, match="no DHT peers"):
                await lonely.get_value(b"/demo/k", BOUND)
            lonely.records.values.put(b"/demo/k", b"mine", lonely.clock())
            assert await lonely.get_value(b"/demo/k", BOUND) == b"mine"

    run(main)


def test_put_streams_a_store_attempt_and_a_result_per_closest_peer() -> None:
    net = SimNet()
    nodes = star(net, 8)
    events: list[QueryEvent] = []

    async def main() -> int:
        async with running(nodes):
            await settle(nodes)
            await nodes[0].put_value(b"/demo/same", b"v", lambda e: None, BOUND)
            # The same value again is no conflict with what this node holds.
            return await nodes[0].put_value(b"/demo/same", b"v", events.append, BOUND)

    assert run(main) == 7
    sending = [e.peer for e in events if e.type is EventType.SENDING_QUERY]
    finals = [e for e in events if e.type is EventType.FINAL_PEER]
    assert {e.peer for e in finals} == {n.self_id for n in nodes[1:]}
    assert set(sending) >= {e.peer for e in finals}
    for final in finals:
        assert [r.id for r in final.responses] == [final.peer]
        assert final.responses[0].addrs  # with the addresses it was reached at


def test_provide_of_several_keys_counts_and_tags_each() -> None:
    net = SimNet()
    nodes = star(net, 8)
    keys = [b"\x12\x20" + bytes([i]) * 32 for i in range(3)]
    tagged: list[tuple[int, QueryEvent]] = []

    async def main() -> list[int]:
        async with running(nodes):
            await settle(nodes)
            return await nodes[0].provide(keys, lambda i, e: tagged.append((i, e)), BOUND)

    assert run(main) == [7, 7, 7]
    for index in range(3):
        finals = [e for i, e in tagged if i == index and e.type is EventType.FINAL_PEER]
        assert len(finals) == 7
    assert set(nodes[0].provided) == set(keys)
    for key in keys:
        holders = [n for n in nodes[1:] if n.records.providers.get(key, EPOCH + 1000)]
        assert len(holders) == 7
        record = holders[0].records.providers.get(key, EPOCH + 1000)[0]
        assert (record.peer, record.addrs) == (nodes[0].self_id, (nodes[0].host.listen_addrs()[0],))


# --- commitments: the provide set and the published records --------------------------


class RecordingState(NodeState):
    """Remembers what the node told its state, as DiskState would commit it."""

    def __init__(self, loaded: Loaded | None = None) -> None:
        self.loaded = loaded or Loaded()
        self.calls: list[tuple[str, object]] = []
        # The time each call was given, as (method, now).
        self.times: list[tuple[str, float]] = []

    def load(self) -> Loaded:
        return self.loaded

    async def add_provided(self, keys: Sequence[bytes], now: float) -> None:
        self.calls.append(("add_provided", list(keys)))
        self.times.append(("add_provided", now))

    def announced(self, keys: Sequence[bytes], now: float) -> None:
        self.calls.append(("announced", list(keys)))
        self.times.append(("announced", now))

    async def remove_provided(self, keys: Sequence[bytes]) -> None:
        self.calls.append(("remove_provided", list(keys)))

    async def add_published(self, key: bytes, value: bytes, now: float) -> None:
        self.calls.append(("add_published", (key, value)))
        self.times.append(("add_published", now))

    def republished(self, key: bytes, now: float) -> None:
        self.calls.append(("republished", key))
        self.times.append(("republished", now))

    async def remove_published(self, key: bytes) -> None:
        self.calls.append(("remove_published", key))

    def save_peers(self, peers: Sequence[PeerRecord], now: float) -> None:
        self.calls.append(("save_peers", sorted(p.id for p in peers)))
        self.times.append(("save_peers", now))
        self.saved = list(peers)


def test_commitments_are_listed_in_key_order_and_stopped() -> None:
    net = SimNet()
    nodes = star(net, 4)
    me = nodes[0]
    me.state = state = RecordingState()
    keys = [b"\x12\x20" + bytes([i]) * 32 for i in (3, 1, 2)]

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            state.calls.clear()
            await me.provide([*keys, keys[0]], lambda i, e: None, BOUND)
            assert state.calls[0] == ("add_provided", keys)  # once each, before any walk
            assert sorted(c[1][0] for c in state.calls if c[0] == "announced") == sorted(keys)
            ordered = sorted(keys)
            assert [k for k, _ in me.list_provided(b"", 2)] == ordered[:2]
            assert [k for k, _ in me.list_provided(ordered[1], 2)] == ordered[2:]
            assert me.list_provided(ordered[2], 2) == []
            assert all(at > 0 for _, at in me.list_provided(b"", 10))
            assert await me.stop_providing([keys[0], keys[0], b"\x12\x20" + b"\x09" * 32]) == 1
            assert state.calls[-1] == ("remove_provided", [keys[0]])
            assert sorted(me.provided) == sorted(keys[1:])
            assert await me.stop_providing([keys[0]]) == 0

            await me.put_value(b"/demo/b", b"1", lambda e: None, BOUND)
            await me.put_value(b"/demo/a", b"2", lambda e: None, BOUND)
            assert ("add_published", (b"/demo/b", b"1")) in state.calls
            assert ("republished", b"/demo/a") in state.calls
            assert [(k, v) for k, v, _ in me.list_published(b"", 5)] == [
                (b"/demo/a", b"2"), (b"/demo/b", b"1")]
            assert [k for k, _, _ in me.list_published(b"/demo/a", 5)] == [b"/demo/b"]
            assert await me.unpublish(b"/demo/a") is True
            assert state.calls[-1] == ("remove_published", b"/demo/a")
            assert await me.unpublish(b"/demo/a") is False
            assert list(me.published) == [b"/demo/b"]

    run(main)


def test_a_restarted_node_resumes_its_commitments_and_dials_saved_peers() -> None:
    net = SimNet()
    others = star(net, 4, prefix="o")
    key = b"\x12\x20" + b"\x07" * 32
    saved = [PeerRecord(n.self_id, (n.host.listen_addrs()[0],)) for n in others[1:3]]
    loaded = Loaded(provided={key: 0.0}, published={b"/demo/r": (b"again", 0.0)}, peers=saved)
    me = sim_node(net, "restarted")  # no bootstrap peers: only what it saved
    me.state = RecordingState(loaded)
    me.reprovide_interval = me.republish_interval = 100.0

    async def main() -> None:
        async with running(others):
            await settle(others)
            async with running([me]):
                await trio.sleep(30)  # joined from its saved peers
                assert {p.id for p in saved} <= set(me.table.peers())
                await trio.sleep(20)  # both due at once (never delivered): at the first check
                assert any(n.records.providers.get(key, EPOCH + 1000) for n in others)
                assert any(n.records.values.get(b"/demo/r", EPOCH + 1000) for n in others)
                assert me.provided[key] > 0 and me.published[b"/demo/r"][1] > 0
            assert me.state.calls[-1][0] == "save_peers"  # type: ignore[attr-defined]
            assert set(me.state.calls[-1][1]) == set(me.table.peers())  # type: ignore[attr-defined]

    run(main)


def test_info_describes_the_node() -> None:
    net = SimNet()
    nodes = star(net, 3)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            info = nodes[1].info()
            assert info.peer_id == nodes[1].self_id
            assert info.addrs == [nodes[1].host.listen_addrs()[0]]
            assert info.protocol == "/ipfs/kad/1.0.0"
            assert (info.routing_table_size, info.connected_peers) == (2, 2)
            assert info.queries_in_flight == 0 and info.server

    run(main)


def test_provide_is_unavailable_when_the_table_empties_before_its_walk() -> None:
    """The table can empty while the commitment is written (a peer failed a refresh):
    the call ends UNAVAILABLE like any provide no peer took, never with an error group."""
    net = SimNet()
    nodes = star(net, 3)
    me = nodes[1]

    class Emptying(NodeState):
        async def add_provided(self, keys: Sequence[bytes], now: float) -> None:
            for peer in list(me.table.peers()):
                me.forget(peer)

    me.state = Emptying()

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            with pytest.raises(Unavailable, match="of 1 of 1 CIDs"):
                await me.provide([KEY], lambda i, e: None, BOUND)

    run(main)


def test_what_callers_read_in_errors_and_events() -> None:
    """The exact texts a client sees for each outcome, the operation names metrics
    carry, FINAL_PEER events with the peer's addresses, and table-size reports."""
    net = SimNet()
    nodes = star(net, 4)
    me = nodes[1]
    ops: list[str] = []
    sizes: list[int] = []
    me.observer = Observer(op_started=ops.append)
    me.on_table_change = sizes.append
    events: list[QueryEvent] = []

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await me.query(nodes[3].self_id, events.append, BOUND)
            with pytest.raises(NotFound) as err:
                await me.get_value(b"/demo/none", BOUND)
            assert str(err.value) == "no peer holds a valid record under this key"
            with pytest.raises(NotFound) as err:
                await me.find_providers(KEY, 1, lambda r: None, BOUND)
            assert str(err.value) == "no provider found for this CID"
            await me.put_value(b"/demo/k", b"first", lambda e: None, BOUND)
            me.records.values.put(b"/demo/k", b"future", EPOCH + 10**9)
            with pytest.raises(FailedPrecondition) as refused:
                await me.put_value(b"/demo/k", b"second", lambda e: None, BOUND)
            assert str(refused.value) == ("this node already holds a better record under this "
                                          "key (e.g. a higher IPNS sequence number)")
            net.refusing.update(n.self_id for n in nodes if n is not me)
            with pytest.raises(NotFound) as err:
                await me.query(KEY, lambda e: None, BOUND)
            assert str(err.value) == "no peer answered the query"
            assert len(me.table) == 0

    run(main)
    assert ops == ["query", "get_value", "find_providers", "put_value", "put_value", "query"]
    finals = [e for e in events if e.type is EventType.FINAL_PEER]
    assert finals and all(e.responses == (PeerRecord(e.peer, (net.hosts[e.peer].addr,)),)
                          for e in finals)
    assert sizes[0] == 1 and sizes[-1] == 0  # first peer in, last peer out


def test_store_events_and_request_counts_name_each_peer_and_outcome() -> None:
    net = SimNet()
    nodes = star(net, 4)
    me, liar = nodes[1], nodes[2]
    outbound: list[tuple[int, bool]] = []
    inbound: list[int] = []
    me.observer = Observer(outbound=lambda kind, ok: outbound.append((kind, ok)))
    liar.observer = Observer(inbound=inbound.append)
    liar.handlers.on_request = liar.observer.inbound
    events: list[QueryEvent] = []

    async def no_echo(sender: bytes, request: Message) -> Message | None:
        if request.type == MessageType.PUT_VALUE:
            return new_message(request.type, request.key)  # answers, stores nothing
        return await liar._serve(sender, request)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.hosts[liar.self_id].handler = no_echo
            await me.put_value(b"/demo/e", b"v", events.append, BOUND)
            other = nodes[3]

            async def no_providers(sender: bytes, request: Message) -> Message | None:
                if request.type == MessageType.ADD_PROVIDER:
                    raise RuntimeError("refused")  # the stream is reset
                return await other._serve(sender, request)

            net.hosts[other.self_id].handler = no_providers
            await me.provide([KEY], lambda i, e: None, BOUND)

    run(main)
    stores = [e for e in events if e.type is EventType.SENDING_QUERY]
    errors = [e for e in events if e.type is EventType.QUERY_ERROR]
    assert liar.self_id in {e.peer for e in stores}
    assert [(e.peer, e.extra) for e in errors] == [
        (liar.self_id, "peer did not store the record (echo differs)")]
    assert (MessageType.ADD_PROVIDER, True) in outbound
    assert (MessageType.ADD_PROVIDER, False) in outbound
    assert MessageType.FIND_NODE in inbound


def test_a_failed_reprovide_round_is_retried_at_the_next_check() -> None:
    net = SimNet()
    nodes = star(net, 4)
    me = nodes[1]
    me.reprovide_interval = 100.0  # checked every 10 s

    def announcements() -> int:
        return sum(net.received(n.self_id, MessageType.ADD_PROVIDER) for n in nodes)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await me.provide([KEY], lambda i, e: None, BOUND)
            first = me.provided[KEY]
            sent = announcements()
            net.hung.update(n.self_id for n in nodes if n is not me)
            await trio.sleep(100 + 10 + 600)  # due, then a round that times out (600 s)
            assert announcements() == sent and me.provided[KEY] == first
            net.hung.clear()
            await trio.sleep(30)  # the next checks try again
            assert announcements() > sent and me.provided[KEY] > first

    run(main)


# --- promises at the edges: exact quorum, foreign answers, timestamps, hooks -------------


def test_only_the_first_100_providers_of_an_answer_are_read() -> None:
    """A peer answering GET_PROVIDERS with 120 providers is read up to 100, as many as
    a key keeps here: the first 100, in the order given."""
    net = SimNet()
    nodes = star(net, 3)
    asker, liar = nodes[1], nodes[2]
    addr = b"\x04\x7f\x00\x00\x01\x06\x00\x09"
    providers = [PeerRecord(b"\x12\x20" + i.to_bytes(2, "big") * 16, (addr,))
                 for i in range(1, 121)]

    async def handler(sender: bytes, request: Message) -> Message | None:
        if request.type != MessageType.GET_PROVIDERS:
            return await liar._serve(sender, request)
        answer = new_message(request.type, request.key)
        add_peers(answer.providerPeers, providers, frozenset())
        return answer

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.hosts[liar.self_id].handler = handler
            seen: list[PeerRecord] = []
            assert await asker.find_providers(KEY, 500, seen.append, BOUND) == 100
            assert seen == providers[:100]

    run(main)


@pytest.mark.parametrize(("local", "remote", "ends_at_once"),
                         [(False, 16, True), (True, 15, True), (False, 15, False)])
def test_get_ends_at_exactly_16_valid_records_without_waiting_for_slow_peers(
        local: bool, remote: int, ends_at_once: bool) -> None:
    """16 valid records (its own copy counts) end the walk at once, though the two
    peers closest to the key never answer; with 15 it walks on and waits for them as
    long as its patience lasts (0.5 s, MIN_PATIENCE), not their 10 s timeout."""
    net = SimNet()
    nodes = star(net, 22)
    asker = nodes[0]
    key = b"/demo/exact"
    ranked = nearest(nodes[1:], key, 21)
    hung, holders = ranked[:2], ranked[2:2 + remote]

    async def main() -> float:
        async with running(nodes):
            await settle(nodes)
            now = asker.clock()
            if local:
                asker.values.put(key, b"v", now)
            for n in holders:
                n.values.put(key, b"v", now)
            net.hung.update(n.self_id for n in hung)
            start = trio.current_time()
            assert await asker.get_value(key, BOUND) == b"v"
            return trio.current_time() - start

    elapsed = run(main)
    assert isinstance(elapsed, float)
    if ends_at_once:
        assert elapsed < 1.0
    else:
        assert elapsed == pytest.approx(0.5)


def test_get_ignores_an_answer_whose_record_is_under_another_key() -> None:
    """A peer answering GET_VALUE with a record of another key (newer than any) is not
    believed: the value returned is the one stored under the asked key."""
    net = SimNet()
    nodes = star(net, 5)
    asker, liar, holder = nodes[1], nodes[2], nodes[3]
    key = b"/demo/asked"

    async def handler(sender: bytes, request: Message) -> Message | None:
        if request.type != MessageType.GET_VALUE:
            return await liar._serve(sender, request)
        answer = new_message(request.type, request.key)
        answer.record.CopyFrom(new_record(b"/demo/other", b"wrong", liar.clock() + 1000))
        return answer

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.hosts[liar.self_id].handler = handler
            holder.values.put(key, b"right", holder.clock())
            assert await asker.get_value(key, BOUND) == b"right"

    run(main)


@pytest.mark.parametrize("own_is_newer", [True, False])
def test_get_weighs_its_own_copy_by_when_it_was_received(own_is_newer: bool) -> None:
    """The asker's own copy competes with the peers' by receive time: newer wins,
    whoever holds it, and the holders of the older value are corrected."""
    net = SimNet()
    nodes = star(net, 6)
    me, others = nodes[0], nodes[1:]
    key = b"/demo/mine"

    async def main() -> bytes:
        async with running(nodes):
            await settle(nodes)
            old, new = EPOCH + 1, me.clock()
            me.values.put(key, b"mine", new if own_is_newer else old)
            for n in others:
                n.values.put(key, b"theirs", old if own_is_newer else new)
            got = await me.get_value(key, BOUND)
            await trio.sleep(1)  # corrections run in the background
            for n in others:
                held = n.values.get(key, n.clock())
                assert held is not None and held.value == got
            return got

    assert run(main) == (b"mine" if own_is_newer else b"theirs")


def test_put_replaces_an_older_value_held_here_and_refuses_a_lower_ipns_sequence() -> None:
    """In a last-write-wins namespace a second Put replaces the first, here and on
    the peers; an IPNS record with a lower sequence than the one held is refused,
    a higher one accepted."""
    net = SimNet()
    nodes = star(net, 3)
    me = nodes[1]
    owner = Ed25519Identity()
    name = ipns_key(owner)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            assert await me.put_value(b"/demo/lww", b"first", _ignore, BOUND) == 2
            await trio.sleep(1)
            assert await me.put_value(b"/demo/lww", b"second", _ignore, BOUND) == 2
            for n in nodes:
                held = n.values.get(b"/demo/lww", n.clock())
                assert held is not None and held.value == b"second"
            assert await nodes[2].get_value(b"/demo/lww", BOUND) == b"second"

            await me.put_value(name, ipns_record(owner, sequence=2), _ignore, BOUND)
            with pytest.raises(FailedPrecondition, match="better record"):
                await me.put_value(name, ipns_record(owner, sequence=1), _ignore, BOUND)
            higher = ipns_record(owner, sequence=3)
            assert await me.put_value(name, higher, _ignore, BOUND) == 2
            assert await nodes[2].get_value(name, BOUND) == higher

    run(main)


def test_table_size_is_reported_when_the_first_peer_joins_and_the_last_leaves() -> None:
    """on_table_change (the dht health check) hears of every change between empty and
    not empty, and of nothing else."""
    net = SimNet()
    nodes = star(net, 4)
    me = nodes[0]
    sizes: list[int] = []
    me.on_table_change = sizes.append

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            assert len(me.table) == 3 and sizes == [1]
            *others, last = me.table.peers()
            for peer in others:
                me.forget(peer)
            assert len(me.table) == 1 and sizes == [1]  # one peer left: still serving
            me.forget(last)
            assert sizes == [1, 0]
            _, added = await me.connect(nodes[2].self_id, nodes[2].host.listen_addrs()[0], BOUND)
            assert added and sizes == [1, 0, 1]

    run(main)


def test_commitments_are_stamped_with_the_node_clock() -> None:
    """The provide set and the published records carry this node's clock: when a
    commitment was made and when it last reached a peer. A Put of the value already
    kept is no new commitment; a Put no peer took is kept as never delivered (0)."""
    net = SimNet()
    nodes = star(net, 4)
    me = nodes[1]
    me.state = state = RecordingState()

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await trio.sleep(0.25)
            state.times.clear()
            t1 = me.clock()
            await me.provide([KEY], _ignore, BOUND)
            assert me.list_provided(b"", 5) == [(KEY, t1)]
            await me.put_value(b"/demo/t", b"v", _ignore, BOUND)
            assert state.times == [("add_provided", t1), ("announced", t1),
                                   ("add_published", t1), ("republished", t1)]
            assert me.list_published(b"", 5) == [(b"/demo/t", b"v", t1)]

            await trio.sleep(5)
            t2 = me.clock()
            await me.put_value(b"/demo/t", b"v", _ignore, BOUND)
            assert state.times[4:] == [("republished", t2)]  # the same value: no new commitment
            assert me.list_published(b"", 5) == [(b"/demo/t", b"v", t2)]
            await me.put_value(b"/demo/t", b"v2", _ignore, BOUND)
            assert state.times[5:] == [("add_published", t2), ("republished", t2)]

            for n in nodes:
                if n is not me:
                    n.handlers.validators = build_validators(())  # refuse the PUT_VALUE
            with pytest.raises(Unavailable):
                await me.put_value(b"/demo/u", b"w", _ignore, BOUND)
            assert me.list_published(b"/demo/t", 5) == [(b"/demo/u", b"w", 0.0)]

    run(main)


def test_operations_report_their_name_and_a_real_duration() -> None:
    """Metrics get each operation's name, and durations (to the first result and to
    the end) measured on the monotonic clock: small and never negative."""
    net = SimNet()
    nodes = star(net, 5)
    me, late = nodes[1], sim_node(net, "late")
    started: list[str] = []
    finished: list[tuple[str, str, float]] = []
    firsts: list[tuple[str, float]] = []
    me.observer = Observer(
        op_started=started.append,
        op_finished=lambda op, outcome, s: finished.append((op, outcome, s)),
        first_result=lambda op, s: firsts.append((op, s)),
    )

    async def main() -> None:
        async with running([*nodes, late]):
            await settle(nodes)
            await me.provide([KEY], _ignore, BOUND)
            await me.connect(late.self_id, late.host.listen_addrs()[0], BOUND)
            await me.find_providers(KEY, 1, _ignore, BOUND)
            nodes[3].values.put(b"/demo/d", b"v", nodes[3].clock())
            await me.get_value(b"/demo/d", BOUND)
            await me.find_peer(nodes[2].self_id, BOUND)  # connected
            me.host.connected.discard(nodes[4].self_id)  # type: ignore[attr-defined]
            await me.find_peer(nodes[4].self_id, BOUND)  # found on a walk

    run(main)
    ops = ["provide", "connect", "find_providers", "get_value", "find_peer", "find_peer"]
    assert started == ops
    assert [(op, outcome) for op, outcome, _ in finished] == [(op, "ok") for op in ops]
    assert [op for op, _ in firsts] == ops[2:]
    assert all(0 <= s < 60 for _, _, s in finished)
    assert all(0 <= s < 60 for _, s in firsts)


class SlowRemoval(NodeState):
    """Commits removals the way a database does: they take a while."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    def load(self) -> Loaded:
        return self.loaded

    async def remove_provided(self, keys: Sequence[bytes]) -> None:
        await trio.sleep(0.1)

    async def remove_published(self, key: bytes) -> None:
        await trio.sleep(0.1)


def test_concurrent_stops_of_the_same_commitment_both_succeed() -> None:
    """Two StopProviding (or StopRepublishing) calls for the same key at once, e.g. a
    client retrying, both end without error, and the commitment is gone."""
    net = SimNet()
    me = sim_node(net, "stopper")
    me.state = SlowRemoval(Loaded(provided={KEY: 0.0}, published={b"/demo/s": (b"v", 0.0)}))
    stopped: list[int] = []
    unpublished: list[bool] = []

    async def stop() -> None:
        stopped.append(await me.stop_providing([KEY]))

    async def unpublish() -> None:
        unpublished.append(await me.unpublish(b"/demo/s"))

    async def main() -> None:
        async with running([me]):
            assert KEY in me.provided and b"/demo/s" in me.published
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(stop)
                    nursery.start_soon(unpublish)
            assert me.provided == {} and me.published == {}

    run(main)
    assert stopped == [1, 1] and unpublished == [True, True]


def _ignore(*_: object) -> None:
    """An event sink or callback that drops what it is given."""


def test_a_walk_dials_only_the_peers_it_is_not_connected_to() -> None:
    net = SimNet()
    nodes = star(net, 8)
    asker = nodes[1]
    events: list[QueryEvent] = []

    async def main() -> set[bytes]:
        async with running(nodes):
            await settle(nodes)
            for peer in (nodes[5].self_id, nodes[6].self_id):
                asker.host.disconnect(peer)  # type: ignore[attr-defined]
            connected = set(asker.host.connected_peers())
            await asker.query(KEY, events.append, BOUND)
            return connected

    connected = run(main)
    assert isinstance(connected, set)
    asked = {e.peer for e in events if e.type is EventType.SENDING_QUERY}
    dialed = [e.peer for e in events if e.type is EventType.DIALING_PEER]
    assert sorted(dialed) == sorted(asked - connected)
    assert {nodes[5].self_id, nodes[6].self_id} <= set(dialed)


def test_a_peer_that_times_out_in_a_walk_is_checked_at_once_and_forgotten() -> None:
    """A routing-table peer that stops answering mid-walk is pinged right after (not at
    the next refresh, 10 min away) and leaves the table when the ping times out too."""
    net = SimNet()
    nodes = star(net, 5)
    asker, silent = nodes[1], nodes[3]

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            assert silent.self_id in asker.table
            await trio.sleep(30)  # MIN_VALIDATION_GAP after the checks of settling in
            net.hung.add(silent.self_id)
            await asker.query(KEY, _ignore, BOUND)  # waits out its patience (0.5 s)
            await trio.sleep(1 + 5 + 5)  # grace, ping timeout, a check interval
            assert silent.self_id not in asker.table
            others = {n.self_id for n in nodes if n not in (asker, silent)}
            assert set(asker.table.peers()) == others

    run(main)


def test_a_short_reprovide_interval_is_kept_to_the_second() -> None:
    """With --reprovide-interval 4.5 a provided key is announced again 4.5 to 5.5 s
    after its last announcement (the check runs every second at least)."""
    net = SimNet()
    nodes = star(net, 3)
    me = nodes[1]
    me.reprovide_interval = 4.5
    announced: list[float] = []
    me.state = RecordingState()

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await trio.sleep(0.5)  # between two checks
            await me.provide([KEY], _ignore, BOUND)
            await trio.sleep(30)
            announced.extend(t for name, t in me.state.times  # type: ignore[attr-defined]
                             if name == "announced")

    run(main)
    gaps = [b - a for a, b in pairwise(announced)]
    assert len(gaps) >= 4 and all(4.5 <= gap <= 5.5 for gap in gaps)


def test_find_peer_ends_with_the_first_answer_naming_the_target() -> None:
    """The walk ends as soon as one answer gives the target's address: the two peers
    nearest the target never answer, and do not hold it up."""
    net = SimNet()
    nodes = star(net, 8)
    asker, target = nodes[1], nodes[6]
    silent = nearest([n for n in nodes if n not in (asker, target)], target.self_id, 2)

    async def main() -> float:
        async with running(nodes):
            await settle(nodes)
            asker.host.connected.discard(target.self_id)  # type: ignore[attr-defined]
            net.hung.update(n.self_id for n in silent)
            start = trio.current_time()
            found = await asker.find_peer(target.self_id, BOUND)
            assert found == PeerRecord(target.self_id, (target.host.listen_addrs()[0],))
            return trio.current_time() - start

    elapsed = run(main)
    assert isinstance(elapsed, float) and elapsed < 1.0


def test_find_peer_of_a_peer_that_just_dialled_in_waits_for_its_identify() -> None:
    """A peer connected to this node but not yet identified has no known listen
    address: FindPeer waits for identify and returns them, without a walk."""
    net = SimNet()
    nodes = star(net, 3)
    me, newcomer = nodes[1], sim_node(net, "newcomer")

    async def main() -> None:
        async with running(nodes), running([newcomer]):
            await settle(nodes)
            await newcomer.host.connect(me.self_id, me.host.listen_addrs()[0])
            assert me.host.addrs_of(newcomer.self_id) == ()
            found = await me.find_peer(newcomer.self_id, BOUND)
            assert found == PeerRecord(newcomer.self_id, (newcomer.host.listen_addrs()[0],))

    run(main)


def test_find_providers_answers_from_what_it_holds_when_it_has_no_peers() -> None:
    """With no peers, FindProvs still answers from this node's provide set and its
    provider store when they have enough; otherwise it is unavailable."""
    net = SimNet()
    lonely = sim_node(net, "alone")
    lonely.state = RecordingState(Loaded(provided={KEY: 0.0}))
    other, addr = sim_id("elsewhere"), sim_addr(9)

    async def main() -> None:
        async with running([lonely]):
            with pytest.raises(Unavailable, match="no DHT peers"):
                await lonely.find_providers(KEY, 2, _ignore, BOUND)
            lonely.providers.add(KEY, other, (addr,), lonely.clock())
            seen: list[PeerRecord] = []
            assert await lonely.find_providers(KEY, 2, seen.append, BOUND) == 2
            assert seen == [PeerRecord(lonely.self_id, (lonely.host.listen_addrs()[0],)),
                            PeerRecord(other, (addr,))]

    run(main)


def test_find_providers_passes_on_the_addresses_a_record_carried() -> None:
    """A provider record is passed on with the addresses it names, as
    go-libp2p-kad-dht does: a provider that moved is reported at its new address
    only, not also at an old one this node knew."""
    net = SimNet()
    nodes = star(net, 4)
    asker, holder = nodes[1], nodes[2]
    moved, old, new = sim_id("moved"), sim_addr(7), sim_addr(8)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            asker.host.learn([PeerRecord(moved, (old,))])
            holder.providers.add(KEY, moved, (new,), holder.clock())
            seen: list[PeerRecord] = []
            assert await asker.find_providers(KEY, 1, seen.append, BOUND) == 1
            assert seen == [PeerRecord(moved, (new,))]

    run(main)


def test_a_peer_that_dies_again_after_rejoining_is_checked_again_at_once() -> None:
    """A peer that failed its liveness check, came back, and died again is checked
    as soon as its connection drops, not only after the 30 s between checks of one
    peer: its past check was forgotten with it."""
    net = SimNet()
    nodes = star(net, 12)  # not a thin table: no refresh walks in between
    me, flaky = nodes[0], nodes[3]

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.hung.add(flaky.self_id)
            me.host.disconnect(flaky.self_id)  # type: ignore[attr-defined]
            await trio.sleep(1 + 5 + 0.5)  # grace, ping timeout
            assert flaky.self_id not in me.table
            net.hung.clear()
            await trio.sleep(30)  # walks skip it this long (DEAD_BACKOFF_FIRST) ...
            await me.query(KEY, _ignore, BOUND)  # ... then it answers: back in the table
            assert flaky.self_id in me.table
            net.hung.add(flaky.self_id)
            me.host.disconnect(flaky.self_id)  # type: ignore[attr-defined]
            await trio.sleep(1 + 5 + 0.5)
            assert flaky.self_id not in me.table

    run(main)


def test_put_ends_its_events_with_a_store_attempt_then_a_result_per_peer() -> None:
    """After the walk's events, each closest peer gets SENDING_QUERY (the store sent)
    and then FINAL_PEER (stored) or QUERY_ERROR, named by its peer ID."""
    net = SimNet()
    nodes = star(net, 6)
    me = nodes[0]
    events: list[QueryEvent] = []

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.hosts[nodes[4].self_id].handler = None  # answers nothing: refuses the store
            await me.put_value(b"/demo/seq", b"v", events.append, BOUND)

    run(main)
    for n in nodes[1:]:
        tail = [e.type for e in events if e.peer == n.self_id][-2:]
        result = EventType.QUERY_ERROR if n is nodes[4] else EventType.FINAL_PEER
        assert tail == [EventType.SENDING_QUERY, result], n.self_id.hex()
    assert {e.peer for e in events} == {n.self_id for n in nodes[1:]}


def test_add_provider_names_this_node_with_its_listen_addresses() -> None:
    """go-libp2p-kad-dht drops a provider record that carries no address, so every
    ADD_PROVIDER names this node with the addresses it listens on."""
    net = SimNet()
    nodes = star(net, 3)
    me, holder = nodes[1], nodes[2]
    seen: list[list[PeerRecord]] = []

    async def handler(sender: bytes, request: Message) -> Message | None:
        if request.type == MessageType.ADD_PROVIDER:
            seen.append([PeerRecord(p.id, tuple(p.addrs)) for p in request.providerPeers])
        return await holder._serve(sender, request)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.hosts[holder.self_id].handler = handler
            await me.provide([KEY], _ignore, BOUND)

    run(main)
    assert seen == [[PeerRecord(me.self_id, (me.host.listen_addrs()[0],))]]


def test_a_put_stores_on_the_k_closest_at_once() -> None:
    """The k stores of a Put go out together: holders that take a second each to
    answer cost the Put one second after its walk, not one per holder."""
    net = SimNet()
    nodes = star(net, 22)
    me = nodes[0]
    busy = 0
    peak = 0

    def slow(node: DhtNode) -> Callable[[bytes, Message], Awaitable[Message | None]]:
        async def handler(sender: bytes, request: Message) -> Message | None:
            nonlocal busy, peak
            if request.type == MessageType.PUT_VALUE:
                busy += 1
                peak = max(peak, busy)
                await trio.sleep(1)
                busy -= 1
            return await node._serve(sender, request)

        return handler

    async def main() -> float:
        async with running(nodes):
            await settle(nodes)
            for n in nodes[1:]:
                net.hosts[n.self_id].handler = slow(n)
            start = trio.current_time()
            assert await me.put_value(b"/demo/slow", b"v", _ignore, BOUND) == 20
            return trio.current_time() - start

    elapsed = run(main)
    assert peak == 20
    assert elapsed == pytest.approx(1.0)


def test_metrics_hooks_given_at_construction_count_requests_served_and_records_refused() -> None:
    """dhtd.app hands its metrics hooks to the node it builds: the kad handlers count
    each request served by kind, and each record refused for lack of room."""
    net = SimNet()
    inbound: list[int] = []
    refused: list[str] = []
    first = sim_node(net, "m0")
    holder = sim_node(net, "m1", [first],
                      observer=Observer(inbound=inbound.append, refused=refused.append))
    me = sim_node(net, "m2", [first])
    nodes = [first, holder, me]
    events: list[QueryEvent] = []

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            holder.records.values = ValueStore(max_bytes=16, per_peer=16)
            inbound.clear()
            await me.put_value(b"/demo/big", b"x" * 64, events.append, BOUND)

    run(main)
    assert MessageType.FIND_NODE in inbound and MessageType.PUT_VALUE in inbound
    assert refused == ["value"]
    assert [e.peer for e in events if e.type is EventType.QUERY_ERROR] == [holder.self_id]


def test_liveness_pings_go_only_to_peers_not_heard_from_within_the_refresh_interval() -> None:
    """With --refresh-interval 100, a routing-table peer nobody hears from is pinged
    about every 100 s; one that keeps sending requests is never pinged, nor are peers
    that keep answering this node's lookups, nor a peer that joined less than an
    interval ago."""
    net = SimNet()
    first = sim_node(net, "l0")
    me = sim_node(net, "l1", [first], refresh_interval=100.0)
    nodes = [first, me] + [sim_node(net, f"l{i}", [first]) for i in range(2, 12)]
    talker, silent = nodes[5], nodes[6]
    ping_times: dict[bytes, list[float]] = {}

    def pings_to(peer: bytes) -> int:
        return sum(1 for to, sender, kind in net.log
                   if to == peer and sender == me.self_id and kind == MessageType.PING)

    def recording(node: DhtNode) -> Callable[[bytes, Message], Awaitable[Message | None]]:
        async def handler(sender: bytes, request: Message) -> Message | None:
            if sender == me.self_id and request.type == MessageType.PING:
                ping_times.setdefault(node.self_id, []).append(trio.current_time())
            return await node._serve(sender, request)

        return handler

    async def answer_anything(sender: bytes, request: Message) -> Message | None:
        return new_message(request.type, request.key)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.hosts[silent.self_id].handler = recording(silent)
            ping = new_message(MessageType.PING)
            for _ in range(15):  # 300 s: the talker sends a request every 20 s
                await talker.host.request(me.self_id, ping)
                await trio.sleep(20)
            assert pings_to(talker.self_id) == 0
            checks = ping_times[silent.self_id]
            assert len(checks) == 3
            assert all(95 <= b - a <= 105 for a, b in pairwise(checks))

            # A new peer (a bare host that answers anything) joins midway between two
            # checks: it was just heard from, so the next check leaves it alone.
            check = checks[-1]
            while check + 50 < trio.current_time():
                check += 100
            await trio.sleep(check + 50 - trio.current_time())
            newcomer = net.new_host("newcomer")
            async with newcomer.open([newcomer.addr], answer_anything, _ignore):
                await newcomer.connect(me.self_id, me.host.listen_addrs()[0])
                await trio.sleep(1)
                assert newcomer.self_id in me.table
                await trio.sleep(98)
                assert pings_to(newcomer.self_id) == 0

                # Peers that answer this node's lookups every 20 s are never pinged.
                sent = sum(pings_to(n.self_id) for n in nodes)
                for _ in range(15):
                    await me.query(KEY, _ignore, BOUND)
                    await trio.sleep(20)
                assert sum(pings_to(n.self_id) for n in nodes) == sent

    run(main)


def test_the_table_is_saved_every_minute_with_addresses() -> None:
    """While running, the routing table's peers are saved every minute with the
    addresses a restarted node dials them at, stamped with the node's clock."""
    net = SimNet()
    nodes = star(net, 4)
    me = nodes[1]
    me.state = state = RecordingState()

    async def main() -> None:
        async with running(nodes):
            await trio.sleep(61)
            assert state.times == [("save_peers", EPOCH + 60)]
            assert set(state.saved) == {
                PeerRecord(n.self_id, (n.host.listen_addrs()[0],)) for n in nodes if n is not me}

    run(main)


def test_query_results_carry_addresses_of_peers_known_only_from_the_table() -> None:
    """A closest peer that no answer named (here the only peer) is returned with the
    addresses this node knows for it."""
    net = SimNet()
    nodes = star(net, 2)
    me, only = nodes[1], nodes[0]

    async def main() -> list[PeerRecord]:
        async with running(nodes):
            await settle(nodes)
            return await me.query(KEY, _ignore, BOUND)

    assert run(main) == [PeerRecord(only.self_id, (only.host.listen_addrs()[0],))]


def test_a_walk_never_asks_this_node_itself() -> None:
    """A peer that names the asker among its closer peers (go and js peers may) does not
    make the asker send itself a request or list itself among the closest."""
    net = SimNet()
    nodes = star(net, 4)
    asker, liar = nodes[1], nodes[2]
    events: list[QueryEvent] = []

    async def handler(sender: bytes, request: Message) -> Message | None:
        answer = await liar._serve(sender, request)
        assert answer is not None
        add_peers(answer.closerPeers, [PeerRecord(sender, (asker.host.listen_addrs()[0],))],
                  frozenset())
        return answer

    async def main() -> list[PeerRecord]:
        async with running(nodes):
            await settle(nodes)
            net.hosts[liar.self_id].handler = handler
            return await asker.query(asker.self_id, events.append, BOUND)

    closest = run(main)
    assert isinstance(closest, list)
    assert asker.self_id not in {e.peer for e in events}
    assert asker.self_id not in {r.id for r in closest}


def test_a_short_republish_interval_is_kept_and_a_replaced_record_dropped() -> None:
    """With --republish-interval 4.5 a Put record is put again 4.5 to 5.5 s after
    its last Put; once a better record (a higher IPNS sequence) is held here, it is
    no longer republished."""
    net = SimNet()
    nodes = star(net, 3)
    me, other = nodes[1], nodes[2]
    me.republish_interval = 4.5
    me.state = state = RecordingState()
    owner = Ed25519Identity()
    name = ipns_key(owner)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await trio.sleep(0.5)  # between two checks
            await me.put_value(name, ipns_record(owner, sequence=1), _ignore, BOUND)
            await trio.sleep(30)
            assert [k for k, _, _ in me.list_published(b"", 5)] == [name]
            await other.put_value(name, ipns_record(owner, sequence=2), _ignore, BOUND)
            await trio.sleep(6)
            assert me.list_published(b"", 5) == []

    run(main)
    times = [t for call, t in state.times if call == "republished"]
    gaps = [b - a for a, b in pairwise(times)]
    assert len(gaps) >= 5 and all(4.5 <= gap <= 5.5 for gap in gaps)


def test_an_idle_node_starts_no_operations() -> None:
    """Reprovide and republish checks start an operation only for a commitment that is
    due and a table with peers: an idle node, or one whose peers are gone, reports
    none."""
    net = SimNet()
    started: list[str] = []
    loaded = Loaded(provided={KEY: EPOCH - 5}, published={b"/demo/i": (b"v", EPOCH - 5)})
    me = sim_node(net, "idle", observer=Observer(op_started=started.append))
    me.state = RecordingState(loaded)
    me.reprovide_interval = me.republish_interval = 100.0
    first = sim_node(net, "i0")

    async def main() -> None:
        async with running([me]):
            async with running([first]):
                await trio.sleep(50)  # not yet due: checked every 10 s
                assert started == []
                await me.connect(first.self_id, first.host.listen_addrs()[0], BOUND)
                started.clear()
                await trio.sleep(50)  # due since 95, checked at 100
                assert sorted(started) == ["provide", "put_value"]
            # Its only peer stops (and stays away): the liveness check drops it at
            # once (1 s after the connection closed; the dial is refused) ...
            await trio.sleep(2)
            assert not me.table
            started.clear()
            await trio.sleep(300)  # ... due again, but no peer to take them
            assert started == []

    run(main)


def test_every_expired_record_is_collected_in_one_sweep_however_many() -> None:
    """Collection goes a batch (1000) at a time, but one sweep takes every expired
    record: 2500 provider and 2500 value records are all gone a minute later, and
    the next minute's sweep takes those that expired since."""
    net = SimNet()
    nodes = star(net, 2)
    holder = nodes[1]

    def fill(received: float, offset: int) -> None:
        for i in range(offset, offset + 2500):
            holder.providers.add(b"\x12\x20" + i.to_bytes(32, "big"), nodes[0].self_id,
                                 (), received)
            holder.values.put(b"/demo/%d" % i, b"v", received, owner=nodes[0].self_id)

    async def main() -> None:
        async with running(nodes):
            fill(holder.clock() - 172_800 - 1, 0)  # expired 1 s ago
            await trio.sleep(61)
            assert len(holder.providers) == len(holder.values) == 0
            fill(holder.clock() - 172_800 + 30, 2500)  # expires in 30 s
            await trio.sleep(60)
            assert len(holder.providers) == len(holder.values) == 0

    run(main)


def test_a_key_is_not_reprovided_while_its_first_provide_is_still_announcing_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A new key's time is 0 until its first announcement ends; a reprovide check
    in the meantime must not start a second announcement of it."""
    # Walks wait for a silent peer the whole peer timeout, so the first announcement
    # lasts across ten reprovide checks.
    monkeypatch.setattr(liveness, "MIN_PATIENCE", PEER_TIMEOUT)
    net = SimNet()
    first = sim_node(net, "ra0")
    nodes = [first] + [sim_node(net, f"ra{i}", [first]) for i in range(1, 6)]
    me = nodes[1]
    me.reprovide_interval = 10.0  # checked every second

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            net.hung.add(nodes[5].self_id)  # the first walk waits 10 s for it
            started = trio.current_time()
            counts: list[int] = []

            async def provide(key: bytes) -> None:
                counts.extend(await me.provide([key], lambda i, e: None, BOUND))

            async with trio.open_nursery() as nursery:  # two calls at once, keys of each
                nursery.start_soon(provide, KEY)
                nursery.start_soon(provide, KEY[:-1] + b"\x01")
            assert trio.current_time() - started >= PEER_TIMEOUT
            # A second announcement started by a check during the first would send
            # its ADD_PROVIDERs at most one peer timeout after it began, so by 2 s
            # after the first ended; the next due one starts 10 s after that.
            await trio.sleep(2)
            sent = sum(net.received(n.self_id, MessageType.ADD_PROVIDER) for n in nodes)
            assert sent == sum(counts)

    run(main)


# --- batched provide (dhtd.sweep) ----------------------------------------------------------


def batch_keys(count: int) -> list[bytes]:
    return [b"\x12\x20" + kad_key(b"batch %d" % i) for i in range(count)]


@pytest.mark.parametrize("batch_min", [0, 32])
def test_a_large_provide_puts_every_record_on_its_true_k_closest(batch_min: int) -> None:
    """200 keys on 60 nodes: batched (the default for 32 keys or more) or a walk per
    key (batch_min 0), each key's record lands on exactly its 20 closest peers; the
    batch asks far fewer FIND_NODEs for it."""
    net = SimNet()
    nodes = star(net, 60)
    nodes[5].provide_batch_min = batch_min
    keys = batch_keys(200)
    events: list[tuple[int, QueryEvent]] = []

    async def main() -> list[int]:
        async with running(nodes):
            await settle(nodes)
            before = len(net.log)
            counts = await nodes[5].provide(keys, lambda i, e: events.append((i, e)), BOUND)
            asked = [m for m in net.log[before:] if m[1] == nodes[5].self_id]
            find_nodes.append(sum(1 for m in asked if m[2] == MessageType.FIND_NODE))
            return counts

    find_nodes: list[int] = []
    assert run(main) == [20] * 200
    others = [n for n in nodes if n is not nodes[5]]
    for key in keys:
        holders = {n.self_id for n in others if n.records.providers.get(key, EPOCH + 1000)}
        assert holders == {n.self_id for n in nearest(others, key, 20)}
    assert all(nodes[5].provided[k] > 0 for k in keys)
    finals = [i for i, e in events if e.type == EventType.FINAL_PEER]
    assert sorted(set(finals)) == list(range(200)) and len(finals) == 200 * 20
    if batch_min:
        assert find_nodes[0] < 200  # a walk per key asks several FIND_NODEs per key
        assert {e.type for _, e in events} == {EventType.SENDING_QUERY, EventType.FINAL_PEER}
    else:
        assert find_nodes[0] > 200


def test_a_batched_provide_reports_a_peer_that_fails_on_each_of_its_keys() -> None:
    net = SimNet()
    nodes = star(net, 30)
    keys = batch_keys(40)
    events: list[tuple[int, QueryEvent]] = []

    failing = nodes[9].self_id
    sends: list[bytes] = []
    real_send = nodes[1]._send

    async def send(peer: bytes, message: Message) -> None:
        sends.append(peer)
        if peer == failing:  # it answers lookups, but its ADD_PROVIDER stream breaks
            raise PeerRequestError("stream reset")
        await real_send(peer, message)

    nodes[1]._send = send  # type: ignore[method-assign]

    async def main() -> list[int]:
        async with running(nodes):
            await settle(nodes)
            return await nodes[1].provide(keys, lambda i, e: events.append((i, e)), BOUND)

    counts = run(main)
    assert sends.count(failing) == 1  # after its first failure, the rest are not tried
    others = [n for n in nodes if n is not nodes[1]]
    for i, key in enumerate(keys):
        closest = {n.self_id for n in nearest(others, key, 20)}
        errors = {e.peer for j, e in events if j == i and e.type == EventType.QUERY_ERROR}
        assert errors == closest & {nodes[9].self_id}
        assert counts[i] == len(closest - errors)
