"""dhtd and real Go peers (go-libp2p v0.24.2 + go-libp2p-kad-dht v0.20.0, from the
PyPI wheel ``libp2p-go``, each in its own OS process: bench/go_worker.py, in the Go
peers' venv .venv-go-bench made from bench/requirements-go.lock by
scripts/test-tools.d/60-go-peers), on /ipfs/kad/1.0.0 on 127.0.0.1.

A mixed network of 30 peers: one dhtd process (dhtd and 11 dev peers, our engine)
and 18 Go processes, which bootstrap to dhtd and then refresh. On it:

- provider records both ways, with addresses, and each lands on exactly its key's
  true 20 closest peers of the whole network (every peer asked with GET_PROVIDERS);
- dhtd's Query and Go's GetClosestPeers (which Go's provide walks, then sends its
  ADD_PROVIDERs to) name the same 20 peers, the true closest;
- an IPNS record (V1+V2 signature, Ed25519) put on one side and got with the same
  bytes on the other; a higher sequence number replaces a lower one, a lower one
  never replaces a higher one;
- Go's ways (addresses ending in /p2p/, 20 closer peers per answer, streams closed
  when Go likes, a Go peer killed or frozen mid-walk) leave dhtd's answers right and
  its log free of errors.

And, on a network of its own, FindPeer across a hop both ways: dhtd and a Go peer
that have never met (neither knows the other's address) find each other through a
third peer (Go), the only one both are connected to.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import multiaddr
import pytest
import trio

from bench.go_compare import GoPeer
from bench.jsonline import OpFailed
from bench.mass_start import kad
from dht.v1 import dht_pb2 as pb
from dhtd.addrs import parse_dial_addr
from dhtd.ids import b58decode, b58encode, parse_cid
from dhtd.kadmsg import MessageType, new_message
from dhtd.lookup import PEER_REQUEST_TIMEOUT
from dhtd.p2p import Host, new_identity, peer_id_of
from tests.integration.test_batched_provide import addrs_of
from tests.integration.test_swarm import cid_for
from tests.ipns import Ed25519Identity, ipns_key, ipns_record
from tests.service.test_grpc_edge import bad_lines
from tests.swarm import Node, start_node, wait_until

REPO = Path(__file__).resolve().parents[2]
GO_PYTHON = REPO / ".venv-go-bench" / "bin" / "python"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not GO_PYTHON.exists(),
                       reason=".venv-go-bench is missing: run scripts/test-tools"),
]

K = 20  # bucket size and replication, in both implementations
DEV_PEERS = 11
GO_PEERS = 18
GO_OP_TIMEOUT = 30.0
PROTOCOL = "/ipfs/kad/1.0.0"


@dataclass
class Mixed:
    node: Node  # the dhtd process (its dev peers are in it)
    gos: list[GoPeer]
    addrs: dict[str, str]  # every peer of the network: peer ID -> /ip4/…/tcp/…/p2p/ID

    def true_closest(self, key: bytes, without: str) -> set[str]:
        """The K peers closest to ``key`` (kad distance), leaving out ``without``."""
        target = int.from_bytes(hashlib.sha256(key).digest(), "big")
        ranked = sorted((p for p in self.addrs if p != without),
                        key=lambda p: int.from_bytes(kad(p), "big") ^ target)
        return set(ranked[:K])

    def rank(self, key: bytes, peer: str) -> int:
        """How many peers of the network are closer to ``key`` than ``peer``."""
        target = int.from_bytes(hashlib.sha256(key).digest(), "big")
        mine = int.from_bytes(kad(peer), "big") ^ target
        return sum(1 for p in self.addrs if int.from_bytes(kad(p), "big") ^ target < mine)


def start_go(name: str, tmp: Path, boots: list[str], *extra: str) -> GoPeer:
    return GoPeer(name, GO_PYTHON, "/ipfs", boots, GO_OP_TIMEOUT, tmp / f"{name}.log",
                  extra)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    tmp = tmp_path_factory.mktemp("go")
    node = start_node("go-mix", tmp / "d", ["--dev-peers", str(DEV_PEERS)])
    gos: list[GoPeer] = []
    try:
        wait_until(lambda: node.node_info().routing_table_size >= DEV_PEERS, 30,
                   "dhtd's dev peers")
        gos = [start_go(f"go{i}", tmp, [node.p2p_addr]) for i in range(GO_PEERS)]
        for go in gos:
            go.wait_ready(60)
            assert not go.boot_errors, go.boot_errors
        addrs = addrs_of([node])
        addrs.update({go.peer_id: go.addr for go in gos})
        assert len(addrs) == 1 + DEV_PEERS + GO_PEERS
        for go in gos:  # a refresh now that every peer is up
            go.call("refresh")
        for go in gos:
            wait_until(lambda go=go: go.peer_count() >= len(addrs) - 1, 60,
                       f"{go.name} to hear of every peer")
        wait_until(lambda: node.node_info().routing_table_size >= len(addrs) - 1, 60,
                   "dhtd's table to take every Go peer")
        yield Mixed(node, gos, addrs)
    finally:
        for go in gos:
            go.stop()
        node.stop()


def providers(node: Node, cid: str, wanted: int = K) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        for answer in node.dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=wanted),
                                         timeout=30):
            out[answer.provider.id] = list(answer.provider.addrs)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    return out


def holders(net: Mixed, key: bytes, provider: str) -> set[str]:
    """The peers (other than ``provider``) that answer a GET_PROVIDERS for ``key``,
    asked directly, one message each, with ``provider`` among the providers."""
    provider_id = b58decode(provider)

    async def ask(host: Host, peer: str, held: set[str]) -> None:
        target, target_addr = parse_dial_addr(net.addrs[peer])
        with trio.fail_after(20):
            await host.connect(target, target_addr)
            answer = await host.request(target, new_message(MessageType.GET_PROVIDERS, key))
        if any(p.id == provider_id for p in answer.providerPeers):
            held.add(peer)

    async def main() -> set[str]:
        held: set[str] = set()
        host = Host(new_identity(), PROTOCOL)  # client mode: joins no routing table
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0").to_bytes()]
        async with host.open(listen, None, lambda peer: None), trio.open_nursery() as nursery:
            for peer in net.addrs:
                if peer != provider:
                    nursery.start_soon(ask, host, peer, held)
        return held

    return trio.run(main)


def land_on(net: Mixed, key: bytes, provider: str) -> set[str]:
    """Waits until the holders of ``provider``'s record for ``key`` are the true K
    closest (a holder may store an ADD_PROVIDER a moment after the provide returns);
    fails at once on a holder that should not be one. Returns the holders."""
    should = net.true_closest(key, provider)
    seen: set[str] = set()

    def landed() -> bool:
        seen.clear()
        seen.update(holders(net, key, provider))
        assert seen <= should, ("wrong holders", seen - should)
        return seen == should

    try:
        wait_until(landed, 20, f"{provider}'s record on the true {K} closest")
    except AssertionError as exc:
        by_id = {go.peer_id: go for go in net.gos}
        known = (by_id[provider].call("known", peer=p)["addrs"] if provider in by_id else None
                 for p in should - seen)
        missing = [(p, "go" if p in by_id else "dhtd", net.rank(key, p), next(known))
                   for p in should - seen]
        raise AssertionError(
            f"{exc}; missing (peer, kind, rank, provider's addrs of it): {missing}") from None
    return seen


def walk_key_cid(multihash: bytes) -> str:
    """A CIDv1 with the libp2p-key codec over ``multihash``: Query walks to the same
    kad key as provider records for a CID with this multihash."""
    raw = bytes([0x01, 0x72]) + multihash
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def key_beyond(net: Mixed, label: str) -> tuple[str, bytes, GoPeer]:
    """The first CID ``label i`` with a Go peer such that neither it nor dhtd is among
    the key's K + 1 closest: a walk from either then has the same K to find. (Both
    must be far from the key, so in XOR terms near each other: a Go peer that shares
    a long prefix with dhtd is looked for first.)"""
    mine = int.from_bytes(kad(net.node.peer_id), "big")
    gos = sorted(net.gos, key=lambda go: int.from_bytes(kad(go.peer_id), "big") ^ mine)
    for i in range(1000):
        cid = cid_for(f"{label} {i}")
        key = parse_cid(cid).multihash
        if net.rank(key, net.node.peer_id) <= K:
            continue
        for go in gos:
            if net.rank(key, go.peer_id) > K:
                return cid, key, go
    raise AssertionError("no such CID among 1000")


def test_a_go_provide_lands_on_the_true_closest_and_dhtd_finds_it(net: Mixed) -> None:
    go = net.gos[0]
    cid = cid_for("go provides")
    key = parse_cid(cid).multihash
    go.call("provide", cid=cid)
    land_on(net, key, go.peer_id)
    found = providers(net.node, cid)
    assert go.peer_id in found, found
    want = go.addr.rsplit("/p2p/", 1)[0]
    assert want in found[go.peer_id], found[go.peer_id]
    assert all("/p2p/" not in addr for addr in found[go.peer_id]), found[go.peer_id]


def test_a_dhtd_provide_lands_on_the_true_closest_and_go_finds_it(net: Mixed) -> None:
    node, go = net.node, net.gos[1]
    cid = cid_for("dhtd provides")
    list(node.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=30))
    land_on(net, parse_cid(cid).multihash, node.peer_id)
    assert node.peer_id in go.call("find_providers", cid=cid)["providers"]


def test_dhtd_query_names_the_peers_go_walks_to(net: Mixed) -> None:
    """Go's provide walks GetClosestPeers and sends an ADD_PROVIDER to each peer it
    returned, so the holders of a Go peer's record are its GetClosestPeers. For a key
    outside both walkers' neighbourhood, dhtd's Query names exactly those 20."""
    cid, key, go = key_beyond(net, "closest")
    go.call("provide", cid=cid)
    go_closest = land_on(net, key, go.peer_id)
    events = [r.event for r in net.node.dht.Query(
        pb.QueryRequest(peer_id=walk_key_cid(key)), timeout=30)]
    finals = {e.id for e in events if e.type == pb.QUERY_EVENT_TYPE_FINAL_PEER}
    assert finals == go_closest
    assert finals == net.true_closest(key, net.node.peer_id)


def test_ipns_records_cross_both_ways_and_the_higher_sequence_wins(net: Mixed) -> None:
    node, go_a, go_b = net.node, net.gos[3], net.gos[4]
    owner = Ed25519Identity()
    key = ipns_key(owner)
    first = ipns_record(owner, sequence=1, v1=True)
    go_a.call("put", key=key.hex(), value=first.hex())
    assert node.dht.Get(pb.GetRequest(key=key), timeout=30).value == first
    second = ipns_record(owner, sequence=2, v1=True)
    list(node.dht.Put(pb.PutRequest(key=key, value=second), timeout=30))
    assert bytes.fromhex(go_b.call("get", key=key.hex())["value"]) == second
    # The lower sequence never replaces the higher one, on either side.
    try:
        go_a.call("put", key=key.hex(), value=first.hex())
    except OpFailed as exc:
        assert "older" in str(exc) or "newer" in str(exc) or "better" in str(exc), exc
    assert node.dht.Get(pb.GetRequest(key=key), timeout=30).value == second
    assert bytes.fromhex(go_b.call("get", key=key.hex())["value"]) == second


def test_go_peers_killed_or_frozen_mid_walk_leave_the_answer_right(net: Mixed) -> None:
    """A Go peer that dies (its connections reset) and one that freezes (SIGSTOP: its
    connections stay open and every stream on them goes silent), both among the key's
    closest: dhtd's FindProvs still names the provider with its address, within one
    peer timeout, and the walk reports the two as failed peers."""
    provider = net.gos[5]
    cid = cid_for("go provides, then peers fail")
    key = parse_cid(cid).multihash
    provider.call("provide", cid=cid)
    holding = land_on(net, key, provider.peer_id)
    by_id = {go.peer_id: go for go in net.gos}
    victims = [by_id[p] for p in sorted(holding, key=lambda p: net.rank(key, p))
               if p in by_id and by_id[p] is not provider][:2]
    assert len(victims) == 2, "fewer than 2 Go peers among the closest"
    dead, frozen = victims
    dead.proc.kill()
    dead.proc.wait(10)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        events = [r.event for r in net.node.dht.Query(
            pb.QueryRequest(peer_id=walk_key_cid(key)), timeout=60)]
        took = time.monotonic() - start
        finals = {e.id for e in events if e.type == pb.QUERY_EVENT_TYPE_FINAL_PEER}
        failed = {e.id for e in events if e.type == pb.QUERY_EVENT_TYPE_QUERY_ERROR}
        assert {dead.peer_id, frozen.peer_id} <= failed, failed
        assert not finals & {dead.peer_id, frozen.peer_id}
        assert took < PEER_REQUEST_TIMEOUT + 10, took
        found = providers(net.node, cid)
        assert provider.peer_id in found
        assert provider.addr.rsplit("/p2p/", 1)[0] in found[provider.peer_id]
    finally:
        os.kill(frozen.pid, signal.SIGKILL)
        frozen.proc.wait(10)


def test_go_peers_leave_no_error_in_dhtds_log(net: Mixed) -> None:
    """Go answers with /p2p/-suffixed addresses and up to 20 closer peers, and closes
    streams when it likes: after everything above, and more walks through the Go
    peers, dhtd has logged no error and no traceback."""
    live = [go for go in net.gos if go.proc.poll() is None]
    for i in range(5):
        cid = cid_for(f"go walk {i}")
        live[i].call("provide", cid=cid)
        assert live[i].peer_id in providers(net.node, cid)
    assert bad_lines(net.node) == []


# --- FindPeer across a hop ----------------------------------------------------------


@dataclass
class Hop:
    node: Node  # dhtd, connected to the hop only (and its dev peers, in its process)
    hop: GoPeer
    finder: GoPeer  # looks dhtd up; connected to the hop only
    target: GoPeer  # looked up by dhtd; connected to the hop only


@pytest.fixture(scope="module")
def hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hop]:
    """dhtd and two Go leaves, each connected to one Go hop and nothing else. The
    leaves never refresh and never walk by themselves. dhtd has 10 dev peers, so its
    table is not thin and it does not refresh again (dhtd.refresh.THIN_TABLE) after
    its first refresh, which ran before the leaves joined."""
    tmp = tmp_path_factory.mktemp("hop")
    peers: list[GoPeer] = []
    node: Node | None = None
    try:
        hub = start_go("hop", tmp, [])
        peers.append(hub)
        hub.wait_ready(60)
        node = start_node("hop-dhtd", tmp / "d", ["--dev-peers", "10",
                                                  "--bootstrap", hub.addr])
        wait_until(lambda: node is not None and node.node_info().routing_table_size >= 11,
                   30, "dhtd's table to hold its dev peers and the hop")
        # dhtd's first refresh (a self-lookup through the hop) is over once a walk of
        # ours through the hop has finished after it: walks share the table.
        list(node.dht.Query(pb.QueryRequest(peer_id=node.peer_id), timeout=30))
        leaves = [start_go(name, tmp, [hub.addr], "--no-refresh")
                  for name in ("finder", "target")]
        peers += leaves
        for leaf in leaves:
            leaf.wait_ready(60)
            assert not leaf.boot_errors, leaf.boot_errors
        yield Hop(node, hub, *leaves)
    finally:
        for peer in peers:
            peer.stop()
        if node is not None:
            node.stop()


def test_dhtd_finds_a_go_peer_it_never_met_through_a_go_hop(hop: Hop) -> None:
    # The target has never met dhtd: it holds no address of it.
    assert hop.target.call("known", peer=hop.node.peer_id)["addrs"] == []
    answer = hop.node.dht.FindPeer(pb.FindPeerRequest(peer_id=hop.target.peer_id),
                                   timeout=30)
    assert answer.peer.id == hop.target.peer_id
    assert hop.target.addr.rsplit("/p2p/", 1)[0] in answer.peer.addrs
    assert all("/p2p/" not in addr for addr in answer.peer.addrs), answer.peer.addrs


def test_a_go_peer_finds_dhtd_it_never_met_through_a_go_hop(hop: Hop) -> None:
    found = hop.finder.call("find_peer", peer=hop.node.peer_id)
    assert found["known_before"] == []
    listen = [a for a in hop.node.node_info().addrs]
    assert set(listen) & {a.rsplit("/p2p/", 1)[0] for a in found["addrs"]}, found
    # go-libp2p dialled what it found: dhtd now has the finder as a peer.
    wait_until(lambda: hop.node.node_info().connected_peers >= 12, 10,
               "dhtd to see the finder's connection")


def test_an_unknown_peer_is_not_found_either_way(hop: Hop) -> None:
    nobody = b58encode(peer_id_of(new_identity()))
    with pytest.raises(grpc.RpcError) as info:
        hop.node.dht.FindPeer(pb.FindPeerRequest(peer_id=nobody), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(OpFailed):
        hop.finder.call("find_peer", peer=nobody)
