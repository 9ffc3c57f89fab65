"""The servicers of dht.v1: decode the request, call the node, encode the answer.

Each method is a few lines; everything about the DHT is in :mod:`dhtd.node`,
and errors are mapped to statuses by :mod:`dhtd.api.status`, applied by the
two decorators below.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeVar, cast

import grpc

import dhtd
from dht.v1 import dht_pb2 as pb
from dht.v1 import dht_pb2_grpc as pb_grpc
from dhtd.addrs import format_addr, parse_dial_addr
from dhtd.blocks import BlockSource, provide_dags
from dhtd.bridge import Bridge
from dhtd.errors import (
    ECHO_CHARS,
    InvalidArgument,
    InvalidRecord,
    NotFound,
    Unavailable,
    excerpt,
)
from dhtd.ids import (
    MAX_KEY_BYTES,
    RAW,
    Cid,
    parse_cid,
    parse_peer_id,
    parse_record_key,
    peer_id_to_str,
)
from dhtd.lookup import PeerRecord, QueryEvent
from dhtd.node import NO_PEERS, DhtNode
from dhtd.provider import Cycle

from .status import status_of

# FindProvs stops after this many providers when the request says 0
# (the IPFS DHT API: numProviders defaults to 20).
DEFAULT_NUM_PROVIDERS = 20

# The server finishes this much before the caller's deadline, so that the
# caller gets DEADLINE_EXCEEDED from us with the DHT work already stopped.
DEADLINE_MARGIN = 0.02

# The largest record value accepted by Put. IPNS records are at most 10 KiB
# (IPNS spec); go-libp2p peers take messages up to 4 MiB. 64 KiB leaves room
# for any sane record and keeps one Put from flooding 20 peers.
MAX_VALUE_BYTES = 64 * 1024

# The most CIDs one Provide call takes. Each CID costs up to 20 ADD_PROVIDER
# messages (and, below --provide-batch-min CIDs, a walk), so the cap bounds one
# call's work; more CIDs take more calls. 10,000 typical CIDs (about 60
# characters) make a request of about 620 KiB, within MAX_REQUEST_BYTES; a
# call of long ones meets that limit first (RESOURCE_EXHAUSTED).
MAX_CIDS_PER_PROVIDE = 10_000

# The largest request message the server reads (grpc's own default is 4 MiB).
# A Provide of MAX_CIDS_PER_PROVIDE typical CIDs is about 620 KiB; a Put is at
# most MAX_VALUE_BYTES + MAX_KEY_BYTES. This bounds what one call can make dhtd
# hold. Past it grpc answers RESOURCE_EXHAUSTED itself.
MAX_REQUEST_BYTES = 2 * 1024 * 1024

# Ours: events per response message when a call asks for batch_events. A
# PEER_RESPONSE event with 20 peers is about 2 KiB, so a message stays well under
# the 4 MiB gRPC clients accept by default.
MAX_EVENTS_PER_MESSAGE = 128

# Ours: CIDs parsed between two yields to the event loop (10,000 take about 90 ms).
PARSE_SLICE = 1000

# Options of the grpc.aio server that bound its memory.
SERVER_OPTIONS = (("grpc.max_receive_message_length", MAX_REQUEST_BYTES),)

T = TypeVar("T")
Req = TypeVar("Req")
Res = TypeVar("Res")


def unary(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext], Coroutine[Any, Any, Res]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], Coroutine[Any, Any, Res]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Res:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)
            raise AssertionError("unreachable") from None

    return wrapper


def streaming(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Res]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Res]]:
    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Res]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise  # the edge ended the call already (a streamed request did not decode)
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    return wrapper


# The same peers and addrs recur in every event of every walk; encoding them
# (base58, multiaddr text) is cached. Bounded: the keys are peers of the DHT.
_ENCODE_CACHE = 8192
_peer_text = functools.lru_cache(maxsize=_ENCODE_CACHE)(peer_id_to_str)
_addr_text = functools.lru_cache(maxsize=_ENCODE_CACHE)(format_addr)


def peer_info(record: PeerRecord) -> pb.PeerInfo:
    return pb.PeerInfo(id=_peer_text(record.id), addrs=[_addr_text(a) for a in record.addrs])


def query_event(event: QueryEvent) -> pb.QueryEvent:
    return pb.QueryEvent(
        type=cast(Any, int(event.type)),
        id=_peer_text(event.peer),
        responses=[peer_info(r) for r in event.responses],
        extra=event.extra,
    )


async def provide_cids(texts: Sequence[str], field: str, more: str) -> list[Cid]:
    """1 to MAX_CIDS_PER_PROVIDE CIDs, parsed; ``field`` names them in errors, and
    ``more`` says where the rest go. Lets other calls run every PARSE_SLICE CIDs."""
    if not texts:
        raise InvalidArgument(field, "is empty: give at least one CID")
    if len(texts) > MAX_CIDS_PER_PROVIDE:
        raise InvalidArgument(
            field, f"has {len(texts)} CIDs; at most {MAX_CIDS_PER_PROVIDE} {more}")
    cids = []
    for i, text in enumerate(texts):
        cids.append(parse_cid(text, f"{field}[{i}]"))
        if i % PARSE_SLICE == PARSE_SLICE - 1:
            await asyncio.sleep(0)
    return cids


def reprovide_cycle(cycle: Cycle | None, now: float) -> pb.ReprovideCycle | None:
    if cycle is None:
        return None
    return pb.ReprovideCycle(started=cycle.started, duration=cycle.duration(now), due=cycle.due,
                             done=cycle.done, failed=cycle.failed, error=cycle.error)


def _ignore(*args: object) -> None:
    return None


def record_key(key: bytes, node: DhtNode) -> bytes:
    """``key`` if it is a well-formed key in a namespace this node has opened."""
    namespace, _ = parse_record_key(key, "key")
    if not node.validators.knows(key):
        known = ", ".join(f"/{n}/" for n in node.validators.namespaces)
        raise InvalidArgument(
            "key", f"namespace /{excerpt(namespace)}/ is not open on this node (open: {known}; "
            "an operator opens more with --namespace)"
        )
    return key


class _Base:
    def __init__(self, node: DhtNode, bridge: Bridge, query_timeout: float) -> None:
        self.node = node
        self.bridge = bridge
        self.query_timeout = query_timeout

    def timeout(self, context: grpc.aio.ServicerContext) -> float:
        """The DHT budget: the caller's deadline (less a margin), capped by --query-timeout."""
        remaining = context.time_remaining()
        if remaining is None:
            return self.query_timeout
        return max(0.0, min(self.query_timeout, float(remaining) - DEADLINE_MARGIN))


class DhtServicer(_Base, pb_grpc.DhtServiceServicer):
    """dht.v1.DhtService."""

    def __init__(self, node: DhtNode, bridge: Bridge, query_timeout: float,
                 sources: Sequence[BlockSource] = ()) -> None:
        super().__init__(node, bridge, query_timeout)
        self.sources = tuple(sources)  # --block-source, for recursive Provide

    @unary
    async def FindPeer(self, request: pb.FindPeerRequest, context: grpc.aio.ServicerContext
                       ) -> pb.FindPeerResponse:
        peer = parse_peer_id(request.peer_id, "peer_id")
        t = self.timeout(context)
        found = await self.bridge.call(lambda: self.node.find_peer(peer, t))
        return pb.FindPeerResponse(peer=peer_info(found))

    @streaming
    async def FindProvs(self, request: pb.FindProvsRequest, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[pb.FindProvsResponse]:
        cid = parse_cid(request.cid, "cid")
        count = request.num_providers or DEFAULT_NUM_PROVIDERS
        t = self.timeout(context)

        async def work(put: Callable[[PeerRecord], None]) -> int:
            return await self.node.find_providers(cid.multihash, count, put, t)

        async for provider in self.bridge.stream(work):
            yield pb.FindProvsResponse(provider=peer_info(provider))

    @unary
    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext
                  ) -> pb.GetResponse:
        key = record_key(request.key, self.node)
        t = self.timeout(context)
        value = await self.bridge.call(lambda: self.node.get_value(key, t))
        return pb.GetResponse(value=value)

    @streaming
    async def Provide(self, request: pb.ProvideRequest, context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[pb.ProvideResponse]:
        cids = await provide_cids(
            request.cids, "cids",
            "per call (provide the rest in further calls, or stream them with ProvideMany)")
        if request.recursive:
            async for response in self._provide_dags(request, cids, context):
                yield response
            return
        t = self.timeout(context)
        keys = [c.multihash for c in cids]
        holders: list[int] = []

        async def work(put: Callable[[tuple[int, QueryEvent]], None]) -> None:
            holders.extend(await self.node.provide(keys, lambda i, e: put((i, e)), t,
                                                   min_holders=request.min_holders))

        if request.batch_events:
            async for batch in self.bridge.batches(work, MAX_EVENTS_PER_MESSAGE):
                yield pb.ProvideResponse(events=[
                    pb.ProvideEvent(event=query_event(e), cid=request.cids[i]) for i, e in batch])
        else:
            async for index, event in self.bridge.stream(work):
                yield pb.ProvideResponse(event=query_event(event), cid=request.cids[index])
        yield pb.ProvideResponse(holders=[
            pb.ProvideHolders(cid=cid, holders=n) for cid, n in zip(request.cids, holders,
                                                                   strict=True)])

    async def _provide_dags(self, request: pb.ProvideRequest, cids: list[Cid],
                            context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[pb.ProvideResponse]:
        """Provide with recursive: the DAG under each CID (dhtd.blocks.provide). Its
        events name the CID they belong to: a root as the request wrote it, the
        rest in their canonical text."""
        remaining = context.time_remaining()
        total = None if remaining is None else max(0.0, float(remaining) - DEADLINE_MARGIN)
        texts = {c.multihash: text for c, text in zip(cids, request.cids, strict=True)}

        def text(cid: Cid) -> str:
            return texts.get(cid.multihash) or str(cid)

        async def work(put: Callable[[tuple[Cid, QueryEvent]], None]) -> int:
            return await provide_dags(self.node, self.sources, cids,
                                      lambda c, e: put((c, e)), total, self.query_timeout)

        if request.batch_events:
            async for batch in self.bridge.batches(work, MAX_EVENTS_PER_MESSAGE):
                yield pb.ProvideResponse(events=[
                    pb.ProvideEvent(event=query_event(e), cid=text(c)) for c, e in batch])
            return
        async for cid, event in self.bridge.stream(work):
            yield pb.ProvideResponse(event=query_event(event), cid=text(cid))

    @streaming
    async def ProvideMany(self, requests: AsyncIterator[pb.ProvideManyRequest],
                          context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[pb.ProvideManyResponse]:
        if not await self.bridge.call(lambda: _now(bool(self.node.table))):
            raise Unavailable(NO_PEERS)
        totals = pb.ProvideManyResponse()
        index = 0
        async for request in requests:
            keys = [c.multihash for c in await provide_cids(
                request.cids, f"message {index}: cids",
                "per message (send the rest in further messages)")]
            totals.received += len(keys)
            t = self.timeout(context)

            async def work(put: Callable[[list[int] | None], None],
                           keys: list[bytes] = keys, t: float = t) -> None:
                put(await self.node.provide(keys, _ignore, t, strict=False,
                                            on_committed=lambda: put(None)))

            async for counts in self.bridge.stream(work):
                if counts is None:
                    totals.committed += len(keys)
                else:
                    failed = counts.count(0)
                    totals.announced += len(keys) - failed
                    totals.failed += failed
                    totals.batches += 1
                yield totals
            index += 1

    @streaming
    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext
                  ) -> AsyncIterator[pb.PutResponse]:
        key = record_key(request.key, self.node)
        if not request.value:
            raise InvalidArgument("value", "is empty")
        if len(request.value) > MAX_VALUE_BYTES:
            raise InvalidArgument(
                "value", f"is {len(request.value)} bytes; the limit is {MAX_VALUE_BYTES}"
            )
        try:
            self.node.validators.validate(key, request.value)
        except InvalidRecord as exc:
            raise InvalidArgument("value", f"rejected by the /{parse_record_key(key)[0]}/ "
                                  f"validator: {excerpt(str(exc), 2 * ECHO_CHARS)}") from None
        t = self.timeout(context)
        holders: list[int] = []

        async def work(put: Callable[[QueryEvent], None]) -> None:
            holders.append(await self.node.put_value(key, request.value, put, t,
                                                     min_holders=request.min_holders))

        if request.batch_events:
            async for batch in self.bridge.batches(work, MAX_EVENTS_PER_MESSAGE):
                yield pb.PutResponse(events=[query_event(e) for e in batch])
        else:
            async for event in self.bridge.stream(work):
                yield pb.PutResponse(event=query_event(event))
        yield pb.PutResponse(holders=holders[0])

    @streaming
    async def Query(self, request: pb.QueryRequest, context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[pb.QueryResponse]:
        peer = parse_peer_id(request.peer_id, "peer_id")
        t = self.timeout(context)

        async def work(put: Callable[[QueryEvent], None]) -> list[PeerRecord]:
            return await self.node.query(peer, put, t)

        if request.batch_events:
            async for batch in self.bridge.batches(work, MAX_EVENTS_PER_MESSAGE):
                yield pb.QueryResponse(events=[query_event(e) for e in batch])
            return
        async for event in self.bridge.stream(work):
            yield pb.QueryResponse(event=query_event(event))


class NodeServicer(_Base, pb_grpc.NodeServiceServicer):
    """dht.v1.NodeService."""

    @unary
    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext
                   ) -> pb.InfoResponse:
        info = await self.bridge.call(lambda: _now(self.node.info()))
        return pb.InfoResponse(
            peer_id=_peer_text(info.peer_id),
            addrs=[_addr_text(a) for a in info.addrs],
            mode=pb.MODE_SERVER if info.server else pb.MODE_CLIENT,
            protocol=info.protocol,
            routing_table_size=info.routing_table_size,
            connected_peers=info.connected_peers,
            version=dhtd.__version__,
            queries_in_flight=info.queries_in_flight,
            announced_addrs=[_addr_text(a) for a in info.announced],
            network_size=info.network_size or 0,
        )

    @unary
    async def Connect(self, request: pb.ConnectRequest, context: grpc.aio.ServicerContext
                      ) -> pb.ConnectResponse:
        peer, addr = parse_dial_addr(request.addr, "addr")
        t = self.timeout(context)
        record, added = await self.bridge.call(lambda: self.node.connect(peer, addr, t))
        return pb.ConnectResponse(peer=peer_info(record), added_to_routing_table=added)

    @unary
    async def ListProvides(self, request: pb.ListProvidesRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListProvidesResponse:
        size, after = page(request.page_size, request.page_token)
        rows = await self.bridge.call(lambda: _now(self.node.list_provided(after, size + 1)))
        return pb.ListProvidesResponse(
            cids=[pb.ProvidedCid(cid=str(Cid(1, RAW, key)), last_announced=at)
                  for key, at in rows[:size]],
            next_page_token=rows[size - 1][0].hex() if len(rows) > size else "",
        )

    @unary
    async def StopProviding(self, request: pb.StopProvidingRequest,
                            context: grpc.aio.ServicerContext) -> pb.StopProvidingResponse:
        if len(request.cids) > MAX_CIDS_PER_PROVIDE:
            raise InvalidArgument(
                "cids", f"has {len(request.cids)} CIDs; at most {MAX_CIDS_PER_PROVIDE} per call")
        keys = [parse_cid(text, f"cids[{i}]").multihash for i, text in enumerate(request.cids)]
        stopped = await self.bridge.call(lambda: self.node.stop_providing(keys))
        return pb.StopProvidingResponse(stopped=stopped)

    @unary
    async def ProvideStatus(self, request: pb.ProvideStatusRequest,
                            context: grpc.aio.ServicerContext) -> pb.ProvideStatusResponse:
        status, cycles, now, running, ended = await self.bridge.call(lambda: _now((
            self.node.reprovider.status(), self.node.reprovider.cycles, self.node.clock(),
            self.node.background_stores, dict(self.node.background_ended))))
        return pb.ProvideStatusResponse(
            cids=status.keys,
            current=reprovide_cycle(status.current, now),
            last=reprovide_cycle(status.last, now),
            next_cycle=status.next_cycle or 0.0,
            reprovide_interval=status.interval,
            cycles=cycles,
            background_stores=running,
            background_stored=ended["stored"],
            background_failed=ended["failed"],
        )

    @unary
    async def ListPuts(self, request: pb.ListPutsRequest, context: grpc.aio.ServicerContext
                       ) -> pb.ListPutsResponse:
        size, after = page(request.page_size, request.page_token)
        rows = await self.bridge.call(lambda: _now(self.node.list_published(after, size + 1)))
        return pb.ListPutsResponse(
            records=[pb.PutRecord(key=key, value=value, last_put=at)
                     for key, value, at in rows[:size]],
            next_page_token=rows[size - 1][0].hex() if len(rows) > size else "",
        )

    @unary
    async def StopRepublishing(self, request: pb.StopRepublishingRequest,
                               context: grpc.aio.ServicerContext
                               ) -> pb.StopRepublishingResponse:
        key = record_key(request.key, self.node)
        if not await self.bridge.call(lambda: self.node.unpublish(key)):
            raise NotFound("this node keeps no record under this key (see ListPuts)")
        return pb.StopRepublishingResponse()


# ListProvides and ListPuts: page sizes (ours).
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A page token is the hex of the last key of the previous page; a record key
# (at most dhtd.ids.MAX_KEY_BYTES) is the longest key.
MAX_PAGE_TOKEN_CHARS = 2 * MAX_KEY_BYTES


def page(size: int, token: str) -> tuple[int, bytes]:
    """The page size and the key to start after, from a List request."""
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"is {size}; give 1 to {MAX_PAGE_SIZE}, or 0 for "
                              f"{DEFAULT_PAGE_SIZE}")
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise InvalidArgument("page_token", "is not a token from this API (too long)")
    try:
        after = bytes.fromhex(token)
    except ValueError:
        raise InvalidArgument("page_token", "is not a token from this API") from None
    return size or DEFAULT_PAGE_SIZE, after


async def _now(value: T) -> T:
    return value
