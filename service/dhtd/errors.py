"""Domain errors raised by the core.

The core never knows about gRPC: it raises these, and the gRPC edge
(:mod:`dhtd.api.status`) maps each class to one status code in one table.
Messages are written for the caller: they say what was wrong and, where it
helps, what to do. Client input appears in them only through :func:`excerpt`,
so a message stays short whatever the request held.
"""

from __future__ import annotations

# Client input quoted in an error message is cut to this many characters: enough
# to recognise the value, never enough to turn a huge field into a huge
# grpc-message (a 1 MB field must not come back as a 1 MB status, let alone 3).
ECHO_CHARS = 100

# Marks where client input was cut.
ELLIPSIS = "…"


def excerpt(value: str | bytes, limit: int = ECHO_CHARS) -> str:
    """At most ``limit`` characters of client input, for an error message.

    The result is one line of ASCII (but for the ellipsis): non-ASCII and
    control characters are escaped as ``repr`` escapes them (``\\xff``, ``\\n``, ``\\u00e9``), and
    :data:`ELLIPSIS` is appended when anything was cut. It never quotes:
    callers write ``f"'{excerpt(text)}'"``.
    """
    # bytes' repr is ASCII already; ascii() is repr with non-ASCII escaped too.
    body = repr(value[:limit])[2:-1] if isinstance(value, bytes) else ascii(value[:limit])[1:-1]
    cut = len(value) > limit or len(body) > limit
    return body[:limit] + ELLIPSIS if cut else body


class DhtdError(Exception):
    """Base of every error the core raises on purpose."""


class InvalidArgument(DhtdError):
    """A request field is malformed. The message names the field and says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(DhtdError):
    """The walk ended and nothing was found."""


class Unavailable(DhtdError):
    """The DHT cannot serve the request now (no peers, no peer accepted)."""


class FailedPrecondition(DhtdError):
    """The request is well formed but this node cannot do it in its state."""


class DeadlineExceeded(DhtdError):
    """The caller's deadline or the server's query timeout passed."""


class InvalidRecord(DhtdError):
    """A record failed its namespace's validator."""


class DataLoss(DhtdError):
    """Data dhtd was given is corrupt (a block that does not hash to its CID)."""


class ResourceExhausted(DhtdError):
    """dhtd is at one of its limits (e.g. calls in flight); the message names the limit,
    and the same request may succeed later."""
