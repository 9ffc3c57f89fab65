"""An in-process network of DhtNodes for unit tests of dhtd.node.

:class:`SimHost` stands in for :class:`dhtd.p2p.Host`: same methods, no
sockets. Every message is serialised and parsed again, as on the wire, and
handed to the remote node's kad handler. Peers can be taken down (requests
fail at once), hung (requests never answer) or made to refuse (the stream is
reset), so a test can build the exact network a promise is about.

Run it under trio's MockClock with autojump, so peer timeouts cost no wall
time and "ends at once" versus "waits for the 10 s peer timeout" is exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import trio

from dhtd.app import build_validators
from dhtd.lookup import PeerRecord, PeerRequestError
from dhtd.node import Bootstrap, DhtNode, Observer
from dhtd.refresh import REFRESH_INTERVAL
from dhtd.wire.kad_pb2 import Message

PROTOCOL = "/ipfs/kad/1.0.0"
# Record times start here, so 48 h validity is checked against a real-looking clock.
EPOCH = 1_700_000_000.0

Handler = Callable[[bytes, Message], Awaitable[Message | None]]

# How long after a connection opens its identify exchange ends (both sides).
IDENTIFY_DELAY = 0.01


def sim_id(name: str) -> bytes:
    """A sha2-256 multihash peer ID derived from ``name``."""
    return b"\x12\x20" + hashlib.sha256(name.encode()).digest()


def sim_addr(port: int) -> bytes:
    """Binary multiaddr /ip4/127.0.0.1/tcp/<port>."""
    return bytes([0x04, 127, 0, 0, 1, 0x06]) + port.to_bytes(2, "big")


@dataclass
class SimNet:
    """Who is online, and how each peer misbehaves."""

    hosts: dict[bytes, SimHost] = field(default_factory=dict)
    hung: set[bytes] = field(default_factory=set)
    refusing: set[bytes] = field(default_factory=set)
    # Every request handled, as (receiver, sender, message type).
    log: list[tuple[bytes, bytes, int]] = field(default_factory=list)
    _next_port: int = 20_000

    def new_host(self, name: str) -> SimHost:
        self._next_port += 1
        host = SimHost(self, sim_id(name), sim_addr(self._next_port))
        self.hosts[host.self_id] = host
        return host

    def received(self, peer: bytes, kind: int) -> int:
        """How many requests of ``kind`` ``peer`` handled."""
        return sum(1 for to, _, k in self.log if to == peer and k == kind)

    def online(self, peer: bytes) -> SimHost | None:
        host = self.hosts.get(peer)
        return host if host is not None and host.handler_set else None


class SimHost:
    """The part of dhtd.p2p.Host that DhtNode uses."""

    protocol_id = PROTOCOL

    def __init__(self, net: SimNet, self_id: bytes, addr: bytes) -> None:
        self.net = net
        self.self_id = self_id
        self.addr = addr
        self.handler: Handler | None = None
        self.handler_set = False
        self.on_kad_peer: Callable[[bytes], None] = lambda peer: None
        self.on_disconnect: Callable[[bytes], None] = lambda peer: None
        self.connected: set[bytes] = set()
        # Peers whose identify exchange finished (IDENTIFY_DELAY after connecting).
        self.identified: dict[bytes, trio.Event] = {}
        self.known: dict[bytes, tuple[bytes, ...]] = {}
        self.pinned: set[bytes] = set()
        self.protected: dict[bytes, set[str]] = {}

    @asynccontextmanager
    async def open(
        self,
        listen: Sequence[bytes],
        handler: Handler | None,
        on_kad_peer: Callable[[bytes], None],
        on_disconnect: Callable[[bytes], None] = lambda peer: None,
    ) -> AsyncIterator[SimHost]:
        self.handler, self.handler_set = handler, True
        self.on_kad_peer, self.on_disconnect = on_kad_peer, on_disconnect
        try:
            yield self
        finally:
            self.handler_set = False
            for peer in list(self.connected):
                self._drop(peer)

    def _drop(self, peer: bytes) -> None:
        self.connected.discard(peer)
        other = self.net.hosts.get(peer)
        if other is not None and self.self_id in other.connected:
            other.connected.discard(self.self_id)
            other.on_disconnect(self.self_id)

    def disconnect(self, peer: bytes) -> None:
        """The connection to ``peer`` closes; both ends hear of it."""
        if peer in self.connected:
            self._drop(peer)
            self.on_disconnect(peer)

    # -- peers and addresses --------------------------------------------------

    def listen_addrs(self) -> list[bytes]:
        return [self.addr]

    def announced_addrs(self) -> list[bytes]:
        return [self.addr]

    def is_connected(self, peer: bytes) -> bool:
        return peer in self.connected

    def connected_peers(self) -> list[bytes]:
        return sorted(self.connected)

    def addrs_of(self, peer: bytes) -> tuple[bytes, ...]:
        return self.known.get(peer, ())

    def learn(self, peers: Sequence[PeerRecord]) -> None:
        """Adds to what is known of each peer, as libp2p's peerstore does."""
        for record in peers:
            if record.addrs and record.id != self.self_id:
                known = self.known.get(record.id, ())
                self.known[record.id] = tuple(dict.fromkeys((*known, *record.addrs)))

    def pin(self, peer: bytes) -> None:
        self.pinned.add(peer)

    def unpin(self, peer: bytes) -> None:
        self.pinned.discard(peer)

    def protect(self, peer: bytes, tag: str) -> None:
        self.protected.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: bytes, tag: str) -> None:
        self.protected.get(peer, set()).discard(tag)

    # -- connections and messages ----------------------------------------------

    def _reach(self, peer: bytes) -> SimHost:
        other = self.net.online(peer)
        if other is None:
            raise PeerRequestError(f"dial to {peer.hex()[:12]} failed: connection refused")
        if peer not in self.connected:
            self.connected.add(peer)
            other.connected.add(self.self_id)
            self.known[peer] = (other.addr,)  # the dialer knows the address it dialled
            # identify: a moment later, each side learns whether the other serves kad,
            # and the other's listen addresses (the side dialled in knows none before)
            self.identified[peer] = trio.Event()
            other.identified[self.self_id] = trio.Event()
            trio.lowlevel.spawn_system_task(self._identify, other)
            trio.lowlevel.spawn_system_task(other._identify, self)
        return other

    async def _identify(self, other: SimHost) -> None:
        event = self.identified[other.self_id]
        await trio.sleep(IDENTIFY_DELAY)
        if other.self_id in self.connected:
            self.learn([PeerRecord(other.self_id, (other.addr,))])
            if other.handler is not None:
                self.on_kad_peer(other.self_id)
        event.set()

    async def connect(self, peer: bytes, addr: bytes) -> None:
        await trio.lowlevel.checkpoint()
        target = self.net.online(peer)
        if target is not None and addr != target.addr:
            raise PeerRequestError(f"dial to {peer.hex()[:12]} failed: nothing at that address")
        self._reach(peer)

    async def wait_identified(self, peer: bytes) -> bool:
        """True once ``peer``'s identify lists kad (False if it does not, or it left)."""
        event = self.identified.get(peer)
        if event is None:
            return False
        await event.wait()
        other = self.net.online(peer)
        return peer in self.connected and other is not None and other.handler is not None

    async def _deliver(self, peer: bytes, message: Message) -> Message | None:
        other = self._reach(peer)
        await trio.lowlevel.checkpoint()
        if peer in self.net.hung:
            await trio.sleep_forever()
        if other.handler is None or peer in self.net.refusing:
            raise PeerRequestError("stream reset by the peer")
        wire = Message()
        wire.ParseFromString(message.SerializeToString())
        self.net.log.append((peer, self.self_id, wire.type))
        try:
            answer = await other.handler(self.self_id, wire)
        except Exception as exc:  # the real host resets the stream
            raise PeerRequestError(f"stream reset: {exc}") from None
        if answer is None:
            return None
        back = Message()
        back.ParseFromString(answer.SerializeToString())
        return back

    async def request(self, peer: bytes, message: Message) -> Message:
        answer = await self._deliver(peer, message)
        if answer is None:
            raise PeerRequestError("the peer closed the stream without answering")
        return answer

    async def send(self, peer: bytes, message: Message) -> None:
        await self._deliver(peer, message)


def sim_node(net: SimNet, name: str, bootstrap: Sequence[DhtNode] = (),
             server: bool = True, namespaces: tuple[str, ...] = ("demo",),
             observer: Observer | None = None,
             refresh_interval: float = REFRESH_INTERVAL) -> DhtNode:
    """A node on ``net``; ``observer`` and ``refresh_interval`` are given at construction,
    as dhtd.app does (the handlers and the maintainer take them from there)."""
    host = net.new_host(name)
    return DhtNode(
        host,  # type: ignore[arg-type]
        build_validators(namespaces),
        server=server,
        bootstrap=[Bootstrap(b.self_id, b.host.listen_addrs()[0]) for b in bootstrap],
        observer=observer or Observer(),
        clock=lambda: EPOCH + trio.current_time(),
        refresh_interval=refresh_interval,
    )


@asynccontextmanager
async def running(nodes: Sequence[DhtNode]) -> AsyncIterator[Sequence[DhtNode]]:
    """Runs ``nodes`` until the block ends, then stops them all."""
    async with AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node.running([node.host.listen_addrs()[0]]))
        yield nodes


async def settle(nodes: Sequence[DhtNode], seconds: float = 60.0) -> None:
    """Lets bootstrap and the first table refresh run (virtual time)."""
    await trio.sleep(seconds)


def star(net: SimNet, count: int, prefix: str = "n") -> list[DhtNode]:
    """``count`` nodes, each bootstrapped from the first."""
    first = sim_node(net, f"{prefix}0")
    return [first] + [sim_node(net, f"{prefix}{i}", [first]) for i in range(1, count)]
