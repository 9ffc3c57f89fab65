"""Unit tests of the dhtd_client library against a fake in-process gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from dht.v1 import dht_pb2, dht_pb2_grpc
from dhtd_client import (
    AsyncClient,
    CallCancelledError,
    Client,
    ConnectResult,
    DataLossError,
    DeadlineExceededError,
    DhtdError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NodeInfo,
    NotFoundError,
    PeerInfo,
    ProvideEvent,
    QueryEvent,
    QueryEventType,
    UnavailableError,
)

WAIT = 10.0  # upper bound of every wait in a test, in seconds
SERVER_WAIT = 3 * WAIT  # upper bound of a fake handler's wait: outlasts the test's own
SHORT = 0.3  # a deadline that the blocked fake always misses

PEER_ID = "12D3KooWQueriedPeer"
CID = "bafyfirstcid"
CID2 = "QmSecondCid"
KEY = b"/v/\xff\x00key"
VALUE = b"\x00value\xfe"
ADDR = "/ip4/10.0.0.9/tcp/4001/p2p/12D3KooWDialled"

PEER_A = PeerInfo("12D3KooWA", ("/ip4/1.2.3.4/tcp/4001", "/ip6/::1/udp/4001/quic-v1"))
PEER_B = PeerInfo("QmB", ())
PROVIDERS = [PEER_A, PEER_B, PeerInfo("QmC", ("/dns4/c.example/tcp/1",))]
EVENTS = [
    QueryEvent(QueryEventType.SENDING_QUERY, PEER_A.id),
    QueryEvent(QueryEventType.PEER_RESPONSE, PEER_A.id, (PEER_B,)),
    QueryEvent(QueryEventType.QUERY_ERROR, PEER_B.id, (), "dial backoff"),
    QueryEvent(QueryEventType.FINAL_PEER, PEER_A.id, (PEER_A,)),
]
NODE_INFO = NodeInfo(
    peer_id="12D3KooWSelf",
    addrs=("/ip4/127.0.0.1/tcp/4001",),
    mode="server",
    protocol="/ipfs/kad/1.0.0",
    routing_table_size=42,
    connected_peers=7,
    version="dhtd/0.1.0",
    queries_in_flight=3,
)

STREAM_METHODS = ["FindProvs", "Provide", "Put", "Query"]


# -- the fake server ----------------------------------------------------------------


def peer_pb(peer: PeerInfo) -> dht_pb2.PeerInfo:
    return dht_pb2.PeerInfo(id=peer.id, addrs=list(peer.addrs))


def event_pb(event: QueryEvent) -> dht_pb2.QueryEvent:
    return dht_pb2.QueryEvent(
        type=int(event.type),  # type: ignore[arg-type]
        id=event.id,
        responses=[peer_pb(p) for p in event.responses],
        extra=event.extra,
    )


@dataclass
class Fake:
    """Shared state of the fake services; tests configure it and read what it saw."""

    target: str = ""
    # Method name -> status the method ends with (streams: after their items).
    aborts: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)
    # Streams that end with the status without sending any item.
    empty: set[str] = field(default_factory=set)
    gate: bool = False  # streams block after their first item until `release`
    slow: bool = False  # unary methods block until `release`
    mode: int = dht_pb2.MODE_SERVER
    release: threading.Event = field(default_factory=threading.Event)
    terminated: threading.Event = field(default_factory=threading.Event)  # the RPC ended
    finished: bool = False  # a stream handler sent all its items
    context: grpc.ServicerContext | None = None  # of the last stream
    requests: dict[str, Any] = field(default_factory=dict)
    # Answer as a dhtd that predates batch_events: one event per message, always.
    legacy: bool = False

    def unary(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        self.requests[name] = request
        if self.slow:
            self.release.wait(SERVER_WAIT)
        if name in self.aborts:
            context.abort(*self.aborts[name])

    def stream(
        self, name: str, request: Any, context: grpc.ServicerContext, items: list[Any]
    ) -> Iterator[Any]:
        self.requests[name] = request
        self.context = context
        context.add_callback(self.terminated.set)
        if name not in self.empty:
            for i, item in enumerate(items):
                yield item
                if i == 0 and self.gate:
                    self.release.wait(SERVER_WAIT)
        self.finished = True
        if name in self.aborts:
            context.abort(*self.aborts[name])


class FakeDht(dht_pb2_grpc.DhtServiceServicer):
    def __init__(self, fake: Fake) -> None:
        self.fake = fake

    def FindPeer(self, request: Any, context: Any) -> dht_pb2.FindPeerResponse:
        self.fake.unary("FindPeer", request, context)
        return dht_pb2.FindPeerResponse(peer=peer_pb(PeerInfo(request.peer_id, PEER_A.addrs)))

    def FindProvs(self, request: Any, context: Any) -> Iterator[dht_pb2.FindProvsResponse]:
        items = [dht_pb2.FindProvsResponse(provider=peer_pb(p)) for p in PROVIDERS]
        return self.fake.stream("FindProvs", request, context, items)

    def Get(self, request: Any, context: Any) -> dht_pb2.GetResponse:
        self.fake.unary("Get", request, context)
        return dht_pb2.GetResponse(value=VALUE + request.key)

    # With batch_events, as dhtd does: a burst of events per message. The first
    # message holds one event, so the gated tests see it alone; the rest come
    # several to a message.
    def batched(self, request: Any) -> bool:
        return bool(request.batch_events) and not self.fake.legacy

    def Provide(self, request: Any, context: Any) -> Iterator[dht_pb2.ProvideResponse]:
        pairs = [(cid, e) for cid in request.cids for e in (EVENTS[0], EVENTS[3])]
        if self.batched(request):
            items = [dht_pb2.ProvideResponse(events=[
                dht_pb2.ProvideEvent(cid=cid, event=event_pb(e)) for cid, e in burst])
                for burst in (pairs[:1], pairs[1:])]
        else:
            items = [dht_pb2.ProvideResponse(cid=cid, event=event_pb(e)) for cid, e in pairs]
        return self.fake.stream("Provide", request, context, items)

    def Put(self, request: Any, context: Any) -> Iterator[dht_pb2.PutResponse]:
        if self.batched(request):
            items = [dht_pb2.PutResponse(events=[event_pb(e) for e in burst])
                     for burst in (EVENTS[:1], EVENTS[1:])]
        else:
            items = [dht_pb2.PutResponse(event=event_pb(e)) for e in EVENTS]
        return self.fake.stream("Put", request, context, items)

    def Query(self, request: Any, context: Any) -> Iterator[dht_pb2.QueryResponse]:
        if self.batched(request):
            items = [dht_pb2.QueryResponse(events=[event_pb(e) for e in burst])
                     for burst in (EVENTS[:1], EVENTS[1:])]
        else:
            items = [dht_pb2.QueryResponse(event=event_pb(e)) for e in EVENTS]
        return self.fake.stream("Query", request, context, items)


class FakeNode(dht_pb2_grpc.NodeServiceServicer):
    def __init__(self, fake: Fake) -> None:
        self.fake = fake

    def Info(self, request: Any, context: Any) -> dht_pb2.InfoResponse:
        self.fake.unary("Info", request, context)
        i = NODE_INFO
        return dht_pb2.InfoResponse(
            peer_id=i.peer_id,
            addrs=list(i.addrs),
            mode=self.fake.mode,  # type: ignore[arg-type]
            protocol=i.protocol,
            routing_table_size=i.routing_table_size,
            connected_peers=i.connected_peers,
            version=i.version,
            queries_in_flight=i.queries_in_flight,
        )

    def Connect(self, request: Any, context: Any) -> dht_pb2.ConnectResponse:
        self.fake.unary("Connect", request, context)
        peer = PeerInfo(request.addr.rsplit("/", 1)[-1], ("/ip4/10.0.0.9/tcp/4001",))
        return dht_pb2.ConnectResponse(peer=peer_pb(peer), added_to_routing_table=True)


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    executor = ThreadPoolExecutor(max_workers=8)
    server = grpc.server(executor)
    dht_pb2_grpc.add_DhtServiceServicer_to_server(FakeDht(state), server)  # type: ignore[no-untyped-call]
    dht_pb2_grpc.add_NodeServiceServicer_to_server(FakeNode(state), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    state.target = f"127.0.0.1:{port}"
    try:
        yield state
    finally:
        state.release.set()  # unblock any handler still waiting
        server.stop(None).wait(WAIT)
        executor.shutdown(wait=True)


# -- calling every method -------------------------------------------------------------


def call_all_sync(c: Client) -> dict[str, object]:
    return {
        "find_peer": c.find_peer(PEER_ID),
        "find_provs": list(c.find_provs(CID, 5)),
        "get": c.get(KEY),
        "provide": list(c.provide(CID, CID2, recursive=True)),
        "put": list(c.put(KEY, VALUE)),
        "query": list(c.query(PEER_ID)),
        "info": c.info(),
        "connect": c.connect(ADDR),
    }


async def call_all_async(c: AsyncClient) -> dict[str, object]:
    return {
        "find_peer": await c.find_peer(PEER_ID),
        "find_provs": [p async for p in c.find_provs(CID, 5)],
        "get": await c.get(KEY),
        "provide": [e async for e in c.provide(CID, CID2, recursive=True)],
        "put": [e async for e in c.put(KEY, VALUE)],
        "query": [e async for e in c.query(PEER_ID)],
        "info": await c.info(),
        "connect": await c.connect(ADDR),
    }


EXPECTED: dict[str, object] = {
    "find_peer": PeerInfo(PEER_ID, PEER_A.addrs),
    "find_provs": PROVIDERS,
    "get": VALUE + KEY,
    "provide": [ProvideEvent(cid, e) for cid in (CID, CID2) for e in (EVENTS[0], EVENTS[3])],
    "put": EVENTS,
    "query": EVENTS,
    "info": NODE_INFO,
    "connect": ConnectResult(PeerInfo("12D3KooWDialled", ("/ip4/10.0.0.9/tcp/4001",)), True),
}


def check_requests(fake: Fake) -> None:
    r = fake.requests
    assert r["FindPeer"].peer_id == PEER_ID
    assert (r["FindProvs"].cid, r["FindProvs"].num_providers) == (CID, 5)
    assert r["Get"].key == KEY
    assert (list(r["Provide"].cids), r["Provide"].recursive) == ([CID, CID2], True)
    assert (r["Put"].key, r["Put"].value) == (KEY, VALUE)
    assert r["Query"].peer_id == PEER_ID
    # The walk streams ask for their events batched (the interface is per event).
    assert r["Provide"].batch_events and r["Put"].batch_events and r["Query"].batch_events
    assert r["Connect"].addr == ADDR
    assert "Info" in r


def test_query_event_type_numbers_match_proto() -> None:
    proto = {
        name.removeprefix("QUERY_EVENT_TYPE_"): number
        for name, number in dht_pb2.QueryEventType.items()
    }
    assert proto == {t.name: t.value for t in QueryEventType}


def test_sync_every_method_decodes(fake: Fake) -> None:
    with Client(fake.target, timeout=WAIT) as c:
        assert call_all_sync(c) == EXPECTED
    check_requests(fake)
    assert isinstance(EXPECTED["provide"], list)
    assert all(type(e.event.type) is QueryEventType for e in EXPECTED["provide"])


def test_async_every_method_decodes(fake: Fake) -> None:
    async def main() -> dict[str, object]:
        async with AsyncClient(fake.target, timeout=WAIT) as c:
            return await call_all_async(c)

    assert asyncio.run(main()) == EXPECTED
    check_requests(fake)


def test_events_from_a_dhtd_without_batch_events(fake: Fake) -> None:
    """A dhtd that predates batch_events ignores the flag and sends one event per
    message: both clients yield the same events from it."""
    fake.legacy = True
    with Client(fake.target, timeout=WAIT) as c:
        assert call_all_sync(c) == EXPECTED

    async def main() -> dict[str, object]:
        async with AsyncClient(fake.target, timeout=WAIT) as c:
            return await call_all_async(c)

    assert asyncio.run(main()) == EXPECTED


def test_a_message_with_no_event_yields_nothing() -> None:
    from dhtd_client._models import events_from_pb, provide_events_from_pb

    assert provide_events_from_pb(dht_pb2.ProvideResponse()) == []
    assert events_from_pb(dht_pb2.PutResponse()) == []
    assert events_from_pb(dht_pb2.QueryResponse()) == []


@pytest.mark.parametrize(("mode", "name"), [(dht_pb2.MODE_CLIENT, "client"), (0, "unspecified")])
def test_info_modes(fake: Fake, mode: int, name: str) -> None:
    fake.mode = mode
    with Client(fake.target, timeout=WAIT) as c:
        assert c.info().mode == name


def test_values_are_frozen() -> None:
    with pytest.raises(AttributeError):
        PEER_A.id = "other"  # type: ignore[misc]


def test_external_channel_is_not_closed(fake: Fake) -> None:
    channel = grpc.insecure_channel(fake.target)
    try:
        with Client(channel=channel, timeout=WAIT) as c:
            assert c.info() == NODE_INFO
        with Client(channel=channel, timeout=WAIT) as c:  # still usable
            assert c.get(b"k") == VALUE + b"k"
    finally:
        channel.close()


def test_async_external_channel_is_not_closed(fake: Fake) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(fake.target) as channel:
            async with AsyncClient(channel=channel, timeout=WAIT) as c:
                assert await c.info() == NODE_INFO
            async with AsyncClient(channel=channel, timeout=WAIT) as c:
                assert await c.get(b"k") == VALUE + b"k"

    asyncio.run(main())


# -- streams yield as results arrive ----------------------------------------------------


def open_sync_stream(c: Client, method: str) -> Generator[object, None, None]:
    opens: dict[str, Callable[[], Generator[object, None, None]]] = {
        "FindProvs": lambda: c.find_provs(CID),
        "Provide": lambda: c.provide(CID),
        "Put": lambda: c.put(KEY, VALUE),
        "Query": lambda: c.query(PEER_ID),
    }
    return opens[method]()


def open_async_stream(c: AsyncClient, method: str) -> AsyncGenerator[object, None]:
    opens: dict[str, Callable[[], AsyncGenerator[object, None]]] = {
        "FindProvs": lambda: c.find_provs(CID),
        "Provide": lambda: c.provide(CID),
        "Put": lambda: c.put(KEY, VALUE),
        "Query": lambda: c.query(PEER_ID),
    }
    return opens[method]()


EXPECTED_STREAM: dict[str, list[Any]] = {
    "FindProvs": PROVIDERS,
    "Provide": [ProvideEvent(CID, EVENTS[0]), ProvideEvent(CID, EVENTS[3])],
    "Put": EVENTS,
    "Query": EVENTS,
}


@pytest.mark.parametrize("method", STREAM_METHODS)
def test_sync_stream_yields_before_server_finishes(fake: Fake, method: str) -> None:
    fake.gate = True
    with Client(fake.target, timeout=WAIT) as c:
        stream = open_sync_stream(c, method)
        first = next(stream)
        assert not fake.release.is_set()  # the server is still blocked after item one
        assert not fake.finished
        fake.release.set()
        rest = list(stream)
    assert [first, *rest] == EXPECTED_STREAM[method]


@pytest.mark.parametrize("method", STREAM_METHODS)
def test_async_stream_yields_before_server_finishes(fake: Fake, method: str) -> None:
    fake.gate = True

    async def main() -> list[object]:
        async with AsyncClient(fake.target, timeout=WAIT) as c:
            stream = open_async_stream(c, method)
            first = await anext(stream)
            assert not fake.release.is_set()
            assert not fake.finished
            fake.release.set()
            return [first, *[item async for item in stream]]

    assert asyncio.run(main()) == EXPECTED_STREAM[method]


# -- errors -------------------------------------------------------------------------------

CODES: list[tuple[grpc.StatusCode, type[DhtdError]]] = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.NOT_FOUND, NotFoundError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
    (grpc.StatusCode.UNAVAILABLE, UnavailableError),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
    (grpc.StatusCode.DATA_LOSS, DataLossError),
    (grpc.StatusCode.CANCELLED, CallCancelledError),
    (grpc.StatusCode.INTERNAL, InternalError),
    (grpc.StatusCode.PERMISSION_DENIED, DhtdError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, DhtdError),
    (grpc.StatusCode.UNKNOWN, DhtdError),
]
CODE_IDS = [code.name for code, _ in CODES]


def check_error(err: DhtdError, code: grpc.StatusCode, cls: type[DhtdError]) -> None:
    assert type(err) is cls
    assert err.code == code
    assert err.details == f"details of {code.name}"
    assert code.name in str(err)


@pytest.mark.parametrize(("code", "cls"), CODES, ids=CODE_IDS)
def test_sync_unary_error_maps(fake: Fake, code: grpc.StatusCode, cls: type[DhtdError]) -> None:
    for method in ("FindPeer", "Get", "Info", "Connect"):
        fake.aborts[method] = (code, f"details of {code.name}")
    calls: list[Callable[[Client], object]] = [
        lambda c: c.find_peer(PEER_ID),
        lambda c: c.get(KEY),
        lambda c: c.info(),
        lambda c: c.connect(ADDR),
    ]
    with Client(fake.target, timeout=WAIT) as c:
        for call in calls:
            with pytest.raises(DhtdError) as info:
                call(c)
            check_error(info.value, code, cls)


@pytest.mark.parametrize(("code", "cls"), CODES, ids=CODE_IDS)
def test_async_unary_error_maps(fake: Fake, code: grpc.StatusCode, cls: type[DhtdError]) -> None:
    for method in ("FindPeer", "Get", "Info", "Connect"):
        fake.aborts[method] = (code, f"details of {code.name}")

    async def main() -> list[DhtdError]:
        errors: list[DhtdError] = []
        async with AsyncClient(fake.target, timeout=WAIT) as c:
            for call in (
                lambda: c.find_peer(PEER_ID),
                lambda: c.get(KEY),
                lambda: c.info(),
                lambda: c.connect(ADDR),
            ):
                with pytest.raises(DhtdError) as info:
                    await call()
                errors.append(info.value)
        return errors

    errors = asyncio.run(main())
    assert len(errors) == 4
    for err in errors:
        check_error(err, code, cls)


@pytest.mark.parametrize(("code", "cls"), CODES, ids=CODE_IDS)
def test_sync_stream_start_error_maps(
    fake: Fake, code: grpc.StatusCode, cls: type[DhtdError]
) -> None:
    for method in STREAM_METHODS:
        fake.aborts[method] = (code, f"details of {code.name}")
        fake.empty.add(method)
    with Client(fake.target, timeout=WAIT) as c:
        for method in STREAM_METHODS:
            with pytest.raises(DhtdError) as info:
                list(open_sync_stream(c, method))
            check_error(info.value, code, cls)


@pytest.mark.parametrize(("code", "cls"), CODES, ids=CODE_IDS)
def test_async_stream_start_error_maps(
    fake: Fake, code: grpc.StatusCode, cls: type[DhtdError]
) -> None:
    for method in STREAM_METHODS:
        fake.aborts[method] = (code, f"details of {code.name}")
        fake.empty.add(method)

    async def main() -> list[DhtdError]:
        errors: list[DhtdError] = []
        async with AsyncClient(fake.target, timeout=WAIT) as c:
            for method in STREAM_METHODS:
                with pytest.raises(DhtdError) as info:
                    [item async for item in open_async_stream(c, method)]
                errors.append(info.value)
        return errors

    errors = asyncio.run(main())
    assert len(errors) == len(STREAM_METHODS)
    for err in errors:
        check_error(err, code, cls)


@pytest.mark.parametrize("method", STREAM_METHODS)
def test_sync_error_mid_stream_comes_after_items(fake: Fake, method: str) -> None:
    fake.aborts[method] = (grpc.StatusCode.UNAVAILABLE, "no peer accepted the record")
    received: list[object] = []
    with Client(fake.target, timeout=WAIT) as c, pytest.raises(UnavailableError) as info:
        for item in open_sync_stream(c, method):
            received.append(item)
    assert received == EXPECTED_STREAM[method]
    assert info.value.details == "no peer accepted the record"
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("method", STREAM_METHODS)
def test_async_error_mid_stream_comes_after_items(fake: Fake, method: str) -> None:
    fake.aborts[method] = (grpc.StatusCode.UNAVAILABLE, "no peer accepted the record")

    async def main() -> tuple[list[object], DhtdError]:
        received: list[object] = []
        async with AsyncClient(fake.target, timeout=WAIT) as c:
            with pytest.raises(UnavailableError) as info:
                async for item in open_async_stream(c, method):
                    received.append(item)
        return received, info.value

    received, err = asyncio.run(main())
    assert received == EXPECTED_STREAM[method]
    assert err.details == "no peer accepted the record"


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", timeout=WAIT) as c, pytest.raises(UnavailableError):
        c.info()
    with Client(f"127.0.0.1:{port}", timeout=WAIT) as c, pytest.raises(UnavailableError):
        list(c.query(PEER_ID))


# -- early close cancels the call ---------------------------------------------------------


def assert_cancelled_on_server(fake: Fake) -> None:
    # The client has no deadline and the handler stays blocked for longer than this
    # wait, so only a cancel from the client can end the RPC within it.
    assert fake.terminated.wait(WAIT), "the server never saw the call end"
    assert not fake.finished
    assert fake.context is not None
    assert not fake.context.is_active()


class KeepCalls(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Holds a reference to every streaming call made through the channel."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = continuation(details, request)
        self.calls.append(call)
        return call


@pytest.mark.parametrize("how", ["break", "close"])
@pytest.mark.parametrize("method", STREAM_METHODS)
def test_sync_early_exit_cancels(fake: Fake, method: str, how: str) -> None:
    fake.gate = True
    keeper = KeepCalls()  # so that only an explicit cancel(), not GC, can end the call
    with grpc.insecure_channel(fake.target) as raw:
        with Client(channel=grpc.intercept_channel(raw, keeper)) as c:  # no deadline
            if how == "break":
                for _ in open_sync_stream(c, method):
                    break
            else:
                with contextlib.closing(open_sync_stream(c, method)) as stream:
                    next(stream)
            assert_cancelled_on_server(fake)
        assert len(keeper.calls) == 1


class AsyncKeepCalls(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Holds a reference to every streaming call made through the channel."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        self.calls.append(call)
        return call


@pytest.mark.parametrize("how", ["break", "aclosing"])
@pytest.mark.parametrize("method", STREAM_METHODS)
def test_async_early_exit_cancels(fake: Fake, method: str, how: str) -> None:
    fake.gate = True

    async def main() -> int:
        keeper = AsyncKeepCalls()  # so that only an explicit cancel(), not GC, can end the call
        async with (
            grpc.aio.insecure_channel(fake.target, interceptors=[keeper]) as channel,
            AsyncClient(channel=channel) as c,  # no deadline
        ):
            if how == "break":
                # CPython finalizes the dropped generator; asyncio then closes it.
                async for _ in open_async_stream(c, method):
                    break
            else:
                async with contextlib.aclosing(open_async_stream(c, method)) as stream:
                    await anext(stream)
            # Keep the loop running while waiting on the server's side.
            await asyncio.to_thread(assert_cancelled_on_server, fake)
        return len(keeper.calls)

    assert asyncio.run(main()) == 1


# -- deadlines ----------------------------------------------------------------------------


def test_sync_per_call_timeout_overrides_default(fake: Fake) -> None:
    fake.slow = True
    with Client(fake.target, timeout=WAIT) as c:
        with pytest.raises(DeadlineExceededError) as info:
            c.find_peer(PEER_ID, timeout=SHORT)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(DeadlineExceededError):
            c.get(KEY, timeout=SHORT)


def test_sync_default_timeout_applies_to_streams(fake: Fake) -> None:
    fake.gate = True
    with Client(fake.target, timeout=SHORT) as c:
        received: list[object] = []
        with pytest.raises(DeadlineExceededError):
            for item in c.query(PEER_ID):
                received.append(item)
    assert received == EVENTS[:1]


def test_sync_per_call_timeout_on_stream(fake: Fake) -> None:
    fake.gate = True
    with Client(fake.target, timeout=WAIT) as c, pytest.raises(DeadlineExceededError):
        list(c.put(KEY, VALUE, timeout=SHORT))


def test_async_per_call_timeout(fake: Fake) -> None:
    fake.slow = True
    fake.gate = True

    async def main() -> None:
        async with AsyncClient(fake.target, timeout=WAIT) as c:
            with pytest.raises(DeadlineExceededError):
                await c.find_peer(PEER_ID, timeout=SHORT)
            with pytest.raises(DeadlineExceededError):
                await c.info(timeout=SHORT)
            with pytest.raises(DeadlineExceededError):
                [e async for e in c.provide(CID, timeout=SHORT)]
        async with AsyncClient(fake.target, timeout=SHORT) as c:
            with pytest.raises(DeadlineExceededError):
                await c.connect(ADDR)

    asyncio.run(main())
