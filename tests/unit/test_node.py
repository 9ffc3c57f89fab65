"""Unit tests for dhtd.node: the six operations on an in-process network (tests/unit/simnet.py).

Each test builds the network its promise is about (a hung peer, peers that
refuse, holders of outdated records), runs under trio's MockClock, and checks
what the promise says: when the call ends, what it returns, and what the other
peers hold afterwards. The same promises are checked across real processes in
tests/integration; these run in milliseconds and let `./dev mutate` see them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from dhtd.app import build_validators
from dhtd.errors import FailedPrecondition, InvalidRecord, NotFound, Unavailable
from dhtd.ids import kad_key, xor_distance
from dhtd.kadmsg import MessageType
from dhtd.lookup import EventType, PeerRecord, QueryEvent
from dhtd.node import DhtNode
from tests.unit.simnet import EPOCH, SimNet, running, settle, sim_node, star

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


@pytest.mark.parametrize(("count", "ends_at"), [(1, 0.0), (20, PEER_TIMEOUT)])
def test_find_providers_stops_once_it_has_enough(count: int, ends_at: float) -> None:
    """Asked for 1 provider, the walk ends with the first; asked for 20, it waits for
    every peer, here the full peer timeout of one that never answers."""
    net = SimNet()
    s, p, h, q = provider_network(net)
    found: list[PeerRecord] = []

    async def main() -> float:
        async with running([s, p, h]):
            await settle([s, p, h])
            await p.provide([KEY], lambda i, e: None, BOUND)
            assert s.providers.get(KEY, p.clock()) and h.providers.get(KEY, p.clock())
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
            assert [r.id for r in own] == [nodes[1].self_id]
            held: list[PeerRecord] = []
            assert await nodes[2].find_providers(KEY, 1, held.append, BOUND) == 1
            assert [r.id for r in held] == [nodes[1].self_id]
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
                n.values.put(key, b"v", n.clock())
            return await nodes[0].get_value(key, BOUND)

    assert run(main) == b"v"
    asked = sum(net.received(n.self_id, MessageType.GET_VALUE) for n in nodes)
    # 16 answers end the walk; at most alpha - 1 (2) more were already on their way.
    assert 16 <= asked <= 18


def test_get_returns_the_best_record_and_corrects_stale_holders() -> None:
    net = SimNet()
    nodes = star(net, 12)
    key = b"/demo/stale"

    async def main() -> bytes:
        async with running(nodes):
            await settle(nodes)
            stale, fresh = nodes[1:8], nodes[8:]
            for n in stale:
                n.values.put(key, b"old", EPOCH + 1)
            for n in fresh:
                n.values.put(key, b"new", EPOCH + 2)
            got = await nodes[0].get_value(key, BOUND)
            await trio.sleep(1)  # corrections run in the background
            for n in nodes[1:]:
                held = n.values.get(key, n.clock())
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
    holders = {n.self_id for n in nodes if n.values.get(key, EPOCH + 1000) is not None}
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
            assert KEY not in nodes[0].provided

    run(main)


def test_put_refuses_to_replace_a_better_record_held_here() -> None:
    net = SimNet()
    nodes = star(net, 3)

    async def main() -> None:
        async with running(nodes):
            await settle(nodes)
            await nodes[0].put_value(b"/demo/k", b"first", lambda e: None, BOUND)
            nodes[0].values.put(b"/demo/k", b"future", EPOCH + 10**9)
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
    holders = {n.self_id for n in nodes if n.providers.get(KEY, EPOCH + 1000)}
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
            with pytest.raises(NotFound):
                await asker.find_peer(b"\x12\x20" + b"\x77" * 32, BOUND)

    run(main)
