"""The DHT budget of an RPC: the caller's deadline less a margin, capped by --query-timeout."""

from __future__ import annotations

from typing import Any

import pytest

from dhtd.api.servicer import DhtServicer


class Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        (None, 60.0),  # no deadline: the cap
        (1000.0, 60.0),  # a longer deadline never lifts the cap
        (5.0, 5.0 - 0.02),  # a shorter one wins, less the 20 ms margin
        (0.01, 0.0),  # never negative
    ],
)
def test_budget(remaining: float | None, expected: float) -> None:
    servicer: Any = DhtServicer(node=None, bridge=None, query_timeout=60.0)  # type: ignore[arg-type]
    assert servicer.timeout(Context(remaining)) == pytest.approx(expected)
