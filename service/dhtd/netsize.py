"""An estimate of the DHT's size from the distances that lookups see.

After ProbeLab's network-size estimator (go-libp2p-kad-dht's ``netsize``): the
Kademlia keys of N peers are uniform in [0, 2^256), so the i-th closest of them
to any key lies, on average, i / (N + 1) of the keyspace away. Every walk that
converged hands its k closest peers to :meth:`Estimator.track`; each gives a
least-squares slope s of distance against rank, and 1/s - 1 estimates N. The
estimate averages the slopes of the last WINDOW walks (averaging slopes, not
sizes: 1/s is skewed by a walk whose peers happen to lie close).

Pure arithmetic: no trio, no network.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from dhtd.ids import kad_key

# Walks the estimate averages over (ours; go-libp2p-kad-dht's netsize keeps about
# as many measurements).
WINDOW = 100

# Walks needed before there is an estimate at all (ours: one walk's figure is off
# by tens of percent).
MIN_WALKS = 5

_KEYSPACE = float(1 << 256)


class Estimator:
    """The network's size, from the k closest peers of converged walks."""

    def __init__(self, k: int, window: int = WINDOW) -> None:
        self.k = k
        self._slopes: deque[float] = deque(maxlen=window)
        # sum of i^2 for i = 1..k: the denominator of every slope.
        self._ranks = sum(i * i for i in range(1, k + 1))

    def track(self, key: bytes, closest: Sequence[bytes]) -> None:
        """A walk towards ``key`` (raw key bytes) converged on ``closest`` (peer IDs,
        any order). Ignored unless it found k peers."""
        if len(closest) < self.k:
            return
        target = int.from_bytes(kad_key(key), "big")
        distances = sorted(
            (int.from_bytes(kad_key(peer), "big") ^ target) / _KEYSPACE for peer in closest
        )[: self.k]
        slope = sum(rank * d for rank, d in enumerate(distances, start=1)) / self._ranks
        if slope > 0:
            self._slopes.append(slope)

    def estimate(self) -> int | None:
        """The estimated number of DHT servers, or None before MIN_WALKS walks."""
        if len(self._slopes) < MIN_WALKS:
            return None
        slope = sum(self._slopes) / len(self._slopes)
        return max(self.k, round(1 / slope - 1))
