"""A typed Python client for dhtd, the libp2p Kademlia DHT served over gRPC."""

from ._aio import AsyncClient
from ._errors import (
    CallCancelledError,
    DataLossError,
    DeadlineExceededError,
    DhtdError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from ._models import (
    ConnectResult,
    NodeInfo,
    PeerInfo,
    ProvidedCid,
    ProvideEvent,
    ProvideProgress,
    ProvideStatus,
    PutRecord,
    QueryEvent,
    QueryEventType,
    ReprovideCycle,
)
from ._sync import Client

__all__ = [
    "AsyncClient",
    "CallCancelledError",
    "Client",
    "ConnectResult",
    "DataLossError",
    "DeadlineExceededError",
    "DhtdError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NodeInfo",
    "NotFoundError",
    "PeerInfo",
    "ProvideEvent",
    "ProvideProgress",
    "ProvideStatus",
    "ProvidedCid",
    "PutRecord",
    "QueryEvent",
    "QueryEventType",
    "ReprovideCycle",
    "UnavailableError",
]
