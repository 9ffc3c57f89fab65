"""The asyncio client, built on ``grpc.aio``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
import grpc.aio

from dht.v1 import dht_pb2, dht_pb2_grpc

from ._errors import from_rpc_error
from ._models import (
    MAX_CIDS_PER_MESSAGE,
    ConnectResult,
    LastHolders,
    NodeInfo,
    PeerInfo,
    ProvidedCid,
    ProvideEvent,
    ProvideHolders,
    ProvideProgress,
    ProvideStatus,
    PutRecord,
    QueryEvent,
    connect_result_from_pb,
    events_from_pb,
    node_info_from_pb,
    peer_from_pb,
    provide_batches,
    provide_events_from_pb,
    provide_holders_from_pb,
    provide_progress_from_pb,
    provide_status_from_pb,
    put_holders_from_pb,
)
from ._sync import DEFAULT_TARGET

__all__ = ["AsyncClient", "AsyncHoldersStream"]

_T = TypeVar("_T")
_H = TypeVar("_H")


class AsyncClient:
    """An asyncio dhtd client with the same methods as ``Client``.

    Create it inside a running event loop. ``timeout`` is the default deadline of
    every call; each method's ``timeout`` keyword overrides it. A ``channel`` given
    here is used as is and is not closed by ``close()``.

    Streaming methods start the RPC when called and return an async generator.
    Closing it early (``aclose()``, ``contextlib.aclosing``) cancels the RPC; after a
    bare ``break`` asyncio closes it only when the generator is finalized.

    As in ``Client``, Provide, Put and Query ask for ``batch_events`` and yield the
    events one at a time, in order.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._owns_channel = channel is None
        self._channel: grpc.aio.Channel = (
            grpc.aio.insecure_channel(target) if channel is None else channel
        )
        self._timeout = timeout
        self._dht: Any = dht_pb2_grpc.DhtServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._node: Any = dht_pb2_grpc.NodeServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel, if this client created it."""
        if self._owns_channel:
            await self._channel.close()

    # -- plumbing ----------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    async def _unary(self, method: Any, request: Any, deadline: float | None) -> Any:
        try:
            return await method(request, timeout=self._deadline(deadline))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._deadline(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def _stream(
        self,
        method: Any,
        request: Any,
        timeout: float | None,
        convert: Callable[[Any], Iterable[_T]],
    ) -> AsyncGenerator[_T, None]:
        return _aiterate(self._call(method, request, timeout), convert)

    # -- DhtService ----------------------------------------------------------------

    async def find_peer(self, peer_id: str, *, timeout: float | None = None) -> PeerInfo:
        """The multiaddrs of a peer. Raises NotFoundError when no peer knows one."""
        request = dht_pb2.FindPeerRequest(peer_id=peer_id)
        resp = await self._unary(self._dht.FindPeer, request, timeout)
        return peer_from_pb(resp.peer)

    def find_provs(
        self, cid: str, num_providers: int = 0, *, timeout: float | None = None
    ) -> AsyncGenerator[PeerInfo, None]:
        """Each provider of ``cid`` as it is found (``num_providers`` 0 means 20)."""
        request = dht_pb2.FindProvsRequest(cid=cid, num_providers=num_providers)
        return self._stream(
            self._dht.FindProvs, request, timeout, lambda r: (peer_from_pb(r.provider),)
        )

    async def get(self, key: bytes, *, timeout: float | None = None) -> bytes:
        """The best value stored under ``key``. Raises NotFoundError if none."""
        resp = await self._unary(self._dht.Get, dht_pb2.GetRequest(key=key), timeout)
        value: bytes = resp.value
        return value

    def provide(
        self, *cids: str, recursive: bool = False, min_holders: int | None = None,
        timeout: float | None = None,
    ) -> AsyncHoldersStream[ProvideEvent, tuple[ProvideHolders, ...]]:
        """Announce that this node provides each CID, yielding the walk events.

        As ``Client.provide``: ``min_holders`` (None or 0: dhtd's default), and the
        stream's ``holders`` once it is exhausted."""
        request = dht_pb2.ProvideRequest(cids=list(cids), recursive=recursive,
                                         batch_events=True, min_holders=min_holders or 0)
        return AsyncHoldersStream(self._call(self._dht.Provide, request, timeout),
                                  provide_events_from_pb, provide_holders_from_pb)

    def provide_many(
        self, cids: Iterable[str], *, batch_size: int = MAX_CIDS_PER_MESSAGE,
        timeout: float | None = None,
    ) -> AsyncGenerator[ProvideProgress, None]:
        """Announce any number of CIDs through one ProvideMany stream, ``batch_size``
        per message, read from ``cids`` as they are sent (a generator of a million
        CIDs is never held whole); yields the totals after each batch is committed
        and after it is announced. ``timeout`` bounds the whole call."""
        return self._stream(self._dht.ProvideMany, provide_batches(cids, batch_size), timeout,
                            lambda r: (provide_progress_from_pb(r),))

    def put(
        self, key: bytes, value: bytes, *, min_holders: int | None = None,
        timeout: float | None = None,
    ) -> AsyncHoldersStream[QueryEvent, int]:
        """Store a record on this node and the closest peers, yielding the walk events.

        As ``Client.put``: ``min_holders`` (None or 0: dhtd's default), and the
        stream's ``holders`` once it is exhausted."""
        request = dht_pb2.PutRequest(key=key, value=value, batch_events=True,
                                     min_holders=min_holders or 0)
        return AsyncHoldersStream(self._call(self._dht.Put, request, timeout), events_from_pb,
                                  put_holders_from_pb)

    def query(
        self, peer_id: str, *, timeout: float | None = None
    ) -> AsyncGenerator[QueryEvent, None]:
        """The walk towards ``peer_id``; ends with one FINAL_PEER per closest peer."""
        request = dht_pb2.QueryRequest(peer_id=peer_id, batch_events=True)
        return self._stream(self._dht.Query, request, timeout, events_from_pb)

    # -- NodeService ---------------------------------------------------------------

    async def info(self, *, timeout: float | None = None) -> NodeInfo:
        """Describe this node."""
        resp = await self._unary(self._node.Info, dht_pb2.InfoRequest(), timeout)
        return node_info_from_pb(resp)

    async def connect(self, addr: str, *, timeout: float | None = None) -> ConnectResult:
        """Dial a multiaddr ending in ``/p2p/<peer id>``."""
        request = dht_pb2.ConnectRequest(addr=addr)
        resp = await self._unary(self._node.Connect, request, timeout)
        return connect_result_from_pb(resp)

    async def list_provides(self, *, page_size: int = 100, timeout: float | None = None
                            ) -> AsyncIterator[ProvidedCid]:
        """Every CID in the node's provide set, fetched ``page_size`` at a time."""
        async for item in self._paged(
                self._node.ListProvides, dht_pb2.ListProvidesRequest, page_size, timeout,
                lambda page: [ProvidedCid(c.cid, c.last_announced) for c in page.cids]):
            yield item

    async def stop_providing(self, cids: Sequence[str], *, timeout: float | None = None) -> int:
        """Take CIDs out of the provide set; returns how many were in it."""
        request = dht_pb2.StopProvidingRequest(cids=list(cids))
        return int((await self._unary(self._node.StopProviding, request, timeout)).stopped)

    async def provide_status(self, *, timeout: float | None = None) -> ProvideStatus:
        """The provide set's size and its reprovide cycle (current, last, next)."""
        resp = await self._unary(self._node.ProvideStatus, dht_pb2.ProvideStatusRequest(),
                                 timeout)
        return provide_status_from_pb(resp)

    async def list_puts(self, *, page_size: int = 100, timeout: float | None = None
                        ) -> AsyncIterator[PutRecord]:
        """Every record the node keeps putting again, fetched ``page_size`` at a time."""
        async for item in self._paged(
                self._node.ListPuts, dht_pb2.ListPutsRequest, page_size, timeout,
                lambda page: [PutRecord(r.key, r.value, r.last_put) for r in page.records]):
            yield item

    async def _paged(self, method: Any, request: Any, page_size: int, timeout: float | None,
                     items: Callable[[Any], list[_T]]) -> AsyncIterator[_T]:
        """Every item of a List call, one page after the other until no next_page_token."""
        token = ""
        while True:
            page = await self._unary(method, request(page_size=page_size, page_token=token),
                                     timeout)
            for item in items(page):
                yield item
            token = page.next_page_token
            if not token:
                return

    async def stop_republishing(self, key: bytes, *, timeout: float | None = None) -> None:
        """Stop putting the record under ``key`` again (NotFoundError if none is kept)."""
        request = dht_pb2.StopRepublishingRequest(key=key)
        await self._unary(self._node.StopRepublishing, request, timeout)


class AsyncHoldersStream(AsyncGenerator[_T, None], Generic[_T, _H]):
    """The events of a Put or Provide, an async generator like every stream of
    ``AsyncClient``, which also keeps what the stream's last message reported:
    ``holders``, as on ``HoldersStream`` (None until the stream ends, and with a
    dhtd that does not report it)."""

    def __init__(self, call: Any, events: Callable[[Any], Iterable[_T]],
                 holders: Callable[[Any], _H | None]) -> None:
        # As HoldersStream: the generator refers to the sink only (no cycle).
        self._sink: LastHolders[_T, _H] = LastHolders(events, holders)
        self._gen = _aiterate(call, self._sink.convert)

    @property
    def holders(self) -> _H | None:
        return self._sink.holders

    async def asend(self, value: None) -> _T:
        return await self._gen.asend(value)

    async def athrow(self, *args: Any) -> _T:
        return await self._gen.athrow(*args)

    async def aclose(self) -> None:
        await self._gen.aclose()


async def _aiterate(call: Any, convert: Callable[[Any], Iterable[_T]]) -> AsyncGenerator[_T, None]:
    try:
        async for response in call:
            for item in convert(response):
                yield item
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err
    finally:
        call.cancel()
