"""A typed Python client for dhtd, the libp2p Kademlia DHT served over gRPC."""

from ._aio import AsyncClient, AsyncHoldersStream
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
    ProvideHolders,
    ProvideProgress,
    ProvideStatus,
    PutRecord,
    QueryEvent,
    QueryEventType,
    ReprovideCycle,
)
from ._sync import Client, HoldersStream

__all__ = [
    "AsyncClient",
    "AsyncHoldersStream",
    "CallCancelledError",
    "Client",
    "ConnectResult",
    "DataLossError",
    "DeadlineExceededError",
    "DhtdError",
    "FailedPreconditionError",
    "HoldersStream",
    "InternalError",
    "InvalidArgumentError",
    "NodeInfo",
    "NotFoundError",
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
    "UnavailableError",
]
