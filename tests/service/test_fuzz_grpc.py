"""Fuzzing the gRPC edge of a live dhtd with hypothesis.

Every request message of dht.v1 (FindPeer, FindProvs, Get, Provide, ProvideMany,
Put, Query, Info, Connect, ListProvides, StopProviding, ProvideStatus, ListPuts,
StopRepublishing) is sent as raw wire bytes (ProvideMany's twice, as a stream of
two messages), built two ways:

* field by field: odd and huge text, text that is not UTF-8, bytes, varints
  (negative, past 32 bits, past 64), repeated and duplicated fields, wrong wire
  types, unknown fields, and realistic values (this swarm's peer IDs, CIDs,
  /demo/, /pk/ and /ipns/ keys, loopback multiaddrs) cut or spliced;
* as random bytes.

One dev node with two dev peers serves the whole module. Each call has a
CALL_DEADLINE deadline. Promises checked: no call ends with INTERNAL or
UNKNOWN (only the statuses of the README's Errors table), every call ends by
its deadline plus SLACK, no lookup outlives its call, and the node's log holds
no error line and no traceback.

The examples are derandomized (the same on every run) and bounded so that this
file stays well under a minute. A longer run reads ``FUZZ_EXAMPLES``, the
number of examples per test (default 30), for example::

    scripts/fuzz 2000     (both fuzzers; FUZZ_EXAMPLES=2000 for this file alone)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dht.v1 import dht_pb2 as pb
from dhtd.addrs import MAX_ADDR_CHARS
from dhtd.api.servicer import MAX_CIDS_PER_PROVIDE
from dhtd.ids import MAX_ID_TEXT_CHARS, MAX_KEY_BYTES
from tests.integration.test_swarm import cid_for
from tests.service.test_grpc_edge import bad_lines
from tests.swarm import Node, start_node, wait_until

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
CALL_DEADLINE = 2.0  # seconds; every walk in a three-node swarm ends far sooner
SLACK = 5.0  # what a call may take past its deadline on a loaded 2-core machine
HUGE = 200_000  # the longest field sent; the server takes requests up to 2 MiB
# Statuses the README's Errors table allows; INTERNAL and UNKNOWN mean a bug.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
}
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])

SERVICES = [pb.DESCRIPTOR.services_by_name[n] for n in ("DhtService", "NodeService")]
METHODS: list[MethodDescriptor] = [m for s in SERVICES for m in s.methods]
assert {m.name for m in METHODS} == {
    "FindPeer", "FindProvs", "Get", "Provide", "ProvideMany", "Put", "Query", "Info",
    "Connect", "ListProvides", "StopProviding", "ProvideStatus", "ListPuts",
    "StopRepublishing"}

# A peer ID no node of the swarm has, and CIDs and keys in every shape dhtd reads.
STRANGER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
CIDS = [
    cid_for("fuzz-a"),
    "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
    "zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA",
    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    "k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8",
]
KEYS = [b"/demo/fuzz", b"/demo/", b"/pk/", b"/pk/\x12\x20" + bytes(32), b"/ipns/", b"/nope/x",
        b"/" + b"d" * (MAX_KEY_BYTES - 3) + b"/x"]
LENGTHS = [MAX_ID_TEXT_CHARS, MAX_ID_TEXT_CHARS + 1, MAX_ADDR_CHARS + 1, 65_537, HUGE]


# -- protobuf wire format, by hand, so that anything can be sent --------------------------


def varint(n: int) -> bytes:
    """n as a protobuf varint; negatives as 64-bit two's complement; past 64 bits as is
    (an over-long varint no decoder takes)."""
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def realistic_texts(field: str, live: Node) -> list[str]:
    """Values dhtd takes for the string field ``field`` (and a few it refuses)."""
    peers = [live.peer_id, *live.dev_peer_ids(), STRANGER]
    if field in ("cid", "cids"):
        return [*CIDS, f"  {CIDS[0]} ", peers[0]]
    if field == "page_token":  # the hex of a key
        return ["", "00", "12" * 34, (b"/demo/fuzz").hex(), "0", "zz"]
    if field == "addr":
        return [live.p2p_addr, f"/ip4/127.0.0.1/tcp/1/p2p/{STRANGER}",
                f"/ip4/127.0.0.1/tcp/0/p2p/{live.peer_id}", "/ip4/127.0.0.1/tcp/4001",
                "/p2p/" + STRANGER]
    return [*peers, f"k51qzi5uqu5d{STRANGER}", CIDS[0], ""]


def texts(field: str, live: Node) -> st.SearchStrategy[bytes]:
    """The bytes of a string field: mostly realistic, else mangled, odd, huge, or not UTF-8."""
    real = st.sampled_from(realistic_texts(field, live))
    mangled = st.tuples(real, st.integers(0, 80), st.text(max_size=8)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:])
    huge = st.tuples(st.sampled_from(LENGTHS), st.sampled_from("aQ1bz/é\x00\U0001f600")).map(
        lambda t: t[1] * t[0])
    return st.one_of(
        real.map(str.encode), real.map(str.encode), real.map(str.encode),
        mangled.map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.text(max_size=64).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.binary(max_size=64),  # mostly not UTF-8
        huge.map(str.encode),
    )


def bytes_values() -> st.SearchStrategy[bytes]:
    key = st.tuples(st.sampled_from(KEYS), st.binary(max_size=40)).map(lambda t: t[0] + t[1])
    return st.one_of(
        key, key, st.binary(max_size=128),
        st.sampled_from(LENGTHS).map(lambda n: b"/demo/" + b"v" * n),
    )


def numbers() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 30), st.integers(0, 30), st.integers(-(2**63), 2**64 - 1),
        st.integers(2**64, 2**80), st.sampled_from([2**32 - 1, 2**32, 2**31, -1]),
    )


def field_chunks(field: FieldDescriptor, live: Node) -> st.SearchStrategy[list[bytes]]:
    """Every occurrence of one field on the wire: none, one, or several; mostly well typed."""
    n = field.number
    value: st.SearchStrategy[bytes]
    if field.type == FieldDescriptor.TYPE_STRING:
        value = texts(field.name, live).map(lambda b: length_delimited(n, b))
    elif field.type == FieldDescriptor.TYPE_BYTES:
        value = bytes_values().map(lambda b: length_delimited(n, b))
    else:  # uint32, bool, enum
        value = numbers().map(lambda v: tag(n, 0) + varint(v))
    wrong_type = st.one_of(
        numbers().map(lambda v: tag(n, 0) + varint(v)),
        st.binary(max_size=16).map(lambda b: length_delimited(n, b)),
        st.binary(min_size=4, max_size=4).map(lambda b: tag(n, 5) + b),
    )
    repeated = field.label == FieldDescriptor.LABEL_REPEATED
    few = st.lists(value, min_size=1, max_size=3 if repeated else 1)
    chunks = st.one_of(few, few, few, st.lists(st.one_of(value, wrong_type),
                                               max_size=40 if repeated else 3))
    if repeated and field.type == FieldDescriptor.TYPE_STRING:
        # Past MAX_CIDS_PER_PROVIDE: realistic CIDs, one more than the cap.
        cap = st.sampled_from(CIDS).map(
            lambda c: [length_delimited(n, c.encode())] * (MAX_CIDS_PER_PROVIDE + 1))
        return st.one_of(chunks, cap)
    return chunks


def requests(method: MethodDescriptor, live: Node) -> st.SearchStrategy[bytes]:
    fields = [field_chunks(f, live) for f in method.input_type.fields]
    unknown = st.lists(
        st.tuples(st.integers(3, 2**29 - 1), st.binary(max_size=16)).map(
            lambda t: length_delimited(t[0], t[1])),
        max_size=2)
    return st.tuples(*fields, unknown).flatmap(
        lambda parts: st.permutations([c for part in parts for c in part])).map(b"".join)


# -- the node and the calls ----------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = start_node("fuzz", Path(tmp_path_factory.mktemp("fuzz")),
                      ["--dev-peers", "2", "--namespace", "demo"])
    try:
        wait_until(lambda: node.node_info().routing_table_size >= 2, 20, "the 2 dev peers")
        yield node
    finally:
        node.stop()
    # Stopped: every line it wrote has been read.
    assert not bad_lines(node), bad_lines(node)


def call(node: Node, method: MethodDescriptor, body: bytes) -> None:
    """Sends ``body`` as a request of ``method``; checks the status and the time it took."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    started = time.monotonic()
    code = grpc.StatusCode.OK
    try:
        if method.client_streaming:
            for _ in node.channel.stream_stream(path)(iter([body, body]),
                                                      timeout=CALL_DEADLINE):
                pass
        elif method.server_streaming:
            for _ in node.channel.unary_stream(path)(body, timeout=CALL_DEADLINE):
                pass
        else:
            node.channel.unary_unary(path)(body, timeout=CALL_DEADLINE)
    except grpc.RpcError as exc:
        code = exc.code()
        assert code in ALLOWED, (path, body[:200], code, exc.details())
    took = time.monotonic() - started
    assert took <= CALL_DEADLINE + SLACK, (path, body[:200], code, took)


def no_lookup_left(node: Node) -> None:
    wait_until(lambda: node.node_info().queries_in_flight == 0, CALL_DEADLINE + SLACK,
               "every lookup to end with its call")


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_random_field_values(live: Node, method: MethodDescriptor) -> None:
    @FUZZ
    @given(body=requests(method, live))
    def run(body: bytes) -> None:
        call(live, method, body)

    run()
    no_lookup_left(live)


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_random_bytes(live: Node, method: MethodDescriptor) -> None:
    @FUZZ
    @given(body=st.binary(max_size=512))
    def run(body: bytes) -> None:
        call(live, method, body)

    run()
    no_lookup_left(live)


def test_the_node_still_answers(live: Node) -> None:
    assert live.node_info().peer_id == live.peer_id
