"""Record validation: one validator per key namespace.

What lives here (the stores that hold records are in :mod:`dhtd.stores`):

* :class:`Validator` and its implementations, one per key namespace: ``/pk/``
  (:class:`PublicKeyValidator`), ``/ipns/`` (:class:`IpnsValidator`) and
  operator-opened namespaces (:class:`LastWriteWinsValidator`).
  :class:`Validators` routes a key to its namespace's validator.

This module is pure: it does no I/O, owns no clock except where one is
injected, and never imports libp2p. Signature checks are delegated to a
``verify_signature`` callable supplied by the module that owns libp2p.
Every rejection raises :class:`~dhtd.errors.InvalidRecord` with a reason a
caller can act on.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

import cbor2
from google.protobuf.message import DecodeError

from dhtd.errors import InvalidRecord
from dhtd.wire import ipns_pb2, kad_pb2

__all__ = [
    "IPNS_NAMESPACE",
    "IPNS_SIGNATURE_PREFIX",
    "MAX_IPNS_RECORD_BYTES",
    "PK_NAMESPACE",
    "Candidate",
    "IpnsValidator",
    "LastWriteWinsValidator",
    "PublicKeyValidator",
    "Validator",
    "Validators",
    "peer_id_from_public_key",
]

# --- Constants --------------------------------------------------------------







# Namespace names, the text between the first two '/' of a record key
# (libp2p specs, kad-dht/README.md, "Entry validation"; IPFS specs, ipns-record.md).
PK_NAMESPACE = "pk"
IPNS_NAMESPACE = "ipns"

# libp2p specs, peer-ids/peer-ids.md: a serialized public key of at most 42
# bytes is inlined in the peer ID with the identity multihash; longer keys are
# hashed with sha2-256.
MAX_INLINE_KEY_LENGTH = 42

# multiformats multicodec table: the multihash function codes we derive/parse.
MULTIHASH_IDENTITY = 0x00
MULTIHASH_SHA2_256 = 0x12
# multiformats multihash: sha2-256 digests are 32 bytes.
SHA2_256_DIGEST_LENGTH = 32

# multiformats unsigned-varint spec: at most 9 bytes (63 bits) per varint.
MAX_UVARINT_BYTES = 9
# LEB128: 7 payload bits per byte, high bit set on every byte but the last.
UVARINT_PAYLOAD_BITS = 7
UVARINT_PAYLOAD_MASK = 0x7F
UVARINT_CONTINUE_BIT = 0x80

# IPFS specs, ipns-record.md, "Record Size Limit": a serialized IpnsEntry of at
# most 10 KiB MUST be supported; larger ones MAY be ignored (we reject them).
MAX_IPNS_RECORD_BYTES = 10 * 1024

# IPFS specs, ipns-record.md, "Record Verification" step 5: the bytes signed by
# signatureV2 are this prefix followed by the raw CBOR of IpnsEntry.data.
IPNS_SIGNATURE_PREFIX = b"ipns-signature:"

# IPFS specs, ipns-record.md, "Validity Type": 0 (EOL) is the only value.
IPNS_VALIDITY_EOL = 0

# IPFS specs, ipns-record.md: Sequence and TTL are uint64.
UINT64_LIMIT = 1 << 64

# RFC 3339: fractional seconds; the IPNS spec asks for nanosecond precision,
# so at most 9 digits are meaningful (Go's time.RFC3339Nano).
MAX_FRACTION_DIGITS = 9
NANOS_PER_SECOND = 1_000_000_000
# RFC 3339 time-numoffset: hours 00-23, minutes 00-59.
MAX_OFFSET_HOURS = 23
MAX_OFFSET_MINUTES = 59

# RFC 3339 section 5.6 date-time, with the fraction's length capped as above.
_RFC3339 = re.compile(
    (
        rb"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})"
        rb"(?:\.(\d{1,%d}))?"
        rb"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
    )
    % MAX_FRACTION_DIGITS
)
# The Unix epoch, which RFC 3339 times are converted relative to.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The DAG-CBOR map keys of IpnsEntry.data (IPFS specs, ipns-record.md).
_CBOR_VALUE = "Value"
_CBOR_VALIDITY = "Validity"
_CBOR_VALIDITY_TYPE = "ValidityType"
_CBOR_SEQUENCE = "Sequence"
_CBOR_TTL = "TTL"

# --- Validator protocol -----------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One value offered for a key, as seen by whoever holds or fetched it.

    ``received_at`` is the epoch time (seconds) the holder stored the value,
    or ``None`` when that is unknown (e.g. a value fetched from a remote peer).
    """

    value: bytes
    received_at: float | None


class Validator(Protocol):
    """The rules of one key namespace."""

    def validate(self, key: bytes, value: bytes) -> None:
        """Return if ``value`` is acceptable under ``key``; else raise InvalidRecord.

        The error message says what was wrong with the record.
        """
        ...

    def select(self, key: bytes, candidates: Sequence[Candidate]) -> int:
        """Return the index in ``candidates`` (non-empty) of the best one.

        Deterministic: the same candidates in the same order give the same index.
        """
        ...


# --- Multihash / peer ID helpers -------------------------------------------


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode an unsigned varint at ``buf[pos:]``; return (value, next position).

    Raises ValueError on truncation, overlong (>9 byte) or non-minimal encodings.
    """
    value = 0
    for i in range(MAX_UVARINT_BYTES):
        if pos + i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos + i]
        value |= (byte & UVARINT_PAYLOAD_MASK) << (UVARINT_PAYLOAD_BITS * i)
        if not byte & UVARINT_CONTINUE_BIT:
            if byte == 0 and i > 0:
                raise ValueError("non-minimal varint")
            return value, pos + i + 1
    raise ValueError("varint longer than 9 bytes")


def _uvarint(value: int) -> bytes:
    """Encode a non-negative int as an unsigned varint."""
    out = bytearray()
    while True:
        low = value & UVARINT_PAYLOAD_MASK
        value >>= UVARINT_PAYLOAD_BITS
        if value:
            out.append(low | UVARINT_CONTINUE_BIT)
        else:
            out.append(low)
            return bytes(out)


def _parse_multihash(mh: bytes) -> tuple[int, bytes]:
    """Split a binary multihash into (function code, digest).

    Raises ValueError unless ``mh`` is exactly one well-formed multihash.
    """
    code, pos = _read_uvarint(mh, 0)
    length, pos = _read_uvarint(mh, pos)
    digest = mh[pos:]
    if len(digest) != length:
        raise ValueError(f"multihash declares {length} digest bytes but has {len(digest)}")
    return code, digest


def peer_id_from_public_key(public_key: bytes) -> bytes:
    """Return the binary peer ID (a multihash) of a serialized PublicKey.

    Promise (libp2p peer-ids spec): identity multihash of the bytes as given if
    they are at most 42 bytes long, else the sha2-256 multihash of them. The
    bytes are not parsed or re-serialized.
    """
    if len(public_key) <= MAX_INLINE_KEY_LENGTH:
        return _uvarint(MULTIHASH_IDENTITY) + _uvarint(len(public_key)) + public_key
    return (
        _uvarint(MULTIHASH_SHA2_256)
        + _uvarint(SHA2_256_DIGEST_LENGTH)
        + hashlib.sha256(public_key).digest()
    )


def _parse_public_key(data: bytes, what: str) -> kad_pb2.PublicKey:
    """Parse a serialized libp2p PublicKey; raise InvalidRecord naming ``what``."""
    key = kad_pb2.PublicKey()
    try:
        key.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidRecord(f"{what} is not a libp2p PublicKey protobuf: {exc}") from exc
    if key.Type not in kad_pb2.KeyType.values():
        raise InvalidRecord(f"{what} has unknown key type {key.Type}")
    if not key.Data:
        raise InvalidRecord(f"{what} has empty key data")
    return key


def _key_path(key: bytes, namespace: str) -> bytes:
    """Return what follows ``/namespace/`` in ``key``; raise InvalidRecord if absent."""
    prefix = b"/" + namespace.encode("ascii") + b"/"
    if not key.startswith(prefix):
        raise InvalidRecord(f"key is not in the /{namespace}/ namespace")
    path = key[len(prefix) :]
    if not path:
        raise InvalidRecord(f"key has nothing after /{namespace}/")
    return path


# --- /pk/ -------------------------------------------------------------------


class PublicKeyValidator:
    """Validator for ``/pk/<peer-id multihash>`` records holding a PublicKey.

    A value is valid iff it parses as a libp2p PublicKey protobuf with a known
    key type and non-empty data, and the peer ID derived from the value's bytes
    (see :func:`peer_id_from_public_key`) equals the multihash in the key.
    """

    def validate(self, key: bytes, value: bytes) -> None:
        """Raise InvalidRecord unless ``value`` is the public key named by ``key``."""
        peer_id = _key_path(key, PK_NAMESPACE)
        _parse_public_key(value, "value")
        if peer_id_from_public_key(value) != peer_id:
            raise InvalidRecord("public key does not match the peer ID in the key")

    def select(self, key: bytes, candidates: Sequence[Candidate]) -> int:
        """Return 0: every valid value for a /pk/ key is the same key."""
        if not candidates:
            raise ValueError("select needs at least one candidate")
        return 0


# --- /ipns/ -----------------------------------------------------------------


@dataclass(frozen=True)
class _IpnsData:
    """The signed fields of an IPNS record (IpnsEntry.data)."""

    value: bytes
    validity: bytes
    validity_type: int
    sequence: int
    ttl: int


def _parse_rfc3339_nanos(text: bytes) -> int:
    """Parse an RFC 3339 date-time; return nanoseconds since the Unix epoch.

    Up to 9 fractional digits (nanoseconds) are kept exactly. Raises ValueError
    for anything else, including out-of-range fields and leap seconds (which Go's
    time.Parse, used by the reference implementation, also rejects).
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, _zulu, sign, off_h, off_m = match.groups()[6:]
    offset = timedelta(0)
    if sign is not None:
        hours, minutes = int(off_h), int(off_m)
        if hours > MAX_OFFSET_HOURS or minutes > MAX_OFFSET_MINUTES:
            raise ValueError("UTC offset out of range")
        offset = timedelta(hours=hours, minutes=minutes)
        if sign == b"-":
            offset = -offset
    # datetime raises ValueError for out-of-range dates and times.
    moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    nanos = int(fraction.ljust(MAX_FRACTION_DIGITS, b"0")) if fraction else 0
    return seconds * NANOS_PER_SECOND + nanos


def _decode_dag_cbor(data: bytes) -> Any:
    """Decode exactly one CBOR item; raise ValueError for anything DAG-CBOR forbids
    that we check: trailing bytes, indefinite lengths, duplicate map keys."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(
            stream, allow_indefinite=False, allow_duplicate_keys=False
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from exc
    if stream.tell() != len(data):
        raise ValueError("trailing bytes after the CBOR item")
    return item


def _cbor_uint64(doc: Mapping[Any, Any], name: str) -> int:
    """Return ``doc[name]`` if it is an int in [0, 2**64) (not a bool); else InvalidRecord."""
    value = doc[name]
    if type(value) is not int or not 0 <= value < UINT64_LIMIT:
        raise InvalidRecord(f"IPNS data[{name}] is not a uint64")
    return value


def _cbor_bytes(doc: Mapping[Any, Any], name: str) -> bytes:
    """Return ``doc[name]`` if it is a byte string; else raise InvalidRecord."""
    value = doc[name]
    if not isinstance(value, bytes):
        raise InvalidRecord(f"IPNS data[{name}] is not a byte string")
    return value


def _parse_ipns_data(data: bytes) -> _IpnsData:
    """Decode IpnsEntry.data; raise InvalidRecord unless it has the five fields,
    each of its spec type."""
    try:
        doc = _decode_dag_cbor(data)
    except ValueError as exc:
        raise InvalidRecord(f"IPNS data is not valid DAG-CBOR: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidRecord("IPNS data is not a CBOR map")
    for name in (_CBOR_VALUE, _CBOR_VALIDITY, _CBOR_VALIDITY_TYPE, _CBOR_SEQUENCE, _CBOR_TTL):
        if name not in doc:
            raise InvalidRecord(f"IPNS data has no {name}")
    return _IpnsData(
        value=_cbor_bytes(doc, _CBOR_VALUE),
        validity=_cbor_bytes(doc, _CBOR_VALIDITY),
        validity_type=_cbor_uint64(doc, _CBOR_VALIDITY_TYPE),
        sequence=_cbor_uint64(doc, _CBOR_SEQUENCE),
        ttl=_cbor_uint64(doc, _CBOR_TTL),
    )


def _parse_ipns_entry(value: bytes) -> ipns_pb2.IpnsEntry:
    """Size-check and parse an IpnsEntry; raise InvalidRecord if either fails."""
    if len(value) > MAX_IPNS_RECORD_BYTES:
        raise InvalidRecord(
            f"IPNS record is {len(value)} bytes; the limit is {MAX_IPNS_RECORD_BYTES}"
        )
    entry = ipns_pb2.IpnsEntry()
    try:
        entry.ParseFromString(value)
    except DecodeError as exc:
        raise InvalidRecord(f"IPNS record is not an IpnsEntry protobuf: {exc}") from exc
    return entry


def _eol_nanos(signed: _IpnsData) -> int:
    """The EOL of a record in epoch nanoseconds; InvalidRecord if not EOL-typed
    or unparseable."""
    if signed.validity_type != IPNS_VALIDITY_EOL:
        raise InvalidRecord(f"IPNS ValidityType {signed.validity_type} is not supported")
    try:
        return _parse_rfc3339_nanos(signed.validity)
    except ValueError as exc:
        raise InvalidRecord(f"IPNS Validity is not an RFC 3339 time: {exc}") from exc


def ipns_timing(value: bytes) -> tuple[int, int]:
    """(TTL, EOL) of an IPNS record in whole seconds (EOL as Unix time; 0 when its
    validity is not an EOL). The record must have been validated already."""
    signed = _parse_ipns_data(_parse_ipns_entry(value).data)
    eol = (_eol_nanos(signed) // 1_000_000_000
           if signed.validity_type == IPNS_VALIDITY_EOL else 0)
    return signed.ttl // 1_000_000_000, eol


class IpnsValidator:
    """Validator for ``/ipns/<name multihash>`` records (IPNS record spec, V2).

    ``verify_signature(public_key, message, signature)`` receives a serialized
    libp2p PublicKey, the signed bytes and the signature; it returns whether the
    signature is good. If it raises, the record is rejected as badly signed.
    ``now`` returns the current epoch time in seconds; records whose EOL is not
    after it are rejected.
    """

    def __init__(
        self,
        verify_signature: Callable[[bytes, bytes, bytes], bool],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._verify_signature = verify_signature
        self._now = now

    def validate(self, key: bytes, value: bytes) -> None:
        """Raise InvalidRecord unless ``value`` is a valid, unexpired record for ``key``.

        Checks, in the spec's order (IPFS specs, ipns-record.md, "Record
        Verification"), failing on the first error: size <= 10 KiB; signatureV2
        and data present and non-empty; a public key from pubKey (whose peer ID
        must equal the name) or inlined in an identity-multihash name; data is a
        CBOR map with Value, Validity, ValidityType, Sequence and TTL; signatureV2
        verifies over "ipns-signature:" + data; each legacy V1 field that is
        present equals its signed counterpart; the EOL is after ``now()``.
        """
        name = _key_path(key, IPNS_NAMESPACE)
        try:
            name_code, name_digest = _parse_multihash(name)
        except ValueError as exc:
            raise InvalidRecord(f"IPNS name is not a multihash: {exc}") from exc

        entry = _parse_ipns_entry(value)
        if not entry.HasField("signatureV2") or not entry.signatureV2:
            raise InvalidRecord("IPNS record has no signatureV2")
        if not entry.HasField("data") or not entry.data:
            raise InvalidRecord("IPNS record has no data")

        if entry.HasField("pubKey"):
            public_key = entry.pubKey
            _parse_public_key(public_key, "IPNS pubKey")
            if peer_id_from_public_key(public_key) != name:
                raise InvalidRecord("IPNS pubKey does not match the IPNS name")
        elif name_code == MULTIHASH_IDENTITY:
            public_key = name_digest
            _parse_public_key(public_key, "public key inlined in the IPNS name")
        else:
            raise InvalidRecord(
                "IPNS record has no pubKey and the name does not inline the public key"
            )

        signed = _parse_ipns_data(entry.data)

        message = IPNS_SIGNATURE_PREFIX + entry.data
        try:
            good = self._verify_signature(public_key, message, entry.signatureV2)
        except Exception as exc:
            raise InvalidRecord(
                f"IPNS signatureV2 could not be checked: {type(exc).__name__}: {exc}"
            ) from exc
        if not good:
            raise InvalidRecord("IPNS signatureV2 does not verify")

        self._check_v1_fields(entry, signed)

        eol = _eol_nanos(signed)
        if eol / NANOS_PER_SECOND <= self._now():
            raise InvalidRecord(
                f"IPNS record expired at {signed.validity.decode('ascii', 'replace')}"
            )

    @staticmethod
    def _check_v1_fields(entry: ipns_pb2.IpnsEntry, signed: _IpnsData) -> None:
        """Raise InvalidRecord if a present legacy V1 field differs from data."""
        pairs: tuple[tuple[str, object, object], ...] = (
            ("value", entry.value, signed.value),
            ("validity", entry.validity, signed.validity),
            ("validityType", int(entry.validityType), signed.validity_type),
            ("sequence", entry.sequence, signed.sequence),
            ("ttl", entry.ttl, signed.ttl),
        )
        for field, unsigned, signed_value in pairs:
            if entry.HasField(field) and unsigned != signed_value:
                raise InvalidRecord(f"IPNS V1 field {field} does not match the signed data")

    def select(self, key: bytes, candidates: Sequence[Candidate]) -> int:
        """Return the index of the best record: highest Sequence, then latest EOL.

        Candidates whose protobuf, data or EOL cannot be parsed lose to any that
        can; ties (and an all-unparseable list) go to the earliest index.
        Signatures are not checked here: callers validate before storing.
        """
        if not candidates:
            raise ValueError("select needs at least one candidate")
        best_index = 0
        best_rank: tuple[int, int] | None = None
        for index, candidate in enumerate(candidates):
            try:
                entry = _parse_ipns_entry(candidate.value)
                signed = _parse_ipns_data(entry.data)
                rank = (signed.sequence, _eol_nanos(signed))
            except InvalidRecord:
                continue
            if best_rank is None or rank > best_rank:
                best_index, best_rank = index, rank
        return best_index


# --- Operator-opened namespaces --------------------------------------------


class LastWriteWinsValidator:
    """Validator for operator-opened namespaces: any non-empty value up to a size.

    Selection is last-write-wins by the holder's receive time, so a newer Put
    replaces an older value.
    """

    def __init__(self, max_value_bytes: int) -> None:
        if max_value_bytes < 1:
            raise ValueError("max_value_bytes must be at least 1")
        self._max_value_bytes = max_value_bytes

    @property
    def max_value_bytes(self) -> int:
        """The largest value accepted, in bytes."""
        return self._max_value_bytes

    def validate(self, key: bytes, value: bytes) -> None:
        """Raise InvalidRecord if ``value`` is empty or longer than max_value_bytes."""
        if not value:
            raise InvalidRecord("value is empty")
        if len(value) > self._max_value_bytes:
            raise InvalidRecord(
                f"value is {len(value)} bytes; this namespace allows {self._max_value_bytes}"
            )

    def select(self, key: bytes, candidates: Sequence[Candidate]) -> int:
        """Return the index with the greatest received_at (None is oldest).

        Ties go to the LATER index, so ``select(key, [existing, incoming])`` with
        equal (or both unknown) times keeps ``incoming``.
        """
        if not candidates:
            raise ValueError("select needs at least one candidate")
        best_index = 0
        best_time = float("-inf")
        for index, candidate in enumerate(candidates):
            received = float("-inf") if candidate.received_at is None else candidate.received_at
            if received >= best_time:
                best_index, best_time = index, received
        return best_index


# --- Routing by namespace ---------------------------------------------------


class Validators:
    """The validators in force, by namespace name (e.g. ``"pk"``, ``"ipns"``)."""

    def __init__(self, validators: Mapping[str, Validator]) -> None:
        """Raise ValueError if a namespace name is empty, non-ASCII or has a '/'."""
        for namespace in validators:
            if not namespace or not namespace.isascii() or "/" in namespace:
                raise ValueError(f"invalid namespace name {namespace!r}")
        self._validators: dict[str, Validator] = dict(validators)

    @staticmethod
    def namespace_of(key: bytes) -> str:
        """Return the ASCII text between the first two '/' of ``key``.

        Raises InvalidRecord if the key does not start with '/', has no second
        '/', has an empty namespace, or the namespace is not ASCII.
        """
        if not key.startswith(b"/"):
            raise InvalidRecord("record key does not start with '/'")
        end = key.find(b"/", 1)
        if end < 0:
            raise InvalidRecord("record key has no '/' after its namespace")
        raw = key[1:end]
        if not raw:
            raise InvalidRecord("record key has an empty namespace")
        if not raw.isascii():
            raise InvalidRecord("record key namespace is not ASCII")
        return raw.decode("ascii")

    @property
    def namespaces(self) -> list[str]:
        """The namespace names with a validator, sorted."""
        return sorted(self._validators)

    def knows(self, key: bytes) -> bool:
        """Whether ``key`` is well formed and its namespace has a validator."""
        try:
            namespace = self.namespace_of(key)
        except InvalidRecord:
            return False
        return namespace in self._validators

    def _validator_for(self, key: bytes) -> Validator:
        """The key's namespace validator; InvalidRecord if malformed or unknown."""
        namespace = self.namespace_of(key)
        validator = self._validators.get(namespace)
        if validator is None:
            raise InvalidRecord(f"no validator for namespace '{namespace}'")
        return validator

    def validate(self, key: bytes, value: bytes) -> None:
        """Raise InvalidRecord unless the key's namespace validator accepts ``value``."""
        self._validator_for(key).validate(key, value)

    def select(self, key: bytes, candidates: Sequence[Candidate]) -> int:
        """Return the namespace validator's choice among ``candidates`` (non-empty).

        Raises InvalidRecord for an unknown namespace, ValueError if
        ``candidates`` is empty.
        """
        if not candidates:
            raise ValueError("select needs at least one candidate")
        index = self._validator_for(key).select(key, candidates)
        if not 0 <= index < len(candidates):
            raise ValueError(f"validator selected index {index} of {len(candidates)}")
        return index
