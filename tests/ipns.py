"""Real Ed25519 identities and IPNS records for tests (unit and against real dhtd)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dhtd.wire import ipns_pb2, kad_pb2

HOUR = 3600.0


class Ed25519Identity:
    """A real Ed25519 key pair with its libp2p encodings."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_proto = kad_pb2.PublicKey(
            Type=kad_pb2.KeyType.Ed25519, Data=raw
        ).SerializeToString()
        # 36 bytes <= 42: identity multihash 0x00, length, key bytes.
        self.peer_id = bytes([0x00, len(self.public_proto)]) + self.public_proto


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The verify_signature the daemon would supply, for Ed25519 only."""
    key = kad_pb2.PublicKey()
    key.ParseFromString(public_key)
    if key.Type != kad_pb2.KeyType.Ed25519:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(key.Data).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def rfc3339(moment: float, nanos: int = 0) -> bytes:
    """Format epoch seconds as RFC 3339 with a 9-digit fraction."""
    stamp = datetime.fromtimestamp(int(moment), tz=UTC)
    return (stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z").encode()


def ipns_record(
    signer: Ed25519Identity,
    *,
    sequence: int = 1,
    eol: bytes | None = None,
    value: bytes = b"/ipfs/bafkqaddwgevxmmraojswg33smq",
    ttl: int = 300_000_000_000,
    pub_key: bytes | None = None,
    v1: bool = False,
    v1_value: bytes | None = None,
    padding: int = 0,
    sign_with: Ed25519Identity | None = None,
    now: float | None = None,
) -> bytes:
    """Build a serialized V2 (optionally V1+V2) IpnsEntry signed by ``signer``
    (or by ``sign_with``, which makes the signature wrong), valid for an hour
    after ``now`` (default: the wall clock) unless ``eol`` is given."""
    validity = eol if eol is not None else rfc3339((time.time() if now is None else now) + HOUR)
    doc: dict[str, object] = {
        "Value": value,
        "Validity": validity,
        "ValidityType": 0,
        "Sequence": sequence,
        "TTL": ttl,
    }
    if padding:
        doc["_padding"] = b"x" * padding
    data = cbor2.dumps(doc, canonical=True)
    key = (sign_with or signer).private
    entry = ipns_pb2.IpnsEntry(
        signatureV2=key.sign(b"ipns-signature:" + data),
        data=data,
    )
    if pub_key is not None:
        entry.pubKey = pub_key
    if v1:
        entry.value = v1_value if v1_value is not None else value
        entry.validity = validity
        entry.validityType = ipns_pb2.IpnsEntry.EOL
        entry.sequence = sequence
        entry.ttl = ttl
        entry.signatureV1 = b"legacy, never checked"
    return entry.SerializeToString()


def ipns_key(owner: Ed25519Identity) -> bytes:
    """The DHT key of ``owner``'s IPNS name: /ipns/ + its binary peer ID."""
    return b"/ipns/" + owner.peer_id


def signed_ipns_entry(signer: Ed25519Identity, data: bytes) -> ipns_pb2.IpnsEntry:
    """An IpnsEntry carrying ``data`` exactly as given (any bytes, e.g. CBOR that
    breaks a rule), with a signatureV2 by ``signer`` that verifies over it. Set
    pubKey or legacy V1 fields on the result before serializing it."""
    return ipns_pb2.IpnsEntry(
        signatureV2=signer.private.sign(b"ipns-signature:" + data),
        data=data,
    )
