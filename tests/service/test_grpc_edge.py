"""The gRPC edge of a live dhtd: undecodable requests, huge fields, too many CIDs,
and the cap on calls in flight. No request may get UNKNOWN or INTERNAL, and no
request may put an error or a traceback in the node's log."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dht.v1 import dht_pb2 as pb
from dhtd.api.servicer import MAX_CIDS_PER_PROVIDE, MAX_REQUEST_BYTES
from tests.integration.test_swarm import Frozen, cid_for
from tests.swarm import Node, dev_node, start_node, wait_until

WAIT = 20.0  # deadline of every call that is not meant to be refused
HUGE = 1_000_000  # characters of a huge field: 1 MB
# A status message for a huge field must stay far below this (the bound).
MAX_MESSAGE_BYTES = 512
# Refused "at once": a refused call never waits for its deadline (WAIT). Its
# RESOURCE_EXHAUSTED code is the real check; this bound only has to hold on a
# loaded 2-core machine.
AT_ONCE = WAIT / 4

DHT = pb.DESCRIPTOR.services_by_name["DhtService"]
NODE = pb.DESCRIPTOR.services_by_name["NodeService"]
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

# (method path, server streaming, has a string field 1)
DHT_METHODS = [
    (f"/{service.full_name}/{m.name}", m.server_streaming,
     m.input_type.fields_by_number.get(1) is not None
     and m.input_type.fields_by_number[1].type == m.input_type.fields_by_number[1].TYPE_STRING)
    for service in (DHT, NODE) for m in service.methods
]
BIDI = {f"/{service.full_name}/{m.name}" for service in (DHT, NODE) for m in service.methods
        if m.client_streaming}
ALL_METHODS = [*DHT_METHODS, (HEALTH + "Check", False, True), (HEALTH + "Watch", True, True)]
GARBAGE = b"\xff\xff\xff\xff"  # tag 0x1fffffff..., a truncated varint: no message decodes it
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1, length 2, not UTF-8: no string field decodes it


def bad_lines(node: Node) -> list[dict[str, object]]:
    """Log lines carrying a traceback, or at level error or worse. (py-libp2p logs a
    failed dial at error, e.g. a Connect to a closed port; dhtd writes such reports
    of what a peer did at warning: dhtd.logs.PEER_KINDS.)"""
    return [line for line in node.lines
            if "Traceback" in json.dumps(line) or line.get("level") in ("error", "critical")]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with dev_node("edge", tmp_path_factory.mktemp("edge")) as node:
        yield node
    # Stopped: every line it wrote has been read.
    assert not bad_lines(node), bad_lines(node)


def raw_call(node: Node, method: str, streaming: bool, body: bytes) -> grpc.RpcError:
    """Sends ``body`` as the request of ``method``, unchanged; returns the error."""
    try:
        if streaming:
            list(node.channel.unary_stream(method)(body, timeout=WAIT))
        else:
            node.channel.unary_unary(method)(body, timeout=WAIT)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{method} took {body!r}")


def metric(node: Node, name: str, labels: dict[str, str]) -> float:
    with urllib.request.urlopen(f"http://{node.info['metrics_addr']}/metrics",
                                timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(("method", "streaming", "stringy"), ALL_METHODS,
                         ids=[m for m, _, _ in ALL_METHODS])
def test_undecodable_requests_are_invalid_argument(
    live: Node, method: str, streaming: bool, stringy: bool
) -> None:
    bodies = [GARBAGE, BAD_UTF8] if stringy else [GARBAGE]
    for body in bodies:
        err = raw_call(live, method, streaming, body)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, body, err)
        assert err.details().startswith("request: does not decode as "), err.details()
        assert len(err.details()) < MAX_MESSAGE_BYTES
    service, name = method.strip("/").split("/")
    bidi = method in BIDI  # (a stream of requests; one undecodable message was sent)
    kind = "bidi_stream" if bidi else "server_stream" if streaming else "unary"
    labels = {"grpc_type": kind, "grpc_service": service, "grpc_method": name,
              "grpc_code": "INVALID_ARGUMENT"}
    # The server may count a call a moment after its status reached the client.
    wait_until(lambda: metric(live, "grpc_server_handled_total", labels) >= len(bodies),
               WAIT, f"{method}: {len(bodies)} INVALID_ARGUMENT counted")


def test_an_undecodable_reflection_request_is_invalid_argument(live: Node) -> None:
    call = live.channel.stream_stream(REFLECTION)(iter([GARBAGE]), timeout=WAIT)
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


HUGE_FIELDS = [
    ("FindPeer", lambda: pb.FindPeerRequest(peer_id="1" * HUGE), "peer_id: "),
    ("Query", lambda: pb.QueryRequest(peer_id="Q" * HUGE), "peer_id: "),
    ("FindProvs", lambda: pb.FindProvsRequest(cid="b" * HUGE), "cid: "),
    ("Provide", lambda: pb.ProvideRequest(cids=["z" * HUGE]), "cids[0]: "),
    ("Get", lambda: pb.GetRequest(key=b"/demo/" + b"k" * HUGE), "key: "),
    ("Get", lambda: pb.GetRequest(key=b"/" + b"\xff" * 500 + b"/x"), "key: "),
    ("Get", lambda: pb.GetRequest(key=b"/" + b"n" * 500 + b"/x"), "key: "),
    ("Put", lambda: pb.PutRequest(key=b"/" + b"\xfe" * HUGE, value=b"v"), "key: "),
    ("Put", lambda: pb.PutRequest(key=b"/demo/k", value=b"v" * HUGE), "value: "),
    ("Connect", lambda: pb.ConnectRequest(addr="a" * HUGE), "addr: "),
    ("Connect", lambda: pb.ConnectRequest(addr="/" + "é" * 1000), "addr: "),
    ("Connect", lambda: pb.ConnectRequest(addr="/ip4/1.2.3.4/tcp/1/p2p/" + "Q" * 990), "addr: "),
]


@pytest.mark.parametrize(("rpc", "request_of", "start"), HUGE_FIELDS,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(HUGE_FIELDS)])
def test_a_huge_field_gets_a_short_invalid_argument(
    live: Node, rpc: str, request_of: object, start: str
) -> None:
    request = request_of()  # type: ignore[operator]
    service = NODE if rpc == "Connect" else DHT
    method = service.methods_by_name[rpc]
    path = f"/{service.full_name}/{rpc}"
    err = raw_call(live, path, method.server_streaming, request.SerializeToString())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details().startswith(start), err.details()
    # The grpc-message on the wire is the details, percent-encoded where not ASCII.
    wire = [v for k, v in (err.trailing_metadata() or ()) if k == "grpc-message"]
    assert len(err.details().encode()) < MAX_MESSAGE_BYTES, len(err.details())
    assert all(len(v) < MAX_MESSAGE_BYTES for v in wire)


def test_a_request_over_the_size_limit_is_resource_exhausted(live: Node) -> None:
    body = pb.ConnectRequest(addr="a" * MAX_REQUEST_BYTES).SerializeToString()
    err = raw_call(live, f"/{NODE.full_name}/Connect", False, body)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert len(err.details()) < MAX_MESSAGE_BYTES


def test_more_cids_than_the_cap_are_refused_before_any_is_parsed(live: Node) -> None:
    assert MAX_CIDS_PER_PROVIDE == 10_000  # as README and docs/limits.md state it
    too_many = [f"not-a-cid-{i}" for i in range(MAX_CIDS_PER_PROVIDE + 1)]
    with pytest.raises(grpc.RpcError) as err:
        list(live.dht.Provide(pb.ProvideRequest(cids=too_many), timeout=WAIT))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        f"cids: has {MAX_CIDS_PER_PROVIDE + 1} CIDs; at most {MAX_CIDS_PER_PROVIDE} per call "
        "(provide the rest in further calls, or stream them with ProvideMany)")


def test_the_cap_itself_is_allowed(live: Node) -> None:
    # At the cap the count passes; here the first bad CID is what is refused.
    cids = [cid_for(f"edge-{i}") for i in range(MAX_CIDS_PER_PROVIDE - 1)] + ["nope"]
    with pytest.raises(grpc.RpcError) as err:
        list(live.dht.Provide(pb.ProvideRequest(cids=cids), timeout=WAIT))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"cids[{MAX_CIDS_PER_PROVIDE - 1}]: ")


def test_the_node_still_serves_after_all_that(live: Node) -> None:
    peer = live.dev_peer_ids()[0]
    assert live.dht.FindPeer(pb.FindPeerRequest(peer_id=peer), timeout=WAIT).peer.id == peer


# -- the cap on calls in flight ---------------------------------------------------------

CAP = 4
PRIVATE = ["--protocol-prefix", "/edge-cap-test"]  # no stray peer from other tests joins


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """A node with --max-concurrent-rpcs CAP whose only DHT peer is ``other``."""
    other = start_node("other", tmp_path / "other", PRIVATE)
    node: Node | None = None
    try:
        node = start_node("capped", tmp_path / "capped", [
            *PRIVATE, "--max-concurrent-rpcs", str(CAP), "--bootstrap", other.p2p_addr])
        wait_until(lambda: node is not None and node.node_info().routing_table_size >= 1, 20,
                   "the capped node to have its peer")
        yield node, other
    finally:
        if node is not None:
            node.stop()
        other.stop()
    for stopped in (node, other):
        assert stopped is not None and not bad_lines(stopped), bad_lines(stopped)


def test_past_the_cap_calls_are_refused_at_once_and_probes_answer(
    capped: tuple[Node, Node],
) -> None:
    node, other = capped
    dht, info = node.dht, node.node
    with Frozen(other):
        # Each walk asks the frozen peer and waits for it: CAP calls stay in flight.
        held = [dht.Query(pb.QueryRequest(peer_id=other.peer_id), timeout=WAIT)
                for _ in range(CAP)]
        for call in held:
            first = next(call)  # the walk has begun: the call holds its slot
            assert first.event.type in (pb.QUERY_EVENT_TYPE_SENDING_QUERY,
                                        pb.QUERY_EVENT_TYPE_DIALING_PEER)

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as stream_refused:
            next(dht.Query(pb.QueryRequest(peer_id=other.peer_id), timeout=WAIT))
        with pytest.raises(grpc.RpcError) as unary_refused:
            info.Info(pb.InfoRequest(), timeout=WAIT)
        assert time.monotonic() - started < AT_ONCE
        for err in (stream_refused.value, unary_refused.value):
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert "--max-concurrent-rpcs 4" in err.details(), err.details()

        probe = health_pb2_grpc.HealthStub(node.channel)
        for service in ("", DHT.full_name):
            answer = probe.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(node.channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT)
        names = {s.name for reply in listing for s in reply.list_services_response.service}
        assert DHT.full_name in names

    # The peer answers again: each held walk ends, and gives its slot back as it does.
    for call in held:
        for _ in call:
            pass
        assert call.code() in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), call.code()
    assert node.node_info().peer_id == node.peer_id
    events = list(dht.Query(pb.QueryRequest(peer_id=other.peer_id), timeout=WAIT))
    assert any(e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER for e in events)
    assert metric(node, "grpc_server_handled_total", {
        "grpc_method": "Query", "grpc_code": "RESOURCE_EXHAUSTED"}) == 1
    assert metric(node, "grpc_server_handled_total", {
        "grpc_method": "Info", "grpc_code": "RESOURCE_EXHAUSTED"}) == 1
