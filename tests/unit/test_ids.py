"""Unit tests for dhtd.ids: known vectors, error messages, and round-trip properties."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtd.errors import InvalidArgument
from dhtd.ids import (
    DAG_PB,
    IDENTITY,
    LIBP2P_KEY,
    MAX_ID_TEXT_CHARS,
    MAX_KEY_BYTES,
    SHA2_256,
    Cid,
    b58decode,
    b58encode,
    common_prefix_len,
    decode_multihash,
    decode_uvarint,
    encode_uvarint,
    is_valid_multihash,
    kad_key,
    multibase_decode,
    multibase_encode_base32,
    multibase_encode_base36,
    parse_cid,
    parse_peer_id,
    parse_record_key,
    peer_id_to_cid,
    peer_id_to_str,
    xor_distance,
)

# No example database: keep the test run from writing .hypothesis/ into the repo.
PROPS = settings(database=None, max_examples=200, deadline=None)

CID_V0 = "QmdPAhQRxrDKqkGPvQzBvjYe3kU8kiEEAd2J6ETEamKAD9"
CID_V0_AS_V1 = "bafybeig7qrpxr3zfjfu4fwbp2ii5ypcgev4o3cmb5hzuhjyiguqnqgrvoq"
CID_V1_DAG_PB = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"

PEER_SHA256 = "QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt"
PEER_SHA256_MH = bytes.fromhex(
    "1220d35893e482b48d830c653415e615061281982226059d8fcb65add178cbb990bf"
)
PEER_ED25519 = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
# identity multihash of the protobuf PublicKey{Type: Ed25519, Data: <32 bytes>}
PEER_ED25519_MH = bytes.fromhex(
    "0024080112202ffa35a99d3a3cfbb17bb7c1dc5561b18a8dcca4df38dc613ea859c37eb1336b"
)
PEER_ED25519_B36 = "k51qzi5uqu5dhdmyb9bd18pypu2wp5lpv2xnskfmrqa4lb5knqryrotb05e7or"
PEER_ED25519_B32 = "bafzaajaiaejcal72gwuz2or47oyxxn6b3rkwdmmkrxgkjxzy3rqt5kczyn7lcm3l"


def _msg(field: str, fragment: str) -> str:
    """Regex for an InvalidArgument message naming ``field`` and containing ``fragment``."""
    return rf"^{field}: .*{fragment}"


# --- base58 ------------------------------------------------------------------------------------


def test_b58_known_vectors() -> None:
    assert b58encode(b"") == ""
    assert b58encode(b"\x00") == "1"
    assert b58encode(b"\x00\x00\x01") == "112"
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    assert b58decode("StV1DL6CwTryKyV") == b"hello world"
    assert b58decode("111") == b"\x00\x00\x00"


@pytest.mark.parametrize("bad", ["0", "O", "I", "l", "abc!", "Qm dP"])
def test_b58decode_rejects_bad_chars(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid base58btc character"):
        b58decode(bad)


@PROPS
@given(st.binary(max_size=80))
def test_b58_round_trip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


# --- varint ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02")],
)
def test_uvarint_known_vectors(value: int, encoded: bytes) -> None:
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded) == (value, len(encoded))


def test_uvarint_offset() -> None:
    assert decode_uvarint(b"\xff\xac\x02\x07", 1) == (300, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x80", "truncated"),
        (b"\xff" * 9 + b"\x01", "longer than 9 bytes"),
        (b"\x80\x00", "not minimally encoded"),
    ],
)
def test_uvarint_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_uvarint(data)


def test_uvarint_encode_limits() -> None:
    assert len(encode_uvarint(2**63 - 1)) == 9
    with pytest.raises(ValueError):
        encode_uvarint(2**63)
    with pytest.raises(ValueError):
        encode_uvarint(-1)


@PROPS
@given(st.integers(min_value=0, max_value=2**63 - 1), st.binary(max_size=4))
def test_uvarint_round_trip(value: int, tail: bytes) -> None:
    encoded = encode_uvarint(value)
    assert decode_uvarint(encoded + tail) == (value, len(encoded))


# --- multibase ---------------------------------------------------------------------------------


def test_multibase_all_prefixes_decode_same_bytes() -> None:
    data = b"\x00\x01yes mani !"
    b32 = base64.b32encode(data).decode()
    b32hex = base64.b32hexencode(data).decode()
    b64 = base64.b64encode(data).decode()
    b64url = base64.urlsafe_b64encode(data).decode()
    texts = [
        "z" + b58encode(data),
        "f" + data.hex(),
        "F" + data.hex().upper(),
        "b" + b32.rstrip("=").lower(),
        "B" + b32.rstrip("="),
        "c" + b32.lower(),
        "C" + b32,
        "v" + b32hex.rstrip("=").lower(),
        "V" + b32hex.rstrip("="),
        "t" + b32hex.lower(),
        "T" + b32hex,
        "k" + multibase_encode_base36(data)[1:],
        "K" + multibase_encode_base36(data)[1:].upper(),
        "m" + b64.rstrip("="),
        "M" + b64,
        "u" + b64url.rstrip("="),
        "U" + b64url,
    ]
    for text in texts:
        assert multibase_decode(text) == data, text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("xabc", "unknown multibase prefix 'x'"),
        ("bAB", "invalid base32 character 'A'"),
        ("Bab", "invalid base32upper character 'a'"),
        ("ba", "does not encode whole bytes"),
        ("ba=", "invalid base32 character '='"),
        ("caa", "not a multiple of 8"),
        ("ca=======", "does not encode whole bytes"),
        ("caa=====a", "invalid base32pad character '='"),
        ("f0", "does not encode whole bytes"),
        ("fzz", "invalid base16 character 'z'"),
        ("mA", "does not encode whole bytes"),
        ("M====", "wrong amount of '=' padding"),
        ("Mabc==", "not a multiple of 4"),
        ("Ma=bc", "invalid base64pad character '='"),
        ("u+/", "invalid base64url character '\\+'"),
        ("k!", "invalid base36 character '!'"),
        ("z0", "invalid base58btc character '0'"),
    ],
)
def test_multibase_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        multibase_decode(text)


@PROPS
@given(st.binary(max_size=80))
def test_base32_round_trip(data: bytes) -> None:
    text = multibase_encode_base32(data)
    assert text.startswith("b")
    assert text == text.lower()
    assert "=" not in text
    assert multibase_decode(text) == data


@PROPS
@given(st.binary(max_size=80))
def test_base36_round_trip(data: bytes) -> None:
    text = multibase_encode_base36(data)
    assert text.startswith("k")
    assert multibase_decode(text) == data
    assert multibase_decode("K" + text[1:].upper()) == data


def test_base36_leading_zeros() -> None:
    assert multibase_encode_base36(b"\x00\x00\x01") == "k001"
    assert multibase_decode("k00") == b"\x00\x00"


# --- multihash ---------------------------------------------------------------------------------


def test_decode_multihash_sha256() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert decode_multihash(bytes([SHA2_256, 32]) + digest) == (SHA2_256, digest)


def test_decode_multihash_identity_and_unknown_code() -> None:
    assert decode_multihash(b"\x00\x03abc") == (IDENTITY, b"abc")
    assert decode_multihash(b"\x00\x00") == (IDENTITY, b"")
    # an arbitrary code (blake2b-256, a two-byte varint) is accepted if lengths agree
    assert decode_multihash(b"\xa0\xe4\x02\x02hi") == (0xB220, b"hi")


@pytest.mark.parametrize(
    ("mh", "reason"),
    [
        (b"", "empty"),
        (b"\x12", "truncated"),
        (b"\x00\x03ab", "length mismatch"),
        (b"\x00\x01ab", "length mismatch"),
        (b"\x12\x02ab", "sha2-256 digest is 2 bytes"),
    ],
)
def test_decode_multihash_rejects(mh: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_multihash(mh)
    assert not is_valid_multihash(mh)


def test_is_valid_multihash() -> None:
    assert is_valid_multihash(PEER_SHA256_MH)
    assert is_valid_multihash(PEER_ED25519_MH)


# --- CIDs --------------------------------------------------------------------------------------


def test_cid_v0_round_trip_to_v1_and_back() -> None:
    v0 = parse_cid(CID_V0)
    assert v0 == Cid(0, DAG_PB, v0.multihash)
    assert v0.multihash[:2] == b"\x12\x20"
    assert str(v0) == CID_V0
    v1 = Cid(1, DAG_PB, v0.multihash)
    assert str(v1) == CID_V0_AS_V1
    back = parse_cid(str(v1))
    assert back == v1
    assert back.multihash == v0.multihash


def test_cid_v1_dag_pb() -> None:
    cid = parse_cid(CID_V1_DAG_PB)
    assert (cid.version, cid.codec) == (1, DAG_PB)
    assert decode_multihash(cid.multihash)[0] == SHA2_256
    assert str(cid) == CID_V1_DAG_PB


def test_cid_v1_other_multibases_and_whitespace() -> None:
    cid = parse_cid(CID_V1_DAG_PB)
    raw = cid.to_bytes()
    assert parse_cid("f" + raw.hex()) == cid
    assert parse_cid("z" + b58encode(raw)) == cid
    assert parse_cid(multibase_encode_base36(raw)) == cid
    assert parse_cid(CID_V1_DAG_PB.upper()) == cid  # 'B' prefix, uppercase payload
    assert parse_cid(f"  {CID_V1_DAG_PB}\n") == cid


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("hello world", "not a CID: unknown multibase prefix 'h'"),
        ("xyz", "not a CID: unknown multibase prefix 'x'"),
        (CID_V0[:-1], "not a CID: a CIDv0 \\(Qm...\\) is 46 characters, this is 45"),
        ("Qm" + "0" * 44, "not a CID: invalid base58btc character '0'"),
        (CID_V1_DAG_PB[:-2], "not a CID: multihash length mismatch"),
        ("f" + "01" + "70" + "1220" + "ab" * 31, "not a CID: multihash length mismatch"),
        ("f" + "00" + "70" + "1220" + "ab" * 32, "not a CID: CID version 0 is not valid"),
        ("f" + "02" + "70" + "1220" + "ab" * 32, "not a CID: unsupported CID version 2"),
        ("f" + "1220" + "ab" * 32, "not a CID: a CIDv0 must be written in base58btc"),
        ("f" + "01", "not a CID: truncated varint"),
        ("b", "not a CID: empty multibase payload"),
        ("z" * (MAX_ID_TEXT_CHARS + 1), "at most 1024 allowed"),
    ],
)
def test_parse_cid_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=_msg("cid", fragment)):
        parse_cid(text)


def test_parse_cid_uses_given_field_name() -> None:
    with pytest.raises(InvalidArgument, match=_msg("request.cid", "not a CID")):
        parse_cid("!!", field="request.cid")


def test_cid_constructor_validates() -> None:
    with pytest.raises(ValueError, match="CIDv0"):
        Cid(0, LIBP2P_KEY, PEER_SHA256_MH)
    with pytest.raises(ValueError, match="unsupported CID version 2"):
        Cid(2, DAG_PB, PEER_SHA256_MH)
    with pytest.raises(ValueError, match="length mismatch"):
        Cid(1, DAG_PB, b"\x00\x05ab")


# --- peer IDs ----------------------------------------------------------------------------------


def test_peer_id_sha256_form() -> None:
    mh = parse_peer_id(PEER_SHA256)
    assert mh == PEER_SHA256_MH
    assert peer_id_to_str(mh) == PEER_SHA256


def test_peer_id_identity_form() -> None:
    mh = parse_peer_id(PEER_ED25519)
    assert mh == PEER_ED25519_MH
    assert decode_multihash(mh) == (IDENTITY, mh[2:])
    assert peer_id_to_str(mh) == PEER_ED25519


def test_peer_id_cid_forms() -> None:
    assert peer_id_to_cid(PEER_ED25519_MH) == PEER_ED25519_B36
    assert parse_peer_id(PEER_ED25519_B36) == PEER_ED25519_MH
    assert str(Cid(1, LIBP2P_KEY, PEER_ED25519_MH)) == PEER_ED25519_B32
    assert parse_peer_id(PEER_ED25519_B32) == PEER_ED25519_MH
    assert parse_peer_id(peer_id_to_cid(PEER_SHA256_MH)) == PEER_SHA256_MH
    assert parse_peer_id(f" {PEER_ED25519}\t") == PEER_ED25519_MH


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("garbage!", "unknown multibase prefix 'g'"),
        (PEER_ED25519[:-6], "not a peer ID: multihash length mismatch"),
        (PEER_SHA256[:-3], "not a peer ID: multihash"),
        ("12D3KooW0", "invalid base58btc character '0'"),
        (CID_V1_DAG_PB, "CID codec 0x70 is not libp2p-key \\(0x72\\)"),
        # sha2-512 (0x13) in a libp2p-key CID
        (
            "f0172" + "1340" + "ab" * 64,
            "multihash code 0x13 is neither sha2-256 \\(0x12\\) nor identity",
        ),
        ("1" + b58encode(b"\x00\x2b" + b"a" * 43)[1:], "digest is 43 bytes; at most 42"),
        ("11", "identity multihash has an empty digest"),
    ],
)
def test_parse_peer_id_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=_msg("peer_id", fragment)):
        parse_peer_id(text)


def test_identity_peer_id_42_bytes_is_accepted() -> None:
    mh = b"\x00\x2a" + b"a" * 42
    assert parse_peer_id(peer_id_to_str(mh)) == mh


def test_peer_id_encoders_reject_non_peer_multihash() -> None:
    with pytest.raises(ValueError):
        peer_id_to_str(b"\x13\x02ab")
    with pytest.raises(ValueError):
        peer_id_to_cid(b"\x00\x00")


# --- record keys -------------------------------------------------------------------------------


def test_record_key_ok() -> None:
    assert parse_record_key(b"/pk/" + PEER_SHA256_MH) == ("pk", PEER_SHA256_MH)
    assert parse_record_key(b"/ipns/x/y") == ("ipns", b"x/y")
    assert parse_record_key(b"/a.B_c-9/\xff\xfe") == ("a.B_c-9", b"\xff\xfe")
    assert parse_record_key(b"/v/" + b"x" * (MAX_KEY_BYTES - 3)) == ("v", b"x" * 509)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        (b"", "is empty"),
        (b"nonamespace", "must start with '/<namespace>/', e.g. /pk/<multihash>"),
        (b"/", "must start with '/<namespace>/'"),
        (b"/pk", "must start with '/<namespace>/'"),
        (b"//x", "namespace is empty"),
        (b"/pk/", "has nothing after '/pk/'"),
        (b"/p k/x", "namespace 'p k' must match"),
        (b"/p\xffk/x", r"namespace 'p\\xffk' must match"),
        (b"/v/" + b"x" * (MAX_KEY_BYTES - 2), "is 513 bytes; at most 512 allowed"),
    ],
)
def test_record_key_rejects(key: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=_msg("key", fragment)):
        parse_record_key(key)


# --- Kademlia distance -------------------------------------------------------------------------


def test_kad_key_is_sha256() -> None:
    assert kad_key(PEER_SHA256_MH) == hashlib.sha256(PEER_SHA256_MH).digest()
    assert len(kad_key(b"")) == 32


def test_common_prefix_len_basics() -> None:
    zero = bytes(32)
    assert common_prefix_len(zero, zero) == 256
    assert common_prefix_len(zero, b"\x80" + bytes(31)) == 0
    assert common_prefix_len(zero, b"\x01" + bytes(31)) == 7
    assert common_prefix_len(zero, bytes(31) + b"\x01") == 255
    assert xor_distance(zero, bytes(31) + b"\x03") == 3


def test_distance_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        xor_distance(b"a", bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        common_prefix_len(bytes(32), bytes(33))


@PROPS
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_distance_properties(a: bytes, b: bytes) -> None:
    assert xor_distance(a, a) == 0
    assert common_prefix_len(a, a) == 256
    assert xor_distance(a, b) == xor_distance(b, a)
    assert common_prefix_len(a, b) == common_prefix_len(b, a)
    assert (xor_distance(a, b) == 0) == (a == b)
    bits_a = bin(int.from_bytes(a, "big"))[2:].zfill(256)
    bits_b = bin(int.from_bytes(b, "big"))[2:].zfill(256)
    shared = next((i for i in range(256) if bits_a[i] != bits_b[i]), 256)
    assert common_prefix_len(a, b) == shared


def test_the_fast_base32_path_decodes_exactly_as_the_general_loop() -> None:
    """multibase_decode takes lowercase unpadded base32 (the usual CIDv1 text) down
    a fast path; every payload, valid or not, gets the general decoder's answer."""
    from dhtd.ids import _B32_ALPHABET, _rfc4648_decode, multibase_decode

    rng = random.Random(5)
    payloads = ["", "a", "ab", "abc", "abcd", "abcde", "77", "7777777", "aaaaaaaa",
                *("".join(rng.choice(_B32_ALPHABET) for _ in range(rng.randrange(80)))
                  for _ in range(20_000))]
    for payload in payloads:
        try:
            want: bytes | str = _rfc4648_decode(payload, _B32_ALPHABET, 5, False, "base32")
        except ValueError as exc:
            want = str(exc)
        try:
            got: bytes | str = multibase_decode("b" + payload)
        except ValueError as exc:
            got = str(exc)
        assert got == want, payload
