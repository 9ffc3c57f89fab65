"""Unit tests for dhtd.lookup: the iterative Kademlia walk, against an in-process fake network.

Every test runs trio with a MockClock that jumps ahead whenever all tasks are
blocked, so timeouts cost no wall time and a walk that never ends shows up as
a TooSlowError from a bounding fail_after instead of a hung test.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from dhtd.ids import kad_key, xor_distance
from dhtd.liveness import PeerBook
from dhtd.lookup import (
    EventType,
    LookupResult,
    PeerRecord,
    PeerRequestError,
    QueryEvent,
    describe,
    lookup,
)
from dhtd.routing import RoutingTable

K = 20
# Virtual seconds any single walk may take before the test counts it as hung.
WALK_BOUND = 1_000.0


def run(fn: Callable[[], Awaitable[object]]) -> object:
    """Runs ``fn`` under trio with a clock that skips idle time."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def sha_id(rng: random.Random) -> bytes:
    """A random sha2-256 multihash peer ID."""
    return b"\x12\x20" + rng.randbytes(32)


def identity_id(rng: random.Random) -> bytes:
    """A random identity-multihash peer ID shaped like an Ed25519 one (34 bytes)."""
    return b"\x00\x24\x08\x01\x12\x20" + rng.randbytes(28)


def addr_of(peer: bytes) -> tuple[bytes, ...]:
    return (b"addr:" + peer[-6:],)


def true_closest(target: bytes, peers: Sequence[bytes], count: int) -> list[bytes]:
    """Brute force: ``count`` peers nearest to ``target`` (raw key), nearest first."""
    tkey = kad_key(target)
    return sorted(peers, key=lambda p: xor_distance(kad_key(p), tkey))[:count]


class FakeTransport:
    def __init__(self, connected: set[bytes] | None = None) -> None:
        self.connected = connected or set()
        self.learned: list[bytes] = []
        self.forgotten: list[bytes] = []
        self.responded_peers: list[bytes] = []
        self.suspects: list[bytes] = []

    def is_connected(self, peer: bytes) -> bool:
        return peer in self.connected

    def learn(self, peers: Sequence[PeerRecord]) -> None:
        self.learned.extend(p.id for p in peers)

    def forget(self, peer: bytes) -> None:
        self.forgotten.append(peer)

    def responded(self, peer: bytes) -> None:
        self.responded_peers.append(peer)

    def suspect(self, peer: bytes) -> None:
        self.suspects.append(peer)


class FakeNetwork:
    """N peers, each knowing the others through its own k-bucket routing table.

    ``ask(target)`` builds the AskFn of a walk towards ``target``: the asked
    peer answers with the k peers nearest to the target that it knows.
    """

    def __init__(
        self,
        ids: Sequence[bytes],
        rng: random.Random,
        *,
        k: int = K,
        failing: frozenset[bytes] = frozenset(),
        hung: frozenset[bytes] = frozenset(),
        extra_known: Sequence[bytes] = (),
    ) -> None:
        self.ids = list(ids)
        self.k = k
        self.failing = failing
        self.hung = hung
        self.tables: dict[bytes, RoutingTable] = {}
        for peer in self.ids:
            table = RoutingTable(peer, bucket_size=k)
            others = [p for p in [*self.ids, *extra_known] if p != peer]
            rng.shuffle(others)
            for other in others:
                table.add(other)
            self.tables[peer] = table
        self.asked: Counter[bytes] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled: list[bytes] = []
        self.rng = rng

    def ask(self, target: bytes) -> Callable[[bytes], Awaitable[Sequence[PeerRecord]]]:
        tkey = kad_key(target)

        async def ask(peer: bytes) -> Sequence[PeerRecord]:
            self.asked[peer] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                # A few scheduling points, a different number per request, so
                # answers come back out of order.
                for _ in range(self.rng.randrange(1, 6)):
                    await trio.lowlevel.checkpoint()
                if peer in self.hung:
                    await trio.sleep_forever()
                if peer in self.failing:
                    raise PeerRequestError(f"dial {peer[-4:].hex()}: connection refused")
                return [PeerRecord(p, addr_of(p)) for p in self.tables[peer].closest(tkey, self.k)]
            except trio.Cancelled:
                self.cancelled.append(peer)
                raise
            finally:
                self.in_flight -= 1

        return ask


def network(seed: int, n: int = 150, **kwargs: object) -> tuple[FakeNetwork, random.Random]:
    rng = random.Random(seed)
    ids = [sha_id(rng) if i % 2 else identity_id(rng) for i in range(n)]
    return FakeNetwork(ids, rng, **kwargs), rng  # type: ignore[arg-type]


def seeds_from(rng: random.Random, ids: Sequence[bytes], count: int) -> list[PeerRecord]:
    return [PeerRecord(p, addr_of(p)) for p in rng.sample(list(ids), count)]


def walk(
    net: FakeNetwork,
    target: bytes,
    seeds: Sequence[PeerRecord],
    transport: FakeTransport | None = None,
    events: list[QueryEvent] | None = None,
    **kwargs: object,
) -> LookupResult:
    transport = transport or FakeTransport()
    sink = events if events is not None else []
    self_id = kwargs.pop("self_id", b"\x12\x20" + b"\xff" * 32)

    async def main() -> LookupResult:
        with trio.fail_after(WALK_BOUND):
            return await lookup(
                target, seeds, transport, net.ask(target), sink.append,
                self_id=self_id, **kwargs,  # type: ignore[arg-type]
            )

    result = run(main)
    assert isinstance(result, LookupResult)
    return result


# --- convergence --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_converges_to_the_true_k_closest_of_the_network(seed: int) -> None:
    net, rng = network(seed)
    target = rng.randbytes(34) if seed % 2 else b"/app/" + rng.randbytes(8)
    seeds = seeds_from(rng, net.ids, 3)

    result = walk(net, target, seeds)

    assert [p.id for p in result.closest] == true_closest(target, net.ids, K)
    assert all(p.addrs == addr_of(p.id) for p in result.closest)
    assert not result.stopped
    assert result.failed == 0
    assert result.queried == sum(net.asked.values())
    # It converged: it stopped once the k nearest had answered, long before
    # running out of peers to ask.
    assert len(net.asked) < len(net.ids) // 2


@pytest.mark.parametrize("seed", range(4))
def test_converges_with_a_small_k_and_alpha(seed: int) -> None:
    net, rng = network(100 + seed, n=80, k=4)
    target = rng.randbytes(34)
    result = walk(net, target, seeds_from(rng, net.ids, 1), k=4, alpha=2)
    assert [p.id for p in result.closest] == true_closest(target, net.ids, 4)


@pytest.mark.parametrize("seed", range(6))
def test_every_peer_is_asked_at_most_once(seed: int) -> None:
    net, rng = network(200 + seed)
    target = rng.randbytes(34)
    # Seeds given twice, and every answer names many already-known peers.
    seeds = seeds_from(rng, net.ids, 10)
    walk(net, target, seeds + seeds)
    assert net.asked
    assert max(net.asked.values()) == 1


@pytest.mark.parametrize("alpha", [1, 3, 10])
def test_never_more_than_alpha_requests_in_flight(alpha: int) -> None:
    net, rng = network(300 + alpha)
    target = rng.randbytes(34)
    # beta = k: the follow-up phase starts only once the walk has converged.
    walk(net, target, seeds_from(rng, net.ids, 30), alpha=alpha, beta=K)
    # Reaching alpha shows that the counter can see concurrency at all.
    assert net.max_in_flight == alpha


# --- events ---------------------------------------------------------------------------------


def test_events_dialing_only_when_not_connected_and_in_order() -> None:
    net, rng = network(400, failing=frozenset())
    failing = frozenset(rng.sample(net.ids, 40))
    net.failing = failing
    connected = set(rng.sample(net.ids, 60))
    transport = FakeTransport(connected)
    events: list[QueryEvent] = []
    target = rng.randbytes(34)

    result = walk(net, target, seeds_from(rng, net.ids, 10), transport, events)

    asked = set(net.asked)
    assert asked
    assert {e.peer for e in events} == asked
    dialed = [e.peer for e in events if e.type is EventType.DIALING_PEER]
    assert sorted(dialed) == sorted(asked - connected)

    for peer in asked:
        kinds = [e.type for e in events if e.peer == peer]
        expected_end = EventType.QUERY_ERROR if peer in failing else EventType.PEER_RESPONSE
        prefix = [] if peer in connected else [EventType.DIALING_PEER]
        assert kinds == [*prefix, EventType.SENDING_QUERY, expected_end], kinds
        if peer not in connected:
            # DIALING_PEER comes right before this peer's SENDING_QUERY.
            i = next(i for i, e in enumerate(events)
                     if e.peer == peer and e.type is EventType.DIALING_PEER)
            assert events[i + 1].type is EventType.SENDING_QUERY
            assert events[i + 1].peer == peer

    for event in events:
        if event.type is EventType.QUERY_ERROR:
            assert event.extra == f"dial {event.peer[-4:].hex()}: connection refused"
            assert event.responses == ()
        elif event.type is EventType.PEER_RESPONSE:
            assert event.responses
            assert all(r.addrs for r in event.responses)
        else:
            assert event.responses == ()
            assert event.extra == ""
    assert result.failed == len(asked & failing)
    assert result.queried == len(asked - failing)


def test_query_error_text_is_the_first_line_of_the_error() -> None:
    peer = b"\x12\x20" + b"\x01" * 32
    events: list[QueryEvent] = []

    async def ask(p: bytes) -> Sequence[PeerRecord]:
        raise ExceptionGroup("group", [OSError("stream reset\nsecond line")])

    async def main() -> LookupResult:
        return await lookup(b"k", [PeerRecord(peer)], FakeTransport(), ask, events.append,
                            self_id=b"self")

    result = run(main)
    assert isinstance(result, LookupResult)
    assert [(e.type, e.extra) for e in events][-1] == (EventType.QUERY_ERROR, "stream reset")
    assert result.closest == []
    assert result.failed == 1


def test_describe() -> None:
    assert describe(ValueError("  bad thing\nmore")) == "bad thing"
    assert describe(ValueError()) == "ValueError"
    assert describe(BaseExceptionGroup("g", [KeyError("x")])) == "'x'"
    assert describe(ExceptionGroup("g", [ExceptionGroup("h", [RuntimeError("deep")])])) == "deep"


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_failing_peers_are_forgotten_and_excluded(seed: int) -> None:
    net, rng = network(500 + seed)
    target = rng.randbytes(34)
    # Fail most of the true k closest, so the walk has to look past them.
    nearest = true_closest(target, net.ids, K)
    failing = frozenset(nearest[: K // 2] + rng.sample(net.ids, 15))
    net.failing = failing
    transport = FakeTransport()

    result = walk(net, target, seeds_from(rng, net.ids, 5), transport)

    forgotten = Counter(transport.forgotten)
    assert set(forgotten) == set(net.asked) & failing
    assert set(nearest[: K // 2]) <= set(forgotten)
    assert max(forgotten.values()) == 1
    assert not {p.id for p in result.closest} & failing
    # The result is the k nearest of the peers that answered ...
    answered = [p for p in net.asked if p not in failing]
    assert [p.id for p in result.closest] == true_closest(target, answered, K)
    # ... and it holds the nearest live peers of the whole network. (Not all k of
    # them: live peers answer with dead ones too, as real peers do, which can
    # crowd the farthest live ones out of every answer.)
    live = [p for p in net.ids if p not in failing]
    assert [p.id for p in result.closest][: K // 2] == true_closest(target, live, K // 2)
    assert result.failed == len(forgotten)


def test_all_seeds_failing_gives_an_empty_result() -> None:
    net, rng = network(600, n=30)
    seeds = seeds_from(rng, net.ids, 5)
    net.failing = frozenset(p.id for p in seeds)
    transport = FakeTransport()
    result = walk(net, rng.randbytes(34), seeds, transport)
    assert result.closest == []
    assert result.queried == 0
    assert result.failed == 5
    assert sorted(transport.forgotten) == sorted(p.id for p in seeds)


def _timed_walk(target: bytes, seeds: Sequence[PeerRecord], ask: object,
                transport: FakeTransport, events: list[QueryEvent],
                **kwargs: object) -> tuple[LookupResult, float]:
    async def main() -> tuple[LookupResult, float]:
        start = trio.current_time()
        with trio.fail_after(WALK_BOUND):
            result = await lookup(target, seeds, transport, ask, events.append,  # type: ignore[arg-type]
                                  self_id=b"self", **kwargs)  # type: ignore[arg-type]
        return result, trio.current_time() - start

    outcome = run(main)
    assert isinstance(outcome, tuple)
    return outcome


def test_the_walk_does_not_wait_for_a_hung_peer_past_its_patience() -> None:
    net, rng = network(700, n=40)
    target = rng.randbytes(34)
    # The peer nearest to the target is sure to be asked.
    hung = true_closest(target, net.ids, 1)[0]
    net.hung = frozenset([hung])
    seeds = [PeerRecord(hung, addr_of(hung)), *seeds_from(rng, net.ids, 3)]
    events: list[QueryEvent] = []
    transport = FakeTransport()

    result, elapsed = _timed_walk(target, seeds, net.ask(target), transport, events,
                                  request_timeout=10.0)
    # Nothing is known of the network yet: the walk waits 2 s (DEFAULT_PATIENCE),
    # not the 10 s request timeout.
    assert elapsed == pytest.approx(2.0)
    assert result.slow == 1
    errors = [e for e in events if e.type is EventType.QUERY_ERROR]
    assert [(e.peer, e.extra) for e in errors] == [(hung, "no answer before the walk ended")]
    # Slow once may be overload: the peer is checked (suspect), not dropped at once.
    assert transport.suspects == [hung] and transport.forgotten == []
    assert hung in net.cancelled
    assert hung not in {p.id for p in result.closest}
    assert [p.id for p in result.closest] == true_closest(
        target, [p for p in net.ids if p != hung], K)


def _nearest_misbehaves(seed: int, how: str) -> tuple[FakeNetwork, bytes, bytes,
                                                      list[PeerRecord]]:
    """A network whose peer nearest to the target is ``how`` ("hung" or "failing"),
    and seeds that include it: (network, target, that peer, seeds)."""
    net, rng = network(seed, n=40)
    target = rng.randbytes(34)
    bad = true_closest(target, net.ids, 1)[0]
    setattr(net, how, frozenset([bad]))
    return net, target, bad, [PeerRecord(bad, addr_of(bad)), *seeds_from(rng, net.ids, 3)]


def test_a_peer_slow_in_three_walks_in_a_row_counts_as_failed() -> None:
    net, target, hung, seeds = _nearest_misbehaves(701, "hung")
    book = PeerBook()
    transport = FakeTransport()
    for _ in range(2):
        _timed_walk(target, seeds, net.ask(target), transport, [], book=book)
        assert transport.forgotten == []
    _timed_walk(target, seeds, net.ask(target), transport, [], book=book)
    assert transport.forgotten == [hung]
    # The fourth walk does not ask it at all, and so does not wait for it.
    asked_before = net.asked[hung]
    result, elapsed = _timed_walk(target, seeds, net.ask(target), transport, [], book=book)
    assert net.asked[hung] == asked_before
    assert result.skipped == 1 and elapsed == 0


def test_a_request_that_outlives_every_answer_ends_at_the_request_timeout() -> None:
    """When every peer is silent the walk has nothing else to do: it waits for them
    up to the request timeout, then counts them failed."""
    peers = [b"\x12\x20" + bytes([i]) * 32 for i in range(1, 4)]

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    events: list[QueryEvent] = []
    transport = FakeTransport()
    result, elapsed = _timed_walk(b"t", [PeerRecord(p) for p in peers], ask, transport, events,
                                  request_timeout=5.0)
    assert elapsed == pytest.approx(5.0)
    assert result.failed == 3 and result.closest == []
    assert sorted(transport.forgotten) == sorted(peers)
    assert {e.extra for e in events if e.type is EventType.QUERY_ERROR} == {
        "no answer within 5s"}


def test_a_late_answer_is_still_used() -> None:
    slow_peer, hung, found = (b"\x12\x20" + bytes([i]) * 32 for i in (1, 2, 3))

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        if peer == slow_peer:
            await trio.sleep(3.0)  # past its 2 s patience
            return [PeerRecord(found, (b"a",))]
        if peer == found:
            return []
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    result, elapsed = _timed_walk(b"t", [PeerRecord(slow_peer), PeerRecord(hung)], ask,
                                  FakeTransport(), [], request_timeout=10.0)
    assert {p.id for p in result.closest} == {slow_peer, found}
    assert elapsed == pytest.approx(3.0)


def test_patience_follows_the_round_trips_measured_to_each_peer() -> None:
    fast, slow_peer, hung = (b"\x12\x20" + bytes([i]) * 32 for i in (1, 2, 3))
    book = PeerBook()
    for _ in range(20):
        book.answered(fast, 0.01)
        book.answered(slow_peer, 0.8)
    assert book.patience(fast, True, 10.0) == 0.5  # MIN_PATIENCE
    assert 1.5 < book.patience(slow_peer, True, 10.0) < 4.0
    # Without a connection a first answer costs a dial too.
    assert book.patience(slow_peer, False, 10.0) == pytest.approx(
        book.patience(slow_peer, True, 10.0) + 4 * 0.8)  # DIAL_ROUND_TRIPS more
    assert book.patience(slow_peer, False, 4.0) == 4.0  # at most the request timeout
    # A peer never measured: the network's figure.
    assert 0.5 <= book.patience(hung, True, 10.0) == book.patience(b"other", True, 10.0)

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def answer(peer: bytes) -> Sequence[PeerRecord]:
        if peer == fast:
            return []
        return await ask(peer)

    # A hung peer that used to answer fast is given up on at 1 s.
    expected = book.patience(hung, True, 10.0)
    result, elapsed = _timed_walk(b"t", [PeerRecord(fast), PeerRecord(hung)], answer,
                                  FakeTransport(connected={fast, hung}), [], book=book)
    assert elapsed == pytest.approx(expected)
    assert [p.id for p in result.closest] == [fast]


def test_a_failed_peer_is_remembered_across_walks_until_it_shows_life() -> None:
    net, target, dead, seeds = _nearest_misbehaves(702, "failing")
    book = PeerBook()
    first = walk(net, target, seeds, book=book)
    assert first.failed == 1 and net.asked[dead] == 1
    second = walk(net, target, seeds, book=book)
    assert second.failed == 0 and second.skipped == 1 and net.asked[dead] == 1
    book.alive(dead)
    walk(net, target, seeds, book=book)
    assert net.asked[dead] == 2


def test_the_follow_up_asks_the_rest_of_the_k_closest_at_once() -> None:
    net, rng = network(703)
    target = rng.randbytes(34)
    result = walk(net, target, seeds_from(rng, net.ids, 30), alpha=1)
    assert net.max_in_flight > 1
    assert [p.id for p in result.closest] == true_closest(target, net.ids, K)


def nearer_than_all(rng: random.Random, target: bytes, peers: list[bytes], count: int
                    ) -> list[bytes]:
    """``count`` new peer IDs nearer to ``target`` than every one of ``peers``."""
    tkey = kad_key(target)
    bound = xor_distance(kad_key(true_closest(target, peers, 1)[0]), tkey)
    out: list[bytes] = []
    while len(out) < count:
        candidate = sha_id(rng)
        if xor_distance(kad_key(candidate), tkey) < bound:
            out.append(candidate)
    return out


@dataclass
class Naming:
    """A walk in which one peer (``namer``) answers with ``dead`` peers nearer to the
    target than every other peer, whose requests hang, and some real ones."""

    target: bytes
    others: list[bytes]
    namer: bytes
    dead: list[bytes]
    net: FakeNetwork
    transport: FakeTransport
    result: LookupResult
    elapsed: float


def walk_where_one_peer_names(seed: int, dead: int, real: int) -> Naming:
    """60 peers; the namer names ``dead`` made-up peers and the ``real`` nearest others."""
    net, rng = network(seed, n=60)
    target = rng.randbytes(34)
    others = list(net.ids)
    namer = others.pop()
    made_up = nearer_than_all(rng, target, others, dead)
    net.hung = frozenset(made_up)
    ask = net.ask(target)
    named = true_closest(target, others, real) if real else []

    async def namer_ask(peer: bytes) -> Sequence[PeerRecord]:
        if peer == namer:
            return [*(PeerRecord(f, (b"dead",)) for f in made_up),
                    *(PeerRecord(p, addr_of(p)) for p in named)]
        return await ask(peer)

    transport = FakeTransport()
    seeds = [PeerRecord(namer, addr_of(namer)), *seeds_from(rng, others, 5)]
    result, elapsed = _timed_walk(target, seeds, namer_ask, transport, [])
    return Naming(target, others, namer, made_up, net, transport, result, elapsed)


def test_a_peer_naming_made_up_peers_at_a_dead_address_loses_standing() -> None:
    """A tarpit: the hostile peer answers with 40 made-up peers nearer to the target,
    whose requests hang. Only a few are asked; the hostile peer is forgotten, and
    the walk still ends with the true k nearest honest peers."""
    w = walk_where_one_peer_names(704, dead=40, real=0)
    assert w.namer in w.transport.forgotten
    assert sum(1 for f in w.dead if w.net.asked[f]) <= 10 + 4
    assert w.result.skipped >= 40 - 14
    assert [p.id for p in w.result.closest] == true_closest(w.target, w.others, K)
    assert w.elapsed <= 2 * 2.0  # two rounds of patience at most


def test_an_honest_peer_naming_a_few_stale_peers_alone_keeps_its_standing() -> None:
    """A third of a network gone: an honest peer may alone name 5 stale entries that
    everyone else dropped (their requests hang), but most of what it names, the
    live peers also named by others, answers. It is not forgotten, and the walk
    ends with the true k nearest live peers."""
    w = walk_where_one_peer_names(705, dead=5, real=15)
    assert w.namer not in w.transport.forgotten
    assert [p.id for p in w.result.closest] == true_closest(
        w.target, [*w.others, w.namer], K)


# --- stop and cancellation ------------------------------------------------------------------


def test_stop_ends_the_walk_early_and_cancels_requests_in_flight() -> None:
    peers = [b"\x12\x20" + bytes([i]) * 32 for i in range(6)]
    answered: list[bytes] = []
    cancelled: list[bytes] = []
    events: list[QueryEvent] = []

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        try:
            if peer == peers[0]:
                await trio.sleep(1)
                answered.append(peer)
                return [PeerRecord(b"\x12\x20" + b"\xee" * 32, (b"a",))]
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(peer)
            raise
        raise AssertionError("unreachable")

    async def main() -> tuple[LookupResult, float]:
        with trio.fail_after(WALK_BOUND):
            result = await lookup(
                b"target", [PeerRecord(p) for p in peers], FakeTransport(), ask, events.append,
                self_id=b"self", stop=lambda: bool(answered), request_timeout=math.inf,
            )
        return result, trio.current_time()

    outcome = run(main)
    assert isinstance(outcome, tuple)
    result, now = outcome
    assert result.stopped
    assert now == pytest.approx(1.0)
    assert result.queried == 1
    assert [p.id for p in result.closest] == [peers[0]]
    assert sorted(cancelled) == sorted(peers[1:])
    # The walk does not ask the newly heard peer once stop() is true.
    asked = {e.peer for e in events if e.type is EventType.SENDING_QUERY}
    assert asked == set(peers)


def test_stop_true_from_the_start_asks_nobody() -> None:
    net, rng = network(800, n=20)
    result = walk(net, rng.randbytes(34), seeds_from(rng, net.ids, 5), stop=lambda: True)
    assert result.stopped
    assert result.closest == []
    assert not net.asked


def _all_tasks() -> list[trio.lowlevel.Task]:
    tasks = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        assert task is not None
        tasks.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return tasks


def test_cancelling_the_surrounding_scope_ends_the_lookup_with_no_leftover_tasks() -> None:
    peers = [b"\x12\x20" + bytes([i]) * 32 for i in range(1, 8)]
    started: list[bytes] = []
    ended: list[bytes] = []

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        started.append(peer)
        try:
            await trio.sleep_forever()
        finally:
            ended.append(peer)
        raise AssertionError("unreachable")

    async def main() -> None:
        before = len(_all_tasks())
        with trio.move_on_after(3) as scope:
            await lookup(b"t", [PeerRecord(p) for p in peers], FakeTransport(), ask,
                         lambda e: None, self_id=b"self", request_timeout=math.inf)
        assert scope.cancelled_caught
        assert trio.current_time() == pytest.approx(3.0)
        assert sorted(started) == sorted(peers)
        assert sorted(ended) == sorted(peers)
        assert len(_all_tasks()) == before

    run(main)


def test_cancellation_is_prompt_in_real_time() -> None:
    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def main() -> None:
        start = trio.current_time()
        with trio.move_on_after(0.05):
            await lookup(b"t", [PeerRecord(b"\x12\x20" + b"\x07" * 32)], FakeTransport(), ask,
                         lambda e: None, self_id=b"self")
        assert trio.current_time() - start < 1.0

    trio.run(main)


# --- edges ----------------------------------------------------------------------------------


def test_empty_seeds_give_an_empty_result() -> None:
    events: list[QueryEvent] = []
    asked: list[bytes] = []

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        asked.append(peer)
        return []

    async def main() -> LookupResult:
        return await lookup(b"t", [], FakeTransport(), ask, events.append, self_id=b"self")

    result = run(main)
    assert result == LookupResult(closest=[], stopped=False, queried=0, failed=0)
    assert events == []
    assert asked == []


def test_self_is_never_queried_even_when_peers_name_it() -> None:
    rng = random.Random(900)
    self_id = sha_id(rng)
    ids = [sha_id(rng) for _ in range(60)]
    # Every peer knows self; self is among the seeds too.
    net = FakeNetwork(ids, rng, extra_known=[self_id])
    target = self_id  # self is the nearest possible peer to this target
    seeds = [PeerRecord(self_id, (b"me",)), *seeds_from(rng, ids, 3)]
    events: list[QueryEvent] = []
    transport = FakeTransport()

    result = walk(net, target, seeds, transport, events, self_id=self_id)

    assert self_id not in net.asked
    assert all(e.peer != self_id for e in events)
    assert all(r.id != self_id for e in events for r in e.responses)
    assert self_id not in transport.learned
    assert [p.id for p in result.closest] == true_closest(target, ids, K)


def test_a_hung_peer_outside_the_k_closest_does_not_hold_the_walk() -> None:
    """Convergence: once the k nearest peers heard of have all answered, the walk
    ends, even while a farther peer has not (it is cancelled, not waited for)."""
    rng = random.Random(901)
    target = rng.randbytes(34)
    near_a, near_b, far = true_closest(target, [sha_id(rng) for _ in range(3)], 3)
    cancelled: list[bytes] = []

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        if peer == far:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.append(peer)
                raise
        await trio.sleep(0.1)
        # near_a names near_b, which pushes the hung peer out of the k nearest
        return [PeerRecord(near_b)] if peer == near_a else []

    async def main() -> tuple[LookupResult, float]:
        with trio.fail_after(WALK_BOUND):
            result = await lookup(
                target, [PeerRecord(p) for p in (far, near_a)], FakeTransport(), ask,
                lambda e: None, self_id=b"self", k=2, alpha=3, request_timeout=10.0,
            )
        return result, trio.current_time()

    outcome = run(main)
    assert isinstance(outcome, tuple)
    result, now = outcome
    assert [p.id for p in result.closest] == [near_a, near_b]
    assert now == pytest.approx(0.2)  # two hops, not the 10 s the far peer could take
    assert cancelled == [far]


# --- what a walk remembers of the peers it heard of -------------------------------------


def test_the_first_addresses_heard_for_a_peer_are_kept() -> None:
    """A later answer cannot replace the addresses a peer was first heard with (a
    hostile peer could otherwise point the walk's result at its own addresses),
    and a peer first heard without addresses gets them from the next answer."""
    good, bare = b"\x12\x20" + b"\x01" * 32, b"\x12\x20" + b"\x02" * 32
    seeds = [PeerRecord(good, (b"good-addr",)), PeerRecord(bare)]

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        return [PeerRecord(good, (b"hostile-addr",)), PeerRecord(bare, (b"bare-addr",))]

    async def main() -> LookupResult:
        return await lookup(b"target", seeds, FakeTransport(), ask, lambda e: None,
                            self_id=b"self")

    result = run(main)
    assert isinstance(result, LookupResult)
    assert dict((p.id, p.addrs) for p in result.closest) == {
        good: (b"good-addr",), bare: (b"bare-addr",)}


def test_a_peer_never_heard_with_addresses_is_returned_with_none() -> None:
    bare = b"\x12\x20" + b"\x03" * 32

    async def ask(peer: bytes) -> Sequence[PeerRecord]:
        return []

    async def main() -> LookupResult:
        return await lookup(b"target", [PeerRecord(bare)], FakeTransport(), ask,
                            lambda e: None, self_id=b"self")

    result = run(main)
    assert isinstance(result, LookupResult)
    assert result.closest == [PeerRecord(bare, ())]


def test_trim_forgets_only_the_farthest_peers_never_asked() -> None:
    from dhtd.lookup import _State, _Walk

    rng = random.Random(77)
    target = rng.randbytes(34)
    walk_ = _Walk(kad_key(target), b"self")
    peers = [sha_id(rng) for _ in range(12)]
    for peer in peers:
        walk_.hear(PeerRecord(peer, addr_of(peer)))
    by_distance = true_closest(target, peers, 12)
    walk_.states[by_distance[-1]] = _State.QUERIED  # the farthest was asked: it stays
    walk_.trim(12)
    assert len(walk_.states) == 12  # at the cap: nothing to do
    walk_.trim(5)
    assert set(walk_.states) == set(by_distance[:5]) | {by_distance[-1]}
    assert [peer for _, peer in walk_.order] == [*by_distance[:5], by_distance[-1]]
    assert set(walk_.addrs) == set(walk_.states)


def test_nearest_in_states_matches_brute_force() -> None:
    """The walk keeps its peers in distance order as they arrive (in any order, some
    heard twice); picking the nearest in some states matches ranking them all."""
    from dhtd.lookup import _State, _Walk

    rng = random.Random(78)
    for _ in range(50):
        target = rng.randbytes(34)
        walk_ = _Walk(kad_key(target), b"self")
        peers = [sha_id(rng) for _ in range(rng.randrange(1, 60))]
        for peer in [*peers, *rng.sample(peers, len(peers) // 2), b"self"]:
            walk_.hear(PeerRecord(peer, addr_of(peer)))
        for peer in peers:
            walk_.states[peer] = rng.choice(list(_State))
        states = tuple(rng.sample(list(_State), rng.randrange(1, 5)))
        count = rng.randrange(0, 25)
        ranked = true_closest(target, peers, len(peers))
        assert walk_.nearest(count, *states) == [
            p for p in ranked if walk_.states[p] in states][:count]
        assert b"self" not in walk_.states


@pytest.mark.parametrize("seed", range(3))
def test_without_follow_up_the_walk_ends_once_the_beta_nearest_answered(seed: int) -> None:
    full_net, rng = network(900 + seed)
    target = rng.randbytes(34)
    seeds = seeds_from(rng, full_net.ids, 10)
    full = walk(full_net, target, seeds)
    short_net, _ = network(900 + seed)
    short = walk(short_net, target, seeds, follow_up=False)
    assert full.complete and not short.complete
    # The 3 nearest of the whole network answered either way ...
    assert [p.id for p in short.closest[:3]] == true_closest(target, short_net.ids, 3)
    # ... but the short walk asked fewer peers.
    assert sum(short_net.asked.values()) < sum(full_net.asked.values())
