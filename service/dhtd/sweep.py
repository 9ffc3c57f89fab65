"""Batched providing: the k closest peers of many keys, from a few lookups per keyspace region.

A walk per key costs one lookup per key. Kubo's sweep provider
(go-libp2p-kad-dht ``provider/``) instead groups the keys by keyspace region and
explores each region once; this is our own version of that idea.

A *region* is every kad key under a binary prefix (depth d, value v). A lookup
toward any point of a region meets the peers closest to that point; when fewer
than k of those it met (answered or failed) lie in the region, they are *all*
of the region's peers (every peer inside is closer to the point than any peer
outside, and answers name the k closest, down peers included). So a region is
enumerated by a lookup, split in two while the lookup meets k inside.

And when a region R holds at least k live peers and all of them are known, the k
closest live peers of any key in R are among them (same argument), so each
key's k closest are computed exactly, with no lookup of its own. (A walk per key
does no better: down peers take a place in every answer, so the live peers just
beyond the k closest are never named to it.)

:func:`plan` walks the keys' regions from the whole keyspace down: a region with
k peers or more splits into its halves; a half with keys but fewer than k peers
is assigned from the whole region, its other half enumerated for it. Regions
with FEW_KEYS keys or fewer walk per key, as do keys whose region could not be
enumerated within the budget (never more lookups than a walk per key would
cost). Lookup targets are points known to lie in the region: one of the keys, a
peer seen in an earlier lookup, or else a hash found with that prefix (bounded).

Promise: each key is given the k closest peers among those the lookups found,
which are the ones a walk per key would find (the same lookups, toward the same
region), barring churn; with the number of lookups reported.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from dhtd.ids import kad_key
from dhtd.lookup import PeerRecord
from dhtd.routing import BUCKET_SIZE

# Ours: a region with this few keys walks per key: exploring it costs at least as
# many lookups (the region's, and often its other half's).
FEW_KEYS = 3

# Ours: the longest prefix a lookup target is searched for by hashing (2^bits
# hashes on average, on a worker thread: 2^16 is about 40 ms). Regions are that
# deep only in networks of millions of peers; deeper ones walk per key.
MAX_TARGET_BITS = 16

BITS = 256

Lookup = Callable[[bytes], Awaitable[tuple[list[PeerRecord], list[bytes]]]]
"""A lookup toward a key (sent as the FIND_NODE key, placed in the keyspace by its
SHA-256): the k closest peers that answered, nearest first, and the nearest ones
that were asked and failed (LookupResult.closest and .unreachable)."""


@dataclass
class Plan:
    """Each key's k closest peers (by key, as given), and what it cost."""

    peers_of: dict[bytes, list[PeerRecord]] = field(default_factory=dict)
    lookups: int = 0  # lookups run, exploration and per-key walks together
    walked: int = 0  # keys that got a walk of their own


class _Incomplete(Exception):
    """A region could not be enumerated (no target, or the lookup budget ran out)."""


# Ours: keys handled between two checkpoints in the loops over every key.
CHECKPOINT = 500


async def plan(keys: Sequence[bytes], lookup: Lookup, k: int = BUCKET_SIZE,
               few: int = FEW_KEYS, concurrency: int = 8) -> Plan:
    """The k closest peers of each key (multihashes), in fewer lookups than keys
    when they are many (see the module)."""
    sweep = _Sweep(lookup, k, few, budget=len(set(keys)), concurrency=concurrency)
    await sweep.run(list(dict.fromkeys(keys)))
    return sweep.result


def _in(point: int, d: int, v: int) -> bool:
    return d == 0 or point >> (BITS - d) == v


class _Sweep:
    def __init__(self, lookup: Lookup, k: int, few: int, budget: int,
                 concurrency: int) -> None:
        self._lookup = lookup
        self.k = k
        self.few = few
        self.budget = budget
        self.result = Plan()
        self._limiter = trio.CapacityLimiter(concurrency)
        # lookup target -> (the peers that answered, the ones that failed)
        self._answers: dict[bytes, tuple[list[PeerRecord], list[bytes]]] = {}
        self._pending: dict[bytes, trio.Event] = {}
        self._point: dict[bytes, int] = {}  # key or peer ID -> its place in the keyspace
        # every peer a lookup returned, in the order met (targets are picked from it,
        # so a plan is the same every run)
        self._seen: dict[bytes, None] = {}

    def point(self, key: bytes) -> int:
        at = self._point.get(key)
        if at is None:
            at = self._point[key] = int.from_bytes(kad_key(key), "big")
        return at

    async def closest(self, target: bytes, per_key: bool = False
                      ) -> tuple[list[PeerRecord], list[bytes]]:
        """The lookup toward ``target``, once per target (concurrent askers share it)."""
        while target in self._pending:
            await self._pending[target].wait()
        if target in self._answers:
            return self._answers[target]
        if not per_key and self.result.lookups >= self.budget:
            raise _Incomplete("lookup budget used up")
        self.result.lookups += 1
        done = self._pending[target] = trio.Event()
        try:
            async with self._limiter:
                answered, failed = await self._lookup(target)
            answer = self._answers[target] = answered[:self.k], failed
            self._seen.update(dict.fromkeys(peer.id for peer in answered))
            return answer
        finally:
            del self._pending[target]
            done.set()

    def inside(self, peers: list[PeerRecord], d: int, v: int) -> list[PeerRecord]:
        return [p for p in peers if _in(self.point(p.id), d, v)]

    async def region(self, d: int, v: int, keys: Sequence[bytes]
                     ) -> tuple[list[PeerRecord], bool]:
        """The live peers a lookup into region (d, v) found there, and whether those
        are all of its peers (fewer than k met inside, failed ones counted)."""
        answered, failed = await self.closest(await self.target(d, v, keys))
        live = self.inside(answered, d, v)
        down = sum(1 for p in failed if _in(self.point(p), d, v))
        return live, len(live) + down < self.k

    def nearest(self, pool: list[PeerRecord], key: bytes) -> list[PeerRecord]:
        at = self.point(key)
        unique = {p.id: p for p in pool}
        return sorted(unique.values(), key=lambda p: self.point(p.id) ^ at)[:self.k]

    async def target(self, d: int, v: int, keys: Sequence[bytes]) -> bytes:
        """A key whose place is in region (d, v): the first of ``keys`` (sorted), else a
        peer seen there, else one found by hashing."""
        if keys:
            return keys[0]
        for peer_id in self._seen:
            if _in(self.point(peer_id), d, v):
                return peer_id
        if d > MAX_TARGET_BITS:
            raise _Incomplete(f"no known point in a region {d} bits deep")
        # (trio 0.35's decorated signature hides its keyword arguments from mypy)
        return await trio.to_thread.run_sync(  # type: ignore[call-arg]
            lambda: _hash_with_prefix(d, v), abandon_on_cancel=True)

    async def run(self, keys: list[bytes]) -> None:
        keys.sort(key=self.point)
        if len(keys) <= self.few:
            await self.per_key(keys)
            return
        everyone, _ = await self.region(0, 0, keys)
        if len(everyone) < self.k:  # fewer than k live peers in the whole network
            try:
                pool = await self.explore(0, 0, keys)
            except _Incomplete:
                await self.per_key(keys)
                return
            await self.assign_nearest(pool, keys)
            return
        await self.assign(0, 0, keys)

    async def assign(self, d: int, v: int, keys: list[bytes]) -> None:
        """Keys in region (d, v), which holds at least k live peers."""
        if len(keys) <= self.few or d >= BITS:
            await self.per_key(keys)
            return
        halves: tuple[list[bytes], list[bytes]] = ([], [])
        for key in keys:
            halves[self.point(key) >> (BITS - d - 1) & 1].append(key)
        async with trio.open_nursery() as nursery:
            for bit in (0, 1):
                if halves[bit]:
                    nursery.start_soon(self.assign_half, d + 1, 2 * v + bit, halves[bit])

    async def assign_half(self, d: int, v: int, keys: list[bytes]) -> None:
        try:
            live, _ = await self.region(d, v, keys)
            if len(live) >= self.k:
                await self.assign(d, v, keys)
                return
            # Fewer than k live here: the whole parent region (at least k) decides.
            pool = await self.explore(d, v, keys) + await self.explore(d, v ^ 1)
        except _Incomplete:
            await self.per_key(keys)
            return
        await self.assign_nearest(pool, keys)

    async def assign_nearest(self, pool: list[PeerRecord], keys: list[bytes]) -> None:
        """Each key's k nearest of ``pool``; lets other tasks run every CHECKPOINT keys
        (a plan of 10,000 keys would otherwise hold the loop for tens of ms)."""
        for i, key in enumerate(keys, 1):
            self.result.peers_of[key] = self.nearest(pool, key)
            if i % CHECKPOINT == 0:
                await trio.lowlevel.checkpoint()

    async def explore(self, d: int, v: int, keys: Sequence[bytes] = ()) -> list[PeerRecord]:
        """Every live peer of region (d, v) (raises _Incomplete if that cannot be known)."""
        live, complete = await self.region(d, v, keys)
        if complete or d >= BITS:
            return live
        # (one half after the other: regions are explored side by side already)
        return await self.explore(d + 1, 2 * v) + await self.explore(d + 1, 2 * v + 1)

    async def per_key(self, keys: Sequence[bytes]) -> None:
        async def walk(key: bytes) -> None:
            self.result.peers_of[key] = (await self.closest(key, per_key=True))[0]
            self.result.walked += 1

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(walk, key)


def _hash_with_prefix(d: int, v: int) -> bytes:
    """A random sha2-256 multihash whose kad key starts with the d bits of v."""
    for _ in range(64 << d):  # fails with probability about e^-64
        candidate = b"\x12\x20" + os.urandom(32)
        if int.from_bytes(hashlib.sha256(candidate).digest(), "big") >> (BITS - d) == v:
            return candidate
    raise _Incomplete(f"no key found with a {d}-bit prefix")
