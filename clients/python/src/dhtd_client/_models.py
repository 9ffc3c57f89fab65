"""Plain value types returned by the clients, and their conversion from protobuf."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic, TypeVar

from dht.v1 import dht_pb2

__all__ = [
    "ConnectResult",
    "NodeInfo",
    "PeerInfo",
    "ProvideEvent",
    "ProvideHolders",
    "ProvideProgress",
    "ProvideStatus",
    "ProvidedCid",
    "PutRecord",
    "QueryEvent",
    "QueryEventType",
    "ReprovideCycle",
]

_T = TypeVar("_T")
_H = TypeVar("_H")

# CIDs per ProvideMany message: the server's cap per message.
MAX_CIDS_PER_MESSAGE = 10_000


class QueryEventType(IntEnum):
    """The kind of a DHT walk step; numbers are go-libp2p's ``routing.QueryEventType``."""

    SENDING_QUERY = 0
    PEER_RESPONSE = 1
    FINAL_PEER = 2
    QUERY_ERROR = 3
    PROVIDER = 4
    VALUE = 5
    ADDING_PEER = 6
    DIALING_PEER = 7


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer ID (base58btc) and its multiaddrs (without the ``/p2p/`` suffix)."""

    id: str
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QueryEvent:
    """One step of a DHT walk.

    ``responses`` holds the closer peers for PEER_RESPONSE and the result peer for
    FINAL_PEER; ``extra`` holds the failure text for QUERY_ERROR.
    """

    type: QueryEventType
    id: str
    responses: tuple[PeerInfo, ...] = ()
    extra: str = ""


@dataclass(frozen=True, slots=True)
class ProvideEvent:
    """A walk event of one announcement; ``cid`` is the CID as given to ``provide``."""

    cid: str
    event: QueryEvent


@dataclass(frozen=True, slots=True)
class ProvideHolders:
    """How many peers had taken one CID's provider record when Provide ended."""

    cid: str
    holders: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What dhtd says about itself. ``mode`` is "server", "client" or "unspecified";
    ``addrs`` are where it listens, ``announced_addrs`` what peers are told."""

    peer_id: str
    addrs: tuple[str, ...]
    mode: str
    protocol: str
    routing_table_size: int
    connected_peers: int
    version: str
    queries_in_flight: int
    announced_addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """The peer dialled, and whether it is now in the routing table."""

    peer: PeerInfo
    added_to_routing_table: bool


@dataclass(frozen=True, slots=True)
class ProvidedCid:
    """A CID in the node's provide set (as CIDv1 raw: provider records are per
    multihash) and the Unix time its last announcement reached a peer (0: not yet)."""

    cid: str
    last_announced: float


@dataclass(frozen=True, slots=True)
class ProvideProgress:
    """Totals of a ProvideMany call so far: CIDs read by dhtd, committed to its
    provide set, announced to at least one peer, and announced to none (retried by
    the reprovide cycle); ``batches`` counts the messages fully announced."""

    received: int
    committed: int
    announced: int
    failed: int
    batches: int


@dataclass(frozen=True, slots=True)
class ReprovideCycle:
    """One run of the reprovide cycle (times are Unix seconds)."""

    started: float
    duration: float
    due: int
    done: int
    failed: int
    error: str


@dataclass(frozen=True, slots=True)
class ProvideStatus:
    """The provide set and its reprovide cycle: ``current`` is None when no cycle
    runs, ``last`` before the first ended; ``next_cycle`` is 0 when the set is empty."""

    cids: int
    current: ReprovideCycle | None
    last: ReprovideCycle | None
    next_cycle: float
    reprovide_interval: float
    cycles: int
    # Stores still running after their Provide or Put ended (min_holders), and how
    # many of those ended since dhtd started, taken or not (0 from an older dhtd).
    background_stores: int = 0
    background_stored: int = 0
    background_failed: int = 0


@dataclass(frozen=True, slots=True)
class PutRecord:
    """A record the node keeps putting again, and the Unix time its last Put
    reached a peer (0: not yet)."""

    key: bytes
    value: bytes
    last_put: float


_MODES: dict[int, str] = {
    dht_pb2.MODE_SERVER: "server",
    dht_pb2.MODE_CLIENT: "client",
}


def peer_from_pb(msg: dht_pb2.PeerInfo) -> PeerInfo:
    return PeerInfo(id=msg.id, addrs=tuple(msg.addrs))


def event_from_pb(msg: dht_pb2.QueryEvent) -> QueryEvent:
    return QueryEvent(
        type=QueryEventType(msg.type),
        id=msg.id,
        responses=tuple(peer_from_pb(p) for p in msg.responses),
        extra=msg.extra,
    )


def provide_events_from_pb(msg: dht_pb2.ProvideResponse) -> list[ProvideEvent]:
    """The events of one Provide response: the clients ask for ``batch_events``, so
    they come in ``events``; a dhtd that predates the flag sends one in ``event``."""
    if msg.events:
        return [ProvideEvent(cid=e.cid, event=event_from_pb(e.event)) for e in msg.events]
    if msg.HasField("event"):
        return [ProvideEvent(cid=msg.cid, event=event_from_pb(msg.event))]
    return []


def provide_holders_from_pb(msg: dht_pb2.ProvideResponse) -> tuple[ProvideHolders, ...] | None:
    """The holders per CID of a Provide stream's last message (it has no event and
    names every CID); None for any other message."""
    if msg.events or msg.HasField("event") or not msg.holders:
        return None
    return tuple(ProvideHolders(cid=h.cid, holders=h.holders) for h in msg.holders)


def put_holders_from_pb(msg: dht_pb2.PutResponse) -> int | None:
    """The holders of a Put stream's last message (it has no event); None for a
    message with events."""
    if msg.events or msg.HasField("event"):
        return None
    return int(msg.holders)


class LastHolders(Generic[_T, _H]):
    """What the last message of a Put or Provide stream reported: ``holders`` (None
    until it ended, and with a dhtd that does not report it). ``convert`` turns each
    response into its events, noting the holders on the way."""

    def __init__(self, events: Callable[[Any], Iterable[_T]],
                 holders: Callable[[Any], _H | None]) -> None:
        self.holders: _H | None = None
        self._events = events
        self._holders = holders

    def convert(self, response: Any) -> Iterable[_T]:
        # Only the last message counts: an eventless message before events is nothing.
        self.holders = self._holders(response)
        return self._events(response)


def events_from_pb(msg: dht_pb2.PutResponse | dht_pb2.QueryResponse) -> list[QueryEvent]:
    """The events of one Put or Query response (batched, or one from an older dhtd)."""
    if msg.events:
        return [event_from_pb(e) for e in msg.events]
    if msg.HasField("event"):
        return [event_from_pb(msg.event)]
    return []


def node_info_from_pb(msg: dht_pb2.InfoResponse) -> NodeInfo:
    return NodeInfo(
        peer_id=msg.peer_id,
        addrs=tuple(msg.addrs),
        mode=_MODES.get(msg.mode, "unspecified"),
        protocol=msg.protocol,
        routing_table_size=msg.routing_table_size,
        connected_peers=msg.connected_peers,
        version=msg.version,
        queries_in_flight=msg.queries_in_flight,
        announced_addrs=tuple(msg.announced_addrs),
    )


def connect_result_from_pb(msg: dht_pb2.ConnectResponse) -> ConnectResult:
    return ConnectResult(
        peer=peer_from_pb(msg.peer), added_to_routing_table=msg.added_to_routing_table
    )


def provide_progress_from_pb(msg: dht_pb2.ProvideManyResponse) -> ProvideProgress:
    return ProvideProgress(received=msg.received, committed=msg.committed,
                           announced=msg.announced, failed=msg.failed, batches=msg.batches)


def _cycle_from_pb(msg: dht_pb2.ReprovideCycle) -> ReprovideCycle:
    return ReprovideCycle(started=msg.started, duration=msg.duration, due=msg.due, done=msg.done,
                          failed=msg.failed, error=msg.error)


def provide_status_from_pb(msg: dht_pb2.ProvideStatusResponse) -> ProvideStatus:
    return ProvideStatus(
        cids=msg.cids,
        current=_cycle_from_pb(msg.current) if msg.HasField("current") else None,
        last=_cycle_from_pb(msg.last) if msg.HasField("last") else None,
        next_cycle=msg.next_cycle,
        reprovide_interval=msg.reprovide_interval,
        cycles=msg.cycles,
        background_stores=msg.background_stores,
        background_stored=msg.background_stored,
        background_failed=msg.background_failed,
    )


def provide_batches(cids: Iterable[str], size: int) -> Iterator[dht_pb2.ProvideManyRequest]:
    """ProvideMany messages of up to ``size`` CIDs each, made as ``cids`` is read."""
    if not 1 <= size <= MAX_CIDS_PER_MESSAGE:  # (checked now, not when the stream starts)
        raise ValueError(f"batch_size must be 1 to {MAX_CIDS_PER_MESSAGE}, not {size}")
    if isinstance(cids, str):
        raise TypeError("cids must be an iterable of CID strings, not one string")

    def batches() -> Iterator[dht_pb2.ProvideManyRequest]:
        batch: list[str] = []
        for cid in cids:
            batch.append(cid)
            if len(batch) == size:
                yield dht_pb2.ProvideManyRequest(cids=batch)
                batch = []
        if batch:
            yield dht_pb2.ProvideManyRequest(cids=batch)

    return batches()
