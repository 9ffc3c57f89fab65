"""The six RPCs across five dhtd OS processes on 127.0.0.1 (plus in-process dev peers)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.ids import b58decode, kad_key, parse_cid, parse_peer_id
from tests.integration.conftest import DEV_PEERS, NAMESPACE
from tests.swarm import Node, start_node, wait_until

pytestmark = pytest.mark.integration

# A CID nobody provides (sha256 of a fixed text, CIDv1 raw).
UNKNOWN_CID = "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba"
FINAL = pb.QUERY_EVENT_TYPE_FINAL_PEER


def kad(peer_id: str) -> bytes:
    return hashlib.sha256(b58decode(peer_id)).digest()


def cid_for(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    # CIDv1, raw codec (0x55), sha2-256 multihash, base32.
    import base64
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + digest
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def status_of(call: object) -> grpc.StatusCode:
    try:
        if hasattr(call, "__iter__"):
            list(call)  # type: ignore[call-overload]
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_find_peer_across_the_chain(five: list[Node]) -> None:
    first, last = five[0], five[-1]
    res = first.dht.FindPeer(pb.FindPeerRequest(peer_id=last.peer_id), timeout=10)
    assert res.peer.id == last.peer_id
    expected = last.p2p_addr.rsplit("/p2p/", 1)[0]
    assert expected in res.peer.addrs


def test_find_peer_of_a_dev_peer_of_another_process(five: list[Node]) -> None:
    target = five[3].dev_peer_ids()[0]
    res = five[0].dht.FindPeer(pb.FindPeerRequest(peer_id=target), timeout=10)
    assert res.peer.id == target
    assert res.peer.addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in res.peer.addrs)


def test_put_on_a_get_on_e_then_newer_put_replaces(five: list[Node]) -> None:
    key = f"/{NAMESPACE}/greeting-{time.time_ns()}".encode()
    events = list(five[0].dht.Put(pb.PutRequest(key=key, value=b"hello v1"), timeout=20))
    stored = [e.event for e in events if e.HasField("event") and e.event.type == FINAL]
    assert len(stored) >= 1, events
    # The last message has no event: it says how many peers held the record then.
    assert not events[-1].HasField("event") and events[-1].holders == len(stored)
    assert five[4].dht.Get(pb.GetRequest(key=key), timeout=10).value == b"hello v1"

    list(five[1].dht.Put(pb.PutRequest(key=key, value=b"hello v2"), timeout=20))
    assert five[4].dht.Get(pb.GetRequest(key=key), timeout=10).value == b"hello v2"
    assert five[0].dht.Get(pb.GetRequest(key=key), timeout=10).value == b"hello v2"


def test_provide_then_find_provs_from_another_node(five: list[Node]) -> None:
    cid = cid_for(f"provide-{time.time_ns()}")
    events = list(five[1].dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=20))
    *walk, last = events
    assert {e.cid for e in walk} == {cid}
    finals = sum(1 for e in walk if e.event.type == FINAL)
    assert finals >= 1
    assert not last.HasField("event") and [(h.cid, h.holders) for h in last.holders] == [
        (cid, finals)]

    found = list(five[3].dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=10))
    assert [f.provider.id for f in found] == [five[1].peer_id]
    assert five[1].p2p_addr.rsplit("/p2p/", 1)[0] in found[0].provider.addrs


def test_num_providers_one_ends_after_the_first(five: list[Node]) -> None:
    cid = cid_for(f"two-providers-{time.time_ns()}")
    for node in (five[1], five[2]):
        list(node.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=20))
    both = list(five[4].dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=2), timeout=10))
    assert {f.provider.id for f in both} == {five[1].peer_id, five[2].peer_id}
    one = list(five[4].dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=1), timeout=10))
    assert len(one) == 1 and one[0].provider.id in {five[1].peer_id, five[2].peer_id}


def test_num_providers_unset_means_up_to_20(five: list[Node]) -> None:
    """The IPFS DHT API's default: numProviders 0 finds up to 20, not 1."""
    cid = cid_for(f"three-providers-{time.time_ns()}")
    providers = {five[1].peer_id, five[2].peer_id, five[3].peer_id}
    for node in five[1:4]:
        list(node.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=20))
    found = list(five[4].dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=10))
    assert {f.provider.id for f in found} == providers and len(found) == 3


def test_query_returns_the_true_closest_peers(five: list[Node]) -> None:
    everyone = [n.peer_id for n in five] + [p for n in five for p in n.dev_peer_ids()]
    assert len(everyone) == 25
    target = five[2].dev_peer_ids()[1]
    asker = five[0]
    events = list(asker.dht.Query(pb.QueryRequest(peer_id=target), timeout=20))
    finals = [e.event.id for e in events if e.event.type == FINAL]
    others = [p for p in everyone if p != asker.peer_id]
    truth = sorted(others, key=lambda p: int.from_bytes(kad(p)) ^ int.from_bytes(kad(target)))
    assert finals == truth[:20]


def assert_walk_in_order(events: list[pb.QueryEvent]) -> None:
    """Each PEER_RESPONSE follows a SENDING_QUERY to the same peer; FINAL_PEERs come last."""
    sent: set[str] = set()
    for e in events:
        if e.type == pb.QUERY_EVENT_TYPE_SENDING_QUERY:
            sent.add(e.id)
        elif e.type == pb.QUERY_EVENT_TYPE_PEER_RESPONSE:
            assert e.id in sent
    kinds = [e.type for e in events]
    assert all(k == FINAL for k in kinds[kinds.index(FINAL):])


def test_query_streams_progress_events_in_order(five: list[Node]) -> None:
    events = [r.event for r in five[0].dht.Query(
        pb.QueryRequest(peer_id=five[4].peer_id), timeout=20)]
    kinds = [e.type for e in events]
    assert pb.QUERY_EVENT_TYPE_SENDING_QUERY in kinds
    assert pb.QUERY_EVENT_TYPE_PEER_RESPONSE in kinds
    assert_walk_in_order(events)


def test_unknown_things_are_not_found(five: list[Node]) -> None:
    node = five[2]
    missing_peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    with pytest.raises(grpc.RpcError) as err:
        node.dht.FindPeer(pb.FindPeerRequest(peer_id=missing_peer), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        node.dht.Get(pb.GetRequest(key=f"/{NAMESPACE}/never-put".encode()), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    call = node.dht.FindProvs(pb.FindProvsRequest(cid=UNKNOWN_CID), timeout=10)
    assert status_of(call) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("FindPeer", pb.FindPeerRequest(peer_id="not-a-peer"), "peer_id"),
        ("FindPeer", pb.FindPeerRequest(peer_id=""), "peer_id"),
        ("Query", pb.QueryRequest(peer_id="Qm123"), "peer_id"),
        ("FindProvs", pb.FindProvsRequest(cid="bafyNOPE"), "cid"),
        ("Provide", pb.ProvideRequest(cids=[]), "cids"),
        ("Provide", pb.ProvideRequest(cids=[UNKNOWN_CID, "zzz"]), "cids[1]"),
        ("Get", pb.GetRequest(key=b"no-namespace"), "key"),
        ("Get", pb.GetRequest(key=b"/unopened/x"), "key"),
        ("Put", pb.PutRequest(key=b"/app/x", value=b""), "value"),
        ("Put", pb.PutRequest(key=b"/app/x", value=b"x" * (64 * 1024 + 1)), "value"),
        ("Put", pb.PutRequest(key=b"/pk/whatever", value=b"not a key"), "value"),
    ],
)
def test_malformed_input_is_invalid_argument(
    five: list[Node], method: str, request_: object, field: str
) -> None:
    rpc = getattr(five[0].dht, method)
    with pytest.raises(grpc.RpcError) as err:
        result = rpc(request_, timeout=10)
        if hasattr(result, "__iter__"):
            list(result)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()


def test_recursive_provide_without_a_block_source_is_failed_precondition(
        five: list[Node]) -> None:
    call = five[0].dht.Provide(pb.ProvideRequest(cids=[UNKNOWN_CID], recursive=True), timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--block-source" in err.value.details()


def test_info_describes_the_node(five: list[Node]) -> None:
    info = five[0].node_info()
    assert info.peer_id == five[0].peer_id
    assert info.protocol == "/ipfs/kad/1.0.0"
    assert info.mode == pb.MODE_SERVER
    assert info.routing_table_size >= 5
    assert info.connected_peers >= 1
    assert info.queries_in_flight == 0


class Frozen:
    """SIGSTOPs a process: it keeps its TCP connections but answers nothing."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def __enter__(self) -> Frozen:
        os.kill(self.node.proc.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.node.proc.pid, signal.SIGCONT)


def nearest_is(nodes: list[Node], node: Node, tag: str) -> str:
    """A CID (of ``tag`` and a counter) whose nearest peer among ``nodes`` is ``node``."""
    for i in range(10_000):
        cid = cid_for(f"{tag}-{i}")
        target = int.from_bytes(kad_key(parse_cid(cid).multihash), "big")
        if min(nodes, key=lambda n: int.from_bytes(
                kad_key(parse_peer_id(n.peer_id)), "big") ^ target) is node:
            return cid
    raise AssertionError("no such CID in 10,000 tries")


def nearest_of_all_is(nodes: list[Node], node: Node, tag: str) -> str:
    """A CID (of ``tag`` and a counter) whose nearest DHT node of all that ``nodes``
    run, dev peers included, is ``node``'s main node."""
    # A process logs its dev peers as they start, which may be after it is ready.
    wait_until(lambda: all(len(n.dev_peer_ids()) == DEV_PEERS for n in nodes), 30,
               "every process to log its dev peers")
    everyone = [p for n in nodes for p in (n.peer_id, *n.dev_peer_ids())]
    keys = {p: int.from_bytes(kad_key(parse_peer_id(p)), "big") for p in everyone}
    for i in range(10_000):
        cid = cid_for(f"{tag}-{i}")
        target = int.from_bytes(kad_key(parse_cid(cid).multihash), "big")
        if min(keys, key=lambda p: keys[p] ^ target) == node.peer_id:
            return cid
    raise AssertionError("no such CID in 10,000 tries")


def test_short_deadline_is_deadline_exceeded_promptly(five: list[Node]) -> None:
    # The frozen node is the key's nearest of all (dev peers included), so among the
    # beta nearest: the walk waits for it (its patience, at least 0.5 s) and so
    # cannot end before the 0.2 s deadline.
    cid = nearest_of_all_is(five, five[3], "never")
    with Frozen(five[3]):
        started = time.monotonic()
        call = five[0].dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=0.2)
        assert status_of(call) == grpc.StatusCode.DEADLINE_EXCEEDED
        # Ended by its 0.2 s deadline, not by the frozen peer's 10 s request timeout
        # (a loose bound: it holds on a loaded 2-core machine).
        assert time.monotonic() - started < 5.0
        wait_until(lambda: five[0].node_info().queries_in_flight == 0, 5,
                   "the timed-out lookup to stop")


def test_cancelling_find_provs_stops_its_lookup(five: list[Node]) -> None:
    node = five[0]
    # The frozen node is the key's nearest of all: the walk waits on it (a frozen
    # peer elsewhere would not hold it, and it could end before the check).
    cid = nearest_of_all_is(five, five[3], "cancel-me")
    with Frozen(five[3]):
        call = node.dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=30)
        got_first = threading.Event()

        def consume() -> None:
            try:
                for _ in call:
                    got_first.set()
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        wait_until(lambda: node.node_info().queries_in_flight == 1, 5, "the lookup to start")
        call.cancel()
        reader.join(5)
        assert not reader.is_alive()
        wait_until(lambda: node.node_info().queries_in_flight == 0, 2,
                   "the cancelled lookup to stop")
        assert call.code() == grpc.StatusCode.CANCELLED


def test_restart_with_the_same_data_dir_keeps_the_peer_id(tmp_path: object) -> None:
    from pathlib import Path

    data = Path(str(tmp_path)) / "node"
    first = start_node("r1", data)
    peer_id = first.peer_id
    assert first.stop() == 0
    assert (data / "identity.key").stat().st_mode & 0o777 == 0o600
    second = start_node("r2", data)
    try:
        assert second.peer_id == peer_id
    finally:
        second.stop()


def test_a_node_without_peers_is_unavailable(tmp_path: object) -> None:
    from pathlib import Path

    # A private prefix keeps stray dials from other tests' nodes out of its table.
    lonely = start_node("lonely", Path(str(tmp_path)) / "lonely",
                        ["--protocol-prefix", "/lonely-test"])
    try:
        with pytest.raises(grpc.RpcError) as err:
            lonely.dht.FindPeer(pb.FindPeerRequest(
                peer_id="12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "--bootstrap" in err.value.details()
    finally:
        lonely.stop()


def test_parse_cid_helper_matches_the_daemon() -> None:
    assert parse_cid(UNKNOWN_CID).version == 1


def test_private_prefix_makes_a_separate_dht(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    private_a = start_node("pa", base / "pa", ["--protocol-prefix", "/private"])
    nodes = [private_a]
    try:
        private_b = start_node("pb", base / "pb",
                               ["--protocol-prefix", "/private", "--bootstrap", private_a.p2p_addr])
        nodes.append(private_b)
        public = start_node("pub", base / "pub")
        nodes.append(public)
        assert private_b.node_info().protocol == "/private/kad/1.0.0"
        wait_until(lambda: private_b.node_info().routing_table_size == 1, 10,
                   "the two private nodes to find each other")
        # A public node can connect, but the private node does not speak /ipfs/kad/1.0.0.
        res = public.node.Connect(pb.ConnectRequest(addr=private_a.p2p_addr), timeout=10)
        assert res.peer.id == private_a.peer_id
        assert res.added_to_routing_table is False
        assert public.node_info().routing_table_size == 0
        # The private pair still answers each other.
        found = private_b.dht.FindPeer(pb.FindPeerRequest(peer_id=private_a.peer_id), timeout=10)
        assert found.peer.id == private_a.peer_id
    finally:
        for node in nodes:
            node.stop()


def test_connect_adds_a_kad_peer_and_rejects_bad_addrs(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    a = start_node("ca", base / "ca")
    b = start_node("cb", base / "cb")
    try:
        res = a.node.Connect(pb.ConnectRequest(addr=b.p2p_addr), timeout=10)
        assert res.added_to_routing_table is True
        assert a.node_info().routing_table_size == 1
        # The dialled side adds the dialler too.
        wait_until(lambda: b.node_info().routing_table_size == 1, 10, "b to add a")
        with pytest.raises(grpc.RpcError) as err:
            a.node.Connect(pb.ConnectRequest(addr="/ip4/127.0.0.1/tcp/1"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("addr:")
        dead = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
        with pytest.raises(grpc.RpcError) as err:
            a.node.Connect(pb.ConnectRequest(addr=dead), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        a.stop()
        b.stop()


def test_find_provs_streams_the_first_provider_before_the_walk_ends(five: list[Node]) -> None:
    # The frozen node is the key's nearest of all, so the walk waits on it after the
    # provider's record arrived from the others.
    cid = nearest_of_all_is(five, five[3], f"stream-first-{time.time_ns()}")
    list(five[1].dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=20))
    with Frozen(five[3]):
        started = time.monotonic()
        call = five[0].dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=5), timeout=3)
        first = next(call)
        # The provider arrived while the call was still running: streamed, not
        # sent with the end of the walk.
        still_running = call.is_active()
        assert first.provider.id == five[1].peer_id
        assert status_of(call) == grpc.StatusCode.OK
        ended_at = time.monotonic() - started
    assert still_running
    # The walk went on, waiting on the frozen peer as long as its patience lasted
    # (1 s: it answered fast before; dhtd.liveness), not until the 3 s deadline.
    assert ended_at < 2.5


def test_bootstrap_by_dns_name(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    first = start_node("dns-a", base / "a")
    nodes = [first]
    try:
        by_name = first.p2p_addr.replace("/ip4/127.0.0.1/", "/dns4/localhost/")
        second = start_node("dns-b", base / "b", ["--bootstrap", by_name])
        nodes.append(second)
        wait_until(lambda: second.node_info().routing_table_size == 1, 10,
                   "the node bootstrapped by /dns4/localhost to join")
        res = first.node.Connect(pb.ConnectRequest(
            addr=second.p2p_addr.replace("/ip4/127.0.0.1/", "/dns/localhost/")), timeout=10)
        assert res.added_to_routing_table is True
    finally:
        for node in nodes:
            node.stop()
