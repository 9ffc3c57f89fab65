"""Unit tests of the gRPC edge: bounded echoes, the tolerant deserializer, and the
in-flight cap, against an in-process grpc.aio server with a fake servicer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from dht.v1 import dht_pb2 as pb
from dht.v1 import dht_pb2_grpc as pb_grpc
from dhtd.addrs import MAX_ADDR_CHARS, parse_dial_addr, parse_listen_addr
from dhtd.api.interceptor import MAX_IN_FLIGHT_FLAG, EdgeInterceptor, Undecodable, tolerant
from dhtd.api.status import MAX_STATUS_MESSAGE_CHARS, status_of
from dhtd.errors import ECHO_CHARS, ELLIPSIS, InvalidArgument, excerpt
from dhtd.ids import MAX_ID_TEXT_CHARS, MAX_KEY_BYTES, parse_cid, parse_peer_id, parse_record_key
from dhtd.metrics import Metrics

WAIT = 10.0  # upper bound of every wait in a test, in seconds
HUGE = 1_000_000  # characters of a huge client field
# Longest message a bounded parse error may have: field, reason, and one excerpt.
MAX_PARSE_MESSAGE = 2 * ECHO_CHARS + 60
DHT = "dht.v1.DhtService"

# -- excerpt and the status message cap ------------------------------------------------


def test_excerpt_keeps_short_ascii_as_it_is() -> None:
    assert excerpt("/ip4/1.2.3.4") == "/ip4/1.2.3.4"
    assert excerpt("x" * ECHO_CHARS) == "x" * ECHO_CHARS


def test_excerpt_cuts_long_input_and_marks_the_cut() -> None:
    assert excerpt("x" * HUGE) == "x" * ECHO_CHARS + ELLIPSIS
    assert excerpt(b"y" * HUGE) == "y" * ECHO_CHARS + ELLIPSIS
    assert excerpt("abcdef", 3) == "abc" + ELLIPSIS


@pytest.mark.parametrize(
    "value",
    ["é" * HUGE, "\U0001f600" * HUGE, "\n\r\t\x00" * HUGE, b"\xff\x00" * HUGE, "\udcff" * 300],
)
def test_excerpt_is_one_short_ascii_line_whatever_the_input(value: str | bytes) -> None:
    shown = excerpt(value)
    assert len(shown) <= ECHO_CHARS + len(ELLIPSIS)
    assert shown.endswith(ELLIPSIS)
    assert shown.removesuffix(ELLIPSIS).isascii()
    assert "\n" not in shown and "\r" not in shown


def test_excerpt_escapes_like_repr() -> None:
    assert excerpt(b"p\xffk") == r"p\xffk"
    assert excerpt("é\n") == r"\xe9\n"


def test_status_messages_are_capped_whatever_raised_them() -> None:
    code, message = status_of(InvalidArgument("value", "x" * HUGE))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(message) == MAX_STATUS_MESSAGE_CHARS
    assert message.startswith("value: xxx") and message.endswith(ELLIPSIS)


# -- every parser quotes a bounded prefix of its input -----------------------------------


def parse_error(parse: Callable[[], object]) -> str:
    with pytest.raises(InvalidArgument) as info:
        parse()
    return str(info.value)


HUGE_INPUTS: list[tuple[str, Callable[[], object]]] = [
    ("addr huge", lambda: parse_dial_addr("a" * HUGE)),
    ("addr max", lambda: parse_dial_addr("/" + "a" * (MAX_ADDR_CHARS - 1))),
    ("addr bad ip", lambda: parse_dial_addr("/ip4/" + "9" * (MAX_ADDR_CHARS - 5))),
    ("addr bad peer", lambda: parse_dial_addr("/ip4/1.2.3.4/tcp/1/p2p/" + "Q" * 1000)),
    ("addr bad port", lambda: parse_dial_addr("/ip4/1.2.3.4/tcp/" + "9" * 1000)),
    ("addr non-ascii", lambda: parse_dial_addr("/" + "é" * (MAX_ADDR_CHARS - 1))),
    ("listen", lambda: parse_listen_addr("/ip6/" + "f" * 1000)),
    ("peer huge", lambda: parse_peer_id("Q" * HUGE)),
    ("peer max", lambda: parse_peer_id("z" + "0" * (MAX_ID_TEXT_CHARS - 1))),
    ("cid huge", lambda: parse_cid("b" * HUGE)),
    ("cid max", lambda: parse_cid("f" + "g" * (MAX_ID_TEXT_CHARS - 1))),
    ("key huge", lambda: parse_record_key(b"/" + b"n" * HUGE + b"/x")),
    ("key namespace", lambda: parse_record_key(b"/" + b"\xff" * (MAX_KEY_BYTES - 3) + b"/x")),
    ("key rest", lambda: parse_record_key(b"/" + b"n" * (MAX_KEY_BYTES - 2) + b"/")),
]


@pytest.mark.parametrize(("name", "parse"), HUGE_INPUTS, ids=[n for n, _ in HUGE_INPUTS])
def test_parse_errors_quote_a_bounded_prefix(name: str, parse: Callable[[], object]) -> None:
    message = parse_error(parse)
    assert len(message) <= MAX_PARSE_MESSAGE, (name, len(message), message)
    assert "\n" not in message


def test_a_huge_addr_is_refused_before_parsing_with_its_length() -> None:
    assert parse_error(lambda: parse_dial_addr("a" * HUGE, "addr")) == (
        f"addr: is {HUGE} characters long; at most {MAX_ADDR_CHARS} allowed")


def test_multiaddr_reasons_lose_the_copies_of_the_input() -> None:
    text = "/foo/" + "x" * 50
    message = parse_error(lambda: parse_dial_addr(text, "addr"))
    assert message == "addr: not a multiaddr: unknown protocol: foo"


# -- the tolerant deserializer ---------------------------------------------------------


def test_tolerant_decodes_what_decodes() -> None:
    decode = tolerant(pb.FindPeerRequest.FromString, "/dht.v1.DhtService/FindPeer")
    assert decode is not None
    raw = pb.FindPeerRequest(peer_id="12D3KooW").SerializeToString()
    assert decode(raw) == pb.FindPeerRequest(peer_id="12D3KooW")


@pytest.mark.parametrize("raw", [b"\xff", b"\x0a\x02\xff\xfe", b"\x0a\x05ab", b"\x0b" * 1000])
def test_tolerant_turns_what_does_not_decode_into_a_marker(raw: bytes) -> None:
    decode = tolerant(pb.FindPeerRequest.FromString, "/dht.v1.DhtService/FindPeer")
    assert decode is not None
    marker = decode(raw)
    assert isinstance(marker, Undecodable)
    assert marker.error.field == "request"
    assert str(marker.error).startswith("request: does not decode as dht.v1.FindPeerRequest")


def test_tolerant_bounds_a_foreign_deserializer_reason() -> None:
    def noisy(raw: bytes) -> Any:
        raise ValueError("bad: " + raw.decode())

    decode = tolerant(noisy, "/x.Y/Z")
    assert decode is not None
    marker = decode(b"q" * HUGE)
    assert isinstance(marker, Undecodable)
    assert str(marker.error).startswith("request: does not decode as the request of /x.Y/Z: ")
    assert len(str(marker.error)) < MAX_PARSE_MESSAGE


def test_tolerant_leaves_raw_bytes_methods_alone() -> None:
    assert tolerant(None, "/x.Y/Z") is None


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EdgeInterceptor(Metrics(), max_in_flight=0, limited=())


# -- the interceptor on a live in-process server ------------------------------------------


class FakeDht(pb_grpc.DhtServiceServicer):
    """Query blocks until released; FindPeer answers at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.left = 0
        self.changed = asyncio.Event()

    def _enter(self) -> None:
        self.entered += 1
        self.changed.set()

    async def FindPeer(self, request: pb.FindPeerRequest, context: Any) -> pb.FindPeerResponse:
        return pb.FindPeerResponse(peer=pb.PeerInfo(id=request.peer_id))

    async def Query(self, request: pb.QueryRequest, context: Any
                    ) -> AsyncIterator[pb.QueryResponse]:
        self._enter()
        try:
            yield pb.QueryResponse(event=pb.QueryEvent(id=request.peer_id))
            await self.release.wait()
            yield pb.QueryResponse(event=pb.QueryEvent(id="done"))
        finally:
            # The interceptor gives the slot back as this unwinds, before this
            # test's task runs again.
            self.left += 1
            self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not done():
                self.changed.clear()
                await self.changed.wait()


Body = Callable[[grpc.aio.Channel, FakeDht, EdgeInterceptor, Metrics], Awaitable[None]]


def serve(body: Body, cap: int = 2) -> None:
    async def main() -> None:
        metrics = Metrics()
        edge = EdgeInterceptor(metrics, max_in_flight=cap, limited=(DHT,))
        server = grpc.aio.server(interceptors=[edge])
        fake = FakeDht()
        pb_grpc.add_DhtServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        reflection.enable_server_reflection((DHT, reflection.SERVICE_NAME), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await body(channel, fake, edge, metrics)
        finally:
            fake.release.set()
            await server.stop(None)

    asyncio.run(main())


def handled(metrics: Metrics, method: str, code: str) -> float:
    value = metrics.registry.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "server_stream" if method == "Query" else "unary",
        "grpc_service": DHT, "grpc_method": method, "grpc_code": code})
    return value or 0.0


def test_past_the_cap_a_call_is_refused_at_once_and_probes_still_answer() -> None:
    async def body(channel: grpc.aio.Channel, fake: FakeDht, edge: EdgeInterceptor,
                   metrics: Metrics) -> None:
        dht = pb_grpc.DhtServiceStub(channel)
        held = [dht.Query(pb.QueryRequest(peer_id=f"p{i}"), timeout=WAIT) for i in range(2)]
        for call in held:
            assert (await call.read()).event.id.startswith("p")
        await fake.until(lambda: fake.entered == 2)
        assert edge.in_flight == 2

        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await dht.FindPeer(pb.FindPeerRequest(peer_id="x"), timeout=WAIT)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert MAX_IN_FLIGHT_FLAG in (refused.value.details() or "")
        stream = dht.Query(pb.QueryRequest(peer_id="q"), timeout=WAIT)
        with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
            await stream.read()
        assert refused_stream.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert fake.entered == 2  # the refused stream never reached the servicer
        assert edge.in_flight == 2

        probe = health_pb2_grpc.HealthStub(channel)
        answer = await probe.Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        listing = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT)
        async for reply in listing:
            assert DHT in {s.name for s in reply.list_services_response.service}

        fake.release.set()
        for call in held:
            assert (await call.read()).event.id == "done"
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
        assert edge.in_flight == 0
        assert (await dht.FindPeer(pb.FindPeerRequest(peer_id="x"), timeout=WAIT)).peer.id == "x"
        assert handled(metrics, "FindPeer", "RESOURCE_EXHAUSTED") == 3
        assert handled(metrics, "Query", "RESOURCE_EXHAUSTED") == 1
        assert handled(metrics, "Query", "OK") == 2
        assert handled(metrics, "FindPeer", "OK") == 1

    serve(body)


def test_a_cancelled_or_failed_call_gives_its_slot_back() -> None:
    async def body(channel: grpc.aio.Channel, fake: FakeDht, edge: EdgeInterceptor,
                   metrics: Metrics) -> None:
        dht = pb_grpc.DhtServiceStub(channel)
        call = dht.Query(pb.QueryRequest(peer_id="p"), timeout=WAIT)
        await call.read()
        assert edge.in_flight == 1
        call.cancel()
        await fake.until(lambda: fake.left == 1)
        # The edge hears of the cancellation on its own task: wait for it, bounded.
        await eventually(lambda: edge.in_flight == 0)
        # A refused call gives back nothing it did not take.
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await channel.unary_unary(f"/{DHT}/FindPeer")(b"\xff", timeout=WAIT)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert edge.in_flight == 0
        assert (await dht.FindPeer(pb.FindPeerRequest(peer_id="x"), timeout=WAIT)).peer.id == "x"
        assert edge.in_flight == 0
        await eventually(lambda: handled(metrics, "Query", "CANCELLED") == 1)

    serve(body, cap=1)


async def eventually(done: Callable[[], bool], every: float = 0.01) -> None:
    """Re-checks ``done`` until it holds; fails after WAIT seconds. (The edge has no
    event to wait on for its metrics and counters, which it updates on its own task.)"""
    for _ in range(int(WAIT / every)):
        if done():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"not within {WAIT}s")


def test_undecodable_requests_are_invalid_argument_without_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(channel: grpc.aio.Channel, fake: FakeDht, edge: EdgeInterceptor,
                   metrics: Metrics) -> None:
        cases = [
            (channel.unary_unary(f"/{DHT}/FindPeer"), "dht.v1.FindPeerRequest"),
            (channel.unary_unary("/grpc.health.v1.Health/Check"),
             "grpc.health.v1.HealthCheckRequest"),
        ]
        for call, name in cases:
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await call(b"\x0a\x02\xff\xfe", timeout=WAIT)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (bad.value.details() or "").startswith(f"request: does not decode as {name}")
        stream = channel.unary_stream(f"/{DHT}/Query")(b"\xff", timeout=WAIT)
        with pytest.raises(grpc.aio.AioRpcError) as bad_stream:
            await stream.read()
        assert bad_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A request stream: the first message decodes and is answered, the second does not.
        good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
        bidi = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/"
                                     "ServerReflectionInfo")(timeout=WAIT)
        await bidi.write(good)
        assert await bidi.read()
        await bidi.write(b"\xff\xff")
        assert await bidi.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fake.entered == 0 and edge.in_flight == 0
        assert handled(metrics, "FindPeer", "INVALID_ARGUMENT") == 1
        assert handled(metrics, "Query", "INVALID_ARGUMENT") == 1

    with caplog.at_level(logging.DEBUG):
        serve(body)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]
    assert any(r.getMessage() == "request does not decode" for r in caplog.records)
