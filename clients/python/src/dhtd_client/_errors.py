"""Typed exceptions for failed dhtd calls, translated from ``grpc.RpcError``."""

from __future__ import annotations

import grpc

__all__ = [
    "CallCancelledError",
    "DeadlineExceededError",
    "DhtdError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "UnavailableError",
]


class DhtdError(Exception):
    """A dhtd call failed. ``code`` is the gRPC status code, ``details`` its message."""

    code: grpc.StatusCode
    details: str

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details

    def __str__(self) -> str:
        name = getattr(self.code, "name", str(self.code))
        return f"{name}: {self.details}" if self.details else str(name)


class InvalidArgumentError(DhtdError):
    """INVALID_ARGUMENT: a malformed peer ID, CID, key or multiaddr."""


class NotFoundError(DhtdError):
    """NOT_FOUND: the DHT walk ended without a result."""


class DeadlineExceededError(DhtdError):
    """DEADLINE_EXCEEDED: the call's timeout passed."""


class UnavailableError(DhtdError):
    """UNAVAILABLE: dhtd is unreachable, or no peer accepted a record."""


class FailedPreconditionError(DhtdError):
    """FAILED_PRECONDITION: the node cannot do this now (e.g. recursive provide without
    a block source, or a DAG with a missing block)."""


class DataLossError(DhtdError):
    """DATA_LOSS: a block of a recursive provide's DAG does not hash to its CID."""


class CallCancelledError(DhtdError):
    """CANCELLED: the call was cancelled (named so as not to clash with asyncio)."""


class InternalError(DhtdError):
    """INTERNAL: dhtd failed unexpectedly."""


_BY_CODE: dict[grpc.StatusCode, type[DhtdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(err: grpc.RpcError) -> DhtdError:
    """Translate a ``grpc.RpcError`` (sync or ``grpc.aio``) into a ``DhtdError``."""
    code_fn = getattr(err, "code", None)
    code = code_fn() if callable(code_fn) else None
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    details = details_fn() if callable(details_fn) else None
    cls = _BY_CODE.get(code, DhtdError)
    return cls(code, details if isinstance(details, str) else "")
