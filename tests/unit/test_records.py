"""Unit tests for dhtd.records: validators and in-memory stores."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest

from dhtd.errors import InvalidRecord
from dhtd.records import (
    MAX_IPNS_RECORD_BYTES,
    Candidate,
    IpnsValidator,
    LastWriteWinsValidator,
    PublicKeyValidator,
    Validators,
    peer_id_from_public_key,
)
from dhtd.wire import ipns_pb2, kad_pb2
from tests.ipns import Ed25519Identity, rfc3339, verify_ed25519
from tests.ipns import ipns_record as shared_ipns_record

NOW = 1_750_000_000.0  # a fixed "current time" (2025-06-15) for every test
HOUR = 3600.0


def ipns_record(signer: Ed25519Identity, **fields: Any) -> bytes:
    """tests.ipns.ipns_record at this module's fixed NOW."""
    return shared_ipns_record(signer, now=NOW, **fields)


# --- Helpers ----------------------------------------------------------------


@pytest.fixture
def alice() -> Ed25519Identity:
    return Ed25519Identity()


@pytest.fixture
def bob() -> Ed25519Identity:
    return Ed25519Identity()


@pytest.fixture
def ipns() -> IpnsValidator:
    return IpnsValidator(verify_ed25519, now=lambda: NOW)


# --- /pk/ -------------------------------------------------------------------


def test_peer_id_inlines_small_keys(alice: Ed25519Identity) -> None:
    assert peer_id_from_public_key(alice.public_proto) == alice.peer_id


def test_pk_accepts_matching_ed25519_key(alice: Ed25519Identity) -> None:
    PublicKeyValidator().validate(b"/pk/" + alice.peer_id, alice.public_proto)


def test_pk_rejects_someone_elses_key(alice: Ed25519Identity, bob: Ed25519Identity) -> None:
    with pytest.raises(InvalidRecord, match="does not match"):
        PublicKeyValidator().validate(b"/pk/" + alice.peer_id, bob.public_proto)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xff\xff", "not a libp2p PublicKey"),
        (b"", "empty key data"),
        (kad_pb2.PublicKey(Type=kad_pb2.KeyType.Ed25519).SerializeToString(), "empty key data"),
        (b"\x08\x07\x12\x01\x01", "unknown key type 7"),
    ],
)
def test_pk_rejects_malformed_values(value: bytes, reason: str) -> None:
    key = b"/pk/" + peer_id_from_public_key(value)
    with pytest.raises(InvalidRecord, match=reason):
        PublicKeyValidator().validate(key, value)


def test_pk_rejects_wrong_namespace(alice: Ed25519Identity) -> None:
    with pytest.raises(InvalidRecord, match="/pk/"):
        PublicKeyValidator().validate(b"/ipns/" + alice.peer_id, alice.public_proto)


def test_pk_large_keys_use_sha256() -> None:
    value = kad_pb2.PublicKey(Type=kad_pb2.KeyType.RSA, Data=bytes(300)).SerializeToString()
    assert len(value) > 42
    expected = bytes([0x12, 0x20]) + hashlib.sha256(value).digest()
    assert peer_id_from_public_key(value) == expected
    validator = PublicKeyValidator()
    validator.validate(b"/pk/" + expected, value)
    inlined = bytes([0x00, 0x81, 0x02]) + value[:129]  # an identity id for some other bytes
    with pytest.raises(InvalidRecord, match="does not match"):
        validator.validate(b"/pk/" + inlined, value)


def test_pk_select_is_first(alice: Ed25519Identity) -> None:
    candidates = [Candidate(alice.public_proto, None), Candidate(alice.public_proto, NOW)]
    assert PublicKeyValidator().select(b"/pk/" + alice.peer_id, candidates) == 0


# --- /ipns/ -----------------------------------------------------------------


def test_ipns_accepts_v2_record(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    ipns.validate(b"/ipns/" + alice.peer_id, ipns_record(alice))


def test_ipns_accepts_v1_v2_record_with_pubkey(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    record = ipns_record(alice, v1=True, pub_key=alice.public_proto)
    ipns.validate(b"/ipns/" + alice.peer_id, record)


def test_ipns_accepts_offset_timezones(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    later = datetime.fromtimestamp(NOW + HOUR, tz=UTC).astimezone()
    eol = later.strftime("%Y-%m-%dT%H:%M:%S.5%z")
    eol = eol[:-2] + ":" + eol[-2:]  # +hhmm -> +hh:mm
    ipns.validate(b"/ipns/" + alice.peer_id, ipns_record(alice, eol=eol.encode()))


def test_ipns_rejects_expired(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    record = ipns_record(alice, eol=rfc3339(NOW - 1, nanos=999_999_999))
    with pytest.raises(InvalidRecord, match="expired"):
        ipns.validate(b"/ipns/" + alice.peer_id, record)


def test_ipns_expiry_follows_injected_clock(alice: Ed25519Identity) -> None:
    clock = [NOW]
    validator = IpnsValidator(verify_ed25519, now=lambda: clock[0])
    record = ipns_record(alice, eol=rfc3339(NOW + 10))
    validator.validate(b"/ipns/" + alice.peer_id, record)
    clock[0] = NOW + 10
    with pytest.raises(InvalidRecord, match="expired"):
        validator.validate(b"/ipns/" + alice.peer_id, record)


@pytest.mark.parametrize("eol", [b"tomorrow", b"2025-13-01T00:00:00Z", b"2025-06-15T10:00:00"])
def test_ipns_rejects_bad_validity(alice: Ed25519Identity, ipns: IpnsValidator, eol: bytes) -> None:
    with pytest.raises(InvalidRecord, match="RFC 3339"):
        ipns.validate(b"/ipns/" + alice.peer_id, ipns_record(alice, eol=eol))


def test_ipns_rejects_bad_signature(
    alice: Ed25519Identity, bob: Ed25519Identity, ipns: IpnsValidator
) -> None:
    record = ipns_record(alice, sign_with=bob)
    with pytest.raises(InvalidRecord, match="signatureV2 does not verify"):
        ipns.validate(b"/ipns/" + alice.peer_id, record)


def test_ipns_rejects_tampered_data(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    entry = ipns_pb2.IpnsEntry()
    entry.ParseFromString(ipns_record(alice, sequence=1))
    other = ipns_pb2.IpnsEntry()
    other.ParseFromString(ipns_record(alice, sequence=2))
    entry.data = other.data
    with pytest.raises(InvalidRecord, match="signatureV2 does not verify"):
        ipns.validate(b"/ipns/" + alice.peer_id, entry.SerializeToString())


def test_ipns_rejects_pubkey_not_matching_name(
    alice: Ed25519Identity, bob: Ed25519Identity, ipns: IpnsValidator
) -> None:
    record = ipns_record(bob, pub_key=bob.public_proto)
    with pytest.raises(InvalidRecord, match="pubKey does not match the IPNS name"):
        ipns.validate(b"/ipns/" + alice.peer_id, record)


def test_ipns_record_under_another_name_fails_signature(
    alice: Ed25519Identity, bob: Ed25519Identity, ipns: IpnsValidator
) -> None:
    with pytest.raises(InvalidRecord, match="signatureV2 does not verify"):
        ipns.validate(b"/ipns/" + alice.peer_id, ipns_record(bob))


def test_ipns_needs_pubkey_for_hashed_names(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    hashed_name = bytes([0x12, 0x20]) + hashlib.sha256(b"some big key").digest()
    with pytest.raises(InvalidRecord, match="no pubKey"):
        ipns.validate(b"/ipns/" + hashed_name, ipns_record(alice))


def test_ipns_rejects_too_large(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    record = ipns_record(alice, padding=MAX_IPNS_RECORD_BYTES)
    assert len(record) > MAX_IPNS_RECORD_BYTES
    with pytest.raises(InvalidRecord, match="limit is 10240"):
        ipns.validate(b"/ipns/" + alice.peer_id, record)


def test_ipns_accepts_unknown_data_fields_within_limit(
    alice: Ed25519Identity, ipns: IpnsValidator
) -> None:
    ipns.validate(b"/ipns/" + alice.peer_id, ipns_record(alice, padding=1000))


def test_ipns_rejects_v1_mismatch(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    record = ipns_record(alice, v1=True, v1_value=b"/ipfs/somethingelse")
    with pytest.raises(InvalidRecord, match="V1 field value"):
        ipns.validate(b"/ipns/" + alice.peer_id, record)


def test_ipns_rejects_missing_v2_fields(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    entry = ipns_pb2.IpnsEntry()
    entry.ParseFromString(ipns_record(alice))
    no_sig = ipns_pb2.IpnsEntry(data=entry.data).SerializeToString()
    no_data = ipns_pb2.IpnsEntry(signatureV2=entry.signatureV2).SerializeToString()
    with pytest.raises(InvalidRecord, match="no signatureV2"):
        ipns.validate(b"/ipns/" + alice.peer_id, no_sig)
    with pytest.raises(InvalidRecord, match="no data"):
        ipns.validate(b"/ipns/" + alice.peer_id, no_data)


def test_ipns_rejects_data_missing_a_field(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    data = cbor2.dumps({"Value": b"/ipfs/x", "Validity": rfc3339(NOW + HOUR), "ValidityType": 0})
    entry = ipns_pb2.IpnsEntry(data=data, signatureV2=alice.private.sign(b"ipns-signature:" + data))
    with pytest.raises(InvalidRecord, match="no Sequence"):
        ipns.validate(b"/ipns/" + alice.peer_id, entry.SerializeToString())


def test_ipns_rejects_garbage(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    with pytest.raises(InvalidRecord):
        ipns.validate(b"/ipns/" + alice.peer_id, b"\xff\xff")
    with pytest.raises(InvalidRecord, match="not a multihash"):
        ipns.validate(b"/ipns/\x00\x05ab", ipns_record(alice))


def test_ipns_verifier_errors_become_invalid_record(alice: Ed25519Identity) -> None:
    def broken(public_key: bytes, message: bytes, signature: bytes) -> bool:
        raise ValueError("unsupported key")

    validator = IpnsValidator(broken, now=lambda: NOW)
    with pytest.raises(InvalidRecord, match="could not be checked"):
        validator.validate(b"/ipns/" + alice.peer_id, ipns_record(alice))


def test_ipns_select_prefers_sequence_then_validity(
    alice: Ed25519Identity, ipns: IpnsValidator
) -> None:
    key = b"/ipns/" + alice.peer_id
    old = Candidate(ipns_record(alice, sequence=1, eol=rfc3339(NOW + 5 * HOUR)), NOW)
    new = Candidate(ipns_record(alice, sequence=2, eol=rfc3339(NOW + HOUR)), None)
    assert ipns.select(key, [old, new]) == 1
    assert ipns.select(key, [new, old]) == 0

    sooner = Candidate(ipns_record(alice, sequence=2, eol=rfc3339(NOW + HOUR, nanos=1)), None)
    later = Candidate(ipns_record(alice, sequence=2, eol=rfc3339(NOW + HOUR, nanos=2)), None)
    assert ipns.select(key, [later, sooner]) == 0
    assert ipns.select(key, [sooner, later]) == 1
    # Equal rank: the first wins.
    assert ipns.select(key, [later, later]) == 0


def test_ipns_select_unparseable_loses(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    key = b"/ipns/" + alice.peer_id
    good = Candidate(ipns_record(alice, sequence=0), None)
    junk = Candidate(b"\xff\xff", None)
    assert ipns.select(key, [junk, good]) == 1
    assert ipns.select(key, [junk, junk]) == 0


# --- Last write wins --------------------------------------------------------


def test_lww_validate() -> None:
    validator = LastWriteWinsValidator(max_value_bytes=4)
    validator.validate(b"/app/k", b"abcd")
    with pytest.raises(InvalidRecord, match="empty"):
        validator.validate(b"/app/k", b"")
    with pytest.raises(InvalidRecord, match="5 bytes"):
        validator.validate(b"/app/k", b"abcde")


def test_lww_select_latest_and_ties_go_to_later_index() -> None:
    validator = LastWriteWinsValidator(max_value_bytes=16)
    key = b"/app/k"
    assert validator.select(key, [Candidate(b"a", NOW + 1), Candidate(b"b", NOW)]) == 0
    assert validator.select(key, [Candidate(b"a", NOW), Candidate(b"b", NOW + 1)]) == 1
    # None is oldest.
    assert validator.select(key, [Candidate(b"a", NOW), Candidate(b"b", None)]) == 0
    assert validator.select(key, [Candidate(b"a", None), Candidate(b"b", NOW)]) == 1
    # Ties: the later index wins, so an incoming Put replaces the existing value.
    assert validator.select(key, [Candidate(b"a", NOW), Candidate(b"b", NOW)]) == 1
    assert validator.select(key, [Candidate(b"a", None), Candidate(b"b", None)]) == 1
    assert validator.select(key, [Candidate(b"only", None)]) == 0


# --- Validators -------------------------------------------------------------


def test_validators_route_by_namespace(alice: Ed25519Identity, ipns: IpnsValidator) -> None:
    validators = Validators(
        {"pk": PublicKeyValidator(), "ipns": ipns, "app": LastWriteWinsValidator(8)}
    )
    assert validators.namespaces == ["app", "ipns", "pk"]
    validators.validate(b"/pk/" + alice.peer_id, alice.public_proto)
    validators.validate(b"/ipns/" + alice.peer_id, ipns_record(alice))
    with pytest.raises(InvalidRecord, match="allows 8"):
        validators.validate(b"/app/x", b"123456789")
    assert validators.select(b"/app/x", [Candidate(b"a", 1.0), Candidate(b"b", 2.0)]) == 1
    assert validators.knows(b"/app/x")
    assert not validators.knows(b"/other/x")
    assert not validators.knows(b"garbage")


def test_validators_unknown_namespace() -> None:
    validators = Validators({"pk": PublicKeyValidator()})
    with pytest.raises(InvalidRecord, match="no validator for namespace 'x'"):
        validators.validate(b"/x/key", b"value")
    with pytest.raises(InvalidRecord, match="no validator for namespace 'x'"):
        validators.select(b"/x/key", [Candidate(b"value", None)])


@pytest.mark.parametrize("key", [b"", b"pk/x", b"/pk", b"//x", b"/\xc3\xa9/x"])
def test_namespace_of_rejects_malformed(key: bytes) -> None:
    with pytest.raises(InvalidRecord):
        Validators.namespace_of(key)


def test_namespace_of() -> None:
    assert Validators.namespace_of(b"/ipns/\x00\x24abc") == "ipns"
    assert Validators.namespace_of(b"/app/a/b") == "app"


def test_rfc3339_offsets_are_applied(alice: Ed25519Identity) -> None:
    # 1 h ahead in +02:00 is 1 h behind in UTC: expired.
    ahead = datetime.fromtimestamp(NOW + HOUR, tz=UTC) + timedelta(hours=2)
    eol = ahead.strftime("%Y-%m-%dT%H:%M:%S+02:00").encode()
    validator = IpnsValidator(verify_ed25519, now=lambda: NOW + HOUR + 1)
    with pytest.raises(InvalidRecord, match="expired"):
        validator.validate(b"/ipns/" + alice.peer_id, ipns_record(alice, eol=eol))
    IpnsValidator(verify_ed25519, now=lambda: NOW).validate(
        b"/ipns/" + alice.peer_id, ipns_record(alice, eol=eol)
    )
