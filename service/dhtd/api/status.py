"""Domain errors to gRPC status codes, in one table.

| error                 | status              | when                                          |
|-----------------------|---------------------|-----------------------------------------------|
| InvalidArgument       | INVALID_ARGUMENT    | a field is malformed; the message names it    |
| InvalidRecord         | INVALID_ARGUMENT    | a key or value fails its namespace's rules    |
| NotFound              | NOT_FOUND           | the walk ended with nothing found             |
| DeadlineExceeded      | DEADLINE_EXCEEDED   | the deadline or --query-timeout passed        |
| Unavailable           | UNAVAILABLE         | no DHT peers, no peer accepted, shutting down |
| FailedPrecondition    | FAILED_PRECONDITION | well formed, but not possible in this state   |
| ResourceExhausted     | RESOURCE_EXHAUSTED  | at a limit (--max-concurrent-rpcs); retry     |
| DataLoss              | DATA_LOSS           | a block that does not hash to its CID         |
| anything else         | INTERNAL            | a bug: logged with its traceback              |

A message is at most MAX_STATUS_MESSAGE_CHARS characters, whatever raised it.
"""

from __future__ import annotations

import logging

import grpc

from dhtd.errors import (
    ELLIPSIS,
    DataLoss,
    DeadlineExceeded,
    DhtdError,
    FailedPrecondition,
    InvalidArgument,
    InvalidRecord,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger("dhtd.api")

# The longest status message sent. Messages quote client input only through
# dhtd.errors.excerpt; this cap holds for any other text that reaches a status
# (a library's reason, an operator's list of namespaces), so that no call can
# make dhtd send a large grpc-message.
MAX_STATUS_MESSAGE_CHARS = 400

STATUS_OF: dict[type[DhtdError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRecord: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DataLoss: grpc.StatusCode.DATA_LOSS,
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``exc``.

    An exception group (work that ran in a nursery) is judged by its first
    domain error, if it holds one; anything else in it is a bug."""
    if isinstance(exc, BaseExceptionGroup):
        domain, rest = exc.split(DhtdError)
        if domain is not None:
            if rest is not None:
                log.error("internal error beside a domain error", exc_info=rest)
            return status_of(_first_leaf(domain))
    for kind in type(exc).__mro__:
        code = STATUS_OF.get(kind)
        if code is not None:
            return code, bounded(str(exc))
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


def _first_leaf(group: BaseExceptionGroup[DhtdError]) -> DhtdError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def bounded(message: str) -> str:
    """``message``, cut to MAX_STATUS_MESSAGE_CHARS (ending in an ellipsis when cut)."""
    if len(message) <= MAX_STATUS_MESSAGE_CHARS:
        return message
    return message[: MAX_STATUS_MESSAGE_CHARS - len(ELLIPSIS)] + ELLIPSIS
