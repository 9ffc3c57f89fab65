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
    target: int = field(init=False)

    def __post_init__(self) -> None:
        self.target = int.from_bytes(self.target_key, "big")

    def hear(self, peer: PeerRecord) -> None:
        if peer.id == self.self_id:
            return
        if peer.addrs and not self.addrs.get(peer.id):
            self.addrs[peer.id] = peer.addrs
        if peer.id not in self.states:
            self.states[peer.id] = _State.HEARD
            distance = int.from_bytes(kad_key(peer.id), "big") ^ self.target
            bisect.insort(self.order, (distance, peer.id))

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
            else:
                kept.append(entry)
        self.order = kept


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
    request_timeout: float = PEER_REQUEST_TIMEOUT,
) -> LookupResult:
    """Walks towards ``target`` (raw key bytes; distance is taken on SHA-256 of it).

    Asks up to ``alpha`` peers at once, always the nearest ones not yet asked
    among the k nearest known. Every peer is asked at most once per walk.

    Ends when the k nearest peers that did not fail have all answered
    (convergence), when no peer is left to ask, or as soon as ``stop()`` turns
    True after an answer. Emits DIALING_PEER (when no connection is open),
    SENDING_QUERY, then PEER_RESPONSE or QUERY_ERROR for every peer asked.

    On cancellation, requests in flight are cancelled and nothing outlives the
    call.
    """
    walk = _Walk(kad_key(target), self_id)
    for seed in seeds:
        walk.hear(seed)
    send, receive = trio.open_memory_channel[tuple[bytes, Sequence[PeerRecord] | Exception]](
        math.inf
    )
    queried = failed = 0
    stopped = False

    async def ask_one(peer: bytes) -> None:
        if not transport.is_connected(peer):
            emit(QueryEvent(EventType.DIALING_PEER, peer))
        emit(QueryEvent(EventType.SENDING_QUERY, peer))
        outcome: Sequence[PeerRecord] | Exception
        try:
            with trio.fail_after(request_timeout):
                outcome = await ask(peer)
        except trio.TooSlowError:
            outcome = RequestTimeout(f"no answer within {request_timeout:g}s")
        except Exception as exc:
            outcome = exc
        send.send_nowait((peer, outcome))

    async with trio.open_nursery() as nursery:
        in_flight = 0
        while True:
            if stop():
                stopped = True
                break
            nearest = walk.nearest(k, _State.HEARD, _State.WAITING, _State.QUERIED)
            if all(walk.states[p] is _State.QUERIED for p in nearest):
                break
            for peer in nearest:
                if in_flight >= alpha:
                    break
                if walk.states[peer] is _State.HEARD:
                    walk.states[peer] = _State.WAITING
                    in_flight += 1
                    nursery.start_soon(ask_one, peer)
            if in_flight == 0:
                break
            peer, outcome = await receive.receive()
            in_flight -= 1
            if isinstance(outcome, Exception):
                failed += 1
                log.debug("request to %s failed: %s", _Named(peer), describe(outcome))
                walk.states[peer] = _State.UNREACHABLE
                if isinstance(outcome, RequestTimeout):
                    transport.suspect(peer)  # slow, maybe overloaded: check it first
                else:
                    transport.forget(peer)
                emit(QueryEvent(EventType.QUERY_ERROR, peer, extra=describe(outcome)))
                continue
            queried += 1
            walk.states[peer] = _State.QUERIED
            transport.responded(peer)
            closer = tuple(p for p in outcome if p.id != self_id)
            transport.learn(closer)
            for record in closer:
                walk.hear(record)
            walk.trim(MAX_PEERS_PER_LOOKUP)
            emit(QueryEvent(EventType.PEER_RESPONSE, peer, responses=closer))
        nursery.cancel_scope.cancel()

    closest = [
        PeerRecord(p, walk.addrs.get(p, ())) for p in walk.nearest(k, _State.QUERIED)
    ]
    unreachable = walk.nearest(k, _State.UNREACHABLE)
    return LookupResult(closest=closest, stopped=stopped, queried=queried, failed=failed,
                        unreachable=unreachable)


def describe(exc: BaseException) -> str:
    """A one-line text for an error, with exception groups unwrapped to their cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
