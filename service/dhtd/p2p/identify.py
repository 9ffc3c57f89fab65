"""Identify (``/ipfs/id/1.0.0``): what each side of a new connection learns of the
other, dhtd's own instead of py-libp2p's.

py-libp2p built and signed a fresh identify message (with a signed peer record)
for every connection it answered, verified the peer's signed record on every
connection it opened, and told nobody when identify ended: dhtd polled the
peerstore for each new connection. In a mass start that was a sixth of the CPU.

Here:
- **Answering**: the message (protocol and agent versions, public key, listen
  addresses, protocols, signed peer record) is built once and kept until the
  protocols change; only the observed address is added per connection (a
  protobuf field appended to the cached bytes).
- **Asking**: once per new connection (one exchange at a time per peer), bounded
  by IDENTIFY_TIMEOUT and MAX_IDENTIFY_BYTES. The peer's public key (only if it
  hashes to the peer ID), its listen addresses (kadmsg's per-peer caps) and its
  protocols (at most MAX_PROTOCOLS) go to the peerstore. The signed peer record is
  not read: the addresses in it are the listen addresses already sent.
- **Telling**: waiters wake when identify ends, fails, or the peer disconnects;
  a peer that lists the kad protocol is handed to ``on_kad_peer`` once per
  connection.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import multiaddr
import trio
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.identity.identify.identify import ID as _IDENTIFY_ID
from libp2p.identity.identify.identify import _mk_identify_protobuf
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.peer.id import ID
from libp2p.peer.peerstore import create_signed_peer_record

from dhtd.ids import decode_uvarint, encode_uvarint
from dhtd.kadmsg import peer_addrs
from dhtd.lookup import describe
from dhtd.p2p import multistream

log = logging.getLogger("dhtd.p2p.identify")

IDENTIFY = str(_IDENTIFY_ID)  # /ipfs/id/1.0.0

# go-libp2p identify: the whole exchange (identify.Timeout, 30 s... its
# StreamReadTimeout is 60 s; a loaded node or many connections at once need it).
IDENTIFY_TIMEOUT = 30.0
# go-libp2p identify reads at most signedIDSize = 8 KiB per message; dhtd allows
# more room for peers listing many protocols (ours).
MAX_IDENTIFY_BYTES = 64 << 10
# Ours: protocols kept per peer (Kubo lists about 15), each at most this long.
MAX_PROTOCOLS = 128
MAX_PROTOCOL_BYTES = 256
# py-libp2p and go-libp2p keep identified addresses this long past the connection
# (go: RecentlyConnectedAddrTTL... py-libp2p: 2 h); dhtd keeps py-libp2p's.
ADDR_TTL = 7200
# Bytes asked of the stream per read.
_READ = 16 << 10
# Field 4 of the Identify message (observedAddr), length-delimited.
_OBSERVED_TAG = b"\x22"


class Identifier:
    """Runs identify for one py-libp2p host (see the module doc). Call
    :meth:`start` once the host runs; until then the host's own identify runs."""

    def __init__(self, host: Any, protocol_id: str,
                 announced: Callable[[], list[bytes]] | None = None) -> None:
        self._host = host
        self._protocol_id = protocol_id
        # The addresses to tell peers: dhtd.p2p.Host.announced_addrs (--announce,
        # else the listen addresses, then --announce-append; none ends in /p2p/).
        # None (unit tests only): py-libp2p's, which end in /p2p/<id>.
        self._announced = announced
        self._nursery: trio.Nursery | None = None
        self._on_kad_peer: Callable[[bytes], None] = lambda peer: None
        self._running: set[bytes] = set()
        self._waiters: dict[bytes, trio.Event] = {}
        self._reply: bytes | None = None

    def start(self, nursery: trio.Nursery, on_kad_peer: Callable[[bytes], None]) -> None:
        """Takes over identify, in ``nursery``: answering (the stream handler) and
        asking (py-libp2p's host calls ``_schedule_identify`` for every new
        connection, in both directions)."""
        self._nursery = nursery
        self._on_kad_peer = on_kad_peer
        self._host.set_stream_handler(IDENTIFY, self.serve)
        self._host._schedule_identify = self.schedule
        self._reply = None

    def stop(self) -> None:
        self._nursery = None
        for event in self._waiters.values():
            event.set()
        self._waiters.clear()

    # -- asking ----------------------------------------------------------------

    def schedule(self, peer_id: ID, *, reason: str = "") -> None:
        """A connection to ``peer_id`` opened: identify it, unless already running;
        a peer identified before (a reconnect) is handed on at once."""
        peer = peer_id.to_bytes()
        if self._nursery is None or peer in self._running:
            return
        if self.identified(peer):
            self._tell(peer)
            return
        self._running.add(peer)
        self._nursery.start_soon(self._identify, peer_id)

    async def _identify(self, peer_id: ID) -> None:
        peer = peer_id.to_bytes()
        try:
            with trio.move_on_after(IDENTIFY_TIMEOUT) as scope:
                stream = await self._host.get_network().new_stream(peer_id)
                try:
                    # Header and proposal in one write; the answer comes with the
                    # message right behind it.
                    io = multistream.StreamIO(stream)
                    await multistream.select(io, (IDENTIFY,))
                    stream.set_protocol(IDENTIFY)
                    message = await _read_message(stream, bytes(io.plain))
                finally:
                    with suppress(Exception):
                        await stream.close()
                self._store(peer_id, message)
            if scope.cancelled_caught:
                log.info("identify of %s did not finish within %gs", peer_id,
                         IDENTIFY_TIMEOUT)
        except Exception as exc:  # one peer's trouble ends its identify, nothing else
            log.debug("identify of %s failed: %s", peer_id, describe(exc))
        finally:
            self._running.discard(peer)
            self._wake(peer)
        if self.identified(peer):
            self._tell(peer)

    def _store(self, peer_id: ID, message: Identify) -> None:
        store = self._host.get_peerstore()
        if message.HasField("public_key"):
            try:
                key = deserialize_public_key(message.public_key)
            except Exception:
                key = None
            if key is not None and ID.from_pubkey(key) == peer_id:
                store.add_pubkey(peer_id, key)
        addrs = []
        for raw in peer_addrs(peer_id.to_bytes(), message.listen_addrs):
            with suppress(Exception):
                addrs.append(multiaddr.Multiaddr(raw))
        if addrs:
            with suppress(Exception):
                store.clear_addrs(peer_id)
            store.add_addrs(peer_id, addrs, ADDR_TTL)
        protocols = [p for p in message.protocols[:MAX_PROTOCOLS]
                     if 0 < len(p) <= MAX_PROTOCOL_BYTES]
        # An empty list still marks the peer identified (see identified()).
        store.set_protocols(peer_id, protocols or [IDENTIFY])

    def _tell(self, peer: bytes) -> None:
        if self.speaks_kad(peer):
            self._on_kad_peer(peer)

    def identified(self, peer: bytes) -> bool:
        try:
            return bool(self._host.get_peerstore().get_protocols(ID(peer)))
        except Exception:
            return False

    def speaks_kad(self, peer: bytes) -> bool:
        try:
            return self._protocol_id in self._host.get_peerstore().get_protocols(ID(peer))
        except Exception:
            return False

    async def wait(self, peer: bytes, timeout: float, connected: Callable[[bytes], bool]
                   ) -> bool:
        """Waits (at most ``timeout``) for identify of ``peer`` to end; True if it
        speaks kad. Ends early, False, if ``peer`` has no connection left."""
        with trio.move_on_after(timeout):
            while not self.identified(peer) and connected(peer):
                running = peer in self._running
                event = self._waiters.get(peer)
                if event is None:
                    event = self._waiters[peer] = trio.Event()
                await event.wait()
                if running and peer not in self._running:
                    break  # the exchange we waited for ended without a result
        return self.speaks_kad(peer)

    def disconnected(self, peer: bytes) -> None:
        self._wake(peer)

    def _wake(self, peer: bytes) -> None:
        event = self._waiters.pop(peer, None)
        if event is not None:
            event.set()

    # -- answering --------------------------------------------------------------

    def _announce(self, message: Identify, addrs: list[bytes]) -> None:
        """Puts ``addrs`` in the message, as listen addresses and in a signed peer
        record of their own (go-libp2p prefers the signed record's addresses)."""
        del message.listen_addrs[:]
        message.listen_addrs.extend(addrs)
        record = create_signed_peer_record(
            self._host.get_id(), [multiaddr.Multiaddr(a) for a in addrs],
            self._host.get_private_key())
        message.signedPeerRecord = record.marshal_envelope()

    async def serve(self, stream: Any) -> None:
        """Answers one identify request: the cached message plus where we see the
        peer from, then closes the stream."""
        try:
            reply = self._reply
            if reply is None:
                message = _mk_identify_protobuf(self._host, None)
                message.ClearField("observed_addr")
                addrs = None if self._announced is None else self._announced()
                if addrs is not None:
                    self._announce(message, addrs)
                reply = message.SerializeToString()
                if addrs != []:  # kept once the listeners are bound
                    self._reply = reply
            body = reply + _observed(stream)
            await stream.write(encode_uvarint(len(body)) + body)
            await stream.close()
        except Exception as exc:
            log.debug("identify answer failed: %s", describe(exc))
            with suppress(Exception):
                await stream.reset()


async def _read_message(stream: Any, buf: bytes = b"") -> Identify:
    """One varint-length-prefixed Identify message of at most MAX_IDENTIFY_BYTES
    (``buf``: what was read of it already)."""
    while True:
        try:
            length, start = decode_uvarint(buf)
            break
        except ValueError:
            if len(buf) >= 10:
                raise ValueError("bad identify length") from None
        buf += await _read_some(stream)
    if length > MAX_IDENTIFY_BYTES:
        raise ValueError(f"identify message of {length} bytes")
    while len(buf) < start + length:
        buf += await _read_some(stream)
    message = Identify()
    message.ParseFromString(buf[start:start + length])
    return message


async def _read_some(stream: Any) -> bytes:
    data: bytes = await stream.read(_READ)
    if not data:
        raise EOFError("identify stream ended early")
    return data


def _observed(stream: Any) -> bytes:
    """Field 4 (observedAddr) for the peer at the other end of ``stream``, or b""."""
    try:
        host, port = stream.muxed_conn.get_remote_address()
        ip = ipaddress.ip_address(host)
    except Exception:
        return b""
    family = "ip4" if ip.version == 4 else "ip6"
    addr = bytes(multiaddr.Multiaddr(f"/{family}/{ip}/tcp/{int(port)}").to_bytes())
    return _OBSERVED_TAG + encode_uvarint(len(addr)) + addr
