"""The reprovide cycle: every provided key is announced again before its provider
records expire on other peers, and the node can say how far it got.

A **cycle** starts at the first check (every ``interval / 10``, at least every
second) that finds a key whose last announcement is ``interval`` old or older.
It then announces, in keyspace order and :data:`CHUNK` keys at a time, every
key due now or within the next ``interval * EARLY``. Bringing those keys
forward is what keeps a large set cheap: keys announced together stay together,
so after the first cycle the whole set is announced in a few cycles per
interval, each one sweep over contiguous keyspace regions (:mod:`dhtd.sweep`)
rather than many sweeps over scattered keys.

Promises:

- A key that reached a peer is announced again between ``interval * (1 - EARLY)``
  and ``interval`` plus one check after that, within the 48 h its records live
  on other peers (go-libp2p-kad-dht's amino defaults: 22 h interval).
- A key that reached no peer keeps its old time, so it is due again at the next
  check: a failed cycle is retried then.
- A key that a Provide is announcing right now is skipped (``busy``).
- One cycle reads the provide set once, on a worker thread; it never holds more
  than :data:`CHUNK` keys in memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import trio

from dhtd.errors import DeadlineExceeded, Unavailable
from dhtd.provider.keyset import ProvideSet

log = logging.getLogger("dhtd.provider")

# Keys announced by one sweep of a cycle (ours: a chunk of a keyspace-ordered set
# is a run of adjacent regions, and 10,000 keys with their 20 closest peers each
# are a few MiB of plan).
CHUNK = 10_000

# The share of the interval by which keys are brought forward into a cycle (ours:
# an eighth of 22 h is 2.75 h; keys announced within that of each other merge
# into one cycle, so a set costs at most about eight cycles per interval).
EARLY = 1 / 8

# The longest pause between two checks (ours), whatever the interval.
MAX_CHECK = 3600.0


def check_period(interval: float) -> float:
    """How often the cycle checks for due keys: a tenth of the interval, at least
    every second and at most every :data:`MAX_CHECK`."""
    return min(MAX_CHECK, max(1.0, interval / 10))


@dataclass(frozen=True)
class Cycle:
    """One reprovide cycle, running or ended (times in epoch seconds)."""

    started: float
    due: int  # keys due (or early) when it started
    done: int = 0  # keys that reached at least one peer
    failed: int = 0  # keys that reached no peer (due again at the next check)
    ended: float = 0.0  # 0 while it runs
    error: str = ""  # why it stopped early, if it did

    def duration(self, now: float) -> float:
        return (self.ended or now) - self.started


@dataclass(frozen=True)
class Status:
    """What :meth:`Reprovider.status` reports."""

    keys: int  # the provide set's size
    interval: float
    current: Cycle | None
    last: Cycle | None
    next_cycle: float | None  # epoch seconds of the next check that starts one; None: nothing


class Reprovider:
    """Runs the cycles of one node (:meth:`run`, under the node's nursery)."""

    def __init__(
        self,
        keys: ProvideSet,
        provide: Callable[[Sequence[bytes], float], Awaitable[list[int]]],
        ready: Callable[[], bool],
        busy: Callable[[bytes], bool],
        clock: Callable[[], float],
        interval: Callable[[], float],
        timeout: float,
    ) -> None:
        self.keys = keys
        # (keys, timeout) -> peers that took each (not strict: 0 for none).
        self._provide = provide
        self._ready = ready  # the node has peers to announce to
        self._busy = busy  # a Provide is announcing this key
        self._clock = clock
        self._interval = interval
        self._timeout = timeout  # one chunk's announcement
        self.current: Cycle | None = None
        self.last: Cycle | None = None
        self._next_check = 0.0
        self.cycles = 0  # ended, for metrics
        self.announced = 0  # keys announced by cycles, for metrics
        self.failures = 0  # keys that reached no peer in a cycle, for metrics

    async def run(self) -> None:
        while True:
            period = check_period(self._interval())
            self._next_check = self._clock() + period
            await trio.sleep(period)
            if not self._ready():
                continue
            interval = self._interval()
            now = self._clock()
            oldest = self.keys.oldest()
            if oldest is None or oldest > now - interval:
                continue
            await self.cycle(now - interval + interval * EARLY)

    async def cycle(self, before: float) -> Cycle:
        """Announces every key last announced at or before ``before``; returns the
        cycle as it ended."""
        self.current = Cycle(started=self._clock(), due=await self.keys.count_due(before))
        after = b""
        try:
            while True:
                chunk = await self.keys.due(before, after, CHUNK)
                if not chunk:
                    break
                after = chunk[-1][0]
                keys = [key for _, key in chunk if not self._busy(key)]
                if not keys:
                    continue
                counts = await self._provide(keys, self._timeout)
                failed = counts.count(0)
                self.current = replace(self.current, done=self.current.done + len(keys) - failed,
                                       failed=self.current.failed + failed)
        except (Unavailable, DeadlineExceeded) as exc:
            self.current = replace(self.current, error=str(exc))
            log.info("reprovide cycle stopped early", extra={"error": str(exc)})
        ended = replace(self.current, ended=self._clock())
        self.current, self.last = None, ended
        self.cycles += 1
        self.announced += ended.done
        self.failures += ended.failed
        log.info("reprovide cycle ended", extra={
            "due": ended.due, "done": ended.done, "failed": ended.failed,
            "seconds": round(ended.duration(ended.ended), 3)})
        return ended

    def next_cycle(self) -> float | None:
        """When the next cycle starts, if the set does not change: the first check at
        or after the oldest key falls due (None: the set is empty)."""
        oldest = self.keys.oldest()
        if oldest is None:
            return None
        if self.current is not None:
            return self.current.started
        due = oldest + self._interval()
        period = check_period(self._interval())
        behind = max(0.0, due - self._next_check)
        return self._next_check + math.ceil(behind / period) * period

    def status(self) -> Status:
        return Status(keys=len(self.keys), interval=self._interval(), current=self.current,
                      last=self.last, next_cycle=self.next_cycle())
