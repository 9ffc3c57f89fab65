"""The blocking client."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc

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

__all__ = ["Client", "HoldersStream"]

_T = TypeVar("_T")
_H = TypeVar("_H")

DEFAULT_TARGET = "127.0.0.1:50051"


class Client:
    """A blocking dhtd client.

    ``timeout`` (seconds) is the default deadline of every call; each method's own
    ``timeout`` keyword overrides it (``None`` there means "use the default").
    A ``channel`` given here is used as is and is not closed by ``close()``.

    Streaming methods start the RPC when called and return a generator that yields
    each result as it arrives. Closing the generator early (``break``, ``.close()``,
    ``contextlib.closing``) cancels the RPC.

    Provide, Put and Query ask dhtd for ``batch_events``: the events dhtd has ready
    when it writes travel in one message (one gRPC message costs both sides about
    0.1 ms of CPU, and a walk emits its events in bursts). They are still yielded
    one at a time, in order, each the moment its message arrives.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._owns_channel = channel is None
        self._channel: grpc.Channel = grpc.insecure_channel(target) if channel is None else channel
        self._timeout = timeout
        self._dht: Any = dht_pb2_grpc.DhtServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._node: Any = dht_pb2_grpc.NodeServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, if this client created it."""
        if self._owns_channel:
            self._channel.close()

    # -- plumbing ----------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._deadline(timeout))
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
    ) -> Generator[_T, None, None]:
        return _iterate(self._call(method, request, timeout), convert)

    # -- DhtService ----------------------------------------------------------------

    def find_peer(self, peer_id: str, *, timeout: float | None = None) -> PeerInfo:
        """The multiaddrs of a peer. Raises NotFoundError when no peer knows one."""
        resp = self._unary(self._dht.FindPeer, dht_pb2.FindPeerRequest(peer_id=peer_id), timeout)
        return peer_from_pb(resp.peer)

    def find_provs(
        self, cid: str, num_providers: int = 0, *, timeout: float | None = None
    ) -> Generator[PeerInfo, None, None]:
        """Each provider of ``cid`` as it is found (``num_providers`` 0 means 20)."""
        request = dht_pb2.FindProvsRequest(cid=cid, num_providers=num_providers)
        return self._stream(
            self._dht.FindProvs, request, timeout, lambda r: (peer_from_pb(r.provider),)
        )

    def get(self, key: bytes, *, timeout: float | None = None) -> bytes:
        """The best value stored under ``key``. Raises NotFoundError if none."""
        resp = self._unary(self._dht.Get, dht_pb2.GetRequest(key=key), timeout)
        value: bytes = resp.value
        return value

    def provide(
        self, *cids: str, recursive: bool = False, min_holders: int | None = None,
        timeout: float | None = None,
    ) -> HoldersStream[ProvideEvent, tuple[ProvideHolders, ...]]:
        """Announce that this node provides each CID, yielding the walk events.

        The call ends once ``min_holders`` peers took each CID's record (None or 0:
        dhtd's ``--min-holders``, 5; 20 or more: every store). Once the stream is
        exhausted, its ``holders`` is a ``ProvideHolders(cid, holders)`` per CID, in
        request order (None from a dhtd that does not report it)."""
        request = dht_pb2.ProvideRequest(cids=list(cids), recursive=recursive,
                                         batch_events=True, min_holders=min_holders or 0)
        return HoldersStream(self._call(self._dht.Provide, request, timeout),
                             provide_events_from_pb, provide_holders_from_pb)

    def provide_many(
        self, cids: Iterable[str], *, batch_size: int = MAX_CIDS_PER_MESSAGE,
        timeout: float | None = None,
    ) -> Generator[ProvideProgress, None, None]:
        """Announce any number of CIDs through one ProvideMany stream, ``batch_size``
        per message, read from ``cids`` as they are sent (a generator of a million
        CIDs is never held whole); yields the totals after each batch is committed
        and after it is announced. ``timeout`` bounds the whole call."""
        return self._stream(self._dht.ProvideMany, provide_batches(cids, batch_size), timeout,
                            lambda r: (provide_progress_from_pb(r),))

    def put(
        self, key: bytes, value: bytes, *, min_holders: int | None = None,
        timeout: float | None = None,
    ) -> HoldersStream[QueryEvent, int]:
        """Store a record on this node and the closest peers, yielding the walk events.

        The call ends once ``min_holders`` peers stored it (None or 0: dhtd's
        ``--min-holders``, 5; 20 or more: every store). Once the stream is exhausted,
        its ``holders`` is how many peers had stored it (None from a dhtd that does
        not report it)."""
        request = dht_pb2.PutRequest(key=key, value=value, batch_events=True,
                                     min_holders=min_holders or 0)
        return HoldersStream(self._call(self._dht.Put, request, timeout), events_from_pb,
                             put_holders_from_pb)

    def query(
        self, peer_id: str, *, timeout: float | None = None
    ) -> Generator[QueryEvent, None, None]:
        """The walk towards ``peer_id``; ends with one FINAL_PEER per closest peer."""
        request = dht_pb2.QueryRequest(peer_id=peer_id, batch_events=True)
        return self._stream(self._dht.Query, request, timeout, events_from_pb)

    # -- NodeService ---------------------------------------------------------------

    def info(self, *, timeout: float | None = None) -> NodeInfo:
        """Describe this node."""
        resp = self._unary(self._node.Info, dht_pb2.InfoRequest(), timeout)
        return node_info_from_pb(resp)

    def connect(self, addr: str, *, timeout: float | None = None) -> ConnectResult:
        """Dial a multiaddr ending in ``/p2p/<peer id>``."""
        resp = self._unary(self._node.Connect, dht_pb2.ConnectRequest(addr=addr), timeout)
        return connect_result_from_pb(resp)

    def list_provides(self, *, page_size: int = 100, timeout: float | None = None
                      ) -> Iterator[ProvidedCid]:
        """Every CID in the node's provide set, fetched ``page_size`` at a time."""
        return self._paged(self._node.ListProvides, dht_pb2.ListProvidesRequest, page_size,
                           timeout, lambda page: [ProvidedCid(c.cid, c.last_announced)
                                                  for c in page.cids])

    def stop_providing(self, cids: Sequence[str], *, timeout: float | None = None) -> int:
        """Take CIDs out of the provide set; returns how many were in it."""
        request = dht_pb2.StopProvidingRequest(cids=list(cids))
        return int(self._unary(self._node.StopProviding, request, timeout).stopped)

    def provide_status(self, *, timeout: float | None = None) -> ProvideStatus:
        """The provide set's size and its reprovide cycle (current, last, next)."""
        resp = self._unary(self._node.ProvideStatus, dht_pb2.ProvideStatusRequest(), timeout)
        return provide_status_from_pb(resp)

    def list_puts(self, *, page_size: int = 100, timeout: float | None = None
                  ) -> Iterator[PutRecord]:
        """Every record the node keeps putting again, fetched ``page_size`` at a time."""
        return self._paged(self._node.ListPuts, dht_pb2.ListPutsRequest, page_size, timeout,
                           lambda page: [PutRecord(r.key, r.value, r.last_put)
                                         for r in page.records])

    def _paged(self, method: Any, request: Any, page_size: int, timeout: float | None,
               items: Callable[[Any], list[_T]]) -> Iterator[_T]:
        """Every item of a List call, one page after the other until no next_page_token."""
        token = ""
        while True:
            page = self._unary(method, request(page_size=page_size, page_token=token), timeout)
            yield from items(page)
            token = page.next_page_token
            if not token:
                return

    def stop_republishing(self, key: bytes, *, timeout: float | None = None) -> None:
        """Stop putting the record under ``key`` again (NotFoundError if none is kept)."""
        request = dht_pb2.StopRepublishingRequest(key=key)
        self._unary(self._node.StopRepublishing, request, timeout)


class HoldersStream(Generator[_T, None, None], Generic[_T, _H]):
    """The events of a Put or Provide, a generator like every stream of ``Client``,
    which also keeps what the stream's last message reported.

    ``holders`` is None until the stream ends, and stays None with a dhtd that does
    not report holders; then it is an ``int`` (Put) or a tuple of ``ProvideHolders``
    (Provide). That last message carries no event, so nothing is yielded for it.
    """

    def __init__(self, call: Any, events: Callable[[Any], Iterable[_T]],
                 holders: Callable[[Any], _H | None]) -> None:
        # The generator refers to the sink, never to this object: no reference cycle,
        # so dropping the stream (a ``break``) closes it and cancels the call at once.
        self._sink: LastHolders[_T, _H] = LastHolders(events, holders)
        self._gen = _iterate(call, self._sink.convert)

    @property
    def holders(self) -> _H | None:
        return self._sink.holders

    def send(self, value: None) -> _T:
        return self._gen.send(value)

    def throw(self, *args: Any) -> _T:
        return self._gen.throw(*args)

    def close(self) -> None:
        self._gen.close()


def _iterate(call: Any, convert: Callable[[Any], Iterable[_T]]) -> Generator[_T, None, None]:
    try:
        for response in call:
            yield from convert(response)
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err
    finally:
        call.cancel()
