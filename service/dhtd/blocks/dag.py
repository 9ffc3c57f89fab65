"""Blocks of a DAG: checking that a block is what its CID says, and reading its links.

Codecs whose links are followed (multicodec table numbers):

| codec    | code | links                                                         |
|----------|------|---------------------------------------------------------------|
| raw      | 0x55 | none                                                          |
| dag-pb   | 0x70 | PBNode.Links[].Hash (ipld.io/specs/codecs/dag-pb)             |
| dag-cbor | 0x71 | every tag 42 value (ipld.io/specs/codecs/dag-cbor), via cbor2 |

A block of another codec cannot be walked: :class:`BadBlock` says so, rather
than providing a DAG with its lower part silently left out.

Hash functions checked: identity, sha2-256, sha2-512, sha3-256, blake2b-256 and
blake3 (the ones IPFS implementations produce).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import cbor2

from dhtd.blocks.car import CID_TAG, cid_of_link, read_cid
from dhtd.ids import DAG_PB, IDENTITY, RAW, Cid, decode_multihash, decode_uvarint

DAG_CBOR = 0x71

# multihash code -> the function, for the digest length the multihash declares.
SHA2_512 = 0x13
SHA3_256 = 0x16
BLAKE3 = 0x1E
BLAKE2B_256 = 0xB220


def _blake3(data: bytes, length: int) -> bytes:
    import blake3  # (a dependency of py-libp2p; loaded when a DAG uses it)

    return bytes(blake3.blake3(data).digest(length))


_HASHES: dict[int, Callable[[bytes, int], bytes]] = {
    IDENTITY: lambda data, _length: data,
    0x12: lambda data, _length: hashlib.sha256(data).digest(),
    SHA2_512: lambda data, _length: hashlib.sha512(data).digest(),
    SHA3_256: lambda data, _length: hashlib.sha3_256(data).digest(),
    BLAKE2B_256: lambda data, _length: hashlib.blake2b(data, digest_size=32).digest(),
    BLAKE3: _blake3,
}

CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}


class BadBlock(Exception):
    """A block that does not match its CID (``mismatch``), or that cannot be walked."""

    def __init__(self, cid: Cid, reason: str, mismatch: bool = False) -> None:
        super().__init__(f"block {cid}: {reason}")
        self.cid = cid
        self.reason = reason
        self.mismatch = mismatch


def verify(cid: Cid, data: bytes) -> None:
    """Raises BadBlock unless ``data`` hashes to ``cid``'s multihash."""
    code, digest = decode_multihash(cid.multihash)
    hash_fn = _HASHES.get(code)
    if hash_fn is None:
        raise BadBlock(cid, f"hash function 0x{code:x} is not supported")
    if hash_fn(data, len(digest))[:len(digest)] != digest:
        raise BadBlock(cid, "its bytes do not hash to its CID", mismatch=True)


def links(cid: Cid, data: bytes) -> list[Cid]:
    """The CIDs ``data`` links to, in order, by ``cid``'s codec. Raises BadBlock."""
    if cid.codec == RAW:
        return []
    try:
        if cid.codec == DAG_PB:
            return _dag_pb_links(data)
        if cid.codec == DAG_CBOR:
            return _dag_cbor_links(data)
    except BadBlock:
        raise
    except Exception as exc:  # a malformed block: whatever the decoder raised
        name = CODEC_NAMES[cid.codec]
        cause = exc.__cause__ or exc  # (cbor2 wraps what a tag hook raised)
        raise BadBlock(cid, f"not valid {name}: {cause}") from None
    raise BadBlock(cid, f"codec 0x{cid.codec:x} cannot be walked (raw, dag-pb and dag-cbor "
                   "can): its links would be left out")


# -- dag-pb: protobuf, by hand (two small messages) -------------------------------------------

_LEN = 2  # protobuf wire type: length-delimited
_VARINT = 0


def _fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """A protobuf message's fields: (number, wire type, bytes or int). ValueError if bad."""
    out: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(data):
        key, pos = decode_uvarint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = decode_uvarint(data, pos)
            out.append((number, wire, value))
        elif wire == _LEN:
            length, pos = decode_uvarint(data, pos)
            if pos + length > len(data):
                raise ValueError("a field runs past the end")
            out.append((number, wire, data[pos:pos + length]))
            pos += length
        else:
            raise ValueError(f"wire type {wire} is not used by dag-pb")
    return out


def _dag_pb_links(data: bytes) -> list[Cid]:
    found: list[Cid] = []
    for number, wire, value in _fields(data):
        if number == 2 and wire == _LEN:  # PBNode.Links
            assert isinstance(value, bytes)
            hashes = [v for n, w, v in _fields(value) if n == 1 and w == _LEN]
            if len(hashes) != 1:
                raise ValueError("a link must have exactly one Hash")
            assert isinstance(hashes[0], bytes)
            link, end = read_cid(hashes[0])
            if end != len(hashes[0]):
                raise ValueError("a link's Hash has bytes after its CID")
            found.append(link)
        elif number != 1 or wire != _LEN:  # PBNode.Data is the only other field
            raise ValueError(f"field {number} is not part of a PBNode")
    return found


# -- dag-cbor: cbor2, collecting tag 42 -------------------------------------------------------


def _dag_cbor_links(data: bytes) -> list[Cid]:
    found: list[Cid] = []

    def tag(value: cbor2.CBORTag, _immutable: bool) -> object:  # (cbor2 6's signature)
        if value.tag != CID_TAG:
            raise ValueError(f"tag {value.tag} is not allowed in dag-cbor (only 42 is)")
        found.append(cid_of_link(value.value))
        return None

    cbor2.loads(data, tag_hook=tag)
    return found
