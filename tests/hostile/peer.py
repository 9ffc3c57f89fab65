"""A kad peer that misbehaves on purpose: a real libp2p host (py-libp2p, TCP, noise,
yamux) in the test process, driven with trio, that sends dhtd what a hostile or
buggy peer of a real network could send.

``run(attack)`` starts one such host, runs ``attack(peer)`` in trio, and returns its
result. The dhtd under attack is a separate OS process (tests/swarm.py); blocking
gRPC calls to it run in a thread (``peer.call``) so the host keeps answering.
"""

from __future__ import annotations

import gc
import hashlib
import os
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import multiaddr
import trio
from libp2p.peer.id import ID

from dhtd.addrs import parse_dial_addr
from dhtd.ids import encode_uvarint
from dhtd.kadmsg import MessageType, add_peers, new_message
from dhtd.lookup import PeerRecord
from dhtd.p2p import Host, new_identity
from dhtd.wire.kad_pb2 import Message

T = TypeVar("T")
PROTOCOL = "/ipfs/kad/1.0.0"
# A TCP port nothing listens on (binary /ip4/127.0.0.1/tcp/9).
DEAD_ADDR = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/9").to_bytes()

Handler = Callable[[bytes, Message], Awaitable[Message | None]]


def frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return encode_uvarint(len(body)) + body


def fake_peers(count: int, addrs_each: int = 1) -> list[PeerRecord]:
    """``count`` made-up peers (valid sha2-256 peer IDs) at a dead address."""
    return [
        PeerRecord(b"\x12\x20" + hashlib.sha256(os.urandom(16)).digest(),
                   tuple(DEAD_ADDR for _ in range(addrs_each)))
        for _ in range(count)
    ]


def provider_key(i: int, salt: bytes = b"") -> bytes:
    return b"\x12\x20" + hashlib.sha256(salt + i.to_bytes(8, "big")).digest()


@dataclass
class Peer:
    host: Host
    target: bytes  # dhtd's peer ID
    target_addr: bytes

    @property
    def id(self) -> bytes:
        return self.host.self_id

    def addr(self) -> str:
        text = str(multiaddr.Multiaddr(self.host.listen_addrs()[0]))
        return f"{text}/p2p/{ID(self.id)}"

    async def call(self, fn: Callable[[], T]) -> T:
        """A blocking call (gRPC to dhtd) off the trio thread."""
        return await trio.to_thread.run_sync(fn)

    async def connect(self) -> None:
        await self.host.connect(self.target, self.target_addr)

    async def stream(self) -> Any:
        """A raw kad stream to dhtd (multistream-select done)."""
        await self.connect()
        return await self.host._host.new_stream(ID(self.target), [PROTOCOL])

    async def send_frames(self, frames: list[bytes], batch: int = 500) -> Any:
        """Writes ``frames`` on one stream, ``batch`` per write; returns the stream."""
        stream = await self.stream()
        for i in range(0, len(frames), batch):
            await stream.write(b"".join(frames[i:i + batch]))
        return stream

    async def add_provider(self, key: bytes, addrs: tuple[bytes, ...]) -> None:
        message = new_message(MessageType.ADD_PROVIDER, key)
        add_peers(message.providerPeers, [PeerRecord(self.id, addrs)], frozenset())
        await self.connect()
        await self.host.send(self.target, message)

    async def request(self, message: Message) -> Message:
        await self.connect()
        return await self.host.request(self.target, message)


def run(dhtd_addr: str, attack: Callable[[Peer], Awaitable[T]],
        handler: Handler | None = None, timeout: float = 60.0) -> T:
    """Runs ``attack`` from a fresh hostile host against the dhtd at ``dhtd_addr``."""
    target, target_addr = parse_dial_addr(dhtd_addr)

    async def main() -> T:
        host = Host(new_identity(), PROTOCOL)
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0").to_bytes()]
        with trio.fail_after(timeout):
            async with host.open(listen, handler, lambda peer: None):
                return await attack(Peer(host, target, target_addr))

    try:
        return trio.run(main)
    finally:
        # py-libp2p 0.8.1 leaves a closed connection's socket object unclosed; collect
        # it here, where its ResourceWarning is expected, not at the end of the session.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
