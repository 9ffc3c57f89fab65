"""dhtd and real Go peers (go-libp2p v0.24.2 + go-libp2p-kad-dht v0.20.0, from the
PyPI wheel ``libp2p-go``, each in its own OS process: bench/go_worker.py, in the Go
peers' venv .venv-go-bench made from bench/requirements-go.lock by
scripts/test-tools.d/60-go-peers), on /ipfs/kad/1.0.0 on 127.0.0.1.

One dhtd with 4 dev peers; two Go peers bootstrap to it. Provider records both
ways (with addresses), and an IPNS record (V1+V2 signature, Ed25519) put on one
side and got with the same bytes on the other, where a higher sequence number
replaces a lower one and a lower one never replaces a higher one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.go_compare import GoPeer, OpFailed
from dht.v1 import dht_pb2 as pb
from tests.integration.test_swarm import cid_for
from tests.ipns import Ed25519Identity, ipns_key, ipns_record
from tests.swarm import Node, dev_node, wait_until

REPO = Path(__file__).resolve().parents[2]
GO_PYTHON = REPO / ".venv-go-bench" / "bin" / "python"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not GO_PYTHON.exists(),
                       reason=".venv-go-bench is missing: run scripts/test-tools"),
]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, list[GoPeer]]]:
    tmp = tmp_path_factory.mktemp("go")
    with dev_node("go-mix", tmp / "d") as node:
        peers = [GoPeer(f"go{i}", GO_PYTHON, "/ipfs", [node.p2p_addr], 30.0,
                        tmp / f"go{i}.log") for i in range(2)]
        try:
            for peer in peers:
                peer.wait_ready(60)
                assert not peer.boot_errors, peer.boot_errors
            for peer in peers:
                peer.call("refresh")
            wait_until(lambda: node.node_info().routing_table_size >= 6, 30,
                       "dhtd's table to take both Go peers")
            yield node, peers
        finally:
            for peer in peers:
                peer.stop()


def providers(node: Node, cid: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        for answer in node.dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=20),
                                         timeout=30):
            out[answer.provider.id] = list(answer.provider.addrs)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    return out


def test_a_go_provide_is_found_by_dhtd_with_its_address(
        net: tuple[Node, list[GoPeer]]) -> None:
    node, (go, _) = net
    cid = cid_for("go provides")
    go.call("provide", cid=cid)
    found = providers(node, cid)
    assert go.peer_id in found, found
    want = go.addr.rsplit("/p2p/", 1)[0]
    assert want in found[go.peer_id], found[go.peer_id]


def test_a_dhtd_provide_is_found_by_go(net: tuple[Node, list[GoPeer]]) -> None:
    node, (_, go) = net
    cid = cid_for("dhtd provides")
    list(node.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=30))
    assert node.peer_id in go.call("find_providers", cid=cid)["providers"]


def test_ipns_records_cross_both_ways_and_the_higher_sequence_wins(
        net: tuple[Node, list[GoPeer]]) -> None:
    node, (go_a, go_b) = net
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


def test_go_peers_leave_no_error_in_dhtds_log(net: tuple[Node, list[GoPeer]]) -> None:
    """Go answers with /p2p/-suffixed addresses and up to 20 closer peers, and closes
    streams when it likes: after everything above, dhtd has logged no error and no
    traceback."""
    from tests.service.test_grpc_edge import bad_lines

    node, (go, _) = net
    for i in range(5):  # more walks through the Go peers
        cid = cid_for(f"go walk {i}")
        go.call("provide", cid=cid)
        assert go.peer_id in providers(node, cid)
    assert bad_lines(node) == []
