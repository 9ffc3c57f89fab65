"""dhtd.p2p.verify_signature: the daemon's real signature check (IPNS, /pk/)."""

from __future__ import annotations

from dhtd.p2p import new_identity, verify_signature


def test_a_real_signature_verifies_and_a_wrong_one_does_not() -> None:
    pair = new_identity()
    public = pair.public_key.serialize()
    data = b"ipns-signature:" + b"\xa5" * 40
    signature = pair.private_key.sign(data)
    assert verify_signature(public, data, signature)
    assert not verify_signature(public, data + b"!", signature)
    assert not verify_signature(public, data, bytes(len(signature)))
    other = new_identity().public_key.serialize()
    assert not verify_signature(other, data, signature)


def test_garbage_keys_and_signatures_are_refused_not_raised() -> None:
    assert not verify_signature(b"", b"data", b"sig")
    assert not verify_signature(b"\x08\x01\x12\x20" + bytes(32), b"data", b"")
    assert not verify_signature(b"not a key at all", b"data", b"x" * 64)
