"""Plain value types returned by the clients, and their conversion from protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from dht.v1 import dht_pb2

__all__ = [
    "ConnectResult",
    "NodeInfo",
    "PeerInfo",
    "ProvideEvent",
    "ProvidedCid",
    "PutRecord",
    "QueryEvent",
    "QueryEventType",
]


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
class NodeInfo:
    """What dhtd says about itself. ``mode`` is "server", "client" or "unspecified"."""

    peer_id: str
    addrs: tuple[str, ...]
    mode: str
    protocol: str
    routing_table_size: int
    connected_peers: int
    version: str
    queries_in_flight: int


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


def provide_event_from_pb(msg: dht_pb2.ProvideResponse) -> ProvideEvent:
    return ProvideEvent(cid=msg.cid, event=event_from_pb(msg.event))


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
    )


def connect_result_from_pb(msg: dht_pb2.ConnectResponse) -> ConnectResult:
    return ConnectResult(
        peer=peer_from_pb(msg.peer), added_to_routing_table=msg.added_to_routing_table
    )
