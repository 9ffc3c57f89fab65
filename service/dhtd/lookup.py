"""The one iterative Kademlia lookup that every DHT operation runs.

FindPeer, FindProvs, Get, Provide, Put and Query differ only in the small
functions they pass to :func:`lookup`: ``ask`` (what to send one peer, and
what to make of its answer) and ``stop`` (whether the operation has what it
needs). The routine itself knows nothing of providers or records.

Pure trio: no libp2p, no gRPC. The network is reached through the
:class:`Transport` protocol, so the engine runs against in-process fakes in
unit tests and against libp2p in the daemon.
"""

from __future__ import annotations

import bisect
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from dhtd.ids import kad_key, peer_id_to_str
from dhtd.liveness import PeerBook
from dhtd.routing import BUCKET_SIZE

log = logging.getLogger(__name__)


class _Named:
    """A peer ID that is formatted only if the log line is printed."""

    def __init__(self, peer: bytes) -> None:
        self.peer = peer

    def __str__(self) -> str:
        try:
            return peer_id_to_str(self.peer)
        except ValueError:
            return self.peer.hex()

# alpha, the number of peers asked at once
# (go-libp2p-kad-dht amino/defaults.go: DefaultConcurrency = 10).
ALPHA = 10

# beta, the resiliency: the iterative phase of a walk ends once this many of the
# nearest peers have answered (go-libp2p-kad-dht's Resiliency option, default 3,
# which its lookup termination uses).
BETA = 3

# Requests one walk keeps running at most, counting those it no longer waits for
# (SLOW): a walk through many silent peers holds bounded memory (ours).
MAX_OUTSTANDING = 4 * BUCKET_SIZE

# A peer loses standing within a walk once at least REFERRAL_STRIKES of the peers
# that it alone named outlived their patience, and more than REFERRAL_RATIO times
# as many of the peers it named (alone or not) answered in time (ours). A peer
# that answers with made-up peers at a dead address (a tarpit) names only silent
# ones, that nobody else names. An honest peer may alone name several stale
# entries that others already dropped (a third of a network gone), but most of
# what it names answers. A peer that refuses at once costs a walk nothing and
# counts against no one.
REFERRAL_STRIKES = 4
REFERRAL_RATIO = 3

# How long one peer may take to answer one request before the lookup counts it
# as failed and moves on. go-libp2p-kad-dht bounds a request only by the query
# context; js-libp2p's kad-dht uses an adaptive timeout. We pick a fixed bound
# well under the default query timeout (60 s), so one silent peer can never
# hold a lookup for its whole budget.
PEER_REQUEST_TIMEOUT = 10.0

# Ours: the most peers one walk keeps track of. Answers name at most
# dhtd.node.MAX_CLOSER_PEERS each, and a walk in a 10,000-node network asks a few
# dozen peers; past the cap the farthest never-asked peers are dropped, so a peer
# that answers with thousands of fake peers costs bounded memory and CPU.
MAX_PEERS_PER_LOOKUP = 1000


class EventType(enum.IntEnum):
    """Query event types; the numbers are go-libp2p's routing.QueryEventType."""

    SENDING_QUERY = 0
    PEER_RESPONSE = 1
    FINAL_PEER = 2
    QUERY_ERROR = 3
    PROVIDER = 4
    VALUE = 5
    ADDING_PEER = 6
    DIALING_PEER = 7


@dataclass(frozen=True)
class PeerRecord:
    """A peer ID (binary multihash) and the binary multiaddrs known for it."""

    id: bytes
    addrs: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class QueryEvent:
    """One step of a walk, shaped like go-libp2p's routing.QueryEvent."""

    type: EventType
    peer: bytes
    responses: tuple[PeerRecord, ...] = ()
    extra: str = ""


Emit = Callable[[QueryEvent], None]
"""Receives events as they happen. Must not block: it is called inside the walk."""


class PeerRequestError(Exception):
    """One request to one peer failed (dial, stream, timeout, bad answer)."""


class RequestTimeout(PeerRequestError):
    """A peer did not answer within the lookup's per-request timeout."""


class Transport(Protocol):
    """What the lookup needs from the network."""

    def is_connected(self, peer: bytes) -> bool:
        """True if a connection to ``peer`` is open now (no dial needed)."""
        ...

    def learn(self, peers: Sequence[PeerRecord]) -> None:
        """Remembers the addresses of ``peers`` so that they can be dialled."""
        ...

    def forget(self, peer: bytes) -> None:
        """``peer`` failed a request: it should not be offered to lookups again."""
        ...

    def responded(self, peer: bytes) -> None:
        """``peer`` answered a request: it is a live DHT server."""
        ...

    def suspect(self, peer: bytes) -> None:
        """``peer`` timed out: it should be checked before it is dropped."""
        ...


AskFn = Callable[[bytes], Awaitable[Sequence[PeerRecord]]]
"""Sends one request to one peer and returns the closer peers it named.

It handles whatever else the answer carries (providers, records) itself, and
raises :class:`PeerRequestError` (or any Exception) when the peer failed.
"""


class _State(enum.Enum):
    HEARD = enum.auto()
    WAITING = enum.auto()
    # Asked, and the answer outlived the walk's patience: the walk goes on without
    # it (the request still runs, and a late answer is used).
    SLOW = enum.auto()
    QUERIED = enum.auto()
    UNREACHABLE = enum.auto()


@dataclass
class LookupResult:
    """What a walk ended with.

    ``closest`` holds up to k peers that answered, nearest to the target first.
    ``stopped`` is True when ``stop`` ended the walk before it converged.
    """

    closest: list[PeerRecord]
    stopped: bool
    queried: int
    failed: int
    # The k nearest peers that were asked and failed (down, or not a DHT server):
    # they hold a place in the keyspace that answers did not fill (dhtd.sweep counts
    # them when it asks whether a region was seen in full).
    unreachable: list[bytes] = field(default_factory=list)
    # Peers not asked because they failed recently (dhtd.liveness), or because the
    # peer that named them lost standing (see REFERRAL_STRIKES).
    skipped: int = 0
    # Peers whose answer outlived the walk's patience (the walk went on without them).
    slow: int = 0
    # Those of them nearer to the target than the farthest of ``closest``, nearest
    # first: alive but slow, or stale. A record meant for the k closest goes to
    # them too (a store to a stale one fails in the background; a live one may be
    # among the true k closest).
    slow_closer: list[PeerRecord] = field(default_factory=list)
    # Whether the walk converged on the k nearest it could reach (not cut short by
    # ``stop``, nor ended after its iterative phase).
    complete: bool = True


@dataclass
class _Walk:
    """The peers one walk has heard of, kept in order of distance to the target.

    Each peer's distance is computed once, when it is first heard of, and the
    order is kept as peers arrive, so picking the nearest peers in some states
    (done after every answer) reads the front of a list instead of ranking every
    known peer again."""

    target_key: bytes
    self_id: bytes
    states: dict[bytes, _State] = field(default_factory=dict)
    # (XOR distance to the target, peer), nearest first.
    order: list[tuple[int, bytes]] = field(default_factory=list)
    addrs: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict)
    # The one peer whose answer named each peer; a peer named by two or more peers
    # (or a seed) has none.
    referrer: dict[bytes, bytes] = field(default_factory=dict)
    # Every peer whose answer named each peer.
    namers: dict[bytes, set[bytes]] = field(default_factory=dict)
    target: int = field(init=False)

    def __post_init__(self) -> None:
        self.target = int.from_bytes(self.target_key, "big")

    def hear(self, peer: PeerRecord, referrer: bytes | None = None) -> bool:
        """Adds ``peer``; True if it was new to this walk."""
        if peer.id == self.self_id:
            return False
        if peer.addrs and not self.addrs.get(peer.id):
            self.addrs[peer.id] = peer.addrs
        if referrer is not None:
            self.namers.setdefault(peer.id, set()).add(referrer)
        if peer.id in self.states:
            if self.referrer.get(peer.id, referrer) != referrer:
                del self.referrer[peer.id]
            return False
        self.states[peer.id] = _State.HEARD
        if referrer is not None:
            self.referrer[peer.id] = referrer
        distance = int.from_bytes(kad_key(peer.id), "big") ^ self.target
        bisect.insort(self.order, (distance, peer.id))
        return True

    def nearest(self, count: int, *states: _State) -> list[bytes]:
        """Up to ``count`` peers in any of ``states``, nearest first."""
        out: list[bytes] = []
        if count <= 0:
            return out
        for _, peer in self.order:
            if self.states[peer] in states:
                out.append(peer)
                if len(out) == count:
                    break
        return out

    def distances(self, count: int, *states: _State) -> list[int]:
        """The XOR distances of up to ``count`` peers in ``states``, nearest first."""
        out: list[int] = []
        for distance, peer in self.order:
            if len(out) == count:
                break
            if self.states[peer] in states:
                out.append(distance)
        return out

    def trim(self, cap: int) -> None:
        """Forgets the farthest never-asked peers beyond ``cap`` known ones."""
        if len(self.order) <= cap:
            return
        kept = self.order[:cap]
        for entry in self.order[cap:]:
            peer = entry[1]
            if self.states[peer] is _State.HEARD:
                del self.states[peer]
                self.addrs.pop(peer, None)
                self.referrer.pop(peer, None)
                self.namers.pop(peer, None)
            else:
                kept.append(entry)
        self.order = kept

    def prune_referred(self, referrer: bytes) -> int:
        """Marks every never-asked peer that ``referrer`` named first as unreachable;
        returns how many."""
        pruned = 0
        for peer, by in self.referrer.items():
            if by == referrer and self.states.get(peer) is _State.HEARD:
                self.states[peer] = _State.UNREACHABLE
                pruned += 1
        return pruned


@dataclass
class _Referrals:
    """How the peers that one peer named fared, within one walk: ``good`` counts
    those that answered in time, ``bad`` those it alone named that did not."""

    good: int = 0
    bad: int = 0

    def discredited(self) -> bool:
        return self.bad >= REFERRAL_STRIKES and self.bad > REFERRAL_RATIO * self.good


async def lookup(
    target: bytes,
    seeds: Sequence[PeerRecord],
    transport: Transport,
    ask: AskFn,
    emit: Emit,
    *,
    self_id: bytes,
    stop: Callable[[], bool] = lambda: False,
    k: int = BUCKET_SIZE,
    alpha: int = ALPHA,
    beta: int = BETA,
    request_timeout: float = PEER_REQUEST_TIMEOUT,
    book: PeerBook | None = None,
    follow_up: bool = True,
) -> LookupResult:
    """Walks towards ``target`` (raw key bytes; distance is taken on SHA-256 of it).

    Every peer is asked at most once per walk, the nearest first. Two phases:

    * **Iterative**: up to ``alpha`` requests at once, each to the nearest peer not
      yet asked among the k nearest known, until the ``beta`` nearest peers that
      did not fail have all answered (go-libp2p-kad-dht's lookup termination).
    * **Follow-up**: every peer among the k nearest not yet asked is asked at once;
      peers their answers name that enter the k nearest are asked too. Without
      ``follow_up`` the walk ends where the iterative phase does (the ``beta``
      nearest hold what the k nearest hold, for a walk that reads records only).

    The walk ends when the k nearest peers that did not fail have all answered
    (convergence), when no peer is left to ask, or as soon as ``stop()`` turns
    True after an answer.

    It never waits on a peer longer than that peer's patience (``book``: its
    measured round trips, dhtd.liveness): past it the peer is SLOW and the walk
    goes on as if it had failed, though its request runs on (up to
    ``request_timeout``) and a late answer is still used. Peers the book holds
    for dead are not asked at all. A peer whose named peers keep failing loses
    standing: it counts as failed, and the peers only it named are not asked.

    Emits DIALING_PEER (when no connection is open), SENDING_QUERY, then
    PEER_RESPONSE or QUERY_ERROR for every peer asked (QUERY_ERROR also when the
    walk ends while a SLOW peer's request still runs).

    On cancellation, requests in flight are cancelled and nothing outlives the
    call.
    """
    book = book if book is not None else PeerBook()
    now = trio.current_time
    walk = _Walk(kad_key(target), self_id)
    skipped = 0

    def hear(record: PeerRecord, referrer: bytes | None) -> None:
        nonlocal skipped
        if walk.hear(record, referrer) and book.is_dead(record.id, now()):
            walk.states[record.id] = _State.UNREACHABLE
            skipped += 1

    for seed in seeds:
        hear(seed, None)
    send, receive = trio.open_memory_channel[
        tuple[bytes, Sequence[PeerRecord] | Exception, float | None]](math.inf)
    queried = failed = slow = 0
    stopped = followup = False
    # Peers asked whose answer the walk still waits for, with when its patience ends.
    waiting: dict[bytes, float] = {}
    outstanding = 0  # requests running: waiting and slow ones
    referrals: dict[bytes, _Referrals] = {}

    async def ask_one(peer: bytes, connected: bool) -> None:
        if not connected:
            emit(QueryEvent(EventType.DIALING_PEER, peer))
        emit(QueryEvent(EventType.SENDING_QUERY, peer))
        outcome: Sequence[PeerRecord] | Exception
        started = now()
        try:
            with trio.fail_after(request_timeout):
                outcome = await ask(peer)
        except trio.TooSlowError:
            outcome = RequestTimeout(f"no answer within {request_timeout:g}s")
        except Exception as exc:
            outcome = exc
        send.send_nowait((peer, outcome, now() - started if connected else None))

    def judge_referrer(peer: bytes, good: bool) -> None:
        """Counts an answer in time for every peer that named ``peer``; a silence
        against the one peer that named it, if no other peer named it too (an
        honest peer's dead entries are in other peers' tables as well; made-up
        peers are named by their maker alone)."""
        if good:
            for namer in walk.namers.get(peer, ()):
                referrals.setdefault(namer, _Referrals()).good += 1
            return
        by = walk.referrer.get(peer)
        if by is None:
            return
        tally = referrals.setdefault(by, _Referrals())
        was = tally.discredited()
        tally.bad += 1
        if tally.discredited() and not was:
            nonlocal skipped
            skipped += walk.prune_referred(by)
            log.debug("%s lost standing: %d of the peers it alone named failed",
                      _Named(by), tally.bad)
            book.failed(by, now())
            transport.forget(by)

    def patience_over(moment: float) -> None:
        nonlocal slow
        for peer, until in list(waiting.items()):
            if until > moment:
                continue
            del waiting[peer]
            walk.states[peer] = _State.SLOW
            slow += 1
            if book.slow(peer, moment):
                transport.forget(peer)
            else:
                transport.suspect(peer)
            judge_referrer(peer, False)

    async with trio.open_nursery() as nursery:
        while True:
            if stop():
                stopped = True
                break
            live = walk.nearest(k, _State.HEARD, _State.WAITING, _State.QUERIED)
            if live and all(walk.states[p] is _State.QUERIED for p in live):
                break
            if not followup and all(walk.states[p] is _State.QUERIED for p in live[:beta]):
                if not follow_up:
                    break
                followup = True
            limit = k if followup else alpha
            for peer in live:
                if len(waiting) >= limit or outstanding >= MAX_OUTSTANDING:
                    break
                if walk.states[peer] is _State.HEARD:
                    walk.states[peer] = _State.WAITING
                    connected = transport.is_connected(peer)
                    waiting[peer] = now() + book.patience(peer, connected, request_timeout)
                    outstanding += 1
                    nursery.start_soon(ask_one, peer, connected)
            if outstanding == 0:
                break
            message = None
            with trio.move_on_at(min(waiting.values(), default=math.inf)):
                message = await receive.receive()
            if message is None:
                patience_over(now())
                continue
            peer, outcome, rtt = message
            outstanding -= 1
            waiting.pop(peer, None)
            if isinstance(outcome, Exception):
                failed += 1
                log.debug("request to %s failed: %s", _Named(peer), describe(outcome))
                walk.states[peer] = _State.UNREACHABLE
                book.failed(peer, now())
                transport.forget(peer)
                emit(QueryEvent(EventType.QUERY_ERROR, peer, extra=describe(outcome)))
                continue
            if walk.states[peer] is _State.WAITING:
                judge_referrer(peer, True)
            queried += 1
            walk.states[peer] = _State.QUERIED
            book.answered(peer, rtt)
            transport.responded(peer)
            closer = tuple(p for p in outcome if p.id != self_id)
            transport.learn(closer)
            for record in closer:
                hear(record, peer)
            walk.trim(MAX_PEERS_PER_LOOKUP)
            emit(QueryEvent(EventType.PEER_RESPONSE, peer, responses=closer))
        nursery.cancel_scope.cancel()
    for peer in walk.nearest(len(walk.order), _State.SLOW):
        emit(QueryEvent(EventType.QUERY_ERROR, peer, extra="no answer before the walk ended"))

    closest = [
        PeerRecord(p, walk.addrs.get(p, ())) for p in walk.nearest(k, _State.QUERIED)
    ]
    unreachable = walk.nearest(k, _State.UNREACHABLE, _State.SLOW)
    slow_closer = []
    if closest:
        farthest = closest[-1].id
        for _, peer in walk.order:
            if peer == farthest:
                break
            if walk.states[peer] is _State.SLOW:
                slow_closer.append(PeerRecord(peer, walk.addrs.get(peer, ())))
    return LookupResult(closest=closest, stopped=stopped, queried=queried, failed=failed,
                        unreachable=unreachable, skipped=skipped, slow=slow,
                        slow_closer=slow_closer, complete=not stopped and (followup or
                                                                           not live))


def describe(exc: BaseException) -> str:
    """A one-line text for an error, with exception groups unwrapped to their cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
