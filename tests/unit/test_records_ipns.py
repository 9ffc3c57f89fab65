"""IPNS record rules of dhtd.records, case by case.

Every InvalidRecord message here reaches a client verbatim as the details of
an INVALID_ARGUMENT status (and a peer as the reason its PUT_VALUE was
refused), so the tests pin the whole text, including the reason after the
colon where dhtd or cbor2 (pinned in the lock) writes it; where the protobuf
runtime or Python's datetime writes it, the tests only require one.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest

from dhtd.errors import InvalidRecord
from dhtd.records import MAX_IPNS_RECORD_BYTES, Candidate, IpnsValidator
from dhtd.wire import ipns_pb2, kad_pb2
from tests.ipns import Ed25519Identity, ipns_record, rfc3339, signed_ipns_entry, verify_ed25519

NOW = 1_750_000_000.0  # a fixed "current time" (2025-06-15) for every test
HOUR = 3600.0
# 2030-01-01T00:00:00Z: the UTC instant the RFC 3339 cases below spell differently.
Y2030 = datetime(2030, 1, 1, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def alice() -> Ed25519Identity:
    return Ed25519Identity()


@pytest.fixture(scope="module")
def bob() -> Ed25519Identity:
    return Ed25519Identity()


def validator(now: float = NOW) -> IpnsValidator:
    return IpnsValidator(verify_ed25519, now=lambda: now)


def doc(**fields: Any) -> dict[str, Any]:
    """The five signed fields of a record valid for an hour after NOW, overridden by ``fields``."""
    base: dict[str, Any] = {
        "Value": b"/ipfs/bafkqaddwgevxmmraojswg33smq",
        "Validity": rfc3339(NOW + HOUR),
        "ValidityType": 0,
        "Sequence": 1,
        "TTL": 300_000_000_000,
    }
    base.update(fields)
    return base


def record(signer: Ed25519Identity, data: bytes) -> bytes:
    """A serialized IpnsEntry holding ``data``, signed by ``signer``."""
    return signed_ipns_entry(signer, data).SerializeToString()


def reject(key: bytes, value: bytes, message: str, now: float = NOW) -> None:
    with pytest.raises(InvalidRecord) as caught:
        validator(now).validate(key, value)
    assert str(caught.value) == message


def varint(value: int) -> bytes:
    """Unsigned LEB128, written out independently of dhtd's encoder."""
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


# --- Key and name -----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"/pk/\x00\x24abc", "key is not in the /ipns/ namespace"),
        (b"ipns/\x00\x00", "key is not in the /ipns/ namespace"),
        (b"/ipns/", "key has nothing after /ipns/"),
        # The name is a multihash: <code varint><length varint><digest>.
        (b"/ipns/\x80", "IPNS name is not a multihash: truncated varint"),
        (b"/ipns/\x00", "IPNS name is not a multihash: truncated varint"),
        (b"/ipns/\x00\x80", "IPNS name is not a multihash: truncated varint"),
        (b"/ipns/\x00\x80\x80", "IPNS name is not a multihash: truncated varint"),
        (b"/ipns/\x80\x00\x00", "IPNS name is not a multihash: non-minimal varint"),
        (b"/ipns/\x00\x80\x00", "IPNS name is not a multihash: non-minimal varint"),
        (b"/ipns/\x00\x81\x00x", "IPNS name is not a multihash: non-minimal varint"),
        (
            b"/ipns/\x00" + b"\xff" * 9 + b"\x01",
            "IPNS name is not a multihash: varint longer than 9 bytes",
        ),
        (
            b"/ipns/\x00" + b"\xff" * 8 + b"\x7f",
            "IPNS name is not a multihash: multihash declares 9223372036854775807 digest"
            " bytes but has 0",
        ),
        (
            b"/ipns/\x00\x81\x01" + b"k" * 128,
            "IPNS name is not a multihash: multihash declares 129 digest bytes but has 128",
        ),
        (
            b"/ipns/\x00\x81\x01" + b"k" * 130,
            "IPNS name is not a multihash: multihash declares 129 digest bytes but has 130",
        ),
        (
            b"/ipns/\x00\x00\x00",
            "IPNS name is not a multihash: multihash declares 0 digest bytes but has 1",
        ),
        (
            b"/ipns/\x12\x20" + bytes(31),
            "IPNS name is not a multihash: multihash declares 32 digest bytes but has 31",
        ),
    ],
)
def test_malformed_keys_and_names(alice: Ed25519Identity, key: bytes, message: str) -> None:
    reject(key, ipns_record(alice, now=NOW), message)


def test_multi_byte_name_length_inlines_the_whole_key(alice: Ed25519Identity) -> None:
    # An identity name whose digest (an inlined 129-byte key) needs a 2-byte
    # length varint: the verifier gets exactly those 129 bytes as the key.
    inlined = kad_pb2.PublicKey(
        Type=kad_pb2.KeyType.Secp256k1, Data=bytes(range(125))
    ).SerializeToString()
    assert len(inlined) == 129
    seen: list[bytes] = []

    def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
        seen.append(public_key)
        return True

    name = b"\x00" + varint(len(inlined)) + inlined
    assert name[:3] == b"\x00\x81\x01"
    IpnsValidator(verify, now=lambda: NOW).validate(b"/ipns/" + name, ipns_record(alice, now=NOW))
    assert seen == [inlined]


# --- Envelope ---------------------------------------------------------------


def padded_record(signer: Ed25519Identity, size: int) -> bytes:
    """A valid record of exactly ``size`` serialized bytes (padded in its data)."""
    for padding in range(size - 400, size):
        value = ipns_record(signer, now=NOW, padding=padding)
        if len(value) == size:
            return value
    raise AssertionError(f"no padding gives a {size}-byte record")


def test_size_limit_is_inclusive(alice: Ed25519Identity) -> None:
    key = b"/ipns/" + alice.peer_id
    validator().validate(key, padded_record(alice, MAX_IPNS_RECORD_BYTES))
    reject(
        key,
        padded_record(alice, MAX_IPNS_RECORD_BYTES + 1),
        "IPNS record is 10241 bytes; the limit is 10240",
    )


def test_not_a_protobuf(alice: Ed25519Identity) -> None:
    with pytest.raises(InvalidRecord) as caught:
        validator().validate(b"/ipns/" + alice.peer_id, b"\xff\xff")
    # The protobuf runtime's own reason follows the colon.
    prefix = "IPNS record is not an IpnsEntry protobuf: "
    assert str(caught.value).startswith(prefix)
    assert len(str(caught.value)) > len(prefix)


def entry_without(alice: Ed25519Identity, **fields: bytes | None) -> bytes:
    """A good record with each named field removed (None) or replaced."""
    entry = signed_ipns_entry(alice, cbor2.dumps(doc(), canonical=True))
    for name, value in fields.items():
        if value is None:
            entry.ClearField(name)
        else:
            setattr(entry, name, value)
    return entry.SerializeToString()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"signatureV2": None}, "IPNS record has no signatureV2"),
        ({"signatureV2": b""}, "IPNS record has no signatureV2"),  # present but empty
        ({"data": None}, "IPNS record has no data"),
        ({"data": b""}, "IPNS record has no data"),  # present but empty
        ({"signatureV2": None, "data": None}, "IPNS record has no signatureV2"),
    ],
)
def test_signature_and_data_are_mandatory(
    alice: Ed25519Identity, fields: dict[str, bytes | None], message: str
) -> None:
    reject(b"/ipns/" + alice.peer_id, entry_without(alice, **fields), message)


# --- Public key -------------------------------------------------------------


def public_key(key_type: int, data: bytes) -> bytes:
    return kad_pb2.PublicKey(Type=key_type, Data=data).SerializeToString()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pub_key", "message"),
    [
        (public_key(9, b"\x01"), "IPNS pubKey has unknown key type 9"),
        (public_key(kad_pb2.KeyType.Ed25519, b""), "IPNS pubKey has empty key data"),
        (b"", "IPNS pubKey has empty key data"),  # present but empty
        (None, "IPNS pubKey does not match the IPNS name"),  # None: someone else's key
    ],
)
def test_pubkey_problems(
    alice: Ed25519Identity, bob: Ed25519Identity, pub_key: bytes | None, message: str
) -> None:
    pub_key = bob.public_proto if pub_key is None else pub_key
    reject(b"/ipns/" + alice.peer_id, ipns_record(alice, now=NOW, pub_key=pub_key), message)


def test_pubkey_not_a_protobuf(alice: Ed25519Identity) -> None:
    with pytest.raises(InvalidRecord) as caught:
        validator().validate(
            b"/ipns/" + alice.peer_id, ipns_record(alice, now=NOW, pub_key=b"\xff\xff")
        )
    assert str(caught.value).startswith("IPNS pubKey is not a libp2p PublicKey protobuf: ")


@pytest.mark.parametrize(
    ("inlined", "message"),
    [
        (public_key(9, b"\x01"), "public key inlined in the IPNS name has unknown key type 9"),
        (b"", "public key inlined in the IPNS name has empty key data"),
        (
            public_key(kad_pb2.KeyType.Ed25519, b""),
            "public key inlined in the IPNS name has empty key data",
        ),
    ],
)
def test_inlined_key_problems(alice: Ed25519Identity, inlined: bytes, message: str) -> None:
    name = b"\x00" + varint(len(inlined)) + inlined
    reject(b"/ipns/" + name, ipns_record(alice, now=NOW), message)


def test_hashed_name_needs_pubkey(alice: Ed25519Identity) -> None:
    reject(
        b"/ipns/\x12\x20" + bytes(32),
        ipns_record(alice, now=NOW),
        "IPNS record has no pubKey and the name does not inline the public key",
    )


def test_verifier_gets_pubkey_prefixed_data_and_signature(alice: Ed25519Identity) -> None:
    # A key too long to inline: the name is its sha2-256 multihash, the record carries it.
    big_key = public_key(kad_pb2.KeyType.RSA, bytes(range(200)))
    name = b"\x12\x20" + hashlib.sha256(big_key).digest()
    data = cbor2.dumps(doc(), canonical=True)
    entry = ipns_pb2.IpnsEntry(signatureV2=b"opaque signature", data=data, pubKey=big_key)
    calls: list[tuple[bytes, bytes, bytes]] = []

    def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
        calls.append((public_key, message, signature))
        return True

    IpnsValidator(verify, now=lambda: NOW).validate(b"/ipns/" + name, entry.SerializeToString())
    assert calls == [(big_key, b"ipns-signature:" + data, b"opaque signature")]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            ValueError("unsupported key"),
            "IPNS signatureV2 could not be checked: ValueError: unsupported key",
        ),
        (KeyError("x"), "IPNS signatureV2 could not be checked: KeyError: 'x'"),
    ],
)
def test_verifier_errors_are_named(alice: Ed25519Identity, error: Exception, message: str) -> None:
    def broken(public_key: bytes, message: bytes, signature: bytes) -> bool:
        raise error

    with pytest.raises(InvalidRecord) as caught:
        IpnsValidator(broken, now=lambda: NOW).validate(
            b"/ipns/" + alice.peer_id, ipns_record(alice, now=NOW)
        )
    assert str(caught.value) == message


def test_bad_signature_message(alice: Ed25519Identity, bob: Ed25519Identity) -> None:
    reject(
        b"/ipns/" + alice.peer_id,
        ipns_record(alice, now=NOW, sign_with=bob),
        "IPNS signatureV2 does not verify",
    )


# --- Signed data (DAG-CBOR) -------------------------------------------------


def indefinite_map(fields: dict[str, Any]) -> bytes:
    return b"\xbf" + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in fields.items()) + b"\xff"


def with_duplicate(fields: dict[str, Any], name: str, value: Any) -> bytes:
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in fields.items())
    return bytes([0xA0 + len(fields) + 1]) + body + cbor2.dumps(name) + cbor2.dumps(value)


def without(name: str) -> bytes:
    fields = doc()
    del fields[name]
    return cbor2.dumps(fields, canonical=True)


def renamed(name: str, new_name: str) -> bytes:
    fields = doc()
    fields[new_name] = fields.pop(name)
    return cbor2.dumps(fields, canonical=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (cbor2.dumps([1, 2]), "IPNS data is not a CBOR map"),
        (cbor2.dumps(b"just bytes"), "IPNS data is not a CBOR map"),
        (cbor2.dumps({}), "IPNS data has no Value"),
        (without("Value"), "IPNS data has no Value"),
        (without("Validity"), "IPNS data has no Validity"),
        (without("ValidityType"), "IPNS data has no ValidityType"),
        (without("Sequence"), "IPNS data has no Sequence"),
        (without("TTL"), "IPNS data has no TTL"),
        (renamed("Value", "value"), "IPNS data has no Value"),  # keys are case-sensitive
        (
            cbor2.dumps(doc(), canonical=True) + b"\x00",
            "IPNS data is not valid DAG-CBOR: trailing bytes after the CBOR item",
        ),
        (cbor2.dumps(doc(Value="/ipfs/text")), "IPNS data[Value] is not a byte string"),
        (
            cbor2.dumps(doc(Validity="2030-01-01T00:00:00Z")),
            "IPNS data[Validity] is not a byte string",
        ),
        (cbor2.dumps(doc(ValidityType=False)), "IPNS data[ValidityType] is not a uint64"),
        (cbor2.dumps(doc(ValidityType=-1)), "IPNS data[ValidityType] is not a uint64"),
        (cbor2.dumps(doc(Sequence=True)), "IPNS data[Sequence] is not a uint64"),
        (cbor2.dumps(doc(Sequence=-1)), "IPNS data[Sequence] is not a uint64"),
        (cbor2.dumps(doc(Sequence=2**64)), "IPNS data[Sequence] is not a uint64"),
        (cbor2.dumps(doc(Sequence=1.0)), "IPNS data[Sequence] is not a uint64"),
        (cbor2.dumps(doc(TTL=b"\x01")), "IPNS data[TTL] is not a uint64"),
        (cbor2.dumps(doc(TTL=2**65)), "IPNS data[TTL] is not a uint64"),
    ],
)
def test_data_shape(alice: Ed25519Identity, data: bytes, message: str) -> None:
    reject(b"/ipns/" + alice.peer_id, record(alice, data), message)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            indefinite_map(doc()),
            "error decoding map: encountered indefinite length but it has been disabled",
        ),
        (
            cbor2.dumps(doc(), canonical=True)[:-1] + b"\xff",  # a break code for the last value
            "break code encountered where a data item was expected",
        ),
        (
            cbor2.dumps(doc(), canonical=True)[:-1],
            "premature end of stream (expected to read at least 1 bytes, got 0 instead)",
        ),
        (with_duplicate(doc(), "Sequence", 2), "error decoding map: Duplicate map key: 'Sequence'"),
    ],
)
def test_data_breaking_dag_cbor(alice: Ed25519Identity, data: bytes, reason: str) -> None:
    # DAG-CBOR forbids indefinite lengths and duplicate map keys, even in a
    # record that is otherwise fine and correctly signed. The decoder's reason
    # (cbor2's text; cbor2 is pinned in the lock) follows the colon.
    reject(
        b"/ipns/" + alice.peer_id, record(alice, data), f"IPNS data is not valid DAG-CBOR: {reason}"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"Sequence": 2**64 - 1, "TTL": 2**64 - 1},
        {"Sequence": 0, "TTL": 0},
        {"Value": b""},
        {"Extra": "unknown fields are ignored", "Value": b"/ipns/k51"},
    ],
)
def test_data_limits_accepted(alice: Ed25519Identity, fields: dict[str, Any]) -> None:
    validator().validate(b"/ipns/" + alice.peer_id, record(alice, cbor2.dumps(doc(**fields))))


def test_only_eol_validity_type(alice: Ed25519Identity) -> None:
    reject(
        b"/ipns/" + alice.peer_id,
        record(alice, cbor2.dumps(doc(ValidityType=1))),
        "IPNS ValidityType 1 is not supported",
    )


# --- Legacy V1 fields -------------------------------------------------------


def with_v1(alice: Ed25519Identity, data: bytes, **v1: Any) -> bytes:
    entry = signed_ipns_entry(alice, data)
    for name, value in v1.items():
        setattr(entry, name, value)
    return entry.SerializeToString()


V1_MATCHING: dict[str, Any] = {
    "value": doc()["Value"],
    "validity": doc()["Validity"],
    "validityType": ipns_pb2.IpnsEntry.EOL,
    "sequence": 1,
    "ttl": 300_000_000_000,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("value", b"/ipfs/somethingelse"),
        ("value", b""),  # present with the default value still counts
        ("validity", rfc3339(NOW + 2 * HOUR)),
        ("sequence", 2),
        ("sequence", 0),
        ("ttl", 1),
        ("ttl", 0),
    ],
)
def test_v1_field_must_match_signed_data(alice: Ed25519Identity, field: str, value: Any) -> None:
    data = cbor2.dumps(doc(), canonical=True)
    reject(
        b"/ipns/" + alice.peer_id,
        with_v1(alice, data, **{**V1_MATCHING, field: value}),
        f"IPNS V1 field {field} does not match the signed data",
    )
    # Alone, too.
    reject(
        b"/ipns/" + alice.peer_id,
        with_v1(alice, data, **{field: value}),
        f"IPNS V1 field {field} does not match the signed data",
    )


def test_v1_validity_type_must_match_signed_data(alice: Ed25519Identity) -> None:
    # V1 can only say EOL (0); signed data saying 1 contradicts it, which is
    # reported before the unsupported type.
    data = cbor2.dumps(doc(ValidityType=1))
    reject(
        b"/ipns/" + alice.peer_id,
        with_v1(alice, data, validityType=ipns_pb2.IpnsEntry.EOL),
        "IPNS V1 field validityType does not match the signed data",
    )


def test_v1_fields_matching_are_accepted(alice: Ed25519Identity) -> None:
    data = cbor2.dumps(doc(), canonical=True)
    key = b"/ipns/" + alice.peer_id
    validator().validate(key, with_v1(alice, data, **V1_MATCHING))
    for field, value in V1_MATCHING.items():
        validator().validate(key, with_v1(alice, data, **{field: value}))


# --- Validity (RFC 3339) and expiry -----------------------------------------


@pytest.mark.parametrize(
    ("validity", "eol"),
    [
        (b"2030-01-01T00:00:00Z", Y2030),
        (b"2030-01-01t00:00:00z", Y2030),  # RFC 3339 5.6 allows lowercase
        (b"2030-01-01T00:00:00+00:00", Y2030),
        (b"2030-01-01T00:00:00-00:00", Y2030),
        (b"2030-01-01T05:30:00+05:30", Y2030),
        (b"2029-12-31T19:00:00-05:00", Y2030),
        (b"2029-12-31T23:15:00-00:45", Y2030),
        (b"2030-01-01T23:59:00+23:59", Y2030),
        (b"2029-12-31T00:01:00-23:59", Y2030),
        (b"2030-01-01T00:00:00.5Z", Y2030 + 0.5),
        (b"2030-01-01T00:00:00.25Z", Y2030 + 0.25),
        (b"2030-01-01T01:00:00.75+01:00", Y2030 + 0.75),
        (b"2030-01-01T00:00:00.000000000Z", Y2030),
        (b"2030-01-01T00:00:01.000000000Z", Y2030 + 1),
    ],
)
def test_validity_is_the_eol(alice: Ed25519Identity, validity: bytes, eol: float) -> None:
    # Valid until just before the EOL, expired from the EOL itself on.
    key = b"/ipns/" + alice.peer_id
    value = record(alice, cbor2.dumps(doc(Validity=validity)))
    validator(now=eol - 0.125).validate(key, value)
    reject(key, value, f"IPNS record expired at {validity.decode()}", now=eol)
    reject(key, value, f"IPNS record expired at {validity.decode()}", now=eol + HOUR)


@pytest.mark.parametrize(
    ("validity", "reason"),
    [
        (b"tomorrow", "not an RFC 3339 date-time"),
        (b"2030-01-01T00:00:00", "not an RFC 3339 date-time"),
        (b"2030-01-01 00:00:00Z", "not an RFC 3339 date-time"),
        (b"2030-01-01T00:00:00.Z", "not an RFC 3339 date-time"),
        (b"2030-01-01T00:00:00.1234567890Z", "not an RFC 3339 date-time"),  # > 9 digits
        (b"2030-01-01T00:00:00+0100", "not an RFC 3339 date-time"),
        (b"2030-01-01T00:00:00+24:00", "UTC offset out of range"),
        (b"2030-01-01T00:00:00-24:00", "UTC offset out of range"),
        (b"2030-01-01T00:00:00+00:60", "UTC offset out of range"),
        (b"2030-01-01T00:00:00-23:60", "UTC offset out of range"),
        (b"2030-01-01T00:00:00+99:99", "UTC offset out of range"),
    ],
)
def test_validity_not_rfc3339(alice: Ed25519Identity, validity: bytes, reason: str) -> None:
    reject(
        b"/ipns/" + alice.peer_id,
        record(alice, cbor2.dumps(doc(Validity=validity))),
        f"IPNS Validity is not an RFC 3339 time: {reason}",
    )


@pytest.mark.parametrize(
    "validity",
    [
        b"2030-02-30T00:00:00Z",
        b"2030-13-01T00:00:00Z",
        b"2030-01-01T24:00:00Z",
        b"2030-01-01T00:00:60Z",
        b"0000-01-01T00:00:00Z",
    ],
)
def test_validity_out_of_range_fields(alice: Ed25519Identity, validity: bytes) -> None:
    # Out-of-range dates and times, and leap seconds (as Go's time.Parse): the
    # reason after the colon is Python's datetime's.
    with pytest.raises(InvalidRecord) as caught:
        validator().validate(
            b"/ipns/" + alice.peer_id, record(alice, cbor2.dumps(doc(Validity=validity)))
        )
    assert str(caught.value).startswith("IPNS Validity is not an RFC 3339 time: ")
    assert "RFC 3339 date-time" not in str(caught.value).split(": ", 1)[1]


# --- Selection --------------------------------------------------------------


def cand(signer: Ed25519Identity, **fields: Any) -> Candidate:
    return Candidate(record(signer, cbor2.dumps(doc(**fields))), None)


def test_select_orders_by_sequence_then_eol_to_the_nanosecond(alice: Ed25519Identity) -> None:
    key = b"/ipns/" + alice.peer_id
    whole = cand(alice, Validity=b"2030-01-01T00:00:00Z")
    one_ns = cand(alice, Validity=b"2030-01-01T00:00:00.000000001Z")
    same_instant = cand(alice, Validity=b"2030-01-01T01:00:00+01:00")
    higher_seq = cand(alice, Sequence=2, Validity=b"2026-01-01T00:00:00Z")
    select = validator().select
    assert select(key, [whole, one_ns]) == 1
    assert select(key, [one_ns, whole]) == 0
    # Equal rank (the same instant spelled differently): the first wins.
    assert select(key, [whole, same_instant]) == 0
    assert select(key, [same_instant, whole]) == 0
    assert select(key, [whole, one_ns, higher_seq]) == 2
    assert select(key, [higher_seq, whole, one_ns]) == 0


def test_select_skips_what_it_cannot_rank(alice: Ed25519Identity, bob: Ed25519Identity) -> None:
    key = b"/ipns/" + alice.peer_id
    good = cand(alice, Sequence=1)
    unranked = [
        cand(alice, Sequence=9, ValidityType=1),  # EOL of an unknown kind
        cand(alice, Sequence=9, Validity=b"never"),
        Candidate(record(alice, cbor2.dumps([9])), None),  # data not a map
        Candidate(ipns_record(alice, now=NOW, sequence=9, padding=MAX_IPNS_RECORD_BYTES), None),
        Candidate(b"\xff\xff", None),
    ]
    select = validator().select
    for bad in unranked:
        assert select(key, [bad, good]) == 1
        assert select(key, [good, bad]) == 0
    assert select(key, unranked) == 0
    # Signatures are not checked: the validator is for stored records.
    assert select(key, [good, cand(bob, Sequence=2)]) == 1
