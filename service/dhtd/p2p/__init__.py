"""The libp2p edge: the only package that imports py-libp2p.

It turns py-libp2p's host into the small surface the core needs: send a kad
request to a peer, serve kad requests under a protocol id, learn and look up
addresses, hear about peers that speak kad, and verify signatures. Peer IDs
cross this boundary as binary multihashes and addresses as binary multiaddrs;
libp2p's exception groups are unwrapped into :class:`PeerRequestError` here.

Dials are the host's own (:meth:`Host._dial`, through py-libp2p's
``Swarm.dial_addr``): every address of a peer at once, the whole set-up within
DIAL_TIMEOUT, one dial per address at a time, and addresses that timed out or were
refused backed off (:class:`DialBackoff`), so a request to a peer whose every
address is dead fails at once.
"""

from __future__ import annotations

import logging
import os
import socket
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libp2p.network.swarm as _swarm
import libp2p.stream_muxer.muxer_multistream as _muxer_multistream
import libp2p.tools.anyio_service.trio_manager as _trio_manager
import libp2p.tools.anyio_service.trio_tasks as _trio_tasks
import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key, deserialize_public_key
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.exceptions import RawConnError
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore
from libp2p.security.secure_session import SecureSession

from dhtd.config import DEFAULT_CONN_GRACE, DEFAULT_CONN_HIGH_WATER, DEFAULT_CONN_LOW_WATER
from dhtd.ids import decode_uvarint, encode_uvarint
from dhtd.lookup import PeerRecord, PeerRequestError, describe
from dhtd.p2p import multistream
from dhtd.p2p.identify import Identifier
from dhtd.p2p.upgrade import Upgrader
from dhtd.p2p.yamux import Yamux, YamuxStream
from dhtd.wire.kad_pb2 import Message

log = logging.getLogger("dhtd.p2p")

# py-libp2p 0.8.1 waits this long before every dial after the first address,
# even when the first dial already succeeded (libp2p.network.swarm). On
# loopback and for DHT walks that dial many peers, it only adds latency: each
# new peer cost 250 ms. Zero means all addresses of a peer are dialled at once.
DIAL_STAGGER = 0.0
_swarm._HAPPY_EYEBALLS_DELAY = DIAL_STAGGER

# A write to a secure channel, once begun, finishes or breaks the connection
# (go-libp2p's yamux ConnectionWriteTimeout, 10 s). py-libp2p's noise session
# advances its nonce when it encrypts, then sends; a write cancelled halfway
# (a gRPC client cancelling a walk cancels the requests in flight) desynchronised
# the two ends, the peer failed to authenticate the next message and dropped the
# whole connection, with every stream on it. Seen as a node whose routing table
# emptied while clients cancelled calls.
SECURE_WRITE_TIMEOUT = 10.0
_secure_write = SecureSession.write


async def _whole_write(self: SecureSession, data: bytes) -> None:
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + SECURE_WRITE_TIMEOUT
        await _secure_write(self, data)
    if scope.cancelled_caught:
        # Part of a frame may be out: nothing more can be sent on this session.
        with trio.CancelScope(shield=True), suppress(Exception):
            await self.close()
        raise RawConnError(f"secure write not done within {SECURE_WRITE_TIMEOUT:g}s")


SecureSession.write = _whole_write  # type: ignore[method-assign]

# py-libp2p's service manager finds the parent of every task it starts by walking
# every task it runs (TrioManager._find_parent_task): quadratic in connections,
# each of which starts tasks. A mass start (about 1,500 connections per process)
# spent 4% of its CPU there. Here each task is remembered when it starts, and
# the parent is a dictionary lookup, kept to the manager's own task tree.
_function_tasks: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_trio_task_property: Any = _trio_tasks.FunctionTask.trio_task
_set_trio_task = _trio_task_property.fset


def _remember_trio_task(task: Any, value: Any) -> None:
    _set_trio_task(task, value)
    _function_tasks[value] = task


def _find_parent_task(manager: Any, trio_task: Any) -> Any:
    task = _function_tasks.get(trio_task)
    root = task
    for _ in range(_MAX_TASK_DEPTH):
        if root is None or root.parent is None:
            break
        root = root.parent
    return task if root is not None and root in manager._root_tasks else None


_MAX_TASK_DEPTH = 64
_trio_tasks.FunctionTask.trio_task = property(  # type: ignore[method-assign, assignment]
    _trio_task_property.fget, _remember_trio_task)
_trio_manager.TrioManager._find_parent_task = _find_parent_task  # type: ignore[method-assign, assignment]


# Notices no notifee of a dhtd host reads (dhtd's, py-libp2p's host's and its tag
# store's all ignore them).
_IGNORED_NOTICES = frozenset({"opened_stream", "closed_stream"})


def _inline_notices(network: Any) -> Callable[..., Awaitable[None]]:
    """py-libp2p's Swarm._notify, without a nursery and a task per notifee for every
    event (a tenth of a mass start's CPU went there, most of it for stream notices
    nobody reads). The notifees run one after the other: each is quick (dhtd's only
    records; the host's schedules identify once the connection has started, which
    it has when the swarm tells of it). One that raises is logged, not propagated,
    as in py-libp2p."""

    async def notify(method: str, *args: Any) -> None:
        if method in _IGNORED_NOTICES:
            return
        for notifee in list(network.notifees):
            try:
                await getattr(notifee, method)(network, *args)
            except Exception as exc:
                log.warning("%s.%s failed: %s", type(notifee).__name__, method, describe(exc))

    return notify


# py-libp2p's muxer negotiation builds its own Yamux class for /yamux/1.0.0 whatever
# the muxer options say; dhtd's (dhtd.p2p.yamux) takes its place.
_muxer_multistream.Yamux = Yamux  # type: ignore[attr-defined, assignment]

# The largest kad answer read from a peer (go-libp2p network.MessageSizeMax, 4 MiB).
MAX_MESSAGE_BYTES = 4 << 20

# Ours: the largest kad *request* a peer may send us. The biggest legitimate one is a
# PUT_VALUE of a record of at most dhtd.api.servicer.MAX_VALUE_BYTES (64 KiB, far
# above IPNS's 10 KiB); 128 KiB leaves room for the envelope. Bounds what an
# unfinished frame can pin in memory. Past it, the stream is reset.
MAX_REQUEST_BYTES = 128 << 10

# Inbound kad streams served at once, per peer and in all. go-libp2p-kad-dht leaves
# this to the resource manager; py-libp2p has none, so dhtd bounds it here. A stream
# past either cap is reset at once. Per peer: an honest peer keeps a few idle streams
# per peer plus alpha in flight, but a stream it reset is not always seen as ended by
# py-libp2p until STREAM_IDLE_TIMEOUT, so the cap leaves room for those (at 16, a
# client cancelling walks repeatedly filled it and was refused).
MAX_INBOUND_STREAMS_PER_PEER = 64
MAX_INBOUND_STREAMS = 512

# An inbound stream with no request for this long is closed
# (go-libp2p-kad-dht internal/net: dhtStreamIdleTimeout, 1 min).
STREAM_IDLE_TIMEOUT = 60.0

# Once the first byte of a request has arrived, the whole frame must arrive within
# this; a peer trickling a frame is reset (ours; a 128 KiB request takes ms).
FRAME_READ_TIMEOUT = 10.0

# How often inbound streams are checked against the two timeouts above (one timer
# for all streams, not one per request: a per-request cancel scope cost a tenth of
# serving a FIND_NODE). A stream ends at most this late.
REAP_INTERVAL = 1.0
_IDLE_EXPIRED = "idle"
_FRAME_EXPIRED = "frame"

# Peers learned from other peers (closer peers, providers) whose addresses are kept
# in the peerstore, least recently learned evicted first. py-libp2p's peerstore
# holds at most PEERSTORE_MAX_PEERS and evicts blindly past it; this keeps learned
# peers well below, beside connected and routing-table peers.
MAX_LEARNED_PEERS = 1024
PEERSTORE_MAX_PEERS = 4096

# py-libp2p's hard cap on connections, above the high-water mark.
CONN_HARD_LIMIT_FACTOR = 2

# How long a caller waiting on a connection it just opened (Connect, a bootstrap
# dial, FindPeer of a connected peer) waits for identify before it goes on without
# the peer's protocol list.
IDENTIFY_WAIT = 5.0

# How long an inbound stream may take to name its protocol (go-libp2p's host:
# negotiationTimeout, 10 s).
NEGOTIATE_TIMEOUT = 10.0

# A new connection to a peer (TCP connect, noise, yamux, for all the addresses
# dialled at once) is made within this, or the dial fails. go-libp2p's swarm
# allows 5 s for a dial to a local address (DialTimeoutLocal), 10 s per address
# (core/transport.DialTimeout) and 15 s per peer; 5 s is half a kad request's
# 10 s (dhtd.lookup.PEER_REQUEST_TIMEOUT), and a set-up on a wide-area network
# takes about 4 round trips (1.2 s at 300 ms).
DIAL_TIMEOUT = 5.0
# Ours: addresses of one peer dialled at once (the first to connect wins).
MAX_DIAL_ADDRS = 4
# An address (IP or DNS name, and port) whose dial timed out or was refused is
# not dialled again for DIAL_BACKOFF_BASE, doubled with each further failure up
# to DIAL_BACKOFF_MAX, until a dial there succeeds. go-libp2p's swarm backs off
# failed dials from 5 s (BackoffBase) to 5 min (BackoffMax), growing with the
# square of the failures; this doubles.
DIAL_BACKOFF_BASE = 5.0
DIAL_BACKOFF_MAX = 300.0
# Ours: addresses remembered in backoff; past it the oldest is forgotten.
MAX_BACKOFF_ADDRS = 4096
# Addresses given to Host.connect stay in the peerstore this long (as py-libp2p's
# BasicHost.connect keeps them); identify then keeps the peer's own.
CONNECT_ADDR_TTL = 120
# How long Host.disconnect may take to close a peer's connections (yamux's close
# takes at most SHUTDOWN_TIMEOUT, 5 s; then py-libp2p's bookkeeping).
DISCONNECT_TIMEOUT = 10.0
# Why a dial failed, as counted in Host.dial_failures.
DIAL_FAILURE_REASONS = ("timeout", "refused", "error", "backoff")

# Idle kad streams kept for reuse, per peer and in all. Like go-libp2p-kad-dht's
# message sender, dhtd sends successive requests to a peer on one stream, which
# skips the multistream-select negotiation of a new stream on every request.
MAX_IDLE_STREAMS_PER_PEER = 2
# An idle kad stream is reused only within this of its last use, and only while
# the peer has not closed its side: a server ends streams idle for
# STREAM_IDLE_TIMEOUT (go-libp2p-kad-dht: 1 min) with a FIN, and an ADD_PROVIDER,
# which has no answer, written after that FIN is lost without an error (ours: half
# the server's timeout, so the FIN is never on its way).
IDLE_STREAM_REUSE = STREAM_IDLE_TIMEOUT / 2
MAX_IDLE_STREAMS = 512

# Entries of the stripped-address cache before it is emptied and refilled.
ADDR_CACHE_SIZE = 8192

# Resetting a broken stream must not hang a cancelled request.
DISCARD_TIMEOUT = 1.0

# Addresses learned from other peers are kept this long in the peerstore
# (go-libp2p peerstore.TempAddrTTL is 2 min; providers' addrs 24 h). An hour
# covers any walk and the re-dials that follow it.
LEARNED_ADDR_TTL = 3600
# The same addresses learned again within this are not written to the peerstore
# again (its TTL is an hour; a quarter of it keeps them well alive).
LEARNED_REFRESH = LEARNED_ADDR_TTL / 4

IDENTITY_FILE = "identity.key"

KadHandler = Callable[[bytes, Message], Awaitable[Message | None]]

# The protection tag of peers a request is in flight to.
_BUSY_TAG = "dhtd-busy"
# Ours: how long a peer stays protected from connection trimming after its last
# request ended (well within the connection manager's grace period).
BUSY_HOLD = 10.0


class _StaleStream(Exception):
    """A stream failed before an answer came (closed by the peer, or broken)."""


@dataclass(frozen=True)
class ConnectionBudget:
    """How many connections the host keeps: above ``high_water`` the oldest
    unprotected connections are closed down to ``low_water``; a connection younger
    than ``grace_period`` is never closed. The DHT's closest peers and peers a
    request is in flight to are protected (defaults and reasons: dhtd.config)."""

    low_water: int = DEFAULT_CONN_LOW_WATER
    high_water: int = DEFAULT_CONN_HIGH_WATER
    grace_period: float = DEFAULT_CONN_GRACE


class _GuardedPeerStore(PeerStore):
    """py-libp2p's peerstore, except that its cap never evicts this host's own entry
    (its keys: identify needs them) nor a pinned peer (the routing table's, whose
    addresses must outlive a closed connection)."""

    def __init__(self, self_id: ID, pinned: set[bytes], evicted: Callable[[bytes], None]
                 ) -> None:
        super().__init__(max_peers=PEERSTORE_MAX_PEERS)
        self._self_id = self_id
        self._pinned = pinned
        self._evicted = evicted

    def _enforce_peer_limit(self) -> None:
        excess = len(self.peer_data_map) - self.max_peers
        if excess <= 0:
            return
        # Without addresses or expired first, as py-libp2p does; never self or pinned.
        candidates = sorted(
            (
                (bool(data.get_addrs()), not data.is_expired(), pid)
                for pid, data in self.peer_data_map.items()
                if pid != self._self_id and pid.to_bytes() not in self._pinned
            ),
            key=lambda item: (item[0], item[1]),
        )
        for _, _, pid in candidates[:excess]:
            self.peer_record_map.pop(pid, None)
            del self.peer_data_map[pid]
            self._evicted(pid.to_bytes())


def load_or_create_identity(data_dir: Path, name: str = IDENTITY_FILE) -> KeyPair:
    """Loads the node key from ``data_dir``, creating it (mode 0600) on first start."""
    path = data_dir / name
    if path.exists():
        private = deserialize_private_key(path.read_bytes())
        return KeyPair(private, private.get_public_key())
    data_dir.mkdir(parents=True, exist_ok=True)
    pair = create_new_key_pair()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.private_key.serialize())
    tmp.replace(path)
    return pair


def new_identity() -> KeyPair:
    """A fresh ed25519 identity, kept in memory only (dev peers)."""
    return create_new_key_pair()


def peer_id_of(pair: KeyPair) -> bytes:
    return ID.from_pubkey(pair.public_key).to_bytes()


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Verifies ``signature`` over ``data`` with a protobuf-encoded libp2p public key."""
    try:
        return bool(deserialize_public_key(public_key).verify(data, signature))
    except Exception:
        return False


# Address families each DNS multiaddr protocol resolves to (multiaddr spec).
_DNS_FAMILIES = {
    "dns4": (socket.AF_INET,),
    "dns6": (socket.AF_INET6,),
    "dns": (socket.AF_INET, socket.AF_INET6),
}


async def resolve(addr: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """``/dns4|dns6|dns/<name>/…`` as one ``/ip4|ip6/<address>/…`` per address of
    ``name``; any other address as itself. Raises PeerRequestError if the name
    does not resolve. py-libp2p's TCP transport dials IP addresses only."""
    parts = str(addr).split("/")
    if len(parts) < 3 or parts[1] not in _DNS_FAMILIES:
        return [addr]
    name, rest = parts[2], "/".join(parts[3:])
    found: list[multiaddr.Multiaddr] = []
    for family in _DNS_FAMILIES[parts[1]]:
        try:
            infos = await trio.socket.getaddrinfo(name, None, family=family,
                                                  type=socket.SOCK_STREAM)
        except OSError:
            continue
        proto = "ip4" if family == socket.AF_INET else "ip6"
        for info in infos:
            text = f"/{proto}/{info[4][0]}/{rest}"
            if all(str(f) != text for f in found):
                found.append(multiaddr.Multiaddr(text))
    if not found:
        raise PeerRequestError(f"cannot resolve {name!r} ({parts[1]})")
    return found


def strip_p2p(addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
    """``addr`` without a trailing /p2p/<id>."""
    try:
        peer = addr.value_for_protocol("p2p")
    except Exception:
        return addr
    return addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}")) if peer else addr


def expand_unspecified(addr: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """0.0.0.0 becomes 127.0.0.1 plus this host's IPv4 addresses; :: becomes ::1."""
    addr = strip_p2p(addr)
    text = str(addr)
    if text.startswith("/ip4/0.0.0.0/"):
        rest = text[len("/ip4/0.0.0.0"):]
        return [multiaddr.Multiaddr(f"/ip4/{ip}{rest}") for ip in _local_ipv4()]
    if text.startswith("/ip6/::/"):
        return [multiaddr.Multiaddr("/ip6/::1" + text[len("/ip6/::"):])]
    return [addr]


def _local_ipv4() -> list[str]:
    ips = ["127.0.0.1"]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        ip = str(info[4][0])
        if ip not in ips and not ip.startswith("127."):
            ips.append(ip)
    return ips


_DIAL_HOSTS = frozenset({"ip4", "ip6", *_DNS_FAMILIES})


def dial_key(addr: multiaddr.Multiaddr) -> str | None:
    """What dial backoff is kept under: ``host:port`` of a TCP address
    (``/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>``, maybe ending in /p2p/<id>), or
    None for an address dhtd cannot dial."""
    parts = str(addr).split("/")
    if len(parts) < 5 or parts[1] not in _DIAL_HOSTS:
        return None
    if parts[3] != "tcp" or (len(parts) > 5 and (len(parts) != 7 or parts[5] != "p2p")):
        return None
    return f"[{parts[2]}]:{parts[4]}" if parts[1] == "ip6" else f"{parts[2]}:{parts[4]}"


def _is_loopback(key: str) -> bool:
    return key.startswith(("127.", "[::1]:", "localhost:"))


class DialBackoff:
    """Addresses whose dial failed, and until when none is made to them again:
    DIAL_BACKOFF_BASE after the first failure, doubled with each further one up to
    DIAL_BACKOFF_MAX. An address that stayed quiet for DIAL_BACKOFF_MAX after its
    backoff ended starts again from the base. At most MAX_BACKOFF_ADDRS addresses,
    the least recently failed forgotten first. Times are trio's clock, passed in."""

    def __init__(self) -> None:
        # key -> (failures in a row, dialable again at)
        self._until: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def failed(self, key: str, now: float) -> float:
        """A dial to ``key`` failed at ``now``; returns how long it is backed off."""
        tries, until = self._until.pop(key, (0, now))
        if now - until > DIAL_BACKOFF_MAX:
            tries = 0
        wait = min(DIAL_BACKOFF_BASE * 2.0 ** min(tries, 32), DIAL_BACKOFF_MAX)
        self._until[key] = (tries + 1, now + wait)
        while len(self._until) > MAX_BACKOFF_ADDRS:
            self._until.popitem(last=False)
        return wait

    def blocked(self, key: str, now: float) -> bool:
        entry = self._until.get(key)
        return entry is not None and now < entry[1]

    def clear(self, key: str) -> None:
        self._until.pop(key, None)


def _refused(exc: BaseException) -> BaseException | None:
    """The OS error under a failed dial (connection refused, network unreachable,
    reset while connecting), if that is what ended it; py-libp2p wraps it in two
    exceptions. A failed handshake is not one: the address is alive."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__
    return None


class _PeerDial:
    """A dial to one peer in flight, which requests to it wait for."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: str | None = "dial cancelled: the host is closing"


class _Notifee:
    """Tells the host of closed connections and of any change to the set (new
    connections are identified: py-libp2p calls Identifier.schedule)."""

    def __init__(self, on_disconnect: Callable[[bytes], None], on_change: Callable[[], None]
                 ) -> None:
        self._on_disconnect = on_disconnect
        self._on_change = on_change

    async def opened_stream(self, *_: Any) -> None: ...
    async def closed_stream(self, *_: Any) -> None: ...
    async def listen(self, *_: Any) -> None: ...
    async def listen_close(self, *_: Any) -> None: ...

    async def disconnected(self, _network: Any, conn: Any) -> None:
        self._on_change()
        try:
            self._on_disconnect(conn.muxed_conn.peer_id.to_bytes())
        except Exception as exc:
            log.warning("disconnect hook failed: %s", describe(exc))

    async def connected(self, _network: Any, conn: Any) -> None:
        self._on_change()


class Host:
    """A running libp2p host that speaks kad under ``protocol_id``.

    Use :meth:`open` (an async context manager). While it is open, peers that
    connect in either direction and list ``protocol_id`` in identify are passed
    to ``on_kad_peer``; inbound kad streams are answered by ``handler`` when one
    is given (server mode) and refused otherwise (client mode). ``on_disconnect``
    hears of every closed connection.
    """

    def __init__(
        self, key_pair: KeyPair, protocol_id: str, budget: ConnectionBudget | None = None,
        announce: Sequence[bytes] = (), announce_append: Sequence[bytes] = (),
    ) -> None:
        self._pair = key_pair
        self._announce = tuple(announce)
        self._announce_append = tuple(announce_append)
        self.protocol_id = protocol_id
        self.self_id = peer_id_of(key_pair)
        budget = budget or ConnectionBudget()
        self._pinned: set[bytes] = set()
        # Learned peers, least recently learned first: their addrs and when.
        self._learned: OrderedDict[bytes, tuple[tuple[bytes, ...], float]] = OrderedDict()
        self._host: Any = new_host(
            key_pair=key_pair,
            peerstore_opt=_GuardedPeerStore(ID(self.self_id), self._pinned, self._unlearn),
            connection_config=ConnectionConfig(
                max_connections=budget.high_water * CONN_HARD_LIMIT_FACTOR,
                min_connections=min(budget.low_water, ConnectionConfig.min_connections),
                low_watermark=budget.low_water,
                high_watermark=budget.high_water,
                grace_period=budget.grace_period,
            ),
        )
        # py-libp2p's auto-connector dials any peer in the peerstore until the
        # connection count reaches the low-water mark. For a DHT node that means
        # dialling every address a remote peer named, dead or fake (measured: 160
        # dials at a time to a hostile peer's made-up peers). The routing table
        # decides whom to connect to, as in go-libp2p, whose connmgr never dials.
        network: Any = self._host.get_network()
        network.auto_connector.maybe_connect = _no_auto_dial
        network._notify = _inline_notices(network)
        # dhtd's own connection set-up (dhtd.p2p.upgrade) for TCP connections, and
        # its own identify (dhtd.p2p.identify), which always names the announced
        # addresses: py-libp2p's own list ends each address in /p2p/<id>, which
        # go-libp2p stores, passes on in FIND_NODE answers, and cannot dial.
        network.upgrader = Upgrader(key_pair, network.upgrader)
        # Dials are dhtd's (Host._dial): every address of a peer at once, under one
        # DIAL_TIMEOUT, with backoff per address. py-libp2p would retry each failed
        # address 3 more times (0.1, 0.2, 0.4 s apart: a refused peer cost 0.7 s,
        # a tarpit four handshake timeouts); go-libp2p does not retry a dial either.
        network.retry_config = RetryConfig(max_retries=0)
        self._identify = Identifier(self._host, protocol_id, self.announced_addrs)
        self._inbound: dict[bytes, int] = {}
        self._inbound_total = 0
        # Peers a request is in flight to: protected from connection trimming, and
        # for BUSY_HOLD after (when their last request ended, None while in use).
        self._busy: dict[bytes, int] = {}
        self._busy_released: dict[bytes, float | None] = {}
        self._idle: dict[bytes, list[_Framed]] = {}
        self._listen: list[bytes] | None = None
        self._connected: frozenset[bytes] | None = None
        # Inbound kad streams being served, with the scope that ends each.
        self._serving: dict[_Framed, trio.CancelScope] = {}
        # Binary peerstore addrs -> the same without /p2p/ (answers name the same
        # peers' addrs over and over; converting them showed up in profiles).
        self._stripped: dict[bytes, bytes] = {}
        self._nursery: trio.Nursery | None = None
        # Dials: per peer (requests to it wait for one), per address (one at a
        # time: fake peers at one tarpit cost one dial), and the addresses in backoff.
        self._dials: dict[bytes, _PeerDial] = {}
        self._addr_dials: dict[str, trio.Event] = {}
        self._backoff = DialBackoff()
        # Peers whose connections Host.disconnect is closing.
        self._closing: dict[bytes, trio.Event] = {}
        # Failed dials to a peer by reason (DIAL_FAILURE_REASONS: timed out, refused
        # by the OS, failed otherwise (a handshake, the wrong peer), or not made
        # because every address was in backoff), and addresses dialled.
        self.dial_failures: dict[str, int] = dict.fromkeys(DIAL_FAILURE_REASONS, 0)
        self.dial_attempts = 0

    @asynccontextmanager
    async def open(
        self,
        listen: Sequence[bytes],
        handler: KadHandler | None,
        on_kad_peer: Callable[[bytes], None],
        on_disconnect: Callable[[bytes], None] = lambda peer: None,
    ) -> AsyncIterator[Host]:
        addrs = [multiaddr.Multiaddr(a) for a in listen]
        async with self._host.run(addrs), trio.open_nursery() as nursery:
            bound = self._host.get_transport_addrs()
            if len(bound) < len(addrs):
                # py-libp2p logs a failed listener and carries on; dhtd fails fast.
                raise OSError(
                    f"could not listen on every --listen address (asked {len(addrs)}, "
                    f"bound {len(bound)}: {', '.join(str(a) for a in bound) or 'none'})"
                )
            if handler is not None:
                self._host.set_stream_handler(self.protocol_id, self._stream_handler(handler))
            self._identify.start(nursery, on_kad_peer)
            self._host.get_network().set_stream_handler(self._route_stream)

            def disconnected(peer: bytes) -> None:
                self._identify.disconnected(peer)
                on_disconnect(peer)

            self._host.get_network().register_notifee(
                _Notifee(disconnected, self._connections_changed))
            nursery.start_soon(self._release_busy)
            nursery.start_soon(self._reap_streams)
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                self._listen = None
                self._idle.clear()
                self._identify.stop()
                nursery.cancel_scope.cancel()

    # -- peers and addresses ------------------------------------------------

    def listen_addrs(self) -> list[bytes]:
        """The addresses others can dial this host at, without /p2p/.

        An unspecified listen address (0.0.0.0, ::) is expanded to loopback and
        this host's own addresses, as go-libp2p does, so provider records and
        Info never carry an address nobody can dial."""
        if self._listen is None:
            out: list[bytes] = []
            for addr in self._host.get_transport_addrs():
                for expanded in expand_unspecified(addr):
                    raw = bytes(expanded.to_bytes())
                    if raw not in out:
                        out.append(raw)
            # Fixed once the listeners are bound (computing them showed in profiles).
            if out:
                self._listen = out
            return out
        return list(self._listen)

    def announced_addrs(self) -> list[bytes]:
        """The addresses this host tells others it has, in identify, provider
        records and answers about itself: ``announce`` if given (Kubo's
        Addresses.Announce), else :meth:`listen_addrs`; then ``announce_append``
        (Kubo's Addresses.AppendAnnounce)."""
        own = list(self._announce) if self._announce else self.listen_addrs()
        return own + [a for a in self._announce_append if a not in own]

    def is_connected(self, peer: bytes) -> bool:
        return bool(self._host.get_network().get_connections(ID(peer)))

    def connected_peers(self) -> frozenset[bytes]:
        """Peers with an open connection (kept until a connection opens or closes:
        every answer this node sends marks which of its peers are connected)."""
        if self._connected is None:
            self._connected = frozenset(p.to_bytes() for p in self._host.get_connected_peers())
        return self._connected

    def _connections_changed(self) -> None:
        self._connected = None

    def protocols_of(self, peer: bytes) -> tuple[str, ...]:
        """The protocols ``peer`` listed in identify (empty if never identified)."""
        try:
            return tuple(str(p) for p in self._host.get_peerstore().get_protocols(ID(peer)))
        except Exception:
            return ()

    def addrs_of(self, peer: bytes) -> tuple[bytes, ...]:
        if peer == self.self_id:
            return tuple(self.announced_addrs())
        try:
            known = self._host.get_peerstore().addrs(ID(peer))
        except Exception:
            return ()
        out: dict[bytes, None] = {}
        for addr in known:
            raw = bytes(addr.to_bytes())
            stripped = self._stripped.get(raw)
            if stripped is None:
                if len(self._stripped) >= ADDR_CACHE_SIZE:
                    self._stripped.clear()
                stripped = self._stripped[raw] = bytes(strip_p2p(addr).to_bytes())
            out[stripped] = None
        return tuple(out)

    def learn(self, peers: Sequence[PeerRecord]) -> None:
        """Keeps the addresses of ``peers`` for dialling; at most MAX_LEARNED_PEERS
        learned peers are kept, least recently learned forgotten first (unless
        pinned or connected). The same addresses heard again within
        LEARNED_REFRESH only mark the peer as recently learned (walks hear the same
        peers from every answer; the peerstore update showed in profiles)."""
        store = self._host.get_peerstore()
        now = trio.current_time()
        learned = self._learned
        for peer in peers:
            if peer.id == self.self_id or not peer.addrs:
                continue
            known = learned.get(peer.id)
            if known is not None and known[0] == peer.addrs and now - known[1] < LEARNED_REFRESH:
                learned.move_to_end(peer.id)
                continue
            addrs = []
            for raw in peer.addrs:
                try:
                    addrs.append(multiaddr.Multiaddr(raw))
                except Exception:
                    continue
            if not addrs:
                continue
            try:
                pid = ID(peer.id)
            except Exception:
                continue
            store.add_addrs(pid, addrs, LEARNED_ADDR_TTL)
            learned.pop(peer.id, None)
            learned[peer.id] = (peer.addrs, now)
        while len(learned) > MAX_LEARNED_PEERS:
            old, _ = learned.popitem(last=False)
            if old not in self._pinned and not self.is_connected(old):
                with suppress(Exception):
                    store.clear_peerdata(ID(old))

    def _unlearn(self, peer: bytes) -> None:
        """The peerstore dropped ``peer``: the next time it is heard, its addresses go
        back in at once."""
        self._learned.pop(peer, None)

    def pin(self, peer: bytes) -> None:
        """Keeps ``peer``'s addresses whatever else is learned (routing-table peers)."""
        self._pinned.add(peer)

    def unpin(self, peer: bytes) -> None:
        self._pinned.discard(peer)

    def protect(self, peer: bytes, tag: str) -> None:
        """Shields connections to ``peer`` from trimming while ``tag`` holds."""
        with suppress(Exception):
            self._host.get_network().protect(ID(peer), tag)

    def unprotect(self, peer: bytes, tag: str) -> None:
        with suppress(Exception):
            self._host.get_network().unprotect(ID(peer), tag)


    def speaks_kad(self, peer: bytes) -> bool:
        return self._identify.speaks_kad(peer)

    async def connect(self, peer: bytes, addr: bytes) -> None:
        """Dials ``peer`` at ``addr`` (a /dns* name is resolved now, at every dial),
        unless it is connected already; within DIAL_TIMEOUT.

        Raises PeerRequestError if resolution or the dial fails. An explicit dial
        always dials: the addresses' dial backoff is cleared first (a bootstrap peer
        or one named to Connect that was down a moment ago may be back)."""
        addrs = await resolve(multiaddr.Multiaddr(addr))
        pid = ID(peer)
        self._host.get_peerstore().add_addrs(pid, addrs, CONNECT_ADDR_TTL)
        if self._has_connection(peer):
            return
        targets = [(key, a) for a in addrs if (key := dial_key(a)) is not None]
        if not targets:
            raise PeerRequestError(
                f"no TCP address to dial in {', '.join(str(a) for a in addrs)}")
        for key, _ in targets:
            self._backoff.clear(key)
        error = await self._dial(peer, targets[:MAX_DIAL_ADDRS])
        if error is not None:
            raise PeerRequestError(error)

    def disconnect(self, peer: bytes) -> None:
        """Closes every connection to ``peer`` and drops its idle kad streams: the
        next request to it dials afresh (waiting for the close first). Returns at
        once; the close runs in the host's nursery, within DISCONNECT_TIMEOUT, and
        never raises."""
        self._idle.pop(peer, None)  # they live on the connections being closed
        if self._nursery is None or peer in self._closing:
            return
        try:
            conns = list(self._host.get_network().get_connections(ID(peer)))
        except Exception:
            return
        if conns:
            done = self._closing[peer] = trio.Event()
            self._nursery.start_soon(self._close_connections, peer, conns, done)

    async def _close_connections(self, peer: bytes, conns: list[Any], done: trio.Event
                                 ) -> None:
        try:
            with trio.move_on_after(DISCONNECT_TIMEOUT):
                for conn in conns:
                    try:
                        await conn.close()
                    except Exception as exc:
                        log.debug("closing a connection to %s: %s", ID(peer), describe(exc))
        finally:
            if self._closing.get(peer) is done:
                del self._closing[peer]
            done.set()

    def dial_backoff(self, peer: bytes) -> bool:
        """True when a request to ``peer`` would fail at once: it has no open
        connection, and every address it is known at is in dial backoff."""
        if self._has_connection(peer):
            return False
        dialable, fresh = self._dial_targets(peer)
        return bool(dialable) and not fresh

    async def wait_identified(self, peer: bytes, timeout: float = IDENTIFY_WAIT) -> bool:
        """Waits (at most ``timeout``) for identify; True if ``peer`` speaks kad.

        Ends early, False, if ``peer`` has no connection left."""
        return await self._identify.wait(peer, timeout, self.is_connected)

    # -- kad requests -------------------------------------------------------

    async def request(self, peer: bytes, message: Message) -> Message:
        """Sends one kad message and reads one answer. Raises PeerRequestError.

        Reuses an idle stream to ``peer`` when there is one (no protocol
        negotiation); if the peer closed that stream meanwhile, retries once on
        a new stream. A stream that was mid-request when cancelled is reset."""
        frame = _frame(message)
        self._busy_enter(peer)
        try:
            stream = self._take_idle(peer)
            if stream is not None:
                try:
                    return await self._exchange(peer, stream, frame)
                except _StaleStream:
                    pass
            stream = await self._open(peer)
            try:
                return await self._exchange(peer, stream, frame)
            except _StaleStream as exc:
                raise PeerRequestError(str(exc)) from None
        finally:
            self._busy_leave(peer)

    def _busy_enter(self, peer: bytes) -> None:
        count = self._busy.get(peer, 0)
        self._busy[peer] = count + 1
        if count == 0:
            if peer not in self._busy_released:
                self.protect(peer, _BUSY_TAG)
            self._busy_released[peer] = None

    def _busy_leave(self, peer: bytes) -> None:
        count = self._busy.pop(peer, 1) - 1
        if count > 0:
            self._busy[peer] = count
        else:
            # Unprotected later (_release_busy): protecting costs py-libp2p a base58
            # encoding each way, which showed at 14% of a request's CPU.
            self._busy_released[peer] = trio.current_time()

    async def _release_busy(self) -> None:
        """Unprotects peers no request has used for BUSY_HOLD."""
        while True:
            await trio.sleep(BUSY_HOLD)
            now = trio.current_time()
            for peer, since in list(self._busy_released.items()):
                if since is not None and now - since >= BUSY_HOLD:
                    del self._busy_released[peer]
                    self.unprotect(peer, _BUSY_TAG)

    async def _open(self, peer: bytes) -> _Framed:
        """A new kad stream to ``peer`` (dialled if need be: :meth:`_connection_to`),
        negotiated lazily: the multistream header and proposal go out with the first
        request, and the answer's negotiation is read before the answer
        (dhtd.p2p.multistream)."""
        await self._connection_to(peer)
        try:
            # Opening a stream sends nothing; bounded in case the connection closed
            # just now and py-libp2p dials again by itself.
            with trio.fail_after(DIAL_TIMEOUT):
                stream = await self._host.get_network().new_stream(ID(peer))
        except trio.TooSlowError:
            raise PeerRequestError(
                f"no stream to {ID(peer)} within {DIAL_TIMEOUT:g}s") from None
        except Exception as exc:
            raise PeerRequestError(describe(exc)) from None
        with suppress(Exception):
            stream.set_protocol(self.protocol_id)
        return _Framed(stream, expect=self.protocol_id)

    # -- dialling --------------------------------------------------------------

    def _has_connection(self, peer: bytes) -> bool:
        try:
            conns = self._host.get_network().get_connections(ID(peer))
        except Exception:
            return False
        return any(not conn.is_closed for conn in conns)

    def _dial_targets(self, peer: bytes) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        """(every TCP address ``peer`` is known at, those of them not in backoff), as
        (dial key, multiaddr); loopback ones only when it has no other (as
        py-libp2p's swarm chooses)."""
        try:
            known = self._host.get_peerstore().addrs(ID(peer))
        except Exception:
            known = []
        dialable: dict[str, Any] = {}
        for addr in known:
            key = dial_key(addr)
            if key is not None and key not in dialable:
                dialable[key] = addr
        items = list(dialable.items())
        if any(not _is_loopback(key) for key, _ in items):
            items = [item for item in items if not _is_loopback(item[0])]
        now = trio.current_time()
        return items, [item for item in items if not self._backoff.blocked(item[0], now)]

    async def _connection_to(self, peer: bytes) -> None:
        """Returns once ``peer`` has an open connection: at once if it has one, else
        after a dial (one per peer at a time: concurrent requests wait for the same).
        Raises PeerRequestError at once when every address of the peer is in dial
        backoff, or it has none; after DIAL_TIMEOUT at most when the dial fails."""
        closing = self._closing.get(peer)
        if closing is not None:
            await closing.wait()  # within DISCONNECT_TIMEOUT
        if self._has_connection(peer):
            return
        dial = self._dials.get(peer)
        if dial is None:
            if self._nursery is None:
                raise PeerRequestError("the host is not running")
            dialable, fresh = self._dial_targets(peer)
            if not fresh:
                if dialable:
                    self.dial_failures["backoff"] += 1
                    raise PeerRequestError(
                        f"dial backoff: every address of {ID(peer)} failed recently")
                raise PeerRequestError(f"no known TCP address for {ID(peer)}")
            dial = self._dials[peer] = _PeerDial()
            # In the host's nursery: a request cancelled meanwhile does not cut it
            # short, so what it learns of each address is kept.
            self._nursery.start_soon(self._dial_for, peer, fresh[:MAX_DIAL_ADDRS], dial)
        await dial.done.wait()  # within DIAL_TIMEOUT
        if dial.error is not None:
            raise PeerRequestError(dial.error)

    async def _dial_for(self, peer: bytes, targets: list[tuple[str, Any]], dial: _PeerDial
                        ) -> None:
        try:
            dial.error = await self._dial(peer, targets)
        finally:
            if self._dials.get(peer) is dial:
                del self._dials[peer]
            dial.done.set()

    async def _dial(self, peer: bytes, targets: list[tuple[str, Any]]) -> str | None:
        """Dials ``targets`` (dial key, multiaddr) of ``peer`` at once; the first to
        connect ends the others. Returns None once connected, else why not, after
        DIAL_TIMEOUT at most. Counts the failure in dial_failures."""
        pid = ID(peer)
        if not targets:
            return f"no TCP address to dial for {pid}"
        deadline = trio.current_time() + DIAL_TIMEOUT
        outcomes: dict[str, tuple[str, str]] = {}
        async with trio.open_nursery() as nursery:
            for key, addr in targets:
                nursery.start_soon(self._dial_addr, pid, key, addr, deadline, outcomes,
                                   nursery.cancel_scope)
        reasons = {reason for reason, _ in outcomes.values()}
        if "ok" in reasons:
            return None
        for reason in DIAL_FAILURE_REASONS:  # the first is the one told
            if reason in reasons:
                break
        self.dial_failures[reason] += 1
        if reason == "timeout":
            return f"dial to {pid} timed out after {DIAL_TIMEOUT:g}s"
        if reason == "backoff":
            return f"dial backoff: every address of {pid} failed recently"
        text = next(text for r, text in outcomes.values() if r == reason)
        return f"dial to {pid} {'refused' if reason == 'refused' else 'failed'}: {text}"

    async def _dial_addr(self, pid: ID, key: str, addr: Any, deadline: float,
                         outcomes: dict[str, tuple[str, str]], won: trio.CancelScope
                         ) -> None:
        """One address of a dial: waits for a dial to the same address in flight (for
        another peer: fake peers at one tarpit), then dials unless it is in backoff.
        Records the outcome in ``outcomes[key]``; cancels ``won`` once connected."""
        with trio.move_on_at(deadline) as waiting:
            while (busy := self._addr_dials.get(key)) is not None:
                await busy.wait()
        if waiting.cancelled_caught:
            outcomes[key] = ("timeout", "")
            return
        if self._has_connection(pid.to_bytes()):  # that dial was to this peer
            outcomes[key] = ("ok", "")
            won.cancel()
            return
        if self._backoff.blocked(key, trio.current_time()):
            outcomes[key] = ("backoff", "")
            return
        done = self._addr_dials[key] = trio.Event()
        try:
            outcomes[key] = outcome = await self._dial_once(pid, key, addr, deadline)
            if outcome[0] == "ok":
                won.cancel()
        finally:
            del self._addr_dials[key]
            done.set()

    async def _dial_once(self, pid: ID, key: str, addr: Any, deadline: float
                         ) -> tuple[str, str]:
        """Dials ``addr`` (TCP, noise, yamux) until ``deadline``; keeps its backoff.
        (outcome, text): ok, timeout, refused (by the OS) or error."""
        self.dial_attempts += 1
        with trio.move_on_at(deadline):
            try:
                await self._host.get_network().dial_addr(addr, pid)
            except Exception as exc:
                cause = _refused(exc)
                if cause is None:
                    return "error", describe(exc)
                self._backoff.failed(key, trio.current_time())
                return "refused", describe(cause)
            self._backoff.clear(key)
            return "ok", ""
        self._backoff.failed(key, trio.current_time())
        return "timeout", ""

    async def _exchange(self, peer: bytes, framed: _Framed, frame: bytes) -> Message:
        stream = framed.stream
        try:
            await framed.write(frame)
            data = await framed.read_frame()
        except PeerRequestError:
            await _discard(stream)
            raise
        except Exception as exc:
            await _discard(stream)
            raise _StaleStream(describe(exc)) from None
        except BaseException:
            await _discard(stream)
            raise
        answer = Message()
        try:
            answer.ParseFromString(data)
        except Exception:
            await _discard(stream)
            raise PeerRequestError("answer is not a kad message") from None
        self._keep_idle(peer, framed)
        return answer

    def _take_idle(self, peer: bytes) -> _Framed | None:
        """The most recently used idle stream to ``peer`` that is still fit for reuse
        (see IDLE_STREAM_REUSE); unfit ones are closed."""
        streams = self._idle.get(peer)
        now = trio.current_time()
        found = None
        while streams and found is None:
            stream = streams.pop()
            stale = stream.kept_at is not None and now - stream.kept_at >= IDLE_STREAM_REUSE
            if stale or getattr(stream.io, "remote_closed", False):
                self._spawn_close(stream)
            else:
                found = stream
        if not streams:
            self._idle.pop(peer, None)
        return found

    def _keep_idle(self, peer: bytes, stream: _Framed) -> None:
        stream.kept_at = trio.current_time()
        streams = self._idle.pop(peer, [])
        streams.append(stream)
        self._idle[peer] = streams  # most recently used last
        if len(streams) > MAX_IDLE_STREAMS_PER_PEER:
            self._spawn_close(streams.pop(0))
        while sum(len(v) for v in self._idle.values()) > MAX_IDLE_STREAMS:
            oldest = next(iter(self._idle))
            for extra in self._idle.pop(oldest):
                self._spawn_close(extra)

    def _spawn_close(self, framed: _Framed) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(_close, framed.stream)

    async def send(self, peer: bytes, message: Message) -> None:
        """Sends one kad message that has no answer (ADD_PROVIDER). Raises PeerRequestError.

        Uses an idle stream when there is one (the walk before an ADD_PROVIDER
        has just used it), else a new one; the stream stays open for reuse."""
        frame = _frame(message)
        stream = self._take_idle(peer)
        if stream is not None:
            try:
                await self._write(stream, frame)
            except _StaleStream:
                stream = None
        if stream is None:
            stream = await self._open(peer)
            try:
                await self._write(stream, frame)
            except _StaleStream as exc:
                raise PeerRequestError(str(exc)) from None
        self._keep_idle(peer, stream)

    async def _write(self, framed: _Framed, frame: bytes) -> None:
        try:
            await framed.write(frame)
        except Exception as exc:
            await _discard(framed.stream)
            raise _StaleStream(describe(exc)) from None
        except BaseException:
            await _discard(framed.stream)
            raise

    async def _route_stream(self, stream: Any) -> None:
        """Every inbound stream: multistream-select for one of the host's protocols
        (header and answer in one write, dhtd.p2p.multistream), then its handler.
        Bytes the dialler sent behind its proposal (a lazy dialler's first
        request) stay on the stream for the handler. Streams of muxers other than
        dhtd's yamux go to py-libp2p's own negotiation."""
        muxed = getattr(stream, "muxed_stream", None)
        if not isinstance(muxed, YamuxStream):
            await self._host._swarm_stream_handler(stream)
            return
        handlers = self._host.get_mux().handlers
        io = multistream.StreamIO(muxed)
        try:
            with trio.fail_after(NEGOTIATE_TIMEOUT):
                protocol = await multistream.handle(io, handlers)
        except multistream.NegotiationError as exc:
            # Closed, not reset: a reset would drop the "na" the dialler is owed.
            log.debug("stream from %s refused: %s", muxed.muxed_conn.peer_id, describe(exc))
            await _close(stream)
            return
        except trio.TooSlowError:
            log.debug("stream from %s named no protocol within %gs",
                      muxed.muxed_conn.peer_id, NEGOTIATE_TIMEOUT)
            await _reset(stream)
            return
        except Exception as exc:  # the stream broke: nothing to negotiate with
            log.debug("stream from %s broke: %s", muxed.muxed_conn.peer_id, describe(exc))
            await _reset(stream)
            return
        muxed.unread(bytes(io.plain))
        stream.set_protocol(protocol)
        await handlers[protocol](stream)

    def _stream_handler(self, handler: KadHandler) -> Callable[[Any], Awaitable[None]]:
        async def serve(stream: Any) -> None:
            try:
                sender = stream.muxed_conn.peer_id.to_bytes()
            except Exception:
                await _reset(stream)
                return
            if (self._inbound_total >= MAX_INBOUND_STREAMS
                    or self._inbound.get(sender, 0) >= MAX_INBOUND_STREAMS_PER_PEER):
                log.debug("kad stream from %s refused: too many open", ID(sender))
                await _reset(stream)
                return
            self._inbound[sender] = self._inbound.get(sender, 0) + 1
            self._inbound_total += 1
            try:
                await self._serve_stream(stream, sender, handler)
            finally:
                self._inbound_total -= 1
                left = self._inbound.pop(sender, 1) - 1
                if left:
                    self._inbound[sender] = left

        return serve

    async def _serve_stream(self, stream: Any, sender: bytes, handler: KadHandler) -> None:
        """Answers requests on one inbound stream until the peer closes it, it idles
        for STREAM_IDLE_TIMEOUT (then it is closed), a request is not complete
        FRAME_READ_TIMEOUT after it began, or anything goes wrong (then it is reset:
        the error stays with this stream). The two timeouts are kept by
        :meth:`_reap_streams`, not by a timer per request."""
        framed = _Framed(stream)
        expired: str | None = None
        try:
            with trio.CancelScope() as scope:
                self._serving[framed] = scope
                while True:
                    data = await framed.read_request()
                    request = Message()
                    request.ParseFromString(data)
                    answer = await handler(sender, request)
                    if answer is not None:
                        await framed.io.write(_frame(answer))
            expired = framed.expired
        except EOFError:
            pass
        except Exception as exc:
            log.debug("kad stream from %s reset: %s", ID(sender), describe(exc))
            await _reset(stream)
            return
        finally:
            self._serving.pop(framed, None)
        if expired == _FRAME_EXPIRED:
            log.debug("kad stream from %s reset: request not complete within %gs",
                      ID(sender), FRAME_READ_TIMEOUT)
            await _reset(stream)
            return
        await _close(stream)

    async def _reap_streams(self) -> None:
        """Every REAP_INTERVAL, ends the inbound streams idle for STREAM_IDLE_TIMEOUT
        and those inside a request begun FRAME_READ_TIMEOUT ago (a peer that trickles
        a frame, or announces a large one and stops)."""
        while True:
            await trio.sleep(REAP_INTERVAL)
            now = trio.current_time()
            for framed, scope in list(self._serving.items()):
                reason = framed.overdue(now)
                if reason is not None:
                    framed.expired = reason
                    scope.cancel()


async def _no_auto_dial() -> None:
    return None


def _frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return encode_uvarint(len(body)) + body


# Bytes asked of the muxer per read. Reading whole chunks instead of a byte at a
# time matters: every yamux read may answer with a window update, written
# through noise.
READ_CHUNK = 64 * 1024


class _Framed:
    """A stream read as varint-length-prefixed messages, with its own read buffer.

    Reads and writes go straight to dhtd's yamux stream under py-libp2p's NetStream
    (whose state lock cost two task switches per call); closing and resetting still
    go through the NetStream, so py-libp2p's bookkeeping sees them."""

    __slots__ = ("buf", "expect", "expired", "idle_since", "io", "kept_at", "partial_since",
                 "pending", "stream")

    def __init__(self, stream: Any, expect: str | None = None) -> None:
        self.stream = stream
        muxed = getattr(stream, "muxed_stream", None)
        self.io: Any = muxed if isinstance(muxed, YamuxStream) else stream
        self.buf = bytearray()
        # An outbound stream negotiates lazily: the header and the proposal of
        # ``expect`` go out with the first write, and the peer's answer to them is
        # read before the first message.
        self.expect = expect
        self.pending = multistream.encode(multistream.HEADER, expect) if expect else b""
        # When an inbound stream began to wait for a request / began one that is not
        # complete yet (trio time; None when not so): read by Host._reap_streams.
        self.idle_since: float | None = None
        self.partial_since: float | None = None
        self.expired: str | None = None
        # When an outbound stream was last put back among the idle ones (trio time).
        self.kept_at: float | None = None

    def overdue(self, now: float) -> str | None:
        if self.partial_since is not None and now - self.partial_since >= FRAME_READ_TIMEOUT:
            return _FRAME_EXPIRED
        if self.idle_since is not None and now - self.idle_since >= STREAM_IDLE_TIMEOUT:
            return _IDLE_EXPIRED
        return None

    async def _fill(self) -> bool:
        try:
            chunk = await self.io.read(READ_CHUNK)
        except EOFError:  # the peer closed its side (yamux and NetStream say so this way)
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def write(self, data: bytes) -> None:
        if self.pending:
            data, self.pending = self.pending + data, b""
        await self.io.write(data)

    async def _negotiated(self) -> None:
        """Reads the peer's answer to the lazy proposal: the header, then the
        protocol (PeerRequestError when the peer refuses it)."""
        protocol, self.expect = self.expect, None
        answers: list[str] = []
        while len(answers) < 2:
            try:
                text = multistream.parse(self.buf)
            except multistream.NegotiationError as exc:
                raise PeerRequestError(str(exc)) from None
            if text is not None:
                answers.append(text)
            elif not await self._fill():
                raise PeerRequestError("stream closed during negotiation")
        if answers[0] != multistream.HEADER:
            raise PeerRequestError("peer does not speak multistream-select 1.0")
        if answers[1] != protocol:
            raise PeerRequestError(f"peer does not speak {protocol} ({answers[1][:64]!r})")

    async def read_request(self) -> bytes:
        """One inbound request: EOFError when the peer closed the stream;
        PeerRequestError when the frame is malformed or over MAX_REQUEST_BYTES.
        While it waits, ``idle_since`` / ``partial_since`` say since when (the
        host's reaper ends the stream past STREAM_IDLE_TIMEOUT / FRAME_READ_TIMEOUT)."""
        if not self.buf:
            self.idle_since = trio.current_time()
            filled = await self._fill()
            self.idle_since = None
            if not filled:
                raise EOFError("stream closed")
        body = self._take(MAX_REQUEST_BYTES)
        if body is None:  # rarely: the request came in parts
            self.partial_since = trio.current_time()
            body = await self.read_frame(MAX_REQUEST_BYTES)
            self.partial_since = None
        return body

    def _take(self, limit: int) -> bytes | None:
        """The first message if the buffer holds all of it, else None.
        PeerRequestError if its length prefix is malformed or over ``limit``."""
        try:
            length, start = decode_uvarint(bytes(self.buf[:10]))
        except ValueError:
            if len(self.buf) >= 10:
                raise PeerRequestError("bad length prefix") from None
            return None
        if length > limit:
            raise PeerRequestError(f"message of {length} bytes is over {limit}")
        end = start + length
        if len(self.buf) < end:
            return None
        body = bytes(self.buf[start:end])
        del self.buf[:end]
        return body

    async def read_frame(self, limit: int = MAX_MESSAGE_BYTES) -> bytes:
        """One message. EOFError on a clean end before it; PeerRequestError if
        malformed or longer than ``limit``."""
        if self.expect is not None:
            await self._negotiated()
        while True:
            body = self._take(limit)
            if body is not None:
                return body
            if not await self._fill():
                if not self.buf:
                    raise EOFError("stream closed")
                try:
                    decode_uvarint(bytes(self.buf[:10]))
                except ValueError:
                    raise PeerRequestError("stream ended inside a length prefix") from None
                raise PeerRequestError("stream ended inside a message")


async def _discard(stream: Any) -> None:
    """Resets ``stream`` even inside a cancelled scope, within DISCARD_TIMEOUT."""
    with trio.CancelScope(shield=True), trio.move_on_after(DISCARD_TIMEOUT):
        await _reset(stream)


async def _reset(stream: Any) -> None:
    with suppress(Exception):
        await stream.reset()


async def _close(stream: Any) -> None:
    with suppress(Exception):
        await stream.close()
