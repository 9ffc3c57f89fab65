"""dhtd.refresh: the Maintainer's schedule, under trio's virtual clock, with fake operations.

Each test gives a Maintainer a real routing table and the operations a DhtNode
gives it (dial the bootstrap peers, look up, ping, forget), faked and recorded
with the time they ran at, then checks what dhtd.refresh promises, with its
numbers stated literally:

* while the table is empty, bootstrap peers are dialled again after 1, 2, 4, 8,
  8, ... s (doubling up to 8 s); without bootstrap peers it waits for a peer;
* as soon as the table has a peer: a self-lookup, then a lookup into each bucket
  with room, from bucket 0 to one past the deepest occupied one;
* a thin table (fewer than 10 peers) is refreshed, bootstrap peers dialled
  again, at most every 30 s;
* every refresh_interval (600 s by default): peers not heard from for that long
  are pinged, and buckets with room that no lookup walked into for that long are
  refreshed;
* a table peer whose connection closed is pinged 1 s later, at most once per
  30 s; one that does not answer within 5 s leaves the table; 8 pings run at once.

The maintainer wakes every 5 s (or when told of a suspect or a removal), so a
scheduled event happens at the first 5 s tick at or after its time; tests start
the table at a time (0 or 3 s) that makes those ticks land where stated.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import pytest
import trio
import trio.testing

import dhtd.refresh
from dhtd.ids import common_prefix_len, kad_key
from dhtd.refresh import Maintainer, Mode, random_key_in_bucket
from dhtd.routing import RoutingTable

SELF = b"\x12\x20" + hashlib.sha256(b"self").digest()
SELF_KEY = kad_key(SELF)


def vrun(fn: Callable[[], Awaitable[object]]) -> object:
    """Runs an async test body in trio with a clock that jumps over idle time."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def peer(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"peer%d" % i).digest()


def bucket(key: bytes) -> int:
    """The bucket (common prefix length with this node) of a peer ID or lookup key."""
    return common_prefix_len(SELF_KEY, kad_key(key))


_by_bucket: dict[int, list[bytes]] = {}
_scanned = 0


def peers_in(cpl: int, n: int, skip: int = 0) -> list[bytes]:
    """``n`` distinct peers in bucket ``cpl`` (deterministic: the first of peer(0), peer(1)...)."""
    global _scanned
    while len(_by_bucket.get(cpl, [])) < skip + n:
        p = peer(_scanned)
        _scanned += 1
        _by_bucket.setdefault(bucket(p), []).append(p)
    return _by_bucket[cpl][skip:skip + n]


# A table of 24 peers: bucket 0 full (20), 3 in bucket 1, 1 in bucket 2. Refreshes
# walk buckets 0 .. 3 (one past the deepest), and skip bucket 0 unless asked for all.
FULL0 = peers_in(0, 20)
ROOM = peers_in(1, 3) + peers_in(2, 1)
TABLE24 = FULL0 + ROOM


class Node:
    """What a DhtNode gives its Maintainer, faked; records every call with trio's time."""

    def __init__(self, *, bootstrap: bool = False, join_on_dial: int | None = None,
                 joiners: Iterable[bytes] = (), refresh_interval: float | None = None,
                 walk_marks: bool = True) -> None:
        self.table = RoutingTable(SELF)
        self.arrived = trio.Event()
        self.join_on_dial, self.joiners = join_on_dial, list(joiners)
        self.walk_marks = walk_marks
        self.dials: list[float] = []
        self.waits = 0
        self.lookups: list[tuple[float, int | None]] = []  # (time, bucket; None: self)
        self.pings: list[tuple[float, bytes]] = []
        self.forgotten: list[tuple[float, bytes]] = []
        self.dead: set[bytes] = set()
        self.answer_after: dict[bytes, float] = {}  # seconds a ping takes (inf: hangs)
        self.failing: set[int | None] = set()  # buckets (None: self) whose lookup raises
        extra = {} if refresh_interval is None else {"refresh_interval": refresh_interval}
        self.m = Maintainer(
            table=self.table, self_id=SELF, bootstrap=self._bootstrap, has_bootstrap=bootstrap,
            lookup=self._lookup, ping=self._ping, forget=self.forget, **extra)

    # -- the node's side, as dhtd.node does it ------------------------------------

    def add(self, peers: Iterable[bytes]) -> None:
        """Peers join the table (they answered or dialled us): heard from now."""
        for p in peers:
            was_empty = not self.table
            if self.table.add(p):
                self.m.heard_from(p)
                if was_empty:
                    self.arrived.set()

    def forget(self, p: bytes) -> None:
        self.forgotten.append((trio.current_time(), p))
        if self.table.remove(p):
            self.m.removed(p)
            if not self.table:
                self.arrived = trio.Event()

    async def wait_table(self) -> None:
        self.waits += 1
        await self.arrived.wait()

    async def _bootstrap(self) -> bool:
        """A bootstrap peer answers at dial ``join_on_dial`` and every later one."""
        self.dials.append(trio.current_time())
        assert len(self.dials) < 100, "bootstrap peers dialled in a tight loop"
        await trio.lowlevel.checkpoint()
        if len(self.dials) == self.join_on_dial:
            self.add(self.joiners)
        return self.join_on_dial is not None and len(self.dials) >= self.join_on_dial

    async def _lookup(self, key: bytes) -> None:
        which = None if key == SELF else bucket(key)
        self.lookups.append((trio.current_time(), which))
        if self.walk_marks:
            self.m.walked_into(key)  # as DhtNode._walk does
        await trio.lowlevel.checkpoint()
        if which in self.failing:
            raise OSError("no peers answered")

    async def _ping(self, p: bytes) -> None:
        self.pings.append((trio.current_time(), p))
        await trio.sleep(self.answer_after.get(p, 0.0))
        if p in self.dead:
            raise OSError("connection refused")

    # -- what happened --------------------------------------------------------------

    def rounds(self) -> list[tuple[float, list[int]]]:
        """Each refresh: its time (that of its self-lookup) and the buckets it walked."""
        out: list[tuple[float, list[int]]] = []
        for t, which in self.lookups:
            if which is None:
                out.append((t, []))
            else:
                out[-1][1].append(which)
        return out

    def round_times(self) -> list[float]:
        return [t for t, _ in self.rounds()]

    def pinged(self, p: bytes) -> list[float]:
        return [t for t, q in self.pings if q == p]


async def _at(t: float, fn: Callable[[], object]) -> None:
    await trio.sleep_until(t)
    fn()


async def live(node: Node, until: float, *events: tuple[float, Callable[[], object]]) -> None:
    """Runs the maintainer until ``until`` (virtual seconds), doing ``events`` at their times."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.m.run, node.wait_table)
        for t, fn in events:
            nursery.start_soon(_at, t, fn)
        await trio.sleep_until(until)
        nursery.cancel_scope.cancel()


# --- joining --------------------------------------------------------------------------


def test_an_empty_table_retries_bootstrap_after_1_2_4_8_8_s_then_refreshes() -> None:
    node = Node(bootstrap=True, join_on_dial=8, joiners=peers_in(1, 3))
    vrun(lambda: live(node, 60))
    assert node.dials == [0, 1, 3, 7, 15, 23, 31, 39]
    assert [b - a for a, b in zip(node.dials, node.dials[1:], strict=False)] == [
        1, 2, 4, 8, 8, 8, 8]
    # Joined at the 8th dial: at once a self-lookup, then buckets 0 .. deepest (1) + 1.
    assert node.rounds() == [(39, [0, 1, 2])]


def test_a_peer_arriving_between_retries_ends_the_wait_at_once() -> None:
    node = Node(bootstrap=True)  # dialling never fills the table
    vrun(lambda: live(node, 4, (2.5, lambda: node.add(TABLE24))))
    assert node.dials == [0, 1]
    assert node.round_times() == [2.5]


def test_without_bootstrap_peers_it_waits_for_the_first_peer_without_polling() -> None:
    node = Node(bootstrap=False)
    vrun(lambda: live(node, 50, (42, lambda: node.add(TABLE24))))
    assert node.dials == []
    assert node.waits == 1
    assert node.round_times() == [42]


def test_the_first_refresh_walks_every_bucket_with_room_up_to_one_past_the_deepest() -> None:
    node = Node(bootstrap=True, join_on_dial=1)

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 4)

    vrun(main)
    # The table has peers: the refresh does not wait for the bootstrap peers, which
    # are dialled once beside it (they answer, so once only).
    assert node.dials == [0]
    assert node.rounds() == [(0, [1, 2, 3])]  # bucket 0 is full


def test_a_full_table_without_a_bootstrap_peer_keeps_dialling_them_then_refreshes() -> None:
    """Peers that dialled in may be a partition of their own (a mass start: each
    process's dev peers fill its table before its bootstrap peer listens). So the
    bootstrap peers are dialled until one answers, backing off to JOIN_RETRY_MAX
    while the table is not thin, and their answer is followed by a refresh."""
    node = Node(bootstrap=True, join_on_dial=9)

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 600)

    vrun(main)
    assert node.dials == [0, 1, 3, 7, 15, 31, 63, 127, 247]
    assert node.round_times() == [0, 247]
    assert node.rounds()[1] == (247, [1, 2, 3])


def test_bootstrap_peers_that_never_answer_are_dialled_every_120_s_at_most() -> None:
    node = Node(bootstrap=True)

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 1000)

    vrun(main)
    gaps = [b - a for a, b in zip(node.dials, node.dials[1:], strict=False)]
    assert gaps[:8] == [1, 2, 4, 8, 16, 32, 64, 120] and set(gaps[8:]) == {120}
    assert node.round_times() == [0, 600]  # the first, then the periodic one


# --- thin tables ----------------------------------------------------------------------


def test_a_thin_table_dials_bootstrap_and_refreshes_every_30_s() -> None:
    nine = peers_in(0, 5) + peers_in(1, 3) + peers_in(2, 1)
    node = Node(bootstrap=True, join_on_dial=3, joiners=nine)
    vrun(lambda: live(node, 100))
    assert node.dials == [0, 1, 3, 33, 63, 93]
    assert node.rounds() == [(t, [0, 1, 2, 3]) for t in (3, 33, 63, 93)]


def test_a_table_of_10_peers_is_not_thin() -> None:
    ten = peers_in(0, 6) + peers_in(1, 3) + peers_in(2, 1)
    node = Node(bootstrap=True, join_on_dial=1)

    async def main() -> None:
        node.add(ten)
        await live(node, 599)

    vrun(main)
    assert node.dials == [0]
    assert node.round_times() == [0]


def test_a_table_turning_thin_is_refreshed_at_once() -> None:
    """A removal that leaves 9 peers wakes the maintainer: the thin-table refresh (30 s
    after the last) does not wait for the next 5 s tick."""
    ten = peers_in(0, 6) + peers_in(1, 3) + peers_in(2, 1)
    node = Node(bootstrap=True, join_on_dial=1)

    async def main() -> None:
        node.add(ten)
        await live(node, 34, (32.5, lambda: node.forget(ten[0])))

    vrun(main)
    assert node.dials == [0, 32.5]
    assert node.round_times() == [0, 32.5]


def test_a_removal_from_a_table_of_20_or_more_does_not_disturb_the_schedule() -> None:
    """Only a removal that leaves fewer than 20 peers (a bucket's worth) wakes the
    maintainer; otherwise it keeps its 5 s ticks, and the stale refresh comes at 600 s."""
    node = Node()

    async def main() -> None:
        node.add(TABLE24[:21])
        await live(node, 601, (2.5, lambda: node.forget(TABLE24[0])))

    vrun(main)
    assert len(node.table) == 20
    assert node.round_times() == [0, 600]


# --- stale peers and buckets ----------------------------------------------------------


def test_every_600_s_quiet_peers_are_pinged_and_unwalked_buckets_refreshed() -> None:
    node = Node()  # refresh_interval: the default
    silent = peers_in(1, 1, skip=3)  # in the table, never heard from
    chatty = ROOM[0]

    def arrive() -> None:
        node.add(TABLE24)
        node.table.add(silent[0])

    vrun(lambda: live(
        node, 1210,
        (3, arrive),
        (100, lambda: node.m.heard_from(chatty)),  # it sent us a request
        (200, lambda: node.m.walked_into(peers_in(2, 1, skip=1)[0])),  # a lookup into bucket 2
    ))
    everyone = {*TABLE24, *silent}
    assert Counter(t for t, _ in node.pings) == {603: len(everyone) - 1, 1203: len(everyone)}
    assert {p for t, p in node.pings if t == 603} == everyone - {chatty}
    # 603: bucket 2 was walked into 403 s ago, buckets 1 and 3 exactly 600 s ago (at
    # the first refresh); 1203: each was last walked 600 s ago or more.
    assert node.rounds() == [(3, [1, 2, 3]), (603, [1, 3]), (1203, [1, 2, 3])]
    assert node.forgotten == []


def test_refresh_interval_sets_the_stale_check() -> None:
    node = Node(refresh_interval=120.0)

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 250)

    vrun(main)
    assert node.round_times() == [0, 120, 240]
    assert Counter(t for t, _ in node.pings) == {120: 24, 240: 24}


def test_a_peer_that_answered_a_liveness_ping_counts_as_heard_from() -> None:
    node = Node()
    p = TABLE24[5]

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 700, (302, lambda: node.m.disconnected(p)))

    vrun(main)
    assert node.pinged(p) == [303]
    # The stale check (at 603: the suspect check moved the 5 s ticks) pings everyone
    # last heard from at 0, but not p, which answered at 303.
    late = {q for t, q in node.pings if t > 303}
    assert late == set(TABLE24) - {p}


# --- suspects ---------------------------------------------------------------------------


def test_a_peer_whose_connection_closed_is_pinged_1_s_later_and_forgotten_if_dead() -> None:
    node = Node()
    dead, alive, stranger = TABLE24[1], TABLE24[2], peers_in(3, 1)[0]
    node.dead.add(dead)

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 110, (102, lambda: node.m.disconnected(dead)),
                   (102, lambda: node.m.disconnected(alive)),
                   (102, lambda: node.m.disconnected(stranger)))  # not in the table

    vrun(main)
    assert sorted(node.pings) == sorted([(103, dead), (103, alive)])
    assert node.forgotten == [(103, dead)]
    assert dead not in node.table and alive in node.table


def test_a_ping_unanswered_for_5_s_forgets_the_peer() -> None:
    node = Node()
    hung, slow = TABLE24[1], TABLE24[2]
    node.answer_after.update({hung: math.inf, slow: 4.5})

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 120, (102, lambda: node.m.disconnected(hung)),
                   (102, lambda: node.m.disconnected(slow)))

    vrun(main)
    assert node.pinged(hung) == [103] and node.pinged(slow) == [103]
    assert node.forgotten == [(108, hung)]
    assert slow in node.table


def test_a_peer_is_pinged_at_most_once_per_30_s() -> None:
    node = Node()
    p = TABLE24[3]

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 200, *[(t, lambda: node.m.disconnected(p)) for t in (102, 112, 132)])

    vrun(main)
    # Checked at 103; at 113 it was checked 10 s ago (skipped); at 133, 30 s ago.
    assert node.pinged(p) == [103, 133]


def test_8_pings_run_at_once() -> None:
    node = Node()
    for p in FULL0:
        node.answer_after[p] = math.inf

    def suspect_all() -> None:
        for p in FULL0:
            node.m.disconnected(p)

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 130, (102, suspect_all))

    vrun(main)
    assert Counter(t for t, _ in node.pings) == {103: 8, 108: 8, 113: 4}
    assert Counter(t for t, _ in node.forgotten) == {108: 8, 113: 8, 118: 4}
    assert set(node.table.peers()) == set(ROOM)


def test_a_peer_that_left_and_rejoined_is_checked_afresh() -> None:
    node = Node()
    p = TABLE24[4]

    async def main() -> None:
        node.add(TABLE24)
        await live(node, 130, (102, lambda: node.m.disconnected(p)),
                   (110, lambda: node.forget(p)),
                   (111, lambda: node.add([p])),
                   (115, lambda: node.m.disconnected(p)))

    vrun(main)
    assert node.pinged(p) == [103, 116]


def test_a_peer_that_leaves_takes_what_was_known_of_it_along() -> None:
    node = Node()

    async def main() -> None:
        node.add(TABLE24)
        a, b, c = TABLE24[:3]
        await node.m.validate([a])  # answered: validated and heard from
        node.m.disconnected(c)  # a suspect
        for p in (a, b, c):  # b: never validated
            node.forget(p)
        assert not ({a, b, c} & (node.m.seen.keys() | node.m.validated.keys()))
        assert not node.m._suspects
        assert set(node.m.seen) == set(TABLE24[3:])

    vrun(main)


# --- start-up refreshes --------------------------------------------------------------


def test_startup_refreshes_run_at_their_delays_after_the_table_filled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """STARTUP_REFRESH_DELAYS is empty in dhtd today; the schedule it drives is still a
    promise of the module (extra refreshes of buckets with room, relative to the join)."""
    monkeypatch.setattr(dhtd.refresh, "STARTUP_REFRESH_DELAYS", (20.0, 45.0))
    node = Node()
    vrun(lambda: live(node, 100, (3, lambda: node.add(TABLE24))))
    # Joined at 3: again at 3 + 20 and 3 + 45 (buckets with room, walked or not).
    assert node.rounds() == [(3, [1, 2, 3]), (23, [1, 2, 3]), (48, [1, 2, 3])]


# --- refresh() and validate() on their own -----------------------------------------------


def test_refresh_modes_choose_buckets() -> None:
    node = Node(walk_marks=False)

    async def main() -> None:
        node.add(TABLE24)
        await trio.sleep_until(400)
        node.m.walked_into(peers_in(2, 1, skip=1)[0])
        await trio.sleep_until(401)
        node.m.walked_into(peers_in(1, 1, skip=4)[0])
        await trio.sleep_until(1000)
        for mode in (Mode.ALL, Mode.NOT_FULL, Mode.STALE):
            await node.m.refresh(mode)

    vrun(main)
    assert node.rounds() == [
        (1000, [0, 1, 2, 3]),  # ALL: full ones too
        (1000, [1, 2, 3]),  # NOT_FULL: with room, walked or not
        # STALE: with room and not walked into for 600 s: bucket 1 was 599 s ago,
        # bucket 2 600 s ago, bucket 3 never.
        (1000, [2, 3]),
    ]


def test_refresh_stops_at_bucket_15_and_a_self_lookup_counts_for_it() -> None:
    """Keys deeper than bucket 15 are too costly to generate: bucket 15 stands for them,
    so a lookup of this node's own ID counts as walking into it."""
    deep = peers_in(14, 1)
    node = Node(walk_marks=False)

    async def main() -> None:
        node.add(deep)
        node.m.walked_into(SELF)
        await trio.sleep_until(10)
        await node.m.refresh(Mode.NOT_FULL)
        await node.m.refresh(Mode.STALE)

    vrun(main)
    assert node.rounds() == [(10, list(range(16))), (10, list(range(15)))]


def test_a_failed_self_lookup_ends_the_refresh_and_a_failed_bucket_skips_only_itself() -> None:
    node = Node(walk_marks=False)

    async def main() -> None:
        node.add(TABLE24)
        node.failing = {None}
        await node.m.refresh(Mode.NOT_FULL)
        node.failing = {1}
        await node.m.refresh(Mode.NOT_FULL)

    vrun(main)
    assert node.rounds() == [(0, []), (0, [1, 2, 3])]


def test_validate_pings_at_once_unless_given_a_delay() -> None:
    node = Node()

    async def main() -> None:
        node.add(TABLE24)
        await node.m.validate([TABLE24[0]])
        await node.m.validate([TABLE24[1]], delay=1.0)

    vrun(main)
    assert node.pings == [(0, TABLE24[0]), (1, TABLE24[1])]


# --- random keys ---------------------------------------------------------------------------


def test_random_key_reaches_bucket_15_and_no_deeper(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deterministic candidates, so that the search takes the same ~23,500 tries each run.
    count = iter(range(1 << 20))
    monkeypatch.setattr(
        os, "urandom", lambda n: hashlib.sha256(b"bucket15-%d" % next(count)).digest()[:n])
    key = random_key_in_bucket(SELF_KEY, 15)
    monkeypatch.undo()
    assert bucket(key) == 15 and key[:2] == b"\x12\x20" and len(key) == 34
    for cpl in (16, -1):
        with pytest.raises(ValueError, match=r"cpl must be 0\.\.15"):
            random_key_in_bucket(SELF_KEY, cpl)


def test_random_key_gives_up_after_64_tries_per_bucket_depth(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The search is bounded: 64 << cpl candidates (64 for bucket 0, 128 for 1)."""
    stuck = bytes(32)  # every candidate is the same key, in one bucket
    tries = 0

    def urandom(n: int) -> bytes:
        nonlocal tries
        tries += 1
        return stuck[:n]

    cpl = 1 if bucket(b"\x12\x20" + stuck) == 0 else 0
    monkeypatch.setattr(os, "urandom", urandom)
    with pytest.raises(RuntimeError, match=f"common prefix length {cpl} "):
        random_key_in_bucket(SELF_KEY, cpl)
    monkeypatch.undo()
    assert tries == {0: 64, 1: 128}[cpl]
