"""dhtd.records outside IPNS: peer IDs, /pk/, operator namespaces, routing.

InvalidRecord messages reach clients verbatim (INVALID_ARGUMENT details) and
peers as the reason a PUT_VALUE was refused, so the tests pin the whole text.
ValueErrors are programming or configuration errors; their texts are pinned
too, as what an operator or developer reads.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import pytest

from dhtd.errors import InvalidRecord
from dhtd.records import (
    Candidate,
    IpnsValidator,
    LastWriteWinsValidator,
    PublicKeyValidator,
    Validator,
    Validators,
    peer_id_from_public_key,
)
from dhtd.wire import kad_pb2
from tests.ipns import Ed25519Identity, verify_ed25519


@pytest.fixture(scope="module")
def alice() -> Ed25519Identity:
    return Ed25519Identity()


@pytest.fixture(scope="module")
def bob() -> Ed25519Identity:
    return Ed25519Identity()


def secp256k1_key(length: int) -> bytes:
    """A serialized PublicKey of exactly ``length`` bytes (4 of framing + data; 5..131)."""
    key = kad_pb2.PublicKey(Type=kad_pb2.KeyType.Secp256k1, Data=bytes(range(length - 4)))
    serialized = key.SerializeToString()
    assert len(serialized) == length
    return serialized


def invalid(call: Callable[[], object], message: str) -> None:
    """Assert that ``call()`` raises InvalidRecord with exactly ``message``."""
    with pytest.raises(InvalidRecord) as caught:
        call()
    assert str(caught.value) == message


# --- Peer IDs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "inlined"),
    [(1, True), (36, True), (41, True), (42, True), (43, False), (120, False)],
)
def test_peer_id_inlines_keys_up_to_42_bytes(length: int, inlined: bool) -> None:
    key = secp256k1_key(length) if length >= 5 else b"\x08"
    if inlined:
        expected = bytes([0x00, length]) + key
    else:
        expected = bytes([0x12, 0x20]) + hashlib.sha256(key).digest()
    assert peer_id_from_public_key(key) == expected


@pytest.mark.parametrize("length", [42, 43, 120])
def test_pk_accepts_key_under_its_own_peer_id(length: int) -> None:
    key = secp256k1_key(length)
    PublicKeyValidator().validate(b"/pk/" + peer_id_from_public_key(key), key)


def test_pk_names_the_inline_bound() -> None:
    # 42 bytes are inlined, 43 hashed: each is refused under the other form.
    at_bound, past_bound = secp256k1_key(42), secp256k1_key(43)
    hashed = bytes([0x12, 0x20]) + hashlib.sha256(at_bound).digest()
    inlined = bytes([0x00, 43]) + past_bound
    message = "public key does not match the peer ID in the key"
    invalid(lambda: PublicKeyValidator().validate(b"/pk/" + hashed, at_bound), message)
    invalid(lambda: PublicKeyValidator().validate(b"/pk/" + inlined, past_bound), message)


# --- /pk/ -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (b"/ipns/\x00\x05abcde", None, "key is not in the /pk/ namespace"),
        (b"/pkx/\x00\x05abcde", None, "key is not in the /pk/ namespace"),
        (b"pk/\x00\x05abcde", None, "key is not in the /pk/ namespace"),
        (b"/pk/", None, "key has nothing after /pk/"),
        (None, b"\x08\x07\x12\x01\x01", "value has unknown key type 7"),
        (None, b"", "value has empty key data"),
        (None, b"\x08\x01", "value has empty key data"),
        (None, "bob", "public key does not match the peer ID in the key"),
    ],
)
def test_pk_rejections(
    alice: Ed25519Identity,
    bob: Ed25519Identity,
    key: bytes | None,
    value: bytes | str | None,
    message: str,
) -> None:
    key = b"/pk/" + alice.peer_id if key is None else key
    if value is None:
        value = alice.public_proto
    elif value == "bob":
        value = bob.public_proto
    assert isinstance(value, bytes)
    invalid(lambda: PublicKeyValidator().validate(key, value), message)


def test_pk_value_not_a_protobuf(alice: Ed25519Identity) -> None:
    with pytest.raises(InvalidRecord) as caught:
        PublicKeyValidator().validate(b"/pk/" + alice.peer_id, b"\xff\xff")
    # The protobuf runtime's own reason follows the colon.
    assert str(caught.value).startswith("value is not a libp2p PublicKey protobuf: ")


# --- Operator namespaces (last write wins) ----------------------------------


@pytest.mark.parametrize("limit", [0, -1])
def test_lww_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError) as caught:
        LastWriteWinsValidator(limit)
    assert str(caught.value) == "max_value_bytes must be at least 1"


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [
        (1, b"a", None),
        (1, b"ab", "value is 2 bytes; this namespace allows 1"),
        (1, b"", "value is empty"),
        (4, b"abcd", None),
        (4, b"abcde", "value is 5 bytes; this namespace allows 4"),
        (4, b"", "value is empty"),
        (4, b"\x00", None),
    ],
)
def test_lww_validate(limit: int, value: bytes, message: str | None) -> None:
    validator = LastWriteWinsValidator(limit)
    assert validator.max_value_bytes == limit
    if message is None:
        validator.validate(b"/app/k", value)
    else:
        invalid(lambda: validator.validate(b"/app/k", value), message)


@pytest.mark.parametrize(
    ("times", "chosen"),
    [
        ([None], 0),
        ([5.0], 0),
        ([1.0, 3.0, 2.0], 1),
        ([3.0, 3.0, 2.0], 1),  # ties go to the later index
        ([None, None, None], 2),
        ([None, -1e300, None], 1),  # None is older than any time
        # NaN is no time at all: never chosen over one, and the answer stays an index.
        ([math.nan], 0),
        ([math.nan, math.nan], 0),
        ([math.nan, 2.0], 1),
    ],
)
def test_lww_select(times: list[float | None], chosen: int) -> None:
    candidates = [Candidate(b"v%d" % i, t) for i, t in enumerate(times)]
    assert LastWriteWinsValidator(8).select(b"/app/k", candidates) == chosen


# --- Every validator's select needs candidates -------------------------------


@pytest.mark.parametrize(
    ("validator", "key"),
    [
        (PublicKeyValidator(), b"/pk/x"),
        (IpnsValidator(verify_ed25519), b"/ipns/x"),
        (LastWriteWinsValidator(8), b"/app/x"),
        (Validators({"app": LastWriteWinsValidator(8)}), b"/app/x"),
        (Validators({}), b"/unknown/x"),  # checked before the namespace
    ],
)
def test_select_without_candidates(validator: Validator, key: bytes) -> None:
    with pytest.raises(ValueError) as caught:
        validator.select(key, [])
    assert str(caught.value) == "select needs at least one candidate"


# --- Validators: routing by namespace ---------------------------------------


@pytest.mark.parametrize("name", ["", "é", "a/b", "/", "app/"])
def test_validators_refuse_bad_namespace_names(name: str) -> None:
    with pytest.raises(ValueError) as caught:
        Validators({"ok": LastWriteWinsValidator(1), name: LastWriteWinsValidator(1)})
    assert str(caught.value) == f"invalid namespace name {name!r}"


@pytest.mark.parametrize(
    ("key", "namespace"),
    [
        (b"/ipns/\x00\x24abc", "ipns"),
        (b"/app/a/b", "app"),
        (b"/a/", "a"),
        (b"/a//", "a"),
        (b"/pk/\xff", "pk"),
    ],
)
def test_namespace_of(key: bytes, namespace: str) -> None:
    assert Validators.namespace_of(key) == namespace


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"", "record key does not start with '/'"),
        (b"pk/x", "record key does not start with '/'"),
        (b"\\pk/x", "record key does not start with '/'"),
        (b"/", "record key has no '/' after its namespace"),
        (b"/pk", "record key has no '/' after its namespace"),
        (b"//", "record key has an empty namespace"),
        (b"//x", "record key has an empty namespace"),
        (b"///", "record key has an empty namespace"),
        (b"/\xc3\xa9/x", "record key namespace is not ASCII"),
    ],
)
def test_namespace_of_rejects(key: bytes, message: str) -> None:
    invalid(lambda: Validators.namespace_of(key), message)
    # The same reasons reach validate and select; knows() just says no.
    validators = Validators({"pk": PublicKeyValidator()})
    invalid(lambda: validators.validate(key, b"v"), message)
    invalid(lambda: validators.select(key, [Candidate(b"v", None)]), message)
    assert not validators.knows(key)


class FixedChoice:
    """A validator whose select returns a set index and records what it was asked."""

    def __init__(self, choice: int) -> None:
        self.choice = choice
        self.asked: list[tuple[bytes, list[Candidate]]] = []

    def validate(self, key: bytes, value: bytes) -> None:
        self.asked.append((key, [Candidate(value, None)]))

    def select(self, key: bytes, candidates: Sequence[Candidate]) -> int:
        self.asked.append((key, list(candidates)))
        return self.choice


@pytest.mark.parametrize("choice", [0, 1])
def test_validators_select_returns_the_namespace_choice(choice: int) -> None:
    fixed = FixedChoice(choice)
    validators = Validators({"app": fixed, "other": FixedChoice(1 - choice)})
    candidates = [Candidate(b"a", 1.0), Candidate(b"b", None)]
    assert validators.select(b"/app/k", candidates) == choice
    assert fixed.asked == [(b"/app/k", candidates)]
    validators.validate(b"/app/k2", b"v")
    assert fixed.asked[-1] == (b"/app/k2", [Candidate(b"v", None)])


@pytest.mark.parametrize("choice", [2, 3, -1])
def test_validators_select_refuses_an_index_out_of_range(choice: int) -> None:
    validators = Validators({"app": FixedChoice(choice)})
    with pytest.raises(ValueError) as caught:
        validators.select(b"/app/k", [Candidate(b"a", 1.0), Candidate(b"b", 2.0)])
    assert str(caught.value) == f"validator selected index {choice} of 2"


def test_validators_unknown_namespace_message() -> None:
    validators = Validators({"pk": PublicKeyValidator(), "app": LastWriteWinsValidator(1)})
    assert validators.namespaces == ["app", "pk"]
    message = "no validator for namespace 'ipns'"
    invalid(lambda: validators.validate(b"/ipns/x", b"v"), message)
    invalid(lambda: validators.select(b"/ipns/x", [Candidate(b"v", None)]), message)
    assert not validators.knows(b"/ipns/x")
    assert validators.knows(b"/app/")
    assert validators.knows(b"/pk/anything")
