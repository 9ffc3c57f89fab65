"""Recursive Provide from real block sources: a directory of CAR files and a trustless
gateway over HTTP, in a swarm of dhtd processes on 127.0.0.1.

The DAGs (tests/dag.py) span four levels, mix dag-cbor, dag-pb (v0 and v1) and
raw, and link two leaves twice. After the call, another node finds this one as
the provider of every CID in them; each failure ends with its status.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from tests.dag import Dag, car_v1, car_v2, sample_dag
from tests.gateway import Gateway, gateway
from tests.swarm import Node, start_node, swarm

pytestmark = pytest.mark.integration

FINAL = pb.QUERY_EVENT_TYPE_FINAL_PEER
ERROR = pb.QUERY_EVENT_TYPE_QUERY_ERROR
SOURCE_TIMEOUT = 2.0

FILES = sample_dag("in a CAR file")
WEB = sample_dag("on a gateway")
HOLE = sample_dag("with a hole")  # its leaf b is in no source
BAD = sample_dag("with a bad block")  # its sub node is not what its CID says
SLOW = sample_dag("on a slow gateway")
ABSENT = sample_dag("nowhere")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Node], Gateway]]:
    tmp = tmp_path_factory.mktemp("recursive")
    cars = tmp / "cars"
    cars.mkdir()
    (cars / "files.car").write_bytes(car_v2([FILES.root], FILES.blocks))
    (cars / "hole.car").write_bytes(car_v1([HOLE.root], [b for b in HOLE.blocks
                                                         if b[0] != HOLE.cids[3]]))
    (cars / "bad.car").write_bytes(car_v1([BAD.root], [(c, b"forged" if c == BAD.cids[4] else d)
                                                       for c, d in BAD.blocks]))
    with gateway() as web:
        web.add(WEB.root, car_v1([WEB.root], WEB.blocks))
        web.stall(SLOW.root)
        sources = ["--block-source", f"file://{cars}", "--block-source", web.url,
                   "--block-source-timeout", str(SOURCE_TIMEOUT)]
        with swarm(tmp / "swarm", 4, extra=sources) as nodes:
            yield nodes, web


def provide(node: Node, root: str, batch: bool = False
            ) -> tuple[list[tuple[str, int]], grpc.RpcError | None]:
    """The (cid, event type) pairs of a recursive Provide, and its error if it failed."""
    events: list[tuple[str, int]] = []
    try:
        for response in node.dht.Provide(
                pb.ProvideRequest(cids=[root], recursive=True, batch_events=batch), timeout=60):
            pairs = response.events if batch else [response]
            events += [(e.cid, e.event.type) for e in pairs]
    except grpc.RpcError as exc:
        return events, exc
    return events, None


def provided(events: list[tuple[str, int]]) -> set[str]:
    return {cid for cid, kind in events if kind == FINAL}


def assert_findable(nodes: list[Node], dag: Dag) -> None:
    asker, provider = nodes[-1], nodes[0]
    for cid in dag.cids:
        found = list(asker.dht.FindProvs(pb.FindProvsRequest(cid=str(cid), num_providers=1),
                                         timeout=20))
        assert [f.provider.id for f in found] == [provider.peer_id], cid


@pytest.mark.parametrize("dag", [FILES, WEB], ids=["car-directory", "trustless-gateway"])
def test_every_cid_of_the_dag_is_announced_and_findable(
        net: tuple[list[Node], Gateway], dag: Dag) -> None:
    nodes, _ = net
    events, error = provide(nodes[0], str(dag.root), batch=dag is WEB)
    assert error is None, error
    assert provided(events) == {str(c) for c in dag.cids}  # 7 blocks: duplicates once
    assert {cid for cid, _ in events} == {str(c) for c in dag.cids}
    assert_findable(nodes, dag)


def test_a_missing_block_is_named_after_the_rest_was_provided(
        net: tuple[list[Node], Gateway]) -> None:
    nodes, _ = net
    events, error = provide(nodes[0], str(HOLE.root))
    assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    missing = str(HOLE.cids[3])
    assert f"block {missing} (linked from {HOLE.cids[1]}) is missing" in error.details()
    assert events[-1] == (missing, ERROR)
    assert provided(events) == {str(c) for c in HOLE.cids} - {missing}


def test_a_block_that_is_not_what_its_cid_says_is_data_loss(
        net: tuple[list[Node], Gateway]) -> None:
    nodes, _ = net
    events, error = provide(nodes[0], str(BAD.root))
    assert error is not None and error.code() == grpc.StatusCode.DATA_LOSS, error
    assert "do not hash to its CID" in error.details()
    assert events[-1] == (str(BAD.cids[4]), ERROR)
    assert provided(events) == {str(c) for c in BAD.cids} - {str(BAD.cids[4])}


def test_a_root_in_no_source_is_not_found(net: tuple[list[Node], Gateway]) -> None:
    nodes, web = net
    events, error = provide(nodes[0], str(ABSENT.root))
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND, error
    assert f"the root {ABSENT.root} is in none of the block sources" in error.details()
    assert web.url in error.details() and events == []


def test_a_gateway_that_stalls_is_unavailable_after_the_source_timeout(
        net: tuple[list[Node], Gateway]) -> None:
    nodes, web = net
    started = time.monotonic()
    events, error = provide(nodes[0], str(SLOW.root))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert f"{web.url} did not answer within 2 s" in error.details()
    assert SOURCE_TIMEOUT <= time.monotonic() - started < SOURCE_TIMEOUT + 10
    assert events == []


def test_without_a_source_or_with_one_down_the_status_says_why(
        net: tuple[list[Node], Gateway], tmp_path: Path) -> None:
    nodes, _ = net
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}"
    bare = start_node("bare", tmp_path / "bare", ["--bootstrap", nodes[0].p2p_addr])
    cut_off = start_node("cut-off", tmp_path / "cut-off",
                         ["--bootstrap", nodes[0].p2p_addr, "--block-source", down])
    try:
        _, error = provide(bare, str(FILES.root))
        assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--block-source file:///dir" in error.details()
        _, error = provide(cut_off, str(FILES.root))
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert down in error.details()
    finally:
        bare.stop()
        cut_off.stop()
