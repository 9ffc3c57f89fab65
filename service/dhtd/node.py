"""A DHT node: routing table, record stores, and the six operations.

The operations are thin: each one is :func:`dhtd.lookup.lookup` with its own
``ask`` and ``stop`` functions, plus what it does before and after the walk.
Every operation runs under :meth:`DhtNode._operation`, which bounds it by a
timeout, counts it as in flight, and turns a passed deadline into
:class:`DeadlineExceeded`.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from dhtd.errors import DeadlineExceeded, FailedPrecondition, InvalidRecord, NotFound, Unavailable
from dhtd.handlers import KadHandlers, Peers, Rejected, record_selector
from dhtd.ids import kad_key, peer_id_to_str
from dhtd.kadmsg import MessageType, add_peers, new_message, new_record, parse_time, read_peers
from dhtd.liveness import PeerBook
from dhtd.lookup import (
    PEER_REQUEST_TIMEOUT,
    Emit,
    EventType,
    LookupResult,
    PeerRecord,
    PeerRequestError,
    QueryEvent,
    describe,
    lookup,
)
from dhtd.netsize import Estimator
from dhtd.p2p import Host
from dhtd.provider import ProvideSet, Reprovider, batch
from dhtd.records import PK_NAMESPACE, Candidate, Validators
from dhtd.refresh import REFRESH_INTERVAL, Maintainer
from dhtd.routing import BUCKET_SIZE, RoutingTable
from dhtd.state import NodeState, StorageFull, StorageUnavailable
from dhtd.stores import (
    MAX_PROVIDERS_PER_KEY,
    BetterRecordHeld,
    HeldRecords,
    ProviderStore,
    ValueStore,
)
from dhtd.wire.kad_pb2 import Message

log = logging.getLogger("dhtd.node")

# Closer peers read from one answer. go-libp2p and js-libp2p send k (20), plus the
# target itself for FIND_NODE; twice k tolerates any honest peer, and the rest of
# an oversized answer is ignored.
MAX_CLOSER_PEERS = 2 * BUCKET_SIZE

# Providers read from one GET_PROVIDERS answer: as many as a key keeps here.
MAX_PROVIDERS_READ = MAX_PROVIDERS_PER_KEY

# Expired records are collected every GC_INTERVAL, GC_BATCH at a time with a
# checkpoint between batches, so collection never stalls the node
# (go-libp2p-kad-dht collects provider records hourly).
GC_INTERVAL = 60.0
GC_BATCH = 1000

# The protection tag of the routing table's k peers closest to this node: their
# connections are never trimmed (go-libp2p-kad-dht protects its closest buckets).
CLOSEST_TAG = "dhtd-closest"

# How long a bootstrap dial may take before it counts as failed.
BOOTSTRAP_DIAL_TIMEOUT = 10.0

# One refresh lookup (self or bucket) is abandoned after this (ours; a walk on a
# healthy network takes well under a second, and PEER_REQUEST_TIMEOUT bounds each hop).
REFRESH_WALK_TIMEOUT = 30.0

# Get stops once this many peers returned a valid record
# (the Amino DHT's IPNS quorum: 16 of the 20 closest).
GET_QUORUM = 16
# ... except under /pk/, where the key is the hash of its one valid value: the
# first valid record is the answer, and asking more peers cannot change it (ours).
PK_QUORUM = 1

# A Get for a key this node holds a valid record of waits at most this long for
# the walk (for better records elsewhere) before it answers with the best in hand
# (ours; go-libp2p-kad-dht's GetValue counts the local record towards its quorum
# but waits for the walk). A walk on a healthy network ends well within it.
HELD_RECORD_WAIT = 1.0

# How many holders must have taken a record before a Provide or Put ends OK; the
# rest of the k stores go on in the background (--min-holders; a request's
# min_holders). Any one holder among a key's k closest makes the record findable,
# since every lookup for the key ends by asking the k closest it found; 5 leaves
# room for 4 of them to leave before the background stores end (ours, after
# ProbeLab's optimistic provide, which returns before all k stores end).
MIN_HOLDERS = 5

# One store (ADD_PROVIDER or PUT_VALUE) to one peer is abandoned after this
# (go-libp2p-kad-dht #1252 bounds each ADD_PROVIDER of a sweep likewise).
STORE_TIMEOUT = PEER_REQUEST_TIMEOUT

# Stores still running in the background after their Provide or Put ended; past
# this, a Provide or Put waits for all of its stores (ours: 1,000 CIDs' worth).
MAX_BACKGROUND_STORES = 20_000

# A Get that has no record in hand stops its walk this long before its deadline,
# to answer with what it found meanwhile (ours).
ANSWER_MARGIN = 0.5

# Records found outdated during a Get are corrected on their holders in the
# background; each correction is bounded by this.
CORRECTION_TIMEOUT = 10.0

# CIDs announced at once by one Provide call.
PROVIDE_CONCURRENCY = 8

# Every CID this node announced is announced again this often, so its provider
# records never expire on other peers (go-libp2p-kad-dht / Kubo reprovide every
# 22 h; records live 48 h).
REPROVIDE_INTERVAL = 22 * 3600.0

# Ours: a Provide (or reprovide round) of at least this many CIDs is announced in
# one sweep (dhtd.sweep: a few lookups per keyspace region instead of a walk per
# CID); --provide-batch-min, 0 for never.
PROVIDE_BATCH_MIN = 32

# One reprovide round (all CIDs due) may take this long before it is abandoned
# until the next round.
REPROVIDE_TIMEOUT = 600.0

# Every record this node Put is put again this often, so it outlives churn on its
# holders, who keep a record 48 h (ours: half a day; Kubo republishes IPNS names
# every 4 h, go-libp2p-kad-dht leaves republishing to its caller).
REPUBLISH_INTERVAL = 12 * 3600.0

# One record's republish may take this long.
REPUBLISH_TIMEOUT = 120.0

# The routing table's peers are saved this often (and when the node stops), so a
# restarted node rejoins from them when its bootstrap peers are gone.
SAVE_TABLE_INTERVAL = 60.0

NO_PEERS = (
    "this node has no DHT peers yet: start dhtd with --bootstrap "
    "/ip4/<ip>/tcp/<port>/p2p/<peer id> (env DHTD_BOOTSTRAP), or call "
    "dht.v1.NodeService/Connect with such an address"
)


@dataclass(frozen=True)
class Bootstrap:
    peer: bytes
    addr: bytes


def _ignore(*_: object) -> None:
    """Takes any arguments and does nothing: the default hook, and the event sink
    of internal walks whose events no caller sees."""


@dataclass
class Observer:
    """Hooks for metrics; each default does nothing."""

    op_started: Callable[[str], None] = _ignore
    op_finished: Callable[[str, str, float], None] = _ignore
    first_result: Callable[[str, float], None] = _ignore
    event: Callable[[int], None] = _ignore
    # (message type, ok): a request that timed out is not ok; one the walk stopped
    # waiting for (it ended, or its caller left) counts as sent, and ok.
    outbound: Callable[[int, bool], None] = _ignore
    # A store that went on after its Provide or Put ended: "stored" or "failed".
    background_store: Callable[[str], None] = _ignore
    inbound: Callable[[int], None] = _ignore
    refused: Callable[[str], None] = _ignore


@dataclass
class NodeInfo:
    peer_id: bytes
    addrs: list[bytes]
    server: bool
    protocol: str
    routing_table_size: int
    connected_peers: int
    queries_in_flight: int
    announced: list[bytes] = field(default_factory=list)
    network_size: int | None = None


def _failed() -> bool:
    """Inside an ``except BaseException``: whether the request failed (an error, or
    a deadline passed: the peer's timeout or the operation's), as opposed to being
    cancelled because the walk stopped waiting for it or its caller left."""
    exc = sys.exc_info()[1]
    return not isinstance(exc, trio.Cancelled) or getattr(exc, "source", None) == "deadline"


def _only_cancelled(exc: BaseException) -> bool:
    """True for trio.Cancelled, also when a nursery wrapped it in an exception group
    (a cancelled walk ends that way: its requests were cancelled in a nursery)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


@dataclass
class _Op:
    name: str
    started: float
    first: float | None = None

    def got_result(self, observer: Observer) -> None:
        if self.first is None:
            self.first = time.monotonic()
            observer.first_result(self.name, self.first - self.started)


@dataclass
class DhtNode:
    """One DHT node on one libp2p host."""

    host: Host
    validators: Validators
    server: bool = True
    bootstrap: Sequence[Bootstrap] = ()
    observer: Observer = field(default_factory=Observer)
    on_table_change: Callable[[int], None] = _ignore
    clock: Callable[[], float] = time.time
    reprovide_interval: float = REPROVIDE_INTERVAL
    provide_batch_min: int = PROVIDE_BATCH_MIN
    refresh_interval: float = REFRESH_INTERVAL
    republish_interval: float = REPUBLISH_INTERVAL
    min_holders: int = MIN_HOLDERS
    state: NodeState = field(default_factory=NodeState)
    # Records held for other peers (in state.db for dhtd's own node).
    records: HeldRecords = field(default_factory=HeldRecords.in_memory)

    def __post_init__(self) -> None:
        self.self_id = self.host.self_id
        self.table = RoutingTable(self.self_id)
        # Round trips and failures of the peers walks asked, across walks.
        self.book = PeerBook()
        # The network's size, from the walks that converged (dhtd.netsize).
        self.netsize = Estimator(BUCKET_SIZE)
        # Stores running on after their Provide or Put ended, and how those ended.
        self.background_stores = 0
        self.background_ended: dict[str, int] = {"stored": 0, "failed": 0}
        self.in_flight: dict[str, int] = {}
        self.handlers = KadHandlers(
            self_id=self.self_id,
            table=self.table,
            records=self.records,
            validators=self.validators,
            peers=Peers(addrs_of=self.host.addrs_of, connected=self._connected_set),
            clock=self.clock,
            on_request=self.observer.inbound,
            on_refused=self.observer.refused,
            provides=lambda key: key in self.provided,
        )
        self._table_nonempty = trio.Event()
        # Keys a Provide is announcing right now: not due for a reprovide meanwhile
        # (a new key's time is 0 until its first announcement ends).
        self._announcing: set[bytes] = set()
        # Keys this node announced as a provider, and when it last did (state.db for
        # dhtd's own node). This node answers for them itself; they never compete
        # for the provider store.
        self.provided = ProvideSet()
        self.reprovider = Reprovider(
            keys=self.provided,
            provide=lambda keys, timeout: self.provide(keys, _ignore, timeout, strict=False,
                                                       min_holders=BUCKET_SIZE),
            ready=lambda: bool(self.table),
            busy=self._announcing.__contains__,
            clock=self.clock,
            interval=lambda: self.reprovide_interval,
            timeout=REPROVIDE_TIMEOUT,
        )
        # Records this node Put and keeps putting: key -> (value, when it last reached a peer).
        self.published: dict[bytes, tuple[bytes, float]] = {}
        # Peers saved by the last run, dialled like bootstrap peers while the table is empty.
        self._saved: list[Bootstrap] = []
        self._closest: set[bytes] = set()
        self._background: trio.Nursery | None = None
        self.maintainer = Maintainer(
            table=self.table,
            self_id=self.self_id,
            bootstrap=self._dial_bootstrap,
            has_bootstrap=bool(self.bootstrap),
            lookup=self._refresh_walk,
            ping=self._ping,
            forget=self._forget,
            refresh_interval=self.refresh_interval,
        )

    @property
    def providers(self) -> ProviderStore:
        """The provider records held for others (records.db is used from this thread)."""
        return self.records.providers

    @property
    def values(self) -> ValueStore:
        """The value records held for others."""
        return self.records.values

    # -- lifetime -----------------------------------------------------------

    @asynccontextmanager
    async def running(self, listen: Sequence[bytes]) -> AsyncIterator[DhtNode]:
        """Loads the saved state, opens the host, bootstraps in the background, and
        keeps the table fresh and the commitments announced."""
        handler = self._serve if self.server else None
        loaded = self.state.load()
        self.provided = self.reprovider.keys = self.state.provide_set(loaded)
        self.published.update(loaded.published)
        async with (
            self.host.open(listen, handler, self.add_peer, self.maintainer.disconnected),
            trio.open_nursery() as nursery,
        ):
            self.host.learn(loaded.peers)
            self._saved = [Bootstrap(p.id, p.addrs[0]) for p in loaded.peers if p.addrs]
            self.maintainer.has_bootstrap = bool(self.bootstrap or self._saved)
            self._background = nursery
            nursery.start_soon(self.maintainer.run, self._wait_table)
            nursery.start_soon(self.reprovider.run)
            nursery.start_soon(self._republish)
            nursery.start_soon(self._collect)
            nursery.start_soon(self.records.run)
            nursery.start_soon(self._save_table)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()
                self._background = None
                self._snapshot_table()

    async def _serve(self, sender: bytes, request: Message) -> Message | None:
        if sender in self.table:
            self.maintainer.heard_from(sender)
        try:
            return await self.handlers.handle(sender, request)
        except Rejected as exc:
            log.debug("rejected %s from %s: %s", request.type, peer_id_to_str(sender), exc)
            raise

    def add_peer(self, peer: bytes) -> None:
        """A peer speaks kad (identify said so, or it answered): it joins the
        routing table if its bucket has room. A peer that failed recently
        (dhtd.liveness) joins only once it answers a request again: one whose kad
        requests hang may still dial in and identify."""
        if peer in self.table or self.book.is_dead(peer, trio.current_time()):
            return
        before = len(self.table)
        if not self.table.add(peer):
            return
        self.host.pin(peer)
        self.maintainer.heard_from(peer)
        self._protect_closest()
        if before == 0:
            self._table_nonempty.set()
            self.on_table_change(len(self.table))

    def _forget(self, peer: bytes) -> None:
        """``peer`` failed its liveness check: walks skip it for a while
        (dhtd.liveness), and it is dropped (:meth:`_drop`)."""
        self.book.failed(peer, trio.current_time())
        self._drop(peer)

    def _drop(self, peer: bytes) -> None:
        """Closes ``peer``'s connection (a frozen one would hold the next request
        too) and takes it out of the routing table."""
        self.host.disconnect(peer)
        if not self.table.remove(peer):
            return
        log.debug("peer %s left the routing table", peer_id_to_str(peer))
        self.host.unpin(peer)
        self.maintainer.removed(peer)
        self._protect_closest()
        if len(self.table) == 0:
            self._table_nonempty = trio.Event()
            self.on_table_change(0)

    def _protect_closest(self) -> None:
        """Protects connections to the k table peers closest to this node."""
        closest = set(self.table.closest(self.maintainer.self_key))
        for peer in closest - self._closest:
            self.host.protect(peer, CLOSEST_TAG)
        for peer in self._closest - closest:
            self.host.unprotect(peer, CLOSEST_TAG)
        self._closest = closest

    def _connected_set(self) -> frozenset[bytes]:
        return frozenset(self.host.connected_peers())

    async def _republish(self) -> None:
        """Puts again every record whose last Put is older than the interval.

        A record that is no longer valid (an expired IPNS record) or that a better
        one replaced here is dropped from the set, with a log line."""
        check = max(1.0, self.republish_interval / 10)
        while True:
            await trio.sleep(check)
            due_before = self.clock() - self.republish_interval
            due = [(k, v) for k, (v, at) in self.published.items() if at <= due_before]
            if not due or not self.table:
                continue
            for key, value in due:
                try:
                    await self.put_value(key, value, _ignore, REPUBLISH_TIMEOUT)
                except (InvalidRecord, FailedPrecondition) as exc:
                    log.info("record no longer republished", extra={"error": str(exc)})
                    await self.unpublish(key)
                except (Unavailable, DeadlineExceeded) as exc:
                    log.info("republish incomplete", extra={"error": str(exc)})

    def _snapshot_table(self) -> None:
        peers = [PeerRecord(p, self.host.addrs_of(p)) for p in self.table.peers()]
        if peers:
            self.state.save_peers(peers, self.clock())

    async def _save_table(self) -> None:
        while True:
            await trio.sleep(SAVE_TABLE_INTERVAL)
            self._snapshot_table()

    async def _wait_table(self) -> None:
        await self._table_nonempty.wait()

    async def _collect(self) -> None:
        """Collects expired records a batch at a time (see GC_INTERVAL)."""
        while True:
            await trio.sleep(GC_INTERVAL)
            try:
                for _ in range(self.records.value_count() // GC_BATCH + 1):
                    if await self.records.collect_values(self.clock(), GC_BATCH) < GC_BATCH:
                        break
                for _ in range(self.records.provider_count() // GC_BATCH + 1):
                    if await self.records.collect_providers(self.clock(), GC_BATCH) < GC_BATCH:
                        break
            except (StorageFull, StorageUnavailable):
                pass  # logged by the database; collected at the next round

    async def _dial_bootstrap(self) -> bool:
        """Dials every bootstrap and saved peer at once; True if one answered."""
        answered = False

        async def dial(b: Bootstrap) -> None:
            nonlocal answered
            with trio.move_on_after(BOOTSTRAP_DIAL_TIMEOUT):
                try:
                    await self.host.connect(b.peer, b.addr)
                except Exception as exc:  # any failure of one dial is that peer's, not ours
                    log.info("bootstrap peer %s: %s", peer_id_to_str(b.peer), describe(exc))
                    return
                answered = True
                self.book.alive(b.peer)
                if await self.host.wait_identified(b.peer):
                    self.add_peer(b.peer)

        async with trio.open_nursery() as nursery:
            for b in [*self.bootstrap, *self._saved]:
                nursery.start_soon(dial, b)
        return answered

    async def _refresh_walk(self, key: bytes) -> list[bytes] | None:
        """One refresh lookup (dhtd.refresh), bounded like any peer request chain:
        the closest peers that answered, or None if it did not end in time."""
        with trio.move_on_after(REFRESH_WALK_TIMEOUT):
            result = await self._walk(key, MessageType.FIND_NODE, _ignore)
            return [record.id for record in result.closest]
        return None

    async def _ping(self, peer: bytes) -> None:
        await self._request(peer, new_message(MessageType.PING))

    # -- the transport the lookup sees -------------------------------------

    def is_connected(self, peer: bytes) -> bool:
        return self.host.is_connected(peer)

    def learn(self, peers: Sequence[PeerRecord]) -> None:
        self.host.learn(peers)

    def forget(self, peer: bytes) -> None:
        # The lookup has counted the failure in the book already.
        self._drop(peer)

    def suspect(self, peer: bytes) -> None:
        self.maintainer.disconnected(peer)

    def responded(self, peer: bytes) -> None:
        # It answered a kad request, so it serves the DHT (go-libp2p-kad-dht adds
        # peers that answer queries to the routing table too).
        self.add_peer(peer)
        self.maintainer.heard_from(peer)

    # -- shared plumbing ----------------------------------------------------

    @asynccontextmanager
    async def _operation(self, name: str, timeout: float) -> AsyncIterator[_Op]:
        op = _Op(name, time.monotonic())
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.observer.op_started(name)
        outcome = "error"
        try:
            with trio.fail_after(timeout):
                yield op
            outcome = "ok"
        except trio.TooSlowError:
            outcome = "deadline"
            raise DeadlineExceeded(
                f"{name} did not finish within {timeout:.3g}s (deadline or --query-timeout)"
            ) from None
        except NotFound:
            outcome = "not_found"
            raise
        except BaseException as exc:
            if _only_cancelled(exc):
                outcome = "cancelled"
            raise
        finally:
            self.in_flight[name] -= 1
            self.observer.op_finished(name, outcome, time.monotonic() - op.started)

    def queries_in_flight(self) -> int:
        return sum(self.in_flight.values())

    def _seeds(self, target: bytes) -> list[PeerRecord]:
        peers = self.table.closest(kad_key(target))
        if not peers:
            raise Unavailable(NO_PEERS)
        return [PeerRecord(p, self.host.addrs_of(p)) for p in peers]

    def _emitter(self, emit: Emit) -> Emit:
        """``emit``, counting each event for the metrics; wrapped once, where events
        go to a caller (internal walks' events are neither emitted nor counted)."""

        def counted(event: QueryEvent) -> None:
            self.observer.event(event.type)
            emit(event)

        return counted

    async def _request(self, peer: bytes, message: Message) -> Message:
        try:
            answer = await self.host.request(peer, message)
        except BaseException:
            self.observer.outbound(message.type, not _failed())
            raise
        self.observer.outbound(message.type, True)
        return answer

    async def _send(self, peer: bytes, message: Message) -> None:
        try:
            await self.host.send(peer, message)
        except BaseException:
            self.observer.outbound(message.type, not _failed())
            raise
        self.observer.outbound(message.type, True)

    async def _walk(
        self,
        key: bytes,
        kind: int,
        emit: Emit,
        on_answer: Callable[[bytes, Message], None] = _ignore,
        stop: Callable[[], bool] = lambda: False,
        follow_up: bool = True,
    ) -> LookupResult:
        """Runs the lookup sending ``kind`` requests for ``key``; ``on_answer`` sees each
        answer. Without ``follow_up`` it ends after its iterative phase (dhtd.lookup)."""

        async def ask(peer: bytes) -> list[PeerRecord]:
            answer = await self._request(peer, new_message(kind, key))
            on_answer(peer, answer)
            return read_peers(answer.closerPeers, MAX_CLOSER_PEERS)

        self.maintainer.walked_into(key)
        result = await lookup(
            key, self._seeds(key), self, ask, emit, self_id=self.self_id, stop=stop,
            book=self.book, follow_up=follow_up,
        )
        if result.complete:
            self.netsize.track(key, [record.id for record in result.closest])
        return result

    # -- the six operations -------------------------------------------------

    async def find_peer(self, target: bytes, timeout: float) -> PeerRecord:
        """The addresses of ``target``. NotFound when no peer on the walk knows any."""
        async with self._operation("find_peer", timeout) as op:
            if target == self.self_id:
                return PeerRecord(target, tuple(self.host.announced_addrs()))
            if self.host.is_connected(target):
                # Connected but maybe not identified yet: its listen addrs come from identify.
                await self.host.wait_identified(target)
                addrs = self.host.addrs_of(target)
                if addrs:
                    op.got_result(self.observer)
                    return PeerRecord(target, addrs)
            found: list[PeerRecord] = []

            def on_answer(peer: bytes, answer: Message) -> None:
                for record in read_peers(answer.closerPeers, MAX_CLOSER_PEERS):
                    if record.id == target and record.addrs and not found:
                        found.append(record)
                        op.got_result(self.observer)

            await self._walk(target, MessageType.FIND_NODE, _ignore, on_answer,
                             stop=lambda: bool(found))
            if not found:
                raise NotFound(f"no peer on the walk knows an address of {peer_id_to_str(target)}")
            return found[0]

    async def find_providers(
        self, key: bytes, count: int, on_provider: Callable[[PeerRecord], None], timeout: float
    ) -> int:
        """Passes each provider of ``key`` (a multihash) to ``on_provider`` as soon as it is
        known, stopping after ``count``. Returns how many; NotFound if none."""
        async with self._operation("find_providers", timeout) as op:
            seen: set[bytes] = set()

            def found(record: PeerRecord) -> None:
                if record.id in seen or len(seen) >= count:
                    return
                seen.add(record.id)
                op.got_result(self.observer)
                on_provider(record)

            if key in self.provided:
                found(PeerRecord(self.self_id, tuple(self.host.announced_addrs())))
            for local in await self.records.providers_of(key, self.clock()):
                found(PeerRecord(local.peer, local.addrs or self.host.addrs_of(local.peer)))
            if len(seen) < count:

                def on_answer(peer: bytes, answer: Message) -> None:
                    providers = read_peers(answer.providerPeers, MAX_PROVIDERS_READ)
                    self.host.learn(providers)
                    for record in providers:
                        found(record if record.addrs else
                              PeerRecord(record.id, self.host.addrs_of(record.id)))

                # Provider records live on the k peers nearest the key, each holding
                # the same ones: once the beta nearest answered, the follow-up would
                # ask the rest for what was already read (ours; it saves a round trip).
                await self._walk(key, MessageType.GET_PROVIDERS, _ignore, on_answer,
                                 stop=lambda: len(seen) >= count, follow_up=False)
            if not seen:
                raise NotFound("no provider found for this CID")
            return len(seen)

    async def get_value(self, key: bytes, timeout: float) -> bytes:
        """The best valid value under ``key``. NotFound if no peer holds one.

        Peers that answered with an outdated value are sent the best one
        afterwards, in the background, so a newer Put spreads to them."""
        self.validators.namespace_of(key)  # InvalidRecord for a malformed key
        async with self._operation("get_value", timeout) as op:
            answers: list[tuple[bytes | None, Candidate]] = []
            quorum = PK_QUORUM if self.validators.namespace_of(key) == PK_NAMESPACE else GET_QUORUM
            local = await self.records.value_of(key, self.clock())
            if local is not None:
                if quorum == PK_QUORUM:
                    # A /pk/ key is the hash of its only valid value: no better record
                    # exists anywhere, so the one held is the answer at once.
                    op.got_result(self.observer)
                    return local.value
                answers.append((None, Candidate(local.value, local.received_at)))

            def on_answer(peer: bytes, answer: Message) -> None:
                if not answer.HasField("record") or answer.record.key != key:
                    return
                record = answer.record
                try:
                    self.validators.validate(key, record.value)
                except InvalidRecord as exc:
                    # Discarded; the peer's closer peers still count, and the peer
                    # keeps its standing: it may hold what another implementation's
                    # validator took (go-libp2p-kad-dht's getValues does the same).
                    log.debug("discarded an invalid record from %s: %s",
                              peer_id_to_str(peer), exc)
                    return
                answers.append((peer, Candidate(record.value, parse_time(record.timeReceived))))
                op.got_result(self.observer)

            # The best record in hand is the answer when time runs out: once
            # HELD_RECORD_WAIT has passed if this node holds one, else just before
            # the operation's deadline (then, with none in hand, DeadlineExceeded).
            deadline = trio.current_effective_deadline()
            answer_by = (trio.current_time() + HELD_RECORD_WAIT if answers
                         else deadline - min(ANSWER_MARGIN, timeout / 10))
            with trio.move_on_at(answer_by) as walk_scope:
                try:
                    await self._walk(key, MessageType.GET_VALUE, _ignore, on_answer,
                                     stop=lambda: len(answers) >= quorum)
                except Unavailable:
                    if not answers:
                        raise
            if not answers:
                if walk_scope.cancelled_caught:
                    raise trio.TooSlowError
                raise NotFound("no peer holds a valid record under this key")
            best = answers[self.validators.select(key, [c for _, c in answers])][1]
            stale = [p for p, c in answers if p is not None and c.value != best.value]
            if stale and self._background is not None:
                self._background.start_soon(self._correct, key, best.value, stale)
            return best.value

    async def _correct(self, key: bytes, value: bytes, peers: list[bytes]) -> None:
        message = new_message(MessageType.PUT_VALUE, key)
        message.record.CopyFrom(new_record(key, value))
        with trio.move_on_after(CORRECTION_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(self._put_one, peer, message)

    async def put_value(self, key: bytes, value: bytes, emit: Emit, timeout: float,
                        min_holders: int | None = None) -> int:
        """Stores the record here and on the k peers nearest to ``key``.

        Emits the walk's events, then SENDING_QUERY and FINAL_PEER (stored) or
        QUERY_ERROR per peer. Returns how many peers had stored it once
        ``min_holders`` had (the rest go on in the background, see
        :meth:`_store_on`); Unavailable if none did."""
        self.validators.validate(key, value)
        async with self._operation("put_value", timeout):
            now = self.clock()
            try:
                await self.records.put_value(key, value, now, None,
                                             record_selector(self.validators))
            except BetterRecordHeld:
                raise FailedPrecondition(
                    "this node already holds a better record under this key "
                    "(e.g. a higher IPNS sequence number)"
                ) from None
            if key not in self.published or self.published[key][0] != value:
                # Committed before the first event: an acknowledged Put is kept.
                await self.state.add_published(key, value, now)
                self.published[key] = (value, 0.0)
            emit = self._emitter(emit)
            result = await self._walk(key, MessageType.FIND_NODE, emit)
            message = new_message(MessageType.PUT_VALUE, key)
            message.record.CopyFrom(new_record(key, value))
            stored = await self._store_on(result.closest, emit,
                                          lambda peer: self._put_one(peer, message),
                                          self._holders_needed(min_holders),
                                          result.slow_closer)
            if stored == 0:
                raise Unavailable(
                    f"no peer accepted the record (0 of the {len(result.closest)} closest)"
                )
            if key in self.published:
                self.published[key] = (value, self.clock())
                self.state.republished(key, self.clock())
            return stored

    async def _put_one(self, peer: bytes, message: Message) -> None:
        answer = await self._request(peer, message)
        if answer.record.value != message.record.value:
            raise PeerRequestError("peer did not store the record (echo differs)")

    def _holders_needed(self, min_holders: int | None) -> int:
        """A request's min_holders as a count of holders: 0 or None is the node's
        default, and k or more means every store (go-libp2p-kad-dht's behaviour)."""
        need = min_holders or self.min_holders
        return BUCKET_SIZE if need >= BUCKET_SIZE else need

    async def _store_on(
        self,
        peers: Sequence[PeerRecord],
        emit: Emit,
        store: Callable[[bytes], Awaitable[None]],
        need: int = BUCKET_SIZE,
        extra: Sequence[PeerRecord] = (),
    ) -> int:
        """Runs ``store`` against every peer at once, each within STORE_TIMEOUT:
        ``peers`` (a walk's closest that answered) and ``extra`` (nearer ones that
        did not answer in time: alive but slow, or stale).

        Returns how many had taken it once ``need`` of them had, or every store to
        ``peers`` had ended. Stores still running then go on in the background,
        where they no longer emit (counted in ``background_stores`` and by the
        observer); if the caller leaves before that, every store is cancelled.
        Without room in the background, ``extra`` is left out and every store is
        waited for."""
        peers = list(peers)
        background = self._background
        room = (background is not None and self.background_stores + len(peers) + len(extra)
                <= MAX_BACKGROUND_STORES)
        everyone = peers + list(extra) if room else peers
        if not peers:
            return 0
        need = min(need, len(peers))
        stored = ended = 0
        primary = set(id(peer) for peer in peers)
        primary_left = len(peers)
        listening = True  # the caller waits: events go to it
        detached = False  # the caller ended OK first: the rest are background stores
        enough = trio.Event()
        scopes: list[trio.CancelScope] = []

        def tell(event: QueryEvent) -> None:
            if listening:
                emit(event)

        async def one(peer: PeerRecord) -> None:
            nonlocal stored, ended, primary_left
            took: bool | None = None
            scope = trio.CancelScope()
            scopes.append(scope)
            with scope:
                tell(QueryEvent(EventType.SENDING_QUERY, peer.id))
                try:
                    with trio.fail_after(STORE_TIMEOUT):
                        await store(peer.id)
                except trio.TooSlowError:
                    took = False
                    tell(QueryEvent(EventType.QUERY_ERROR, peer.id,
                                    extra=f"not stored within {STORE_TIMEOUT:g}s"))
                except Exception as exc:
                    took = False
                    tell(QueryEvent(EventType.QUERY_ERROR, peer.id, extra=describe(exc)))
                else:
                    took = True
                    stored += 1
                    tell(QueryEvent(EventType.FINAL_PEER, peer.id, responses=(peer,)))
            ended += 1
            if id(peer) in primary:
                primary_left -= 1
            if detached:
                self.background_stores -= 1
                if took is not None:
                    outcome = "stored" if took else "failed"
                    self.background_ended[outcome] += 1
                    self.observer.background_store(outcome)
            if stored >= need or primary_left == 0:
                enough.set()

        # No limiter: at most k (20) answered and the few slow ones nearer, so a Put
        # or an announcement costs one round trip after its walk.
        if background is None or not room:
            async with trio.open_nursery() as nursery:
                for peer in everyone:
                    nursery.start_soon(one, peer)
            listening = False
            return stored
        for peer in everyone:
            background.start_soon(one, peer)
        try:
            await enough.wait()
        except BaseException:
            for scope in scopes:
                scope.cancel()
            raise
        finally:
            listening = False
        detached = True
        self.background_stores += len(everyone) - ended
        return stored

    async def provide(
        self, keys: Sequence[bytes], emit: Callable[[int, QueryEvent], None], timeout: float,
        strict: bool = True, on_committed: Callable[[], None] = lambda: None,
        min_holders: int | None = None,
    ) -> list[int]:
        """Announces this node as a provider of each key (a multihash).

        ``emit`` gets the index of the key with each event (a key given twice is
        walked once, under its first index). The keys are committed to the
        provide set before the first event (then ``on_committed`` is called).
        Returns the number of peers that took each announcement by the time
        ``min_holders`` had (see :meth:`_store_on`; the batched path waits for all);
        Unavailable if any took none, unless not ``strict`` (then its count is 0)."""
        need = self._holders_needed(min_holders)
        if not self.table:
            raise Unavailable(NO_PEERS)
        async with self._operation("provide", timeout):
            # Committed before the first event: an acknowledged Provide is kept.
            await self.provided.add(keys, self.clock())
            on_committed()
            counts = [0] * len(keys)
            limiter = trio.CapacityLimiter(PROVIDE_CONCURRENCY)
            addrs = tuple(self.host.announced_addrs())

            async def announce(index: int) -> None:
                key = keys[index]
                tagged = self._emitter(lambda e: emit(index, e))
                async with limiter:
                    try:
                        result = await self._walk(key, MessageType.FIND_NODE, tagged)
                    except Unavailable:
                        return  # the table emptied meanwhile: no peer took it (count 0)
                    message = self._add_provider(key, addrs)
                    counts[index] = await self._store_on(
                        result.closest, tagged, lambda peer: self._send(peer, message), need,
                        result.slow_closer)
                self._announced([key] if counts[index] else [])

            # A key given twice is announced once (its events carry the first index).
            first = {key: i for i, key in reversed(list(enumerate(keys)))}
            mine = set(first) - self._announcing
            self._announcing |= mine
            try:
                if self.provide_batch_min and len(first) >= self.provide_batch_min:
                    await self._announce_batched(first, counts, emit, addrs)
                else:
                    async with trio.open_nursery() as nursery:
                        for i in first.values():
                            nursery.start_soon(announce, i)
            finally:
                self._announcing -= mine
            counts = [counts[first[key]] for key in keys]
            missed = [i for i, n in enumerate(counts) if n == 0]
            if missed and strict:
                raise Unavailable(
                    f"no peer accepted the provider record of {len(missed)} of "
                    f"{len(keys)} CIDs (first: index {missed[0]})"
                )
            return counts

    def _add_provider(self, key: bytes, addrs: tuple[bytes, ...]) -> Message:
        message = new_message(MessageType.ADD_PROVIDER, key)
        add_peers(message.providerPeers, [PeerRecord(self.self_id, addrs)], frozenset())
        return message

    def _announced(self, keys: Sequence[bytes]) -> None:
        """Records that ``keys`` reached at least one peer now (their next reprovide is
        an interval from now)."""
        if keys:
            self.provided.announced(keys, self.clock())

    async def _announce_batched(self, first: dict[bytes, int], counts: list[int],
                                emit: Callable[[int, QueryEvent], None],
                                addrs: tuple[bytes, ...]) -> None:
        """Announces many keys at once (dhtd.provider.batch); ``counts[first[key]]``
        counts the peers that took each."""

        async def closest(target: bytes) -> tuple[list[PeerRecord], list[bytes]]:
            result = await self._walk(target, MessageType.FIND_NODE, _ignore)
            return result.closest, result.unreachable

        # One message per key, built when first sent and sent to each of its peers.
        messages: dict[bytes, Message] = {}

        async def send(peer: bytes, key: bytes) -> None:
            message = messages.get(key)
            if message is None:
                message = messages[key] = self._add_provider(key, addrs)
            await self._send(peer, message)

        def tagged(key: bytes, event: QueryEvent) -> None:
            self._emitter(functools.partial(emit, first[key]))(event)

        try:
            taken = await batch.announce(list(first), closest, send, tagged,
                                         k=BUCKET_SIZE, lookups=PROVIDE_CONCURRENCY)
        except Unavailable:
            return  # the table emptied meanwhile: no peer took any (counts 0)
        for key, peers in taken.items():
            counts[first[key]] = peers
        self._announced([key for key, peers in taken.items() if peers])

    async def query(self, target: bytes, emit: Emit, timeout: float) -> list[PeerRecord]:
        """Walks towards ``target``; emits the walk, then FINAL_PEER per closest peer found."""
        async with self._operation("query", timeout):
            emit = self._emitter(emit)
            result = await self._walk(target, MessageType.FIND_NODE, emit)
            for peer in result.closest:
                emit(QueryEvent(EventType.FINAL_PEER, peer.id, responses=(peer,)))
            if not result.closest:
                raise NotFound("no peer answered the query")
            return result.closest

    # -- commitments --------------------------------------------------------

    def list_provided(self, after: bytes, limit: int) -> list[tuple[bytes, float]]:
        """Up to ``limit`` provided keys after ``after`` in byte order, with when each
        last reached a peer (0: not yet)."""
        return self.provided.page(after, limit)

    async def stop_providing(self, keys: Sequence[bytes]) -> int:
        """Stops announcing ``keys``; returns how many were provided. Records already
        on other peers expire there within 48 h."""
        return await self.provided.remove(keys)

    def list_published(self, after: bytes, limit: int) -> list[tuple[bytes, bytes, float]]:
        """Up to ``limit`` records this node keeps putting, after ``after`` by key."""
        keys = sorted(k for k in self.published if k > after)[:limit]
        return [(k, *self.published[k]) for k in keys]

    async def unpublish(self, key: bytes) -> bool:
        """Stops putting the record under ``key`` again; True if it was kept."""
        if key not in self.published:
            return False
        await self.state.remove_published(key)
        self.published.pop(key, None)
        return True

    # -- node -----------------------------------------------------------------

    def info(self) -> NodeInfo:
        return NodeInfo(
            peer_id=self.self_id,
            addrs=self.host.listen_addrs(),
            announced=self.host.announced_addrs(),
            server=self.server,
            protocol=self.host.protocol_id,
            routing_table_size=len(self.table),
            connected_peers=len(self.host.connected_peers()),
            queries_in_flight=self.queries_in_flight(),
            network_size=self.netsize.estimate(),
        )

    async def connect(self, peer: bytes, addr: bytes, timeout: float) -> tuple[PeerRecord, bool]:
        """Dials ``peer``; returns its record and whether it joined the routing table."""
        async with self._operation("connect", timeout):
            try:
                await self.host.connect(peer, addr)
            except PeerRequestError as exc:
                raise Unavailable(f"could not connect: {exc}") from None
            self.book.alive(peer)  # an explicit dial that worked outweighs a past failure
            kad = await self.host.wait_identified(peer)
            if kad:
                self.add_peer(peer)
            return PeerRecord(peer, self.host.addrs_of(peer)), peer in self.table

