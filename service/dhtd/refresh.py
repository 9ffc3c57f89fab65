"""Routing-table maintenance, after go-libp2p-kad-dht's rtrefresh/ and fixLowPeers.

A table built once at start-up goes stale: peers die, and peers that joined later
are missing from the buckets far from this node. :class:`Maintainer` keeps it
fresh and promises:

* **Join and rejoin.** Until one bootstrap peer (or one saved peer) has answered a
  dial, they are dialled with backoff (every retry really dials:
  :meth:`dhtd.p2p.Host.connect` clears the addresses' dial backoff): every
  BOOTSTRAP_RETRY_FIRST .. BOOTSTRAP_RETRY_MAX while the table is thin, up to
  JOIN_RETRY_MAX once it is not. A table that has peers is not proof of having
  joined: peers that dialled in (or in-process dev peers) may be a partition of
  their own, so the retries go on, and the first answer is followed by a refresh.
  Later, while the table is thin (fewer than THIN_TABLE peers, empty included),
  they are dialled again and the table refreshed, at most every THIN_REFRESH_GAP.
* **Refresh.** As soon as the table has a peer: a self-lookup, then a lookup of a
  random key in every bucket with room (common prefix length 0 .. the table's
  deepest + 1, at most MAX_REFRESH_CPL) that the self-lookup did not cover.
  Again at STARTUP_REFRESH_DELAYS (none by default), then every
  ``refresh_interval`` for buckets with room that no lookup touched.
* **What a self-lookup covers.** A peer whose common prefix with this node is
  longer than c is closer (XOR) than every peer whose common prefix is c. So when
  the self-lookup's k closest peers reach down to common prefix c, every peer
  deeper than c is among them, and a walk into those buckets would find no one
  new: they are skipped (ours; go-libp2p-kad-dht walks into each). In a network
  of N peers that leaves the buckets down to about log2(N/k), two or three
  walks instead of eight at N = 100, which is what a mass start of many nodes
  spends its CPU on. A self-lookup that found fewer than k peers (peers failed,
  or it was cut short) covers nothing.
* **Liveness.** A routing-table peer whose connection closed, or that has not
  answered for ``refresh_interval``, is pinged (at most once per
  MIN_VALIDATION_GAP); if it does not answer within PING_TIMEOUT it leaves the
  table, and its bucket takes the next peer that answers a lookup.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from dhtd.ids import common_prefix_len, kad_key
from dhtd.routing import BUCKET_SIZE, RoutingTable

log = logging.getLogger("dhtd.refresh")

# go-libp2p-kad-dht amino/defaults.go: DefaultRoutingTableRefreshPeriod, 10 min.
REFRESH_INTERVAL = 600.0

# go-libp2p-kad-dht rtrefresh: maxCplForRefresh = 15. Generating a key with a given
# common prefix costs ~2^(cpl+1) hashes, so deeper buckets are not refreshed.
MAX_REFRESH_CPL = 15

# Extra refreshes (self-lookup and every bucket that is not full) after the table
# first fills, in seconds after it did: in a mass start most peers arrive during
# the first minute, and tables built before they did would otherwise wait
# REFRESH_INTERVAL to learn of them (ours). Few, because during a mass start the
# CPU is the bottleneck: every refresh is a dozen lookups per node.
STARTUP_REFRESH_DELAYS: tuple[float, ...] = ()

# A table with fewer peers than this is thin: bootstrap peers are dialled again and
# it is refreshed, at most every THIN_REFRESH_GAP (go-libp2p-kad-dht:
# minRTRefreshThreshold = 10; its fixLowPeers runs at most every minute).
THIN_TABLE = 10
THIN_REFRESH_GAP = 30.0

# How often the maintainer wakes to look for suspects, thin tables and stale
# buckets (ours).
CHECK_INTERVAL = 5.0

# Retry schedule for bootstrap peers while the routing table is empty: first
# retry after 1 s, doubling up to 8 s. Kubernetes starts pods in any order, so a
# sidecar must join within seconds of its bootstrap peer appearing; one dial every
# 8 s to an absent peer costs nothing (ours).
BOOTSTRAP_RETRY_FIRST = 1.0
BOOTSTRAP_RETRY_MAX = 8.0
# While no bootstrap peer has answered yet but the table is not thin, the retries
# keep doubling up to this (ours; go-libp2p's dial backoff also tops out at 5 min,
# and a peer that came back is found within 2 min).
JOIN_RETRY_MAX = 120.0

# A liveness ping that takes longer counts as a failure (go-libp2p ping: 5 s...
# ours: one request on loopback or WAN takes well under this).
PING_TIMEOUT = 5.0

# A peer is validated at most this often, however often its connection closes.
MIN_VALIDATION_GAP = 30.0

# A peer whose connection closed is validated after this delay, so that a
# connection closed on purpose (trimmed, replaced) is not raced (ours).
DISCONNECT_CHECK_DELAY = 1.0

# Liveness checks run at once.
VALIDATION_CONCURRENCY = 8


class Mode(enum.Enum):
    """Which buckets a refresh walks into."""

    ALL = enum.auto()  # every bucket, full or not
    NOT_FULL = enum.auto()  # buckets with room (start-up, thin table)
    STALE = enum.auto()  # buckets with room that no lookup touched recently


@dataclass
class Maintainer:
    """Keeps one node's routing table fresh (see the module doc).

    The node supplies the operations: ``bootstrap()`` dials its bootstrap peers
    and says whether one of them answered,
    ``lookup(key)`` runs a FIND_NODE walk, ``ping(peer)`` raises on failure,
    ``forget(peer)`` removes a dead peer."""

    table: RoutingTable
    self_id: bytes
    bootstrap: Callable[[], Awaitable[bool]]
    has_bootstrap: bool
    lookup: Callable[[bytes], Awaitable[Sequence[bytes] | None]]
    ping: Callable[[bytes], Awaitable[None]]
    forget: Callable[[bytes], None]
    refresh_interval: float = REFRESH_INTERVAL
    clock: Callable[[], float] = trio.current_time
    # When each bucket (by common prefix length) was last walked into.
    walked: dict[int, float] = field(default_factory=dict)
    # When each peer last answered us or sent us a request.
    seen: dict[bytes, float] = field(default_factory=dict)
    validated: dict[bytes, float] = field(default_factory=dict)
    _suspects: set[bytes] = field(default_factory=set)
    _wake: trio.Event = field(default_factory=trio.Event)
    # A bootstrap peer answered after the table had filled without one: refresh.
    _joined_late: bool = False

    def __post_init__(self) -> None:
        self.self_key = kad_key(self.self_id)

    # -- what the node tells us ------------------------------------------------

    def heard_from(self, peer: bytes) -> None:
        self.seen[peer] = self.clock()

    def walked_into(self, key: bytes) -> None:
        """A lookup towards ``key`` ran: its bucket counts as refreshed."""
        self.walked[min(common_prefix_len(self.self_key, kad_key(key)), MAX_REFRESH_CPL)] = (
            self.clock())

    def disconnected(self, peer: bytes) -> None:
        """``peer`` lost its connection or timed out: check it soon (see validate)."""
        if peer in self.table:
            self._suspects.add(peer)
            self._wake.set()

    def removed(self, peer: bytes) -> None:
        self.seen.pop(peer, None)
        self.validated.pop(peer, None)
        self._suspects.discard(peer)
        if len(self.table) < BUCKET_SIZE:
            self._wake.set()

    # -- the loop ---------------------------------------------------------------

    async def run(self, table_nonempty: Callable[[], Awaitable[None]]) -> None:
        """Runs until cancelled."""
        delay = BOOTSTRAP_RETRY_FIRST
        joined = tried = False
        while not self.table:
            if self.has_bootstrap:
                joined, tried = await self.bootstrap(), True
            if self.table:
                break
            with trio.move_on_after(delay if self.has_bootstrap else math.inf):
                await table_nonempty()
            delay = min(delay * 2, BOOTSTRAP_RETRY_MAX)
        async with trio.open_nursery() as nursery:
            if self.has_bootstrap and not joined:
                nursery.start_soon(self._join, delay, tried)
            await self._maintain()

    async def _join(self, delay: float, tried: bool) -> None:
        """Dials the bootstrap peers with backoff until one answers (see the module
        doc). If an earlier dial had failed, the main loop then refreshes the table:
        its first refresh ran without them."""
        while True:
            if tried:
                await trio.sleep(delay)
                cap = BOOTSTRAP_RETRY_MAX if len(self.table) < THIN_TABLE else JOIN_RETRY_MAX
                delay = min(delay * 2, cap)
            if await self.bootstrap():
                if tried:
                    self._joined_late = True
                    self._wake.set()
                return
            tried = True

    async def _maintain(self) -> None:
        started = self.clock()
        await self.refresh(Mode.NOT_FULL)
        pending = list(STARTUP_REFRESH_DELAYS)
        last_full = last_thin = self.clock()
        while True:
            with trio.move_on_after(CHECK_INTERVAL):
                await self._wake.wait()
            self._wake = trio.Event()
            if self._suspects:
                await self.validate(sorted(self._suspects), delay=DISCONNECT_CHECK_DELAY)
            now = self.clock()
            if self._joined_late:
                self._joined_late = False
                await self.refresh(Mode.NOT_FULL)
            elif pending and now - started >= pending[0]:
                pending.pop(0)
                await self.refresh(Mode.NOT_FULL)
            elif now - last_full >= self.refresh_interval:
                await self.validate(self._stale(now))
                await self.refresh(Mode.STALE)
                last_full = self.clock()
            elif len(self.table) < THIN_TABLE and now - last_thin >= THIN_REFRESH_GAP:
                last_thin = now
                if self.has_bootstrap:
                    await self.bootstrap()
                await self.refresh(Mode.NOT_FULL)

    def _stale(self, now: float) -> list[bytes]:
        return [p for p in self.table.peers() if now - self.seen.get(p, -math.inf)
                >= self.refresh_interval]

    async def refresh(self, mode: Mode) -> None:
        """A self-lookup, then one lookup into each bucket ``mode`` selects."""
        now = self.clock()
        try:
            closest = await self.lookup(self.self_id)
        except Exception as exc:
            log.debug("self-lookup failed: %s", exc)
            return
        covered = self._covered(closest) if mode is not Mode.ALL else None
        deepest = min(self.table.deepest_cpl() + 1, MAX_REFRESH_CPL)
        for cpl in range(deepest + 1):
            if covered is not None and cpl > covered:
                self.walked[cpl] = now  # the self-lookup found everyone there
                continue
            if mode is not Mode.ALL and self.table.bucket_len(cpl) >= BUCKET_SIZE:
                continue
            if (mode is Mode.STALE
                    and now - self.walked.get(cpl, -math.inf) < self.refresh_interval):
                continue
            try:
                await self.lookup(random_key_in_bucket(self.self_key, cpl))
            except Exception as exc:
                log.debug("refresh of bucket %d failed: %s", cpl, exc)

    async def validate(self, peers: Sequence[bytes], delay: float = 0.0) -> None:
        """Pings each of ``peers`` (not validated within MIN_VALIDATION_GAP); forgets
        those that do not answer within PING_TIMEOUT."""
        if delay:
            await trio.sleep(delay)
        now = self.clock()
        due = [p for p in peers if p in self.table
               and now - self.validated.get(p, -math.inf) >= MIN_VALIDATION_GAP]
        self._suspects.difference_update(peers)
        limiter = trio.CapacityLimiter(VALIDATION_CONCURRENCY)

        async def check(peer: bytes) -> None:
            async with limiter:
                self.validated[peer] = self.clock()
                try:
                    with trio.fail_after(PING_TIMEOUT):
                        await self.ping(peer)
                except Exception as exc:
                    log.debug("routing-table peer failed its liveness check: %s", exc)
                    self.forget(peer)
                    return
                self.heard_from(peer)

        async with trio.open_nursery() as nursery:
            for peer in due:
                nursery.start_soon(check, peer)


    def _covered(self, closest: Sequence[bytes] | None) -> int | None:
        """The common prefix length the self-lookup's k closest reach down to (every
        bucket deeper is known in full), or None if it found fewer than k."""
        if closest is None or len(closest) < BUCKET_SIZE:
            return None
        return min(common_prefix_len(self.self_key, kad_key(p)) for p in closest)


def random_key_in_bucket(self_key: bytes, cpl: int) -> bytes:
    """A random sha2-256 multihash (shaped like a peer ID) whose Kademlia key shares
    exactly ``cpl`` leading bits with ``self_key``. Costs about 2^(cpl+1) hashes."""
    if not 0 <= cpl <= MAX_REFRESH_CPL:
        raise ValueError(f"cpl must be 0..{MAX_REFRESH_CPL}")
    # Each try succeeds with probability 2^-(cpl+1): 64 << cpl tries fail with
    # probability about e^-32.
    for _ in range(64 << cpl):
        candidate = b"\x12\x20" + os.urandom(32)
        if common_prefix_len(self_key, kad_key(candidate)) == cpl:
            return candidate
    raise RuntimeError(f"no key with common prefix length {cpl} found")
