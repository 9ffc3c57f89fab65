"""dhtd.refresh: keys per bucket, liveness checks, and the join/refresh schedule (fakes)."""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing

from dhtd.ids import common_prefix_len, kad_key
from dhtd.refresh import (
    MAX_REFRESH_CPL,
    MIN_VALIDATION_GAP,
    Maintainer,
    Mode,
    random_key_in_bucket,
)
from dhtd.routing import RoutingTable

SELF = b"\x12\x20" + hashlib.sha256(b"self").digest()


def run(fn):  # type: ignore[no-untyped-def]
    """Runs an async test body in trio with a clock that jumps over idle time."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def peer(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"peer%d" % i).digest()


@pytest.mark.parametrize("cpl", [0, 1, 5, 9])
def test_random_key_lands_in_the_asked_bucket(cpl: int) -> None:
    for _ in range(5):
        key = random_key_in_bucket(kad_key(SELF), cpl)
        assert common_prefix_len(kad_key(SELF), kad_key(key)) == cpl
        assert key[:2] == b"\x12\x20" and len(key) == 34


def test_random_key_refuses_buckets_too_deep_to_generate() -> None:
    with pytest.raises(ValueError):
        random_key_in_bucket(kad_key(SELF), MAX_REFRESH_CPL + 1)


def test_routing_table_reports_bucket_sizes_and_depth() -> None:
    table = RoutingTable(SELF)
    assert table.deepest_cpl() == 0
    for i in range(40):
        table.add(peer(i))
    depths = [common_prefix_len(kad_key(SELF), kad_key(peer(i))) for i in range(40)]
    assert table.deepest_cpl() == max(depths)
    assert sum(table.bucket_len(c) for c in range(257)) == len(table)
    assert table.bucket_len(-1) == 0 and table.bucket_len(999) == 0


class World:
    """A Maintainer over a real table, with scripted pings and recorded lookups."""

    def __init__(self, dead: set[bytes] = frozenset(), bootstrap: bool = False) -> None:
        self.table = RoutingTable(SELF)
        self.dead = set(dead)
        self.lookups: list[bytes] = []
        self.pings: list[bytes] = []
        self.dials = 0
        self.now = 0.0
        self.m = Maintainer(
            table=self.table, self_id=SELF, bootstrap=self._bootstrap, has_bootstrap=bootstrap,
            lookup=self._lookup, ping=self._ping, forget=self._forget,
            refresh_interval=600.0, clock=lambda: self.now)

    async def _bootstrap(self) -> bool:
        self.dials += 1
        self.table.add(peer(0))
        return True

    async def _lookup(self, key: bytes) -> None:
        self.lookups.append(key)
        await trio.lowlevel.checkpoint()

    async def _ping(self, p: bytes) -> None:
        self.pings.append(p)
        if p in self.dead:
            raise OSError("connection refused")

    def _forget(self, p: bytes) -> None:
        self.table.remove(p)
        self.m.removed(p)


def test_validate_drops_dead_peers_and_keeps_live_ones() -> None:
    run(_test_validate_drops_dead_peers_and_keeps_live_ones)


async def _test_validate_drops_dead_peers_and_keeps_live_ones() -> None:
    w = World(dead={peer(1)})
    for i in range(3):
        w.table.add(peer(i))
    await w.m.validate([peer(0), peer(1), peer(2)])
    assert peer(1) not in w.table and peer(0) in w.table and peer(2) in w.table
    # Validated peers are not pinged again within MIN_VALIDATION_GAP...
    await w.m.validate([peer(0)])
    assert w.pings.count(peer(0)) == 1
    w.now += MIN_VALIDATION_GAP
    await w.m.validate([peer(0)])
    assert w.pings.count(peer(0)) == 2


def test_a_closed_connection_makes_a_table_peer_a_suspect() -> None:
    run(_test_a_closed_connection_makes_a_table_peer_a_suspect)


async def _test_a_closed_connection_makes_a_table_peer_a_suspect() -> None:
    w = World(dead={peer(1)})
    w.table.add(peer(1))
    w.m.disconnected(peer(1))
    w.m.disconnected(peer(99))  # not in the table: ignored
    assert w.m._suspects == {peer(1)}


def test_refresh_walks_self_then_each_bucket_the_mode_selects() -> None:
    run(_test_refresh_walks_self_then_each_bucket_the_mode_selects)


async def _test_refresh_walks_self_then_each_bucket_the_mode_selects() -> None:
    w = World()
    for i in range(60):
        w.table.add(peer(i))
    await w.m.refresh(Mode.ALL)
    assert w.lookups[0] == SELF
    cpls = [common_prefix_len(kad_key(SELF), kad_key(k)) for k in w.lookups[1:]]
    deepest = min(w.table.deepest_cpl() + 1, MAX_REFRESH_CPL)
    assert cpls == list(range(deepest + 1))
    # NOT_FULL skips full buckets (bucket 0 holds ~half of 60 random peers: full).
    w.lookups.clear()
    await w.m.refresh(Mode.NOT_FULL)
    walked = {common_prefix_len(kad_key(SELF), kad_key(k)) for k in w.lookups[1:]}
    assert all(w.table.bucket_len(c) < 20 for c in walked)
    assert w.table.bucket_len(0) < 20 or 0 not in walked


def test_run_bootstraps_with_backoff_then_refreshes() -> None:
    run(_test_run_bootstraps_with_backoff_then_refreshes)


async def _test_run_bootstraps_with_backoff_then_refreshes() -> None:
    w = World(bootstrap=True)
    async def nonempty() -> None:
        await trio.sleep_forever()

    with trio.move_on_after(1):
        await w.m.run(nonempty)
    assert w.dials == 1 and peer(0) in w.table
    assert w.lookups and w.lookups[0] == SELF


def test_buckets_the_self_lookup_covers_are_not_walked_into() -> None:
    run(_test_buckets_the_self_lookup_covers_are_not_walked_into)


async def _test_buckets_the_self_lookup_covers_are_not_walked_into() -> None:
    """The self-lookup's 20 closest reach down to common prefix c: every peer deeper
    than c is among them, so only the buckets down to c are walked into."""
    w = World()
    everyone = [peer(i) for i in range(200)]
    me = kad_key(SELF)
    ranked = sorted(everyone, key=lambda p: int.from_bytes(kad_key(p), "big")
                    ^ int.from_bytes(me, "big"))
    closest = ranked[:20]
    reach = min(common_prefix_len(me, kad_key(p)) for p in closest)
    for p in ranked[:60]:
        w.table.add(p)

    async def lookup(key: bytes) -> list[bytes] | None:
        w.lookups.append(key)
        return closest if key == SELF else []

    w.m.lookup = lookup
    w.now = 1000.0
    await w.m.refresh(Mode.NOT_FULL)
    walked = [common_prefix_len(me, kad_key(k)) for k in w.lookups[1:]]
    assert walked and max(walked) <= reach
    # The reach itself is walked into: its bucket may hold peers beyond the 20.
    assert w.table.bucket_len(reach) < 20 and reach in walked
    # The buckets deeper than the reach count as refreshed, by the self-lookup.
    deepest = min(w.table.deepest_cpl() + 1, MAX_REFRESH_CPL)
    assert all(w.m.walked[c] == 1000.0 for c in range(reach + 1, deepest + 1))
    assert reach + 1 <= deepest  # the case is not empty

    # Fewer than k closest (a cut-short walk) cover nothing: every bucket with room.
    w.lookups.clear()
    w.m.walked.clear()
    closest = closest[:5]
    await w.m.refresh(Mode.NOT_FULL)
    walked = [common_prefix_len(me, kad_key(k)) for k in w.lookups[1:]]
    assert max(walked) > reach
    # And Mode.ALL walks into every bucket whatever the self-lookup found.
    w.lookups.clear()
    closest = ranked[:20]
    await w.m.refresh(Mode.ALL)
    assert [common_prefix_len(me, kad_key(k)) for k in w.lookups[1:]] == list(range(deepest + 1))
