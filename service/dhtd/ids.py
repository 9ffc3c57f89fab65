"""Identifiers of the DHT: multibase, multihash, CIDs, peer IDs, record keys, Kademlia keys.

Everything here is pure, synchronous and stdlib-only, so it can be used from any
thread or task and tested without a network.

Promises:

* The low-level codecs (:func:`b58encode`, :func:`b58decode`, :func:`encode_uvarint`,
  :func:`decode_uvarint`, :func:`multibase_decode`, :func:`decode_multihash`, ...)
  raise :class:`ValueError` with a short, specific reason on bad input and never
  anything else.
* The request-facing parsers (:func:`parse_cid`, :func:`parse_peer_id`,
  :func:`parse_record_key`) raise only :class:`dhtd.errors.InvalidArgument`, whose
  message is ``"<field>: <reason>"``, so the gRPC edge can pass it to the caller.
  A reason quotes at most :data:`dhtd.errors.ECHO_CHARS` characters of the input.
* Encoders produce the canonical text: decoding what they produce gives back the
  same bytes, and the decoders accept every text the encoders produce.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from dhtd.errors import InvalidArgument, excerpt

__all__ = [
    "DAG_PB",
    "IDENTITY",
    "KAD_KEY_BYTES",
    "LIBP2P_KEY",
    "MAX_IDENTITY_PEER_DIGEST",
    "MAX_ID_TEXT_CHARS",
    "MAX_KEY_BYTES",
    "RAW",
    "SHA2_256",
    "SHA2_256_LEN",
    "Cid",
    "b58decode",
    "b58encode",
    "common_prefix_len",
    "decode_multihash",
    "decode_uvarint",
    "encode_uvarint",
    "is_valid_multihash",
    "kad_key",
    "multibase_decode",
    "multibase_encode_base32",
    "multibase_encode_base36",
    "parse_cid",
    "parse_peer_id",
    "parse_record_key",
    "peer_id_to_cid",
    "peer_id_to_str",
    "xor_distance",
]

# --- constants -------------------------------------------------------------------------------

# Multihash function codes (multiformats multicodec table).
IDENTITY: Final = 0x00  # identity: the "digest" is the data itself (inlined small keys)
SHA2_256: Final = 0x12  # sha2-256: the digest is always 32 bytes
SHA2_256_LEN: Final = 32

# CID content codecs (multicodec table).
DAG_PB: Final = 0x70  # dag-pb: the implied codec of every CIDv0
RAW: Final = 0x55  # raw: bytes as they are
LIBP2P_KEY: Final = 0x72  # libp2p-key: a CIDv1 naming a peer ID

# libp2p peer-id spec: public keys whose protobuf encoding is at most 42 bytes are
# inlined with the identity multihash; longer ones are hashed with sha2-256.
MAX_IDENTITY_PEER_DIGEST: Final = 42

# Longest record key we accept, in bytes. Real keys are far shorter (/pk/ + a 34-byte
# multihash, /ipns/ + a 38-byte peer ID); the cap bounds memory and log lines.
MAX_KEY_BYTES: Final = 512

# Longest CID or peer-ID text we try to decode. Any real CID or peer ID fits many times
# over; the cap matters because base58/base36 decoding is quadratic in the length.
MAX_ID_TEXT_CHARS: Final = 1024

# Kademlia keys are SHA-256 digests.
KAD_KEY_BYTES: Final = 32

# Multiformats unsigned varints are at most 9 bytes (63 bits of value).
_MAX_UVARINT_BYTES: Final = 9

_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B36_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_B32_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"
_B32HEX_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuv"
_B16_ALPHABET: Final = "0123456789abcdef"
_B64_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64URL_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

_NAMESPACE_RE: Final = re.compile(rb"[A-Za-z0-9._-]+")
_KEY_SHAPE: Final = "must start with '/<namespace>/', e.g. /pk/<multihash>"


# --- base-N with big-integer arithmetic (base58btc, base36) ---------------------------------


def _basex_encode(data: bytes, alphabet: str) -> str:
    """Encode ``data`` in the positional base ``len(alphabet)``.

    Each leading zero byte becomes one leading ``alphabet[0]``; the rest is the
    big-endian integer value of the remaining bytes, without leading zero digits.
    """
    base = len(alphabet)
    zeros = len(data) - len(data.lstrip(b"\x00"))
    value = int.from_bytes(data[zeros:], "big")
    digits: list[str] = []
    while value:
        value, rem = divmod(value, base)
        digits.append(alphabet[rem])
    return alphabet[0] * zeros + "".join(reversed(digits))


def _basex_decode(text: str, alphabet: str, name: str) -> bytes:
    """Inverse of :func:`_basex_encode`; ValueError naming ``name`` on a bad character."""
    base = len(alphabet)
    zeros = len(text) - len(text.lstrip(alphabet[0]))
    value = 0
    for pos, ch in enumerate(text):
        digit = alphabet.find(ch)
        if digit < 0:
            raise ValueError(f"invalid {name} character {ch!r} at position {pos}")
        value = value * base + digit
    return b"\x00" * zeros + value.to_bytes((value.bit_length() + 7) // 8, "big")


def b58encode(data: bytes) -> str:
    """Encode ``data`` as base58btc (bitcoin alphabet), without a multibase prefix.

    Leading zero bytes become leading ``'1'`` characters; ``b58encode(b"") == ""``.
    :func:`b58decode` inverts it exactly.
    """
    return _basex_encode(data, _B58_ALPHABET)


def b58decode(text: str) -> bytes:
    """Decode base58btc text (no multibase prefix) to bytes.

    Leading ``'1'`` characters become leading zero bytes. Raises ValueError on any
    character outside the bitcoin alphabet (including whitespace, ``0``, ``O``, ``I``, ``l``).
    """
    return _basex_decode(text, _B58_ALPHABET, "base58btc")


def _b36encode(data: bytes) -> str:
    """Lowercase base36 without a prefix; leading zero bytes become leading ``'0'``."""
    return _basex_encode(data, _B36_ALPHABET)


def multibase_encode_base36(data: bytes) -> str:
    """Return ``'k'`` + lowercase base36 of ``data`` (the form used for libp2p-key CIDs)."""
    return "k" + _b36encode(data)


# --- RFC 4648 bit-packing codecs (base16, base32, base32hex, base64, base64url) -------------


def _rfc4648_decode(payload: str, alphabet: str, bits: int, padded: bool, name: str) -> bytes:
    """Decode an RFC 4648 payload whose characters each carry ``bits`` bits.

    With ``padded`` the text must be whole groups with the right number of ``'='``;
    without it, ``'='`` is rejected. A length that cannot come from whole bytes is
    rejected. Unused trailing bits are ignored, as Go's and Python's decoders do.
    """
    group = {4: 2, 5: 8, 6: 4}[bits]  # characters per padded group
    body = payload
    if padded:
        if len(payload) % group:
            raise ValueError(f"invalid {name}: length {len(payload)} is not a multiple of {group}")
        body = payload.rstrip("=")
        if len(payload) - len(body) != (-len(body)) % group:
            raise ValueError(f"invalid {name}: wrong amount of '=' padding")
    out = bytearray()
    acc = 0
    nbits = 0
    for pos, ch in enumerate(body):
        digit = alphabet.find(ch)
        if digit < 0:
            raise ValueError(f"invalid {name} character {ch!r} at position {pos}")
        acc = (acc << bits) | digit
        nbits += bits
        if nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
            acc &= (1 << nbits) - 1
    if nbits >= bits:
        raise ValueError(f"invalid {name}: length {len(body)} does not encode whole bytes")
    return bytes(out)


# Unpadded base32 lengths (mod 8) that cannot come from whole bytes, and the text
# of unpadded lowercase base32: multibase_decode's fast path.
_B32_PARTIAL: Final = frozenset({1, 3, 6})
_B32_TEXT: Final = re.compile("[a-z2-7]*")
_B32_AS_INT: Final = str.maketrans(_B32_ALPHABET, "0123456789abcdefghijklmnopqrstuv")

# prefix -> (name, alphabet, bits per character, padded)
_RFC4648_BASES: Final[dict[str, tuple[str, str, int, bool]]] = {
    "f": ("base16", _B16_ALPHABET, 4, False),
    "F": ("base16upper", _B16_ALPHABET.upper(), 4, False),
    "b": ("base32", _B32_ALPHABET, 5, False),
    "B": ("base32upper", _B32_ALPHABET.upper(), 5, False),
    "c": ("base32pad", _B32_ALPHABET, 5, True),
    "C": ("base32padupper", _B32_ALPHABET.upper(), 5, True),
    "v": ("base32hex", _B32HEX_ALPHABET, 5, False),
    "V": ("base32hexupper", _B32HEX_ALPHABET.upper(), 5, False),
    "t": ("base32hexpad", _B32HEX_ALPHABET, 5, True),
    "T": ("base32hexpadupper", _B32HEX_ALPHABET.upper(), 5, True),
    "m": ("base64", _B64_ALPHABET, 6, False),
    "M": ("base64pad", _B64_ALPHABET, 6, True),
    "u": ("base64url", _B64URL_ALPHABET, 6, False),
    "U": ("base64urlpad", _B64URL_ALPHABET, 6, True),
}


def multibase_encode_base32(data: bytes) -> str:
    """Return ``'b'`` + lowercase, unpadded RFC 4648 base32 of ``data`` (CIDv1's canonical text)."""
    return "b" + base64.b32encode(data).decode("ascii").rstrip("=").lower()


def multibase_decode(text: str) -> bytes:
    """Decode multibase ``text`` (prefix character + payload) to bytes.

    Supported prefixes: ``z`` base58btc; ``f``/``F`` base16; ``b``/``B`` base32;
    ``c``/``C`` base32pad; ``v``/``V`` base32hex; ``t``/``T`` base32hexpad; ``k``/``K``
    base36; ``m`` base64; ``M`` base64pad; ``u`` base64url; ``U`` base64urlpad. A
    lowercase prefix requires a lowercase payload and an uppercase one an uppercase
    payload. Raises ValueError naming the unknown prefix or the payload's defect.
    """
    if not text:
        raise ValueError("multibase text is empty")
    prefix, payload = text[0], text[1:]
    if prefix == "z":
        return _basex_decode(payload, _B58_ALPHABET, "base58btc")
    if prefix == "k":
        return _basex_decode(payload, _B36_ALPHABET, "base36")
    if prefix == "K":
        return _basex_decode(payload, _B36_ALPHABET.upper(), "base36upper")
    if prefix == "b" and len(payload) % 8 not in _B32_PARTIAL and _B32_TEXT.fullmatch(payload):
        # The usual CIDv1 text, decoded as one integer (the loop below, and
        # base64.b32decode, cost about 20 us a CID): the same bytes for every
        # payload that gets here (tests/unit/test_ids.py checks it against it).
        bits = 5 * len(payload)
        value = int(payload.translate(_B32_AS_INT), 32) if payload else 0
        return (value >> (bits % 8)).to_bytes(bits // 8, "big")
    spec = _RFC4648_BASES.get(prefix)
    if spec is None:
        raise ValueError(f"unknown multibase prefix {prefix!r}")
    name, alphabet, bits, padded = spec
    return _rfc4648_decode(payload, alphabet, bits, padded, name)


# --- unsigned varint ---------------------------------------------------------------------------


def encode_uvarint(n: int) -> bytes:
    """Encode ``n`` as a multiformats unsigned varint (LEB128, minimal, at most 9 bytes).

    Raises ValueError if ``n`` is negative or does not fit in 63 bits.
    """
    if n < 0:
        raise ValueError(f"varint value {n} is negative")
    if n >= 1 << (7 * _MAX_UVARINT_BYTES):
        raise ValueError(f"varint value {n} needs more than {_MAX_UVARINT_BYTES} bytes")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode the unsigned varint starting at ``data[offset]``.

    Returns ``(value, offset just past the varint)``. Raises ValueError if the
    varint is truncated, longer than 9 bytes, or not minimally encoded (the
    multiformats spec forbids redundant trailing ``0x00`` groups), or if ``offset``
    is negative.
    """
    if offset < 0:
        raise ValueError(f"varint offset {offset} is negative")
    value = 0
    for i in range(_MAX_UVARINT_BYTES):
        pos = offset + i
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise ValueError("varint is not minimally encoded")
            return value, pos + 1
    raise ValueError(f"varint is longer than {_MAX_UVARINT_BYTES} bytes")


# --- multihash -------------------------------------------------------------------------------


def decode_multihash(mh: bytes) -> tuple[int, bytes]:
    """Split a binary multihash into ``(function code, digest)``.

    Any function code is accepted, but the declared digest length must equal the
    number of bytes that follow exactly, and a sha2-256 digest must be 32 bytes.
    Raises ValueError otherwise (reasons start with ``"multihash"``).
    """
    if not mh:
        raise ValueError("multihash is empty")
    try:
        code, pos = decode_uvarint(mh)
        length, pos = decode_uvarint(mh, pos)
    except ValueError as exc:
        raise ValueError(f"multihash header: {exc}") from None
    digest = mh[pos:]
    if len(digest) != length:
        raise ValueError(
            f"multihash length mismatch: declares {length} digest bytes, has {len(digest)}"
        )
    if code == SHA2_256 and length != SHA2_256_LEN:
        raise ValueError(f"multihash sha2-256 digest is {length} bytes, not {SHA2_256_LEN}")
    return code, digest


def is_valid_multihash(mh: bytes) -> bool:
    """Return True exactly when :func:`decode_multihash` would accept ``mh``."""
    try:
        decode_multihash(mh)
    except ValueError:
        return False
    return True


def is_peer_id(mh: bytes) -> bool:
    """True if ``mh`` is a binary peer ID: sha2-256, or identity of at most 42 bytes."""
    try:
        _check_peer_multihash(mh)
    except ValueError:
        return False
    return True


def _check_peer_multihash(mh: bytes) -> None:
    """ValueError unless ``mh`` is sha2-256 or a non-empty identity multihash of ≤ 42 bytes."""
    code, digest = decode_multihash(mh)
    if code == SHA2_256:
        return
    if code != IDENTITY:
        raise ValueError(
            f"multihash code {code:#04x} is neither sha2-256 (0x12) nor identity (0x00)"
        )
    if not digest:
        raise ValueError("identity multihash has an empty digest")
    if len(digest) > MAX_IDENTITY_PEER_DIGEST:
        raise ValueError(
            f"identity multihash digest is {len(digest)} bytes; "
            f"at most {MAX_IDENTITY_PEER_DIGEST} are inlined"
        )


# --- CIDs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cid:
    """A content identifier: version 0 or 1, content codec, binary multihash.

    Construction validates: the multihash must be well formed; a CIDv0 must have
    codec dag-pb (0x70) and a sha2-256 multihash. ``str(cid)`` is the canonical
    text: base58btc of the multihash for v0, ``'b'`` + base32 of the binary CID for v1.
    """

    version: int
    codec: int
    multihash: bytes

    def __post_init__(self) -> None:
        """Raise ValueError if the fields cannot form a CID."""
        code, _ = decode_multihash(self.multihash)
        if self.version == 0:
            if self.codec != DAG_PB or code != SHA2_256:
                raise ValueError("a CIDv0 must be dag-pb (0x70) with a sha2-256 multihash")
        elif self.version != 1:
            raise ValueError(f"unsupported CID version {self.version}")
        encode_uvarint(self.codec)  # raises ValueError if the codec is out of range

    def to_bytes(self) -> bytes:
        """Binary form: the bare multihash for v0; varint 1, varint codec, multihash for v1."""
        if self.version == 0:
            return self.multihash
        return encode_uvarint(1) + encode_uvarint(self.codec) + self.multihash

    def __str__(self) -> str:
        """Canonical text: ``Qm...`` base58btc for v0, ``b...`` base32 for v1."""
        if self.version == 0:
            return b58encode(self.multihash)
        return multibase_encode_base32(self.to_bytes())


def _cid_from_text(text: str) -> Cid:
    """Parse stripped, non-empty CID text; ValueError with the reason on failure."""
    if text.startswith("Qm"):
        if len(text) != 46:
            raise ValueError(f"a CIDv0 (Qm...) is 46 characters, this is {len(text)}")
        mh = b58decode(text)
        if len(mh) != 2 + SHA2_256_LEN or mh[0] != SHA2_256 or mh[1] != SHA2_256_LEN:
            raise ValueError("a CIDv0 must be a sha2-256 multihash")
        return Cid(0, DAG_PB, mh)
    data = multibase_decode(text)
    if not data:
        raise ValueError("empty multibase payload")
    if data[0] == SHA2_256 and len(data) > 1 and data[1] == SHA2_256_LEN:
        raise ValueError("a CIDv0 must be written in base58btc without a prefix (Qm...)")
    version, pos = decode_uvarint(data)
    if version == 0:
        raise ValueError("CID version 0 is not valid in binary form")
    if version != 1:
        raise ValueError(f"unsupported CID version {version}")
    codec, pos = decode_uvarint(data, pos)
    return Cid(1, codec, data[pos:])


def strip_and_bound(text: str, field: str, limit: int = MAX_ID_TEXT_CHARS) -> str:
    """Strip whitespace; InvalidArgument if empty or longer than ``limit`` characters."""
    text = text.strip()
    if not text:
        raise InvalidArgument(field, "is empty")
    if len(text) > limit:
        raise InvalidArgument(field, f"is {len(text)} characters long; at most {limit} allowed")
    return text


def parse_cid(text: str, field: str = "cid") -> Cid:
    """Parse a CID written as text.

    Accepts a CIDv0 (46 base58btc characters starting ``Qm``, a sha2-256 multihash)
    or a multibase-encoded CIDv1 (version 1, codec varint, a multihash filling the
    rest exactly). Surrounding whitespace is ignored. Every failure raises
    ``InvalidArgument(field, reason)``; reasons start with ``"not a CID: "`` unless
    the text is empty or too long.
    """
    text = strip_and_bound(text, field)
    try:
        return _cid_from_text(text)
    except ValueError as exc:
        raise InvalidArgument(field, f"not a CID: {exc}") from None


# --- peer IDs ------------------------------------------------------------------------------


def parse_peer_id(text: str, field: str = "peer_id") -> bytes:
    """Parse a libp2p peer ID written as text and return its binary multihash.

    Accepts the legacy base58btc form (``Qm...`` sha2-256, ``1...`` identity, e.g.
    ``12D3KooW...`` for ed25519 keys) or a CIDv1 in any supported multibase
    (e.g. ``k51...``, ``bafz...``) whose codec is libp2p-key (0x72). The multihash
    must be sha2-256 or identity with a 1..42-byte digest. Surrounding whitespace is
    ignored. Every failure raises ``InvalidArgument(field, reason)``.
    """
    text = strip_and_bound(text, field)
    if text[0] in "Q1":
        try:
            mh = b58decode(text)
        except ValueError as exc:
            raise InvalidArgument(field, f"not a peer ID: {exc}") from None
    else:
        try:
            cid = _cid_from_text(text)
        except ValueError as exc:
            raise InvalidArgument(field, f"not a peer ID or CID: {exc}") from None
        if cid.codec != LIBP2P_KEY:
            raise InvalidArgument(
                field, f"CID codec {cid.codec:#04x} is not libp2p-key ({LIBP2P_KEY:#04x})"
            )
        mh = cid.multihash
    try:
        _check_peer_multihash(mh)
    except ValueError as exc:
        raise InvalidArgument(field, f"not a peer ID: {exc}") from None
    return mh


def peer_id_to_str(mh: bytes) -> str:
    """Return the peer ID's canonical base58btc text (``Qm...`` or ``12D3KooW...``).

    Raises ValueError if ``mh`` is not a peer ID multihash (see :func:`parse_peer_id`).
    """
    _check_peer_multihash(mh)
    return b58encode(mh)


def peer_id_to_cid(mh: bytes) -> str:
    """Return the peer ID as a base36 CIDv1 with codec libp2p-key (``k51...``).

    Raises ValueError if ``mh`` is not a peer ID multihash (see :func:`parse_peer_id`).
    """
    _check_peer_multihash(mh)
    return multibase_encode_base36(Cid(1, LIBP2P_KEY, mh).to_bytes())


# --- record keys ---------------------------------------------------------------------------


def parse_record_key(key: bytes, field: str = "key") -> tuple[str, bytes]:
    """Split a DHT record key ``/<namespace>/<rest>`` into ``(namespace, rest)``.

    The key must be 1..MAX_KEY_BYTES bytes, start with ``/``, have a non-empty ASCII
    namespace matching ``[A-Za-z0-9._-]+`` ended by a second ``/``, and a non-empty
    remainder. The remainder is returned as raw bytes and may be anything (``/pk/``
    keys carry a binary multihash). Every failure raises ``InvalidArgument(field, reason)``.
    """
    if not key:
        raise InvalidArgument(field, "is empty")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgument(field, f"is {len(key)} bytes; at most {MAX_KEY_BYTES} allowed")
    end = key.find(b"/", 1)
    if not key.startswith(b"/") or end < 0:
        raise InvalidArgument(field, _KEY_SHAPE)
    namespace = key[1:end]
    if not namespace:
        raise InvalidArgument(field, f"namespace is empty; {_KEY_SHAPE}")
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidArgument(
            field, f"namespace '{excerpt(namespace)}' must match [A-Za-z0-9._-]+"
        )
    rest = key[end + 1 :]
    if not rest:
        raise InvalidArgument(field, f"has nothing after '/{excerpt(namespace)}/'; {_KEY_SHAPE}")
    return namespace.decode("ascii"), rest


# --- Kademlia distance ---------------------------------------------------------------------


def kad_key(data: bytes) -> bytes:
    """Return the 32-byte Kademlia key of a record key or binary peer ID.

    go-libp2p-kbucket (ConvertKey / ConvertPeerID) places every key and peer ID in
    the keyspace by its SHA-256 digest, so distances here must use the same.
    """
    return hashlib.sha256(data).digest()


def _check_kad_keys(a: bytes, b: bytes) -> None:
    """ValueError unless both are KAD_KEY_BYTES long."""
    if len(a) != KAD_KEY_BYTES or len(b) != KAD_KEY_BYTES:
        raise ValueError(f"Kademlia keys must be {KAD_KEY_BYTES} bytes, got {len(a)} and {len(b)}")


def xor_distance(a: bytes, b: bytes) -> int:
    """XOR distance of two 32-byte Kademlia keys as a non-negative int (0 iff equal).

    Symmetric; ordering by it equals ordering by the big-endian XOR bytes.
    Raises ValueError if either key is not 32 bytes.
    """
    _check_kad_keys(a, b)
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Number of leading bits two 32-byte Kademlia keys share: 0..256, 256 iff equal.

    This is the bucket index used by the routing table. Raises ValueError if either
    key is not 32 bytes.
    """
    return 8 * KAD_KEY_BYTES - xor_distance(a, b).bit_length()
