"""Yamux (``/yamux/1.0.0``), the stream muxer under every libp2p connection of dhtd.

The wire format is hashicorp's yamux spec (``spec.md``), as go-yamux and
js-libp2p's yamux speak it. This replaces py-libp2p's own implementation
(``libp2p.stream_muxer.yamux``) for CPU, which a profile showed at a fifth of all
dhtd does: one kad request cost about 2 ms of CPU, mostly per-frame overhead.
What is different here:

- **One reader per connection.** It receives whole chunks of the socket, decrypts
  every complete noise message in them (when the connection is py-libp2p's noise
  session over TCP), and parses every yamux frame, instead of two socket reads per
  noise message and one noise read per 12-byte header.
- **Writes are batched.** Frames queued while another task is writing go out in
  that task's write: one encryption and one ``send_all`` for all of them.
- **Window updates as go-yamux sends them**: once the reader consumed half the
  window, not on every read. A kad exchange sends none.
- **SYN and ACK ride on a stream's first frame**, as the spec allows, instead of
  an empty window update each.

Promises:
- A peer cannot make this node buffer more than ``RECEIVE_WINDOW`` unread bytes per
  stream, or hold more than ``MAX_STREAMS`` streams per connection (past that,
  new streams are reset) or ``ACCEPT_BACKLOG`` streams not yet taken by the host.
- A frame that breaks the protocol (bad version, data beyond the window, a DATA
  frame larger than the window, an unknown type, a SYN for a live stream) ends the
  connection with a GO_AWAY (protocol error), never the process.
- A write that cannot go out within ``WRITE_TIMEOUT`` closes the connection: part
  of a noise message may be out, so nothing more can be sent on it.
- **Keepalive**, as go-yamux's: a connection that heard nothing from its peer for
  ``KEEPALIVE_INTERVAL`` pings it, and one whose ping is not answered within
  ``KEEPALIVE_TIMEOUT`` is closed (the host hears of it as of any closed
  connection). A frozen peer (its process stopped, or its host gone behind a live
  TCP path) loses its connection within the two, counted from the last frame it sent.
- The reader never waits to write: ping ACKs and the resets of refused streams go
  out with the next batch of whoever is writing, or from a task of their own, so a
  writer stuck on a full socket cannot stop the connection from being read.
- A write that waits for the peer's window waits at most ``WINDOW_WAIT_TIMEOUT``,
  then resets the stream.
"""

from __future__ import annotations

import logging
import socket as stdlib_socket
import struct
from collections.abc import Awaitable, Callable
from contextlib import suppress
from types import TracebackType
from typing import Any

import trio
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from libp2p.abc import IMuxedConn, IMuxedStream, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamError,
    MuxedStreamReset,
)
from multiaddr import Multiaddr

log = logging.getLogger("dhtd.p2p.yamux")

PROTOCOL_ID = "/yamux/1.0.0"

# Spec: version (1 byte), type (1), flags (2), stream ID (4), length (4), big-endian.
_HEADER = struct.Struct(">BBHII")
HEADER_SIZE = _HEADER.size
VERSION = 0
TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3
FLAG_SYN = 1
FLAG_ACK = 2
FLAG_FIN = 4
FLAG_RST = 8
GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1

# Spec: every stream starts with a 256 KiB window each way. dhtd never grows its
# receive window (kad messages are at most 4 MiB, and a bounded window is what
# bounds a peer's unread data), so it is also the largest DATA frame accepted.
RECEIVE_WINDOW = 256 * 1024
INITIAL_SEND_WINDOW = 256 * 1024
# go-yamux: a window update is sent once the reader consumed at least half the window.
WINDOW_UPDATE_THRESHOLD = RECEIVE_WINDOW // 2

# Ours: streams open at once on one connection, both directions (py-libp2p's own
# yamux allowed a backlog of 256; go-yamux's resource manager allows a few hundred
# per peer). An inbound stream past it is reset.
MAX_STREAMS = 512
# go-yamux's AcceptBacklog: inbound streams the host has not taken yet.
ACCEPT_BACKLOG = 256
# go-yamux's ConnectionWriteTimeout.
WRITE_TIMEOUT = 10.0
# Ours: how long a write waits for the peer to open its window (py-libp2p: 5 s).
WINDOW_WAIT_TIMEOUT = 30.0
# go-yamux (libp2p's fork) Config.KeepAliveInterval, with EnableKeepAlive: a session
# that heard nothing from its peer for this long sends it a ping.
KEEPALIVE_INTERVAL = 30.0
# go-yamux: a keepalive ping not answered within ConnectionWriteTimeout (10 s) ends
# the session (ErrKeepAliveTimeout).
KEEPALIVE_TIMEOUT = 10.0
# Ours: bytes of ping ACKs and stream refusals the reader may queue behind a write
# that waits for the socket; past it they are dropped, so a peer that sends faster
# than it reads cannot grow the queue (go-yamux drops ping ACKs past PingBacklog, 32).
MAX_QUEUED_REPLIES = 64 * 1024
# Ours: how long closing a connection may take (GO_AWAY, socket, the host's hooks),
# shielded from the cancellation that may have ended it.
SHUTDOWN_TIMEOUT = 5.0
# Noise (libp2p spec): a transport message is at most 65535 bytes, 16 of them the MAC.
NOISE_MAX_PLAINTEXT = 65535 - 16
_NOISE_LENGTH = struct.Struct(">H")
# Noise spec 5.1: n = 2^64 - 1 is reserved.
_NOISE_MAX_NONCE = 2**64 - 1
# Bytes asked of the socket per receive.
RECEIVE_CHUNK = 256 * 1024


class ProtocolError(Exception):
    """The peer broke the yamux protocol: the connection ends."""


# -- the secured connection underneath ---------------------------------------


class _Secured:
    """Any secured connection: whatever its ``read`` returns, and its ``write``."""

    def __init__(self, conn: ISecureConn) -> None:
        self._conn = conn

    async def receive(self) -> bytes:
        """Plaintext, or b"" once the connection ended."""
        try:
            return await self._conn.read(RECEIVE_CHUNK)
        except Exception:
            return b""

    def send_now(self, data: bytes) -> Any:
        """Sends what can go out without waiting; returns the rest (for send_rest),
        or None when all of it went. Here: nothing goes at once."""
        return data

    async def send_rest(self, rest: Any) -> None:
        await self._conn.write(rest)


class _Noise(_Secured):
    """py-libp2p's noise session over TCP, read and written without its layers:
    whole socket chunks in, every complete noise message in them decrypted at once;
    out, sealed messages straight to the socket, without trio's machinery when the
    kernel takes them at once (nearly always: kad messages are small)."""

    def __init__(self, conn: ISecureConn, encrypt: Callable[[bytes], bytes],
                 decrypt: Callable[[bytes], bytes], socket: trio.SocketStream,
                 ahead: bytes = b"", raw: bytes = b"") -> None:
        super().__init__(conn)
        self._encrypt = encrypt
        self._decrypt = decrypt
        self._socket = socket
        # The kernel socket under trio's (trio's own wrapper is used only to wait).
        self._sock: stdlib_socket.socket = socket.socket._sock  # type: ignore[attr-defined]
        self._fd = self._sock.fileno()
        # Ciphertext and plaintext read ahead during the set-up.
        self._raw = bytearray(raw)
        self._ahead = ahead

    @classmethod
    def wrap(cls, conn: ISecureConn) -> _Secured:
        take = getattr(conn, "take", None)
        if take is not None:  # dhtd.p2p.upgrade.NoiseSession
            encrypt, decrypt, ahead, raw = take()
            return cls(conn, encrypt, decrypt, conn.socket, ahead, raw)  # type: ignore[attr-defined]
        if isinstance(conn, SecureSession) and isinstance(conn.conn, NoiseTransportReadWriter):
            raw_conn = conn.conn.read_writer.read_write_closer
            if (isinstance(raw_conn, RawConnection) and isinstance(raw_conn.stream, TrioTCPStream)
                    and isinstance(getattr(raw_conn.stream.stream.socket, "_sock", None),
                                   stdlib_socket.socket)):
                noise = conn.conn.noise_state
                return cls(
                    conn,
                    _sealer(noise.noise_protocol.cipher_state_encrypt, noise.encrypt, True),
                    _sealer(noise.noise_protocol.cipher_state_decrypt, noise.decrypt, False),
                    raw_conn.stream.stream,
                    # Plaintext py-libp2p read ahead during muxer negotiation.
                    conn._drain(None),
                )
        return _Secured(conn)

    async def receive(self) -> bytes:
        if self._ahead:
            ahead, self._ahead = self._ahead, b""
            return ahead
        raw = self._raw
        while True:
            out: list[bytes] = []
            pos = 0
            while len(raw) - pos >= 2:
                (length,) = _NOISE_LENGTH.unpack_from(raw, pos)
                end = pos + 2 + length
                if len(raw) < end:
                    break
                out.append(self._decrypt(bytes(raw[pos + 2:end])))  # raises on a bad MAC
                pos = end
            if pos:
                del raw[:pos]
            plain = b"".join(out)
            if plain:
                return plain
            chunk = await self._recv()
            if not chunk:
                return b""
            raw += chunk

    async def _recv(self) -> bytes:
        """Bytes from the socket (b"" at its end): read at once when some are there,
        else after trio says the socket is readable. Either way a scheduling point,
        so a peer that keeps the socket full cannot starve other tasks."""
        sock = self._sock
        waited = False
        while True:
            try:
                chunk = sock.recv(RECEIVE_CHUNK)
                break
            except BlockingIOError:
                waited = True
                try:
                    await trio.lowlevel.wait_readable(self._fd)
                except (trio.ClosedResourceError, OSError):
                    return b""
            except OSError:  # reset, or closed under us
                return b""
        if not waited:
            await trio.lowlevel.checkpoint()
        return chunk

    def send_now(self, data: bytes) -> Any:
        if len(data) <= NOISE_MAX_PLAINTEXT:
            sealed = self._encrypt(data)
            out = _NOISE_LENGTH.pack(len(sealed)) + sealed
        else:
            parts = []
            for start in range(0, len(data), NOISE_MAX_PLAINTEXT):
                sealed = self._encrypt(data[start:start + NOISE_MAX_PLAINTEXT])
                parts.append(_NOISE_LENGTH.pack(len(sealed)))
                parts.append(sealed)
            out = b"".join(parts)
        try:
            sent = self._sock.send(out)
        except BlockingIOError:
            sent = 0
        if sent == len(out):
            return None
        return memoryview(out)[sent:]  # sealed already: the rest goes out as it is

    async def send_rest(self, rest: Any) -> None:
        await self._socket.send_all(rest)


def _sealer(state: Any, fallback: Callable[[bytes], bytes], seal: bool
            ) -> Callable[[bytes], bytes]:
    """One direction of py-libp2p's finished noise handshake as one call (see
    :func:`noise_cipher`), starting at the session's nonce. The noise session's own
    state is not advanced: from here on only this connection's muxer uses it.
    Anything but ChaChaPoly keeps ``fallback``."""
    aead = getattr(getattr(state, "cipher", None), "cipher", None)
    if not isinstance(aead, ChaCha20Poly1305) or not isinstance(state.n, int):
        return fallback
    return _aead_call(aead, state.n, seal)


def noise_cipher(key: bytes, seal: bool) -> Callable[[bytes], bytes]:
    """One direction of a finished noise handshake as one call: ChaCha20-Poly1305
    with the implicit nonce counter from 0 (Noise spec, 5.1; libp2p uses
    ChaChaPoly), called straight on ``cryptography``'s AEAD."""
    return _aead_call(ChaCha20Poly1305(key), 0, seal)


def _aead_call(aead: ChaCha20Poly1305, nonce: int, seal: bool) -> Callable[[bytes], bytes]:
    run = aead.encrypt if seal else aead.decrypt

    def call(data: bytes) -> bytes:
        nonlocal nonce
        if nonce >= _NOISE_MAX_NONCE:
            raise ProtocolError("noise nonces used up")
        out = run(b"\x00\x00\x00\x00" + nonce.to_bytes(8, "little"), data, None)
        nonce += 1  # only once it worked: a message that fails to open ends the connection
        return out

    return call


# -- streams -----------------------------------------------------------------


class YamuxStream(IMuxedStream):
    """One yamux stream. ``read`` returns what has arrived (at most ``n`` bytes);
    MuxedStreamEOF once the peer closed its side and everything was read,
    MuxedStreamReset once we reset it, or once the peer reset it (or the connection
    ended) and what arrived before was read."""

    def __init__(self, conn: Yamux, stream_id: int, outbound: bool) -> None:
        self.muxed_conn = conn
        self._conn = conn
        self.stream_id = stream_id
        # The first frame we send carries SYN (ours) or ACK (theirs).
        self._open_flags = FLAG_SYN if outbound else FLAG_ACK
        self._buf = bytearray()
        self._recv_window = RECEIVE_WINDOW
        self._send_window = INITIAL_SEND_WINDOW
        self._consumed = 0
        self._recv_closed = False
        self._send_closed = False
        self._reset = False
        self._readable = trio.Event()
        self._writable = trio.Event()

    # -- as the host sees it

    @property
    def remote_closed(self) -> bool:
        """True once the peer closed its side (FIN) or the stream was reset: what is
        written now may have no reader."""
        return self._recv_closed or self._reset

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        buf = self._buf
        while not buf:
            if self._reset:
                raise MuxedStreamReset("stream reset")
            if self._recv_closed:
                raise MuxedStreamEOF("stream closed by the peer")
            if self._readable.is_set():
                self._readable = trio.Event()
            await self._readable.wait()
        if n is None or n < 0 or n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        self._consumed += len(data)
        if self._consumed >= WINDOW_UPDATE_THRESHOLD and not self._reset:
            delta, self._consumed = self._consumed, 0
            self._recv_window += delta
            with suppress(Exception):
                await self._conn._send(self._frame(TYPE_WINDOW_UPDATE, 0, delta))
        return data

    def unread(self, data: bytes) -> None:
        """Puts ``data``, read from this stream, back in front of what is unread
        (a protocol negotiation read past its end). Not counted twice against the
        receive window."""
        if data:
            self._buf[:0] = data
            self._consumed -= len(data)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._check_writable()
            if self._send_window <= 0:
                await self._wait_window()
                continue
            frames: list[bytes | memoryview] = []
            while view and self._send_window > 0:
                size = min(len(view), self._send_window)
                self._send_window -= size
                frames.append(self._frame(TYPE_DATA, 0, size))
                frames.append(view[:size])
                view = view[size:]
            try:
                await self._conn._send(b"".join(frames))
            except MuxedConnUnavailable as exc:
                raise MuxedStreamReset(str(exc)) from None

    async def close(self) -> None:
        """Closes our side (FIN); the peer may still send until it closes its own."""
        if self._send_closed or self._reset:
            return
        self._send_closed = True
        with suppress(Exception):
            await self._conn._send(self._frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 0))
        if self._recv_closed:
            self._conn._forget(self)

    async def reset(self) -> None:
        """Ends both sides at once (RST); unread data is dropped."""
        if self._reset:
            return
        # Nothing to tell a peer that never heard of the stream or already saw both ends.
        silent = bool(self._open_flags & FLAG_SYN) or (self._send_closed and self._recv_closed)
        self._mark_reset()
        if not silent:
            with suppress(Exception):
                await self._conn._send(self._frame(TYPE_WINDOW_UPDATE, FLAG_RST, 0))

    def set_deadline(self, ttl: int) -> None:
        raise NotImplementedError("yamux streams have no deadline; use a cancel scope")

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.get_remote_address()

    @property
    def is_closed(self) -> bool:
        return self._reset or (self._send_closed and self._recv_closed)

    async def __aenter__(self) -> YamuxStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals

    def _frame(self, kind: int, flags: int, length: int) -> bytes:
        flags |= self._open_flags
        self._open_flags = 0
        return _HEADER.pack(VERSION, kind, flags, self.stream_id, length)

    def _check_writable(self) -> None:
        if self._reset:
            raise MuxedStreamReset("stream reset")
        if self._send_closed:
            raise MuxedStreamClosed("stream closed for writing")

    async def _wait_window(self) -> None:
        if self._writable.is_set():
            self._writable = trio.Event()
        with trio.move_on_after(WINDOW_WAIT_TIMEOUT):
            await self._writable.wait()
            return
        await self.reset()
        raise MuxedStreamReset(f"peer kept its window shut for {WINDOW_WAIT_TIMEOUT:g}s")

    def _mark_reset(self, keep_unread: bool = False) -> None:
        """Ends the stream both ways. ``keep_unread`` (the peer reset it, or the
        connection ended without a protocol error): what arrived before stays
        readable, and only then does ``read`` raise MuxedStreamReset.
        go-libp2p-kad-dht writes a one-way message (ADD_PROVIDER, PUT_VALUE) on the
        stream it shares for each peer, then resets that stream when a later request
        on it is cancelled: the message arrived whole and is served, as go-yamux
        serves it when it read it first."""
        self._reset = True
        if not keep_unread:
            self._buf.clear()
        self._readable.set()
        self._writable.set()
        self._conn._forget(self)

    # -- what the connection's reader hands over

    def _on_data(self, data: bytes) -> None:
        if len(data) > self._recv_window:
            raise ProtocolError(f"stream {self.stream_id}: data beyond the receive window")
        self._recv_window -= len(data)
        if not self._reset:
            self._buf += data
            self._readable.set()

    def _on_window(self, delta: int) -> None:
        self._send_window += delta
        self._writable.set()

    def _on_fin(self) -> None:
        self._recv_closed = True
        self._readable.set()
        if self._send_closed:
            self._conn._forget(self)


# -- the connection ----------------------------------------------------------


class Yamux(IMuxedConn):
    """A yamux session over one secured connection (py-libp2p's muxer interface)."""

    def __init__(
        self,
        secured_conn: ISecureConn,
        peer_id: ID,
        is_initiator: bool | None = None,
        on_close: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.secured_conn = secured_conn
        self.peer_id = peer_id
        self._initiator = secured_conn.is_initiator if is_initiator is None else is_initiator
        self.on_close = on_close
        self._io = _Noise.wrap(secured_conn)
        # Spec: the client (dialler) uses odd stream IDs, the server even ones.
        self._next_id = 1 if self._initiator else 2
        self._streams: dict[int, YamuxStream] = {}
        self._accept_send, self._accept_receive = trio.open_memory_channel[YamuxStream](
            ACCEPT_BACKLOG)
        self._pending: list[bytes] = []
        # A semaphore, not a lock: a write the socket could not take at once is
        # finished by a task of the session (_drain), which lets go of it.
        self._write_lock = trio.Semaphore(1)
        self._broken: str | None = None
        self._remote_go_away = False
        self.event_started = trio.Event()
        self.event_closed = trio.Event()
        # While start() runs: its nursery (the keepalive, the flush of queued
        # replies), whose cancellation ends the session.
        self._nursery: trio.Nursery | None = None
        # Reply bytes (ping ACKs, refusals) in _pending, and whether a task to send
        # them was started.
        self._queued_replies = 0
        self._flushing = False
        # When the reader last received anything (trio time), and the keepalive
        # ping waiting for its ACK: its opaque value and the event the ACK sets.
        self._heard = 0.0
        self._ping_id = 0
        self._ping_acked: trio.Event | None = None

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def is_established(self) -> bool:
        return self.event_started.is_set() and not self.event_closed.is_set()

    @property
    def is_closed(self) -> bool:
        return self.event_closed.is_set()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self.secured_conn.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self.secured_conn.get_connection_type()

    def get_remote_address(self) -> tuple[str, int] | None:
        getter = getattr(self.secured_conn, "get_remote_address", None)
        return getter() if getter is not None else None

    async def start(self) -> None:
        """Reads and dispatches frames until the connection ends (or the keepalive
        or a failed write ends it), then closes it."""
        self.event_started.set()
        error = GO_AWAY_NORMAL
        self._heard = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._keepalive)
                error = await self._read()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            await self._shutdown(error)

    async def _read(self) -> int:
        """The read loop; returns the GO_AWAY code the connection ends with."""
        try:
            await self._read_loop()
        except ProtocolError as exc:
            log.debug("yamux: %s broke the protocol: %s", self.peer_id, exc)
            return GO_AWAY_PROTOCOL_ERROR
        except Exception as exc:  # a bad MAC, a dead socket: this connection ends
            log.debug("yamux: connection to %s ended: %s", self.peer_id, exc)
        return GO_AWAY_NORMAL

    def _break(self, reason: str) -> None:
        """Nothing more can be sent: every later write fails with ``reason``, and the
        session ends (start() closes it)."""
        if self._broken is None:
            self._broken = reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- keepalive

    async def _keepalive(self) -> None:
        """Pings the peer once it was silent for KEEPALIVE_INTERVAL; ends the session
        when a ping is not answered within KEEPALIVE_TIMEOUT. Runs as long as the
        session, waking once per interval at most."""
        while True:
            quiet_until = self._heard + KEEPALIVE_INTERVAL
            if trio.current_time() < quiet_until:
                await trio.sleep_until(quiet_until)
                continue
            if not await self._ping():
                log.debug("yamux: %s did not answer a ping within %gs: closing",
                          self.peer_id, KEEPALIVE_TIMEOUT)
                self._break(f"keepalive: no answer to a ping within {KEEPALIVE_TIMEOUT:g}s")
                return

    async def _ping(self) -> bool:
        """Sends one PING (SYN, a new opaque value); True once its ACK came back
        within KEEPALIVE_TIMEOUT."""
        self._ping_id = self._ping_id % 0xFFFFFFFF + 1
        acked = self._ping_acked = trio.Event()
        try:
            with trio.move_on_after(KEEPALIVE_TIMEOUT):
                await self._send(_HEADER.pack(VERSION, TYPE_PING, FLAG_SYN, 0, self._ping_id))
                await acked.wait()
        except MuxedConnUnavailable:
            return False
        finally:
            self._ping_acked = None
        return acked.is_set()

    async def close(self, error_code: int = GO_AWAY_NORMAL) -> None:
        await self._shutdown(error_code)

    async def open_stream(self) -> YamuxStream:
        if self.event_closed.is_set() or self._broken is not None:
            raise MuxedConnUnavailable(self._broken or "connection closed")
        if self._remote_go_away:
            raise MuxedConnUnavailable("peer sent GO_AWAY: no new streams")
        if len(self._streams) >= MAX_STREAMS:
            raise MuxedStreamError(f"{MAX_STREAMS} streams open on this connection")
        stream = YamuxStream(self, self._next_id, outbound=True)
        self._next_id += 2
        self._streams[stream.stream_id] = stream
        # SYN goes with the stream's first frame (multistream-select writes at once).
        return stream

    async def accept_stream(self) -> YamuxStream:
        try:
            return await self._accept_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MuxedConnUnavailable("connection closed") from None

    # -- writing

    async def _send(self, data: bytes) -> None:
        """Sends ``data`` (whole frames), batched with frames other tasks queued.

        Not always a scheduling point: when the lock is free and the kernel takes
        everything at once, it returns without yielding (as a plain function would).
        Every caller waits for something else soon (an answer, the next request)."""
        if self._broken is not None:
            raise MuxedConnUnavailable(self._broken)
        self._pending.append(data)
        try:
            self._write_lock.acquire_nowait()
        except trio.WouldBlock:
            try:
                await self._write_lock.acquire()
            except BaseException:
                # Cancelled while queued: ours may still be unsent; take it back.
                with suppress(ValueError):
                    self._pending.remove(data)
                raise
        handed = False
        try:
            while self._pending:
                if self._broken is not None:
                    raise MuxedConnUnavailable(self._broken)
                rest = self._send_batch()
                if rest is not None:
                    if self._nursery is None:
                        # Shielded, so a cancelled writer never leaves half a noise
                        # message out, and bounded.
                        with trio.CancelScope(shield=True):
                            await self._send_rest(rest)
                        continue
                    # The rest, and whatever is queued meanwhile, goes out from a
                    # task of the session, which lets go of the lock: a writer that is
                    # cancelled meanwhile (its walk ended) returns at once, and the
                    # frame still goes out whole, or the connection breaks after
                    # WRITE_TIMEOUT.
                    done = trio.Event()
                    handed = True
                    self._nursery.start_soon(self._drain, rest, done)
                    await done.wait()
                    break
            if self._broken is not None:
                raise MuxedConnUnavailable(self._broken)
        finally:
            if not handed:
                self._write_lock.release()

    def _send_batch(self) -> Any:
        """Hands everything queued to the socket; returns what it could not take."""
        batch, self._pending = self._pending, []
        self._queued_replies = 0
        try:
            return self._io.send_now(b"".join(batch))
        except Exception as exc:
            self._break(f"write failed: {exc}")
            return None

    async def _send_rest(self, rest: Any) -> None:
        """Waits for the socket to take ``rest``, at most WRITE_TIMEOUT."""
        with trio.move_on_after(WRITE_TIMEOUT) as scope:
            try:
                await self._io.send_rest(rest)
            except Exception as exc:
                self._break(f"write failed: {exc}")
        if scope.cancelled_caught:
            self._break(f"write not done within {WRITE_TIMEOUT:g}s")

    async def _drain(self, rest: Any, done: trio.Event) -> None:
        """Finishes a write the socket could not take at once, then sends what was
        queued meanwhile; holds the write lock (handed over by _send) until then."""
        try:
            while rest is not None and self._broken is None:
                await self._send_rest(rest)
                rest = self._send_batch() if self._pending and self._broken is None else None
        finally:
            self._write_lock.release()
            done.set()

    def _send_soon(self, frames: list[bytes]) -> None:
        """Queues ``frames`` (that nobody waits for: ping ACKs, refusals) without
        waiting: they go out with the batch of the task writing now, if one is, else
        from a task of its own. The reader uses it, so that a writer stuck on a full
        socket does not stop the connection from being read. Frames past
        MAX_QUEUED_REPLIES queued bytes are dropped."""
        if self._broken is not None:
            return
        room = (MAX_QUEUED_REPLIES - self._queued_replies) // HEADER_SIZE
        if room < len(frames):
            log.debug("yamux: %s sends faster than it reads: replies dropped", self.peer_id)
            frames = frames[:max(room, 0)]
            if not frames:
                return
        data = b"".join(frames)
        self._queued_replies += len(data)
        self._pending.append(data)
        # A holder of the write lock sends everything queued before it lets go.
        if self._write_lock.value and not self._flushing and self._nursery is not None:
            self._flushing = True
            self._nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        try:
            if self._pending:
                # _send queues what it is given behind what waits: the last queued
                # frame, taken out and given back, keeps its place.
                with suppress(MuxedConnUnavailable):
                    await self._send(self._pending.pop())
        finally:
            self._flushing = False

    # -- reading

    async def _read_loop(self) -> None:
        buf = bytearray()
        streams = self._streams
        while True:
            chunk = await self._io.receive()
            if not chunk:
                return
            self._heard = trio.current_time()
            buf += chunk
            pos = 0
            replies: list[bytes] = []
            size = len(buf)
            while size - pos >= HEADER_SIZE:
                version, kind, flags, stream_id, length = _HEADER.unpack_from(buf, pos)
                if version != VERSION:
                    raise ProtocolError(f"version {version}")
                if kind == TYPE_DATA:
                    if length > RECEIVE_WINDOW:
                        raise ProtocolError(f"DATA frame of {length} bytes")
                    end = pos + HEADER_SIZE + length
                    if size < end:
                        break
                    data = bytes(buf[pos + HEADER_SIZE:end])
                    pos = end
                elif kind <= TYPE_GO_AWAY:
                    data = b""
                    pos += HEADER_SIZE
                else:
                    raise ProtocolError(f"frame type {kind}")
                if kind == TYPE_PING:
                    if flags & FLAG_SYN:
                        replies.append(_HEADER.pack(VERSION, TYPE_PING, FLAG_ACK, 0, length))
                    elif (flags & FLAG_ACK and length == self._ping_id
                          and self._ping_acked is not None):
                        self._ping_acked.set()
                    continue
                if kind == TYPE_GO_AWAY:
                    self._remote_go_away = True
                    continue
                stream = streams.get(stream_id)
                if flags & FLAG_SYN:
                    if stream is not None:
                        raise ProtocolError(f"SYN for open stream {stream_id}")
                    if flags & FLAG_RST:
                        continue  # opened and reset at once: nothing to deliver
                    stream = self._incoming(stream_id, replies)
                    if stream is None:
                        continue
                elif stream is None:
                    continue  # a stream we already forgot (reset, or both sides closed)
                if kind == TYPE_DATA:
                    if data:
                        stream._on_data(data)
                elif length:
                    stream._on_window(length)
                if flags & FLAG_RST:
                    stream._mark_reset(keep_unread=True)
                elif flags & FLAG_FIN:
                    stream._on_fin()
            del buf[:pos]
            if replies:
                self._send_soon(replies)

    def _incoming(self, stream_id: int, replies: list[bytes]) -> YamuxStream | None:
        refuse = _HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)
        if self._broken is not None or len(self._streams) >= MAX_STREAMS:
            replies.append(refuse)
            return None
        stream = YamuxStream(self, stream_id, outbound=False)
        try:
            self._accept_send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            replies.append(refuse)
            return None
        self._streams[stream_id] = stream
        return stream

    def _forget(self, stream: YamuxStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]

    # -- the end

    async def _shutdown(self, error_code: int) -> None:
        """Ends the session once: GO_AWAY, every stream reset, the socket closed (all
        shielded, within SHUTDOWN_TIMEOUT), then the host's hook (not shielded: when
        the host itself is being cancelled, it has nothing left to tell)."""
        if self.event_closed.is_set():
            return
        self.event_closed.set()
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + SHUTDOWN_TIMEOUT
            if self._broken is None:
                with suppress(Exception):
                    await self._send(_HEADER.pack(VERSION, TYPE_GO_AWAY, 0, 0, error_code))
                self._broken = "connection closed"
            # After a protocol error nothing the peer sent is trusted.
            for stream in list(self._streams.values()):
                stream._mark_reset(keep_unread=error_code == GO_AWAY_NORMAL)
            self._accept_send.close()
            with suppress(Exception):
                await self.secured_conn.close()
        if self.on_close is not None:
            try:
                await self.on_close()
            except Exception as exc:
                log.debug("yamux: on_close for %s failed: %s", self.peer_id, exc)
