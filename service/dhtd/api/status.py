"""Domain errors to gRPC status codes, in one table.

| error                 | status              | when                                          |
|-----------------------|---------------------|-----------------------------------------------|
| InvalidArgument       | INVALID_ARGUMENT    | a field is malformed; the message names it    |
| InvalidRecord         | INVALID_ARGUMENT    | a key or value fails its namespace's rules    |
| NotFound              | NOT_FOUND           | the walk ended with nothing found             |
| DeadlineExceeded      | DEADLINE_EXCEEDED   | the deadline or --query-timeout passed        |
| Unavailable           | UNAVAILABLE         | no DHT peers, no peer accepted, shutting down |
| FailedPrecondition    | FAILED_PRECONDITION | well formed, but not possible in this state   |
| anything else         | INTERNAL            | a bug: logged with its traceback              |
"""

from __future__ import annotations

import logging

import grpc

from dhtd.errors import (
    DeadlineExceeded,
    DhtdError,
    FailedPrecondition,
    InvalidArgument,
    InvalidRecord,
    NotFound,
    Unavailable,
)

log = logging.getLogger("dhtd.api")

STATUS_OF: dict[type[DhtdError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRecord: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``exc``."""
    for kind in type(exc).__mro__:
        code = STATUS_OF.get(kind)
        if code is not None:
            return code, str(exc)
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
