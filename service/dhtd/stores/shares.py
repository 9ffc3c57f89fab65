"""Fair shares of a store that holds records for other peers.

The rule both record stores (:mod:`dhtd.stores.providers`,
:mod:`dhtd.stores.values`) follow, with their records on disk and only the
accounting here, in memory:

* **A cap per owner**: no owner holds more than its share; past it, a record is
  refused with :class:`StoreFull`.
* **A total cap**: a full store makes room by evicting the oldest records of its
  *biggest* owner, and only while that owner holds more than the newcomer would
  after admission; so a flooder (or many of them) pays for room, and an honest
  peer with little stored still gets in. Otherwise it refuses, evicting nothing.
* **O(log owners) per admission**, never a sweep: :class:`Usage` keeps each
  owner's total and finds the biggest from a lazily pruned heap.
* **Exempt records** (owner ``None``: this node itself) are never refused or
  evicted and do not count; what they may store is bounded by the API.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

Owner = bytes | None
"""A peer ID; None is this node itself (exempt from every share)."""


class StoreFull(Exception):
    """The store refused an entry: its owner is over its share, or the store is full."""


K = TypeVar("K", bound=Hashable)


class Usage(Generic[K]):
    """What each owner holds, and the owners biggest first, in O(log owners).

    ``total`` is the sum over owners. The biggest owner comes from a heap of
    (-usage, owner) pairs pushed at every change, so every owner has one pair
    that is up to date; stale pairs are skipped when met and dropped when they
    dominate. (Owners are peer IDs, or the provider store's row numbers for them.)"""

    def __init__(self) -> None:
        self.total = 0
        self._usage: dict[K, int] = {}
        self._heap: list[tuple[int, K]] = []

    def __getitem__(self, owner: K) -> int:
        return self._usage.get(owner, 0)

    def __len__(self) -> int:
        """Owners holding anything."""
        return len(self._usage)

    def charge(self, owner: K, delta: int) -> int:
        """Adds ``delta`` to ``owner``'s usage (negative to refund); returns the new usage."""
        usage = self._usage.get(owner, 0) + delta
        self.total += delta
        if usage > 0:
            self._usage[owner] = usage
            heapq.heappush(self._heap, (-usage, owner))
            self._compact()
        else:
            self._usage.pop(owner, None)
        return usage

    def reset(self, usage: dict[K, int]) -> None:
        """Replaces every owner's usage (e.g. as read back from a file)."""
        self._usage = {o: u for o, u in usage.items() if u > 0}
        self.total = sum(self._usage.values())
        self._heap = [(-u, o) for o, u in self._usage.items()]
        heapq.heapify(self._heap)

    def biggest(self) -> K | None:
        """The owner holding the most (None if nobody holds anything), in O(1)
        amortized: stale pairs on top of the heap are dropped on the way."""
        heap = self._heap
        while heap:
            neg, owner = heap[0]
            if self._usage.get(owner, 0) == -neg:
                return owner
            heapq.heappop(heap)
        return None

    def biggest_first(self) -> Iterator[K]:
        """Owners by usage, biggest first. Usage may change between yields (an
        eviction): the heap is repaired when the iteration ends."""
        seen: set[K] = set()
        popped: list[tuple[int, K]] = []
        try:
            while self._heap:
                neg, owner = heapq.heappop(self._heap)
                if owner in seen or self._usage.get(owner, 0) != -neg:
                    continue  # stale
                seen.add(owner)
                popped.append((neg, owner))
                yield owner
        finally:
            for pair in popped:
                if self._usage.get(pair[1], 0) == -pair[0]:
                    heapq.heappush(self._heap, pair)
            for owner in seen:
                usage = self._usage.get(owner, 0)
                if usage:
                    heapq.heappush(self._heap, (-usage, owner))
            self._compact()

    def _compact(self) -> None:
        # Stale heap pairs accumulate with every change; rebuild when they dominate.
        if len(self._heap) > 4 * len(self._usage) + 64:
            self._heap = [(-u, o) for o, u in self._usage.items()]
            heapq.heapify(self._heap)
