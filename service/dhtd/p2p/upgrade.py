"""Connection set-up: a TCP socket made into a noise-secured yamux session.

This takes the place of py-libp2p's ``TransportUpgrader`` for TCP connections.
py-libp2p negotiated with multistream-select one message per write and read, ran
the Noise handshake through three layers of the noise library and signed its
static key again on every connection: about 21 ms of CPU per connection, both
sides, against about 2 ms for go-libp2p. In a mass start of 102 nodes every node
connects to nearly every other, and connection set-up was half of all the CPU.

The wire is the same as go-libp2p's and js-libp2p's (libp2p specs
``connections/``, ``noise/``, ``connections/inlined-muxer-negotiation.md``):

1. multistream-select 1.0 for ``/noise``. As the dialler, the header and the
   proposal go out in one write; as the listener, the header and the answer go out
   in one write when the dialler's proposal has already arrived.
2. ``Noise_XX_25519_ChaChaPoly_SHA256``, empty prologue, every handshake message
   behind a 2-byte length. The libp2p payload carries the identity key and its
   signature over ``noise-libp2p-static-key:`` + the static key. The static key is
   one per host and signed once (py-libp2p also keeps one per host; go-libp2p makes
   one per connection: either is within the spec, and forward secrecy comes from
   the ephemeral keys).
3. The muxer: when both payloads list stream muxers, the first of the dialler's
   that both support (only ``/yamux/1.0.0`` here), with no further round trip;
   otherwise multistream-select for ``/yamux/1.0.0`` inside the secured channel,
   pipelined the same way.

Promises:
- The whole set-up ends within HANDSHAKE_TIMEOUT, or the socket is closed.
- What the peer sends is bounded: multistream-select as dhtd.p2p.multistream
  bounds it; a noise message is at most 65535 bytes by its framing; a list of
  muxers is read up to MAX_MUXERS.
- The connection is refused (:class:`HandshakeFailure`, the socket closed) when a
  message fails to decrypt, the identity signature is wrong, the key is not one
  libp2p knows, the dialled peer ID is not the one that answered, or the peers
  share no protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from libp2p.abc import IMuxedConn, IRawConnection, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.base_session import BaseSession
from libp2p.security.noise.pb import noise_pb2
from libp2p.transport.exceptions import MuxerUpgradeFailure, SecurityUpgradeFailure
from libp2p.transport.upgrader import TransportUpgrader
from multiaddr import Multiaddr

from dhtd.p2p import multistream
from dhtd.p2p.multistream import Buffered
from dhtd.p2p.yamux import NOISE_MAX_PLAINTEXT, Yamux, noise_cipher
from dhtd.p2p.yamux import PROTOCOL_ID as YAMUX

log = logging.getLogger("dhtd.p2p.upgrade")

NOISE = "/noise"

# Ours: the whole set-up (negotiations and handshake) of one connection. go-libp2p
# allows 15 s for the security handshake alone (its transport's
# DefaultNegotiateTimeout is 60 s); a set-up on a WAN takes a few round trips.
HANDSHAKE_TIMEOUT = 10.0
# Ours: stream muxers read from a peer's handshake payload (a peer offers two).
MAX_MUXERS = 8
# Bytes asked of the socket per receive during the set-up.
RECEIVE_CHUNK = 64 * 1024

# Noise spec: the protocol name is exactly HASHLEN (32) bytes, so it is h itself.
_PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
# libp2p noise spec: what the identity key signs.
_STATIC_KEY_PREFIX = b"noise-libp2p-static-key:"
_KEY_LEN = 32
_TAG_LEN = 16

HandshakeFailure = SecurityUpgradeFailure


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


def _hkdf(chaining_key: bytes, material: bytes) -> tuple[bytes, bytes]:
    """Noise spec 4.3, HKDF with two outputs over HMAC-SHA256."""
    temp = hmac.digest(chaining_key, material, "sha256")
    first = hmac.digest(temp, b"\x01", "sha256")
    return first, hmac.digest(temp, first + b"\x02", "sha256")


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class _Symmetric:
    """The Noise SymmetricState (spec 5.2), with ChaChaPoly and SHA-256."""

    def __init__(self) -> None:
        self.h = _PROTOCOL_NAME
        self.ck = _PROTOCOL_NAME
        self.key: ChaCha20Poly1305 | None = None
        self.n = 0
        self.mix_hash(b"")  # the empty prologue

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, private: X25519PrivateKey, public: bytes) -> None:
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:  # a low-order point: the shared secret is zero
            raise HandshakeFailure(f"bad noise key: {exc}") from None
        self.ck, key = _hkdf(self.ck, shared)
        self.key = ChaCha20Poly1305(key)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.key is None:
            out = plaintext
        else:
            out = self.key.encrypt(_nonce(self.n), plaintext, self.h)
            self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.key is None:
            out = ciphertext
        else:
            try:
                out = self.key.decrypt(_nonce(self.n), ciphertext, self.h)
            except InvalidTag:
                raise HandshakeFailure("noise handshake message failed to decrypt") from None
            self.n += 1
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf(self.ck, b"")


class _Link(Buffered):
    """The socket during the set-up: plaintext buffered as it arrives, noise
    transport messages once the handshake is done."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__()
        self.stream = stream
        self.raw = bytearray()  # encrypted bytes not yet decrypted (once secured)
        self.encrypt: Callable[[bytes], bytes] | None = None
        self.decrypt: Callable[[bytes], bytes] | None = None

    async def _receive(self) -> bytes:
        try:
            chunk = await self.stream.receive_some(RECEIVE_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise HandshakeFailure(f"connection broke during the set-up: {exc}") from None
        if not chunk:
            raise HandshakeFailure("connection closed during the set-up")
        return chunk

    async def more(self) -> None:
        """At least one more byte of plaintext."""
        if self.decrypt is None:
            self.plain += await self._receive()
            return
        while True:
            if len(self.raw) >= 2:
                end = 2 + int.from_bytes(self.raw[:2], "big")
                if len(self.raw) >= end:
                    try:
                        self.plain += self.decrypt(bytes(self.raw[2:end]))
                    except InvalidTag:
                        raise HandshakeFailure("noise message failed to decrypt") from None
                    del self.raw[:end]
                    return
            self.raw += await self._receive()

    async def exactly(self, count: int) -> bytes:
        while len(self.plain) < count:
            await self.more()
        out = bytes(self.plain[:count])
        del self.plain[:count]
        return out

    async def noise_message(self) -> bytes:
        return await self.exactly(int.from_bytes(await self.exactly(2), "big"))

    def secure(self, send_key: bytes, receive_key: bytes) -> None:
        """The handshake is done: from here on every byte is a noise transport
        message, including any the peer sent right behind its last handshake
        message (a dialler that chose the muxer in the handshake starts at once)."""
        self.encrypt = noise_cipher(send_key, True)
        self.decrypt = noise_cipher(receive_key, False)
        self.raw, self.plain = self.plain, bytearray()

    def queue(self, data: bytes) -> None:
        """Plaintext to send (sealed once the handshake is done) at the next flush."""
        if self.encrypt is None:
            self.out.append(data)
            return
        for at in range(0, len(data), NOISE_MAX_PLAINTEXT):
            sealed = self.encrypt(data[at:at + NOISE_MAX_PLAINTEXT])
            self.out.append(len(sealed).to_bytes(2, "big") + sealed)

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise HandshakeFailure(f"connection broke during the set-up: {exc}") from None


class NoiseSession(BaseSession):
    """A finished noise handshake over TCP: who the peer is, and the two cipher
    directions, for dhtd's yamux (:meth:`dhtd.p2p.yamux.Yamux`) to read and write
    the socket with. ``read``/``write`` serve anything else (py-libp2p's own code
    paths), through the same ciphers."""

    def __init__(self, *, raw: RawConnection, link: _Link, local_peer: ID, local_key: Any,
                 remote_peer: ID, remote_key: Any, is_initiator: bool, muxer: str | None
                 ) -> None:
        super().__init__(local_peer=local_peer, local_private_key=local_key,
                         remote_peer=remote_peer, remote_permanent_pubkey=remote_key,
                         is_initiator=is_initiator)
        self.raw = raw
        self.link = link
        self.socket = link.stream
        # The muxer chosen inside the handshake, or None (negotiate it next).
        self.early_muxer = muxer
        self.negotiated_security_protocol = NOISE
        self._write_lock = trio.Lock()

    def take(self) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes], bytes, bytes]:
        """(encrypt, decrypt, plaintext already read, ciphertext already read): the
        connection, handed to its muxer, which reads and writes it from now on."""
        link = self.link
        assert link.encrypt is not None and link.decrypt is not None
        ahead, raw = bytes(link.plain), bytes(link.raw)
        link.plain.clear()
        link.raw.clear()
        return link.encrypt, link.decrypt, ahead, raw

    async def read(self, n: int | None = None) -> bytes:
        link = self.link
        if not link.plain:
            try:
                await link.more()
            except HandshakeFailure:
                return b""
        count = len(link.plain) if n is None or n < 0 else min(n, len(link.plain))
        return await link.exactly(count)

    async def write(self, data: bytes) -> None:
        async with self._write_lock:  # messages seal and go out in nonce order
            self.link.queue(data)
            await self.link.flush()

    async def close(self) -> None:
        await self.raw.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.raw.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self.raw.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self.raw.get_connection_type()


class Upgrader:
    """py-libp2p's swarm calls this to secure and multiplex each connection (see the
    module doc). Connections that are not plain TCP sockets, which dhtd does not
    listen on, go to py-libp2p's own ``fallback``."""

    def __init__(self, key_pair: KeyPair, fallback: TransportUpgrader) -> None:
        self._pair = key_pair
        self._peer = ID.from_pubkey(key_pair.public_key)
        self._fallback = fallback
        # The muxers py-libp2p is set up with, in its order of preference; yamux is
        # dhtd's (dhtd.p2p.yamux), any other (mplex, for peers without yamux) runs
        # py-libp2p's class over the session's read and write.
        self._muxers: dict[str, Any] = {
            str(p): cls for p, cls in fallback.muxer_multistream.transports.items()}
        self._muxers[YAMUX] = Yamux
        self.muxers = sorted(self._muxers, key=lambda m: m != YAMUX)
        # Whether the handshake payload lists the muxers (tests turn it off to act as
        # a peer without inlined muxer negotiation).
        self.offer_muxers = True
        # One static key per host, signed once.
        self._static = X25519PrivateKey.generate()
        self._payload = self.payload()

    def payload(self) -> bytes:
        """This host's handshake payload: its identity key, the key's signature over
        the static noise key, and the muxers it offers."""
        static_public = _raw_public(self._static)
        return noise_pb2.NoiseHandshakePayload(
            identity_key=self._pair.public_key.serialize(),
            identity_sig=self._pair.private_key.sign(_STATIC_KEY_PREFIX + static_public),
            extensions=noise_pb2.NoiseExtensions(stream_muxers=self._offered()),
        ).SerializeToString()

    def _offered(self) -> list[str]:
        return self.muxers if self.offer_muxers else []

    async def upgrade_security(self, raw_conn: IRawConnection, is_initiator: bool,
                               peer_id: ID | None = None) -> ISecureConn:
        stream = _tcp_socket(raw_conn)
        if stream is None:
            return await self._fallback.upgrade_security(raw_conn, is_initiator, peer_id)
        assert isinstance(raw_conn, RawConnection)
        if is_initiator and peer_id is None:
            raise ValueError("peer_id must be provided for outbound connection")
        link = _Link(stream)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                if is_initiator:
                    await multistream.select(link, (NOISE,))
                    session = await self._dial(raw_conn, link, peer_id)
                else:
                    await multistream.handle(link, (NOISE,))
                    session = await self._answer(raw_conn, link)
        except multistream.NegotiationError as exc:
            await raw_conn.close()
            raise HandshakeFailure(str(exc)) from None
        except trio.TooSlowError:
            await raw_conn.close()
            raise HandshakeFailure(
                f"security handshake not done within {HANDSHAKE_TIMEOUT:g}s") from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await raw_conn.close()
            raise
        return session

    async def upgrade_connection(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        if not isinstance(conn, NoiseSession):
            return await self._fallback.upgrade_connection(conn, peer_id)
        muxer = conn.early_muxer
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                if muxer is None and conn.is_initiator:
                    muxer = await multistream.select(conn.link, self.muxers, first_sent=True)
                elif muxer is None:
                    muxer = await multistream.handle(conn.link, self.muxers)
        except (trio.TooSlowError, HandshakeFailure, multistream.NegotiationError) as exc:
            with trio.CancelScope(shield=True):
                await conn.close()
            raise MuxerUpgradeFailure(f"muxer negotiation failed: {exc}") from None
        if muxer == YAMUX:
            muxed: IMuxedConn = Yamux(conn, peer_id, is_initiator=conn.is_initiator)
        else:
            muxed = self._muxers[muxer](conn, peer_id)
        muxed.negotiated_muxer_protocol = muxer  # type: ignore[attr-defined]
        muxed.negotiated_security_protocol = NOISE  # type: ignore[attr-defined]
        return muxed

    # -- Noise XX

    async def _dial(self, raw: RawConnection, link: _Link, expected: ID | None
                    ) -> NoiseSession:
        state = _Symmetric()
        ephemeral = X25519PrivateKey.generate()
        e_public = _raw_public(ephemeral)
        state.mix_hash(e_public)
        message = e_public + state.encrypt_and_hash(b"")
        link.queue(len(message).to_bytes(2, "big") + message)
        await link.flush()
        # <- e, ee, s, es, payload
        reply = await link.noise_message()
        if len(reply) < _KEY_LEN + _KEY_LEN + _TAG_LEN:
            raise HandshakeFailure("noise message 2 is too short")
        remote_e = reply[:_KEY_LEN]
        state.mix_hash(remote_e)
        state.mix_key(ephemeral, remote_e)
        remote_s = state.decrypt_and_hash(reply[_KEY_LEN:2 * _KEY_LEN + _TAG_LEN])
        state.mix_key(ephemeral, remote_s)
        remote = self._identify(state.decrypt_and_hash(reply[2 * _KEY_LEN + _TAG_LEN:]),
                                remote_s)
        peer, key, theirs = remote
        if expected is not None and peer != expected:
            raise HandshakeFailure(f"dialled {expected}, but {peer} answered")
        # -> s, se, payload
        message = state.encrypt_and_hash(_raw_public(self._static))
        state.mix_key(self._static, remote_e)
        message += state.encrypt_and_hash(self._payload)
        link.queue(len(message).to_bytes(2, "big") + message)
        send, receive = state.split()
        link.secure(send, receive)
        muxer = self._muxer(self._offered(), theirs)
        if muxer is None:
            # multistream-select for the muxer (upgrade_connection), its header and
            # first proposal sent with message 3
            link.queue_messages(multistream.HEADER, self.muxers[0])
        await link.flush()
        return NoiseSession(raw=raw, link=link, local_peer=self._peer,
                            local_key=self._pair.private_key, remote_peer=peer,
                            remote_key=key, is_initiator=True, muxer=muxer)

    async def _answer(self, raw: RawConnection, link: _Link) -> NoiseSession:
        state = _Symmetric()
        # -> e, payload
        first = await link.noise_message()
        if len(first) < _KEY_LEN:
            raise HandshakeFailure("noise message 1 is too short")
        remote_e = first[:_KEY_LEN]
        state.mix_hash(remote_e)
        state.decrypt_and_hash(first[_KEY_LEN:])
        # <- e, ee, s, es, payload
        ephemeral = X25519PrivateKey.generate()
        e_public = _raw_public(ephemeral)
        state.mix_hash(e_public)
        state.mix_key(ephemeral, remote_e)
        message = e_public + state.encrypt_and_hash(_raw_public(self._static))
        state.mix_key(self._static, remote_e)
        message += state.encrypt_and_hash(self._payload)
        link.queue(len(message).to_bytes(2, "big") + message)
        await link.flush()
        # -> s, se, payload
        third = await link.noise_message()
        if len(third) < _KEY_LEN + _TAG_LEN:
            raise HandshakeFailure("noise message 3 is too short")
        remote_s = state.decrypt_and_hash(third[:_KEY_LEN + _TAG_LEN])
        state.mix_key(ephemeral, remote_s)
        peer, key, theirs = self._identify(
            state.decrypt_and_hash(third[_KEY_LEN + _TAG_LEN:]), remote_s)
        receive, send = state.split()
        link.secure(send, receive)
        muxer = self._muxer(theirs, self._offered())
        return NoiseSession(raw=raw, link=link, local_peer=self._peer,
                            local_key=self._pair.private_key, remote_peer=peer,
                            remote_key=key, is_initiator=False, muxer=muxer)

    @staticmethod
    def _identify(payload: bytes, remote_static: bytes) -> tuple[ID, Any, list[str]]:
        """The peer the handshake payload proves, its key, and its stream muxers."""
        try:
            message = noise_pb2.NoiseHandshakePayload.FromString(payload)
            key = deserialize_public_key(message.identity_key)
        except Exception as exc:
            raise HandshakeFailure(f"bad noise handshake payload: {exc}") from None
        try:
            valid = key.verify(_STATIC_KEY_PREFIX + remote_static, message.identity_sig)
        except Exception:
            valid = False
        if not valid:
            raise HandshakeFailure("the peer's identity does not sign its noise key")
        muxers = list(message.extensions.stream_muxers) if message.HasField(
            "extensions") else []
        return ID.from_pubkey(key), key, muxers[:MAX_MUXERS]

    def _muxer(self, dialler: list[str], listener: list[str]) -> str | None:
        """Inlined muxer negotiation: the dialler's first that both support; None
        when either side listed none (then multistream-select decides)."""
        if not dialler or not listener:
            return None
        for muxer in dialler:
            if muxer in listener and muxer in self._muxers:
                return muxer
        raise HandshakeFailure(f"no shared stream muxer in {dialler[:4]} and {listener[:4]}")


def _tcp_socket(raw: IRawConnection) -> trio.SocketStream | None:
    if isinstance(raw, RawConnection) and isinstance(raw.stream, TrioTCPStream):
        stream = raw.stream.stream
        if isinstance(stream, trio.SocketStream):
            return stream
    return None
