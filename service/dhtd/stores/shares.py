"""Fair, bounded accounting for a store that holds records for other peers.

:class:`Shares` tracks entries (any hashable id) with an owner, a cost and the time
they were received. It promises:

* **A cap per owner**: no owner holds more than ``per_owner`` cost; past it, an
  admission is refused with :class:`StoreFull`.
* **A total cap**: the total never exceeds ``capacity``. A full store makes room by
  evicting the oldest entries of its *biggest* owner, and only if that owner holds
  more than the newcomer would after admission; so a flooder (or many of them)
  pays for room, and an honest peer with little stored still gets in.
* **O(log owners) per admission**, never a sweep: the biggest owner comes from a
  lazily pruned heap, and expiry pops entries from the head of one queue kept in
  order of reception (:meth:`collect`, a few at a time).
* **Exempt owners** (``None``, this node itself) are never refused or evicted and
  do not count against the caps; what they may store is bounded by the API.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

Owner = bytes | None
"""A peer ID; None is this node itself (exempt from every share)."""


class StoreFull(Exception):
    """The store refused an entry: its owner is over its share, or the store is full."""


@dataclass
class Entry:
    owner: Owner
    cost: int
    received_at: float


class Usage:
    """What each owner holds, and the owners biggest first, in O(log owners).

    ``total`` is the sum over owners. The biggest owner comes from a heap of
    (-usage, owner) pairs pushed at every change; stale pairs are skipped when
    popped and dropped when they dominate."""

    def __init__(self) -> None:
        self.total = 0
        self._usage: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []

    def __getitem__(self, owner: bytes) -> int:
        return self._usage.get(owner, 0)

    def __len__(self) -> int:
        """Owners holding anything."""
        return len(self._usage)

    def charge(self, owner: bytes, delta: int) -> int:
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

    def reset(self, usage: dict[bytes, int]) -> None:
        """Replaces every owner's usage (e.g. as read back from a file)."""
        self._usage = {o: u for o, u in usage.items() if u > 0}
        self.total = sum(self._usage.values())
        self._heap = [(-u, o) for o, u in self._usage.items()]
        heapq.heapify(self._heap)

    def biggest(self) -> bytes | None:
        """The owner holding the most (None if nobody holds anything)."""
        for owner in self.biggest_first():
            return owner
        return None

    def biggest_first(self) -> Iterator[bytes]:
        """Owners by usage, biggest first. Usage may change between yields (an
        eviction): the heap is repaired when the iteration ends."""
        seen: set[bytes] = set()
        popped: list[tuple[int, bytes]] = []
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


class Shares(Generic[K]):
    """Owners, costs and reception times of a store's entries (see the module doc)."""

    def __init__(self, capacity: int, per_owner: int, max_age: float) -> None:
        if capacity < 1 or per_owner < 1:
            raise ValueError("capacity and per_owner must be at least 1")
        if not max_age > 0:
            raise ValueError("max_age must be positive")
        self.capacity = capacity
        self.per_owner = per_owner
        self.max_age = max_age
        # Every entry, oldest reception first: the head expires first.
        self._entries: OrderedDict[K, Entry] = OrderedDict()
        self._by_owner: dict[bytes, OrderedDict[K, None]] = {}
        self._usage = Usage()

    @property
    def total(self) -> int:
        return self._usage.total

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, entry: K) -> Entry | None:
        return self._entries.get(entry)

    def usage(self, owner: bytes) -> int:
        return self._usage[owner]

    def live(self, entry: K, now: float) -> bool:
        found = self._entries.get(entry)
        return found is not None and now - found.received_at < self.max_age

    def admit(self, entry: K, owner: Owner, cost: int, now: float) -> list[K]:
        """Records ``entry`` (new, or replacing itself) for ``owner`` at ``now``.

        Returns the ids evicted to make room (the caller drops their data).
        Raises StoreFull, leaving any previous version of ``entry`` in place."""
        old = self._entries.get(entry)
        old_cost = old.cost if old is not None and old.owner == owner else 0
        if owner is not None:
            after = self.usage(owner) - old_cost + cost
            if after > self.per_owner:
                raise StoreFull(
                    f"this peer's share of the store is used up ({self.per_owner} units)")
            freed = old.cost if old is not None and old.owner is not None else 0
            evicted = self._make_room(self.total - freed + cost, after, owner, entry)
        else:
            evicted = []
        if old is not None:
            self._drop(entry)
        self._entries[entry] = Entry(owner, cost, now)
        if owner is not None:
            self._by_owner.setdefault(owner, OrderedDict())[entry] = None
            self._charge(owner, cost)
        return evicted

    def _make_room(self, needed: int, newcomer: int, owner: bytes, keep: K) -> list[K]:
        """Evicts from the biggest owners until ``needed`` fits; StoreFull if it cannot."""
        if needed <= self.capacity:
            return []
        # Plan first, so that a refusal evicts nothing.
        plan: list[K] = []
        planned: set[K] = set()
        freed = 0
        # What the plan takes from each victim: O(victims), never a copy of every
        # owner's usage (a full store may have 200,000 owners).
        taken: dict[bytes, int] = {}
        for victim in self._usage.biggest_first():
            while needed - freed > self.capacity:
                left = self._usage[victim] - taken.get(victim, 0)
                if victim == owner or left <= newcomer:
                    raise StoreFull("the store is full and no peer holds more than this one")
                queue = self._by_owner[victim]
                candidates = (e for e in queue if e != keep and e not in planned)
                oldest = next(candidates, None)
                if oldest is None:
                    break
                plan.append(oldest)
                planned.add(oldest)
                cost = self._entries[oldest].cost
                freed += cost
                taken[victim] = taken.get(victim, 0) + cost
                if left - cost <= newcomer:
                    break
            if needed - freed <= self.capacity:
                break
        if needed - freed > self.capacity:
            raise StoreFull("the store is full and no peer holds more than this one")
        for victim_entry in plan:
            self._drop(victim_entry)
        return plan

    def _charge(self, owner: bytes, delta: int) -> None:
        if self._usage.charge(owner, delta) <= 0:
            self._by_owner.pop(owner, None)

    def _drop(self, entry: K) -> Entry | None:
        found = self._entries.pop(entry, None)
        if found is None:
            return None
        if found.owner is not None:
            queue = self._by_owner.get(found.owner)
            if queue is not None:
                queue.pop(entry, None)
            self._charge(found.owner, -found.cost)
        return found

    def remove(self, entry: K) -> bool:
        return self._drop(entry) is not None

    def collect(self, now: float, budget: int) -> list[K]:
        """Removes up to ``budget`` entries that expired at ``now``, oldest first."""
        out: list[K] = []
        while len(out) < budget and self._entries:
            entry, found = next(iter(self._entries.items()))
            if now - found.received_at < self.max_age:
                break
            self._drop(entry)
            out.append(entry)
        return out
