"""Domain errors raised by the core.

The core never knows about gRPC: it raises these, and the gRPC edge
(:mod:`dhtd.api.status`) maps each class to one status code in one table.
Messages are written for the caller: they say what was wrong and, where it
helps, what to do.
"""

from __future__ import annotations


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
