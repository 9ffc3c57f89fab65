"""dhtd and js-libp2p (@libp2p/kad-dht) in one DHT, through both APIs, both ways.

The network, all on 127.0.0.1 (see docs/interop.md):

* dhtd A, with DEV_PEERS in-process peers bootstrapped to it;
* dhtd B, bootstrapped to A only, with DEV_PEERS peers of its own;
* js J1, which joins through A; js J2, which joins through B;
* js J3, which joins through A and whose connection gater refuses B in both
  directions, so that B and J3 can only learn of each other through others.

"Joins through" means: connects to that one node, then walks to its own ID,
which connects it to the peers the walk asks (as any joining node does).

Every lookup is a real walk over the kad protocol between the two
implementations: the js side through its kad-dht API, the dhtd side through its
gRPC API.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.ids import b58decode, parse_cid
from tests.integration.test_swarm import cid_for
from tests.interop.jsnode import JsError, JsNode, missing_requirement
from tests.swarm import Node, start_node, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing_requirement() is not None,
                       reason=missing_requirement() or ""),
]

NAMESPACE = "app"
# In-process peers per dhtd process: 2 x (1 + 10) + 3 js nodes = 25 nodes, more
# than k = 20, so that "the 20 closest" is a real selection.
DEV_PEERS = 10
K = 20
FINAL = pb.QUERY_EVENT_TYPE_FINAL_PEER


@dataclass
class Net:
    a: Node
    b: Node
    j1: JsNode
    j2: JsNode
    j3: JsNode

    def everyone(self) -> list[str]:
        dhtd = [p for n in (self.a, self.b) for p in (n.peer_id, *n.dev_peer_ids())]
        return dhtd + [j.peer_id for j in (self.j1, self.j2, self.j3)]


def tcp_addr(node: Node) -> str:
    return node.p2p_addr.rsplit("/p2p/", 1)[0]


def kad(peer_id: str) -> int:
    return int.from_bytes(hashlib.sha256(b58decode(peer_id)).digest())


def distance(peer_id: str, target: str) -> int:
    return kad(peer_id) ^ kad(target)


def cid_near(everyone: list[str], insider: str, label: str) -> str:
    """A CID whose k - 1 closest peers include ``insider``."""
    for n in range(10_000):
        cid = cid_for(f"{label}-{time.time_ns()}-{n}")
        target = int.from_bytes(hashlib.sha256(parse_cid(cid).multihash).digest())
        ranked = sorted(everyone, key=lambda p: kad(p) ^ target)
        if insider in ranked[: K - 1]:
            return cid
    raise AssertionError("no CID found")


def key_far_from(everyone: list[str], outsider: str, label: str) -> bytes:
    """A record key whose k closest peers do not include ``outsider``, so that a
    Put by others never reaches ``outsider``'s own copy."""
    for n in range(10_000):
        key = f"/{NAMESPACE}/{label}-{time.time_ns()}-{n}".encode()
        target = int.from_bytes(hashlib.sha256(key).digest())
        ranked = sorted(everyone, key=lambda p: kad(p) ^ target)
        if outsider not in ranked[: K + 1]:
            return key
    raise AssertionError("no key found")


def closest(peers: set[str] | list[str], target: str, n: int = K) -> list[str]:
    return sorted(peers, key=lambda p: distance(p, target))[:n]


def query(node: Node, target: str) -> list[str]:
    events = node.dht.Query(pb.QueryRequest(peer_id=target), timeout=20)
    return [e.event.id for e in events if e.event.type == FINAL]


def js_node(name: str, nodes: list[JsNode], deny: tuple[str, ...] = ()) -> JsNode:
    node = JsNode(name)
    nodes.append(node)
    node.start([NAMESPACE], deny=deny)
    return node


def join(js: JsNode, via: Node) -> None:
    """Connects ``js`` to one dhtd node; both must take the other into their routing table."""
    js.connect(via.p2p_addr)
    # js takes a peer into its table once identify lists the kad protocol; on a
    # loaded machine identify can end after connect returned.
    wait_until(lambda: via.peer_id in js.info()["routingTable"], 30,
               f"{js.name} to add {via.name} to its routing table")
    # dhtd takes a peer that connected in when identify lists the kad protocol;
    # FindPeer of a connected peer answers from identify without a walk.
    via.dht.FindPeer(pb.FindPeerRequest(peer_id=js.peer_id), timeout=10)
    # Then the js node walks to its own ID, as a joining node does.
    js.closest_peers(js.peer_id)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp: Path = tmp_path_factory.mktemp("interop")
    extra = ["--namespace", NAMESPACE, "--dev-peers", str(DEV_PEERS)]
    dhtds: list[Node] = []
    js: list[JsNode] = []
    try:
        a = start_node("A", tmp / "a", extra)
        dhtds.append(a)
        b = start_node("B", tmp / "b", [*extra, "--bootstrap", a.p2p_addr])
        dhtds.append(b)
        # Each dhtd's table holds its own dev peers and the other dhtd (B
        # bootstrapped to A): the two halves of the network are joined.
        for node in dhtds:
            wait_until(lambda n=node: n.node_info().routing_table_size >= DEV_PEERS + 1, 40,
                       f"{node.name} to have its dev peers and the other dhtd in its table")
        j1 = js_node("J1", js)
        j2 = js_node("J2", js)
        j3 = js_node("J3", js, deny=(b.peer_id,))
        join(j1, a)
        join(j2, b)
        join(j3, a)
        # Every dhtd node walks to its own ID, so that it meets the nodes that
        # joined after it (a routing table refresh).
        for node in dhtds:
            query(node, node.peer_id)
        yield Net(a, b, j1, j2, j3)
    finally:
        for j in js:
            j.stop()
        for node in dhtds:
            node.stop()


# -- (a), (b): provider records ------------------------------------------------


def test_cid_provided_by_js_is_found_by_dhtd(net: Net) -> None:
    cid = cid_for(f"js-provides-{time.time_ns()}")
    res = net.j1.provide(cid)
    assert res["sent"] >= 1, res
    for node in (net.a, net.b):
        found = list(node.dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=15))
        assert [f.provider.id for f in found] == [net.j1.peer_id]
        assert net.j1.tcp_addr in found[0].provider.addrs


def test_cid_provided_by_dhtd_is_found_by_js(net: Net) -> None:
    # A CID that J1 is one of the k closest peers to: J1 must take the record.
    cid = cid_near(net.everyone(), net.j1.peer_id, "dhtd-provides")
    events = list(net.b.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=20))
    assert net.j1.peer_id in {e.event.id for e in events if e.event.type == FINAL}, events
    for js in (net.j1, net.j2):
        providers = js.find_providers(cid)
        assert [p["id"] for p in providers] == [net.b.peer_id]
        assert tcp_addr(net.b) in providers[0]["addrs"]
    # J1 answered from its own provider store: it stored dhtd's ADD_PROVIDER.
    assert net.j1.find_providers(cid)[0]["from"] == net.j1.peer_id


# -- (c): an operator namespace, last write wins on both sides -------------------


def test_record_put_by_dhtd_is_read_by_js(net: Net) -> None:
    key = f"/{NAMESPACE}/from-dhtd-{time.time_ns()}".encode()
    events = list(net.a.dht.Put(pb.PutRequest(key=key, value=b"dhtd v1"), timeout=20))
    assert any(e.event.type == FINAL for e in events)
    assert net.j2.get(key) == b"dhtd v1"
    assert net.j3.get(key) == b"dhtd v1"


def test_record_put_by_js_is_read_by_dhtd(net: Net) -> None:
    key = f"/{NAMESPACE}/from-js-{time.time_ns()}".encode()
    res = net.j1.put(key, b"js v1")
    assert res["sent"] >= 1, res
    for node in (net.a, net.b):
        assert node.dht.Get(pb.GetRequest(key=key), timeout=15).value == b"js v1"


def test_the_last_write_wins_whichever_side_wrote(net: Net) -> None:
    key = f"/{NAMESPACE}/lww-{time.time_ns()}".encode()
    list(net.a.dht.Put(pb.PutRequest(key=key, value=b"first, by dhtd"), timeout=20))
    assert net.j1.get(key) == b"first, by dhtd"

    net.j2.put(key, b"second, by js")
    assert net.b.dht.Get(pb.GetRequest(key=key), timeout=15).value == b"second, by js"
    assert net.j1.get(key) == b"second, by js"

    list(net.b.dht.Put(pb.PutRequest(key=key, value=b"third, by dhtd"), timeout=20))
    assert net.j2.get(key) == b"third, by dhtd"
    assert net.j1.get(key) == b"third, by dhtd"
    assert net.a.dht.Get(pb.GetRequest(key=key), timeout=15).value == b"third, by dhtd"


def test_a_stale_own_copy_loses_to_a_newer_one_held_by_others(net: Net) -> None:
    """Both selectors choose by the holders' Record.timeReceived: a node's own,
    older copy (the first candidate on both sides) loses to the newer copies
    it fetches, whichever side wrote which."""
    everyone = net.everyone()

    key = key_far_from(everyone, net.j1.peer_id, "stale-js")
    net.j1.put(key, b"old, by J1")
    list(net.a.dht.Put(pb.PutRequest(key=key, value=b"new, by A"), timeout=20))
    assert net.j1.get(key) == b"new, by A"

    key = key_far_from(everyone, net.b.peer_id, "stale-dhtd")
    list(net.b.dht.Put(pb.PutRequest(key=key, value=b"old, by B"), timeout=20))
    net.j2.put(key, b"new, by J2")
    assert net.b.dht.Get(pb.GetRequest(key=key), timeout=15).value == b"new, by J2"


def test_a_namespace_nobody_opened_is_refused_everywhere(net: Net) -> None:
    """js sends the record without checking it; every peer, dhtd and js, refuses it."""
    res = net.j1.put(b"/nobody-opened-this/x", b"v")
    assert res["sent"] == 0, res
    assert len(res["errors"]) >= K, res


# -- (d): /pk/ records, no custom validator on either side ----------------------


def rsa_public_key_record() -> tuple[bytes, bytes]:
    """A /pk/ record of a fresh RSA key: its key is the sha2-256 multihash of the
    protobuf-encoded public key (too long to be inlined), its value that key."""
    from libp2p.crypto.rsa import create_new_key_pair

    public = create_new_key_pair().public_key.serialize()
    return b"/pk/" + bytes([0x12, 0x20]) + hashlib.sha256(public).digest(), public


def test_public_key_put_by_dhtd_is_read_by_js(net: Net) -> None:
    key, value = rsa_public_key_record()
    events = list(net.b.dht.Put(pb.PutRequest(key=key, value=value), timeout=20))
    assert any(e.event.type == FINAL for e in events)
    assert net.j1.get(key) == value


def test_public_key_put_by_js_is_read_by_dhtd(net: Net) -> None:
    key, value = net.j2.new_public_key()
    assert key.startswith(b"/pk/\x12\x20")
    res = net.j2.put(key, value)
    assert res["sent"] >= 1, res
    for node in (net.a, net.b):
        assert node.dht.Get(pb.GetRequest(key=key), timeout=15).value == value


def test_a_public_key_under_another_key_is_refused_everywhere(net: Net) -> None:
    """js sends it without checking; every peer, dhtd and js, refuses to store it."""
    key, _ = net.j1.new_public_key()
    _, other = net.j1.new_public_key()
    res = net.j1.put(key, other)
    assert res["sent"] == 0, res
    with pytest.raises(grpc.RpcError) as err:
        net.a.dht.Get(pb.GetRequest(key=key), timeout=15)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- (e): peer routing across a hop ---------------------------------------------


def test_dhtd_and_js_find_each_other_through_other_peers(net: Net) -> None:
    """B and J3 never connect (J3's gater refuses B both ways): each learns the
    other's address from the peers it asks."""
    assert net.b.peer_id not in net.j3.info()["connections"]

    def b_finds_j3() -> bool:
        try:
            res = net.b.dht.FindPeer(pb.FindPeerRequest(peer_id=net.j3.peer_id), timeout=10)
        except grpc.RpcError:
            return False
        assert res.peer.id == net.j3.peer_id
        assert net.j3.tcp_addr in res.peer.addrs, res
        return True

    wait_until(b_finds_j3, 15, "B to find J3")

    found = net.j3.find_peer(net.b.peer_id)
    assert found["id"] == net.b.peer_id
    assert tcp_addr(net.b) in found["addrs"]

    after = net.j3.info()
    assert net.b.peer_id not in after["connections"]
    assert net.b.peer_id not in after["routingTable"]


# -- (f): both walks agree on the closest peers --------------------------------


def test_dhtd_query_and_js_get_closest_peers_agree(net: Net) -> None:
    everyone = net.everyone()
    assert len(everyone) == 2 * (1 + DEV_PEERS) + 3
    for target in (net.b.dev_peer_ids()[3], net.j2.peer_id, net.a.dev_peer_ids()[0]):
        from_dhtd = query(net.a, target)
        from_js = [p["id"] for p in net.j1.closest_peers(target)]
        # Each walk leaves out the node that walks; each must be the true k
        # closest of everyone else, so the two agree once each adds itself back.
        assert from_dhtd == closest(set(everyone) - {net.a.peer_id}, target)
        assert set(from_js) == set(closest(set(everyone) - {net.j1.peer_id}, target))
        assert (closest({*from_dhtd, net.a.peer_id}, target)
                == closest({*from_js, net.j1.peer_id}, target)
                == closest(everyone, target))


# -- other muxers and security protocols -----------------------------------------


def test_a_js_node_on_mplex_works_with_dhtd(net: Net, request: pytest.FixtureRequest) -> None:
    """yamux is what the network above uses; mplex (which both sides still offer)
    carries the kad protocol as well."""
    js = JsNode("J-mplex")
    request.addfinalizer(js.stop)
    js.start([NAMESPACE], muxer="mplex")
    join(js, net.b)
    key = f"/{NAMESPACE}/over-mplex-{time.time_ns()}".encode()
    result = js.put(key, b"carried by mplex")
    assert result["sent"] >= 1, "\n".join(result["errors"])
    assert net.a.dht.Get(pb.GetRequest(key=key), timeout=15).value == b"carried by mplex"
    res = net.a.dht.FindPeer(pb.FindPeerRequest(peer_id=js.peer_id), timeout=10)
    assert js.tcp_addr in res.peer.addrs


def test_tls_is_not_offered(net: Net, request: pytest.FixtureRequest) -> None:
    """dhtd speaks noise only (docs/interop.md): a js node offering only TLS is
    refused both ways, with the reason in the negotiation."""
    js = JsNode("J-tls")
    request.addfinalizer(js.stop)
    js.start([NAMESPACE], security="tls")
    with pytest.raises(JsError, match=r"could not negotiate /tls/1\.0\.0"):
        js.connect(net.a.p2p_addr)
    with pytest.raises(grpc.RpcError) as err:
        net.a.node.Connect(pb.ConnectRequest(addr=js.addrs[0]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
