"""DAGs and CAR files for tests: blocks of the three codecs dhtd walks, written by hand.

The encoders follow the specs (dag-pb: ipld.io/specs/codecs/dag-pb, links before
data; dag-cbor: canonical CBOR with tag 42 links; CARv1 and CARv2) and share no
code with dhtd's readers but the varint encoder, so a test of one against the
other means something.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import cbor2

from dhtd.ids import DAG_PB, RAW, Cid
from dhtd.ids import encode_uvarint as _varint

DAG_CBOR = 0x71

Block = tuple[Cid, bytes]


def sha256_mh(data: bytes) -> bytes:
    return b"\x12\x20" + hashlib.sha256(data).digest()


def raw(data: bytes) -> Block:
    return Cid(1, RAW, sha256_mh(data)), data


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def dag_pb(links: Sequence[tuple[Cid, str]] = (), data: bytes | None = None,
           v0: bool = False) -> Block:
    """A PBNode with ``links`` (CID, name) and optional Data."""
    body = b""
    for cid, name in links:
        link = _field(1, cid.to_bytes()) + _field(2, name.encode())
        link += _varint(3 << 3) + _varint(len(name))  # Tsize, any number will do here
        body += _field(2, link)
    if data is not None:
        body += _field(1, data)
    return Cid(0 if v0 else 1, DAG_PB, sha256_mh(body)), body


def unixfs_file(content: bytes, chunk: int = 64 * 1024) -> Dag:
    """A UnixFS file (the UnixFS spec), as ``ipfs add --raw-leaves`` makes one of up
    to 174 chunks: raw leaves of ``chunk`` bytes under one dag-pb node whose Data
    says File, the file's size and each leaf's size."""
    leaves = [raw(content[i:i + chunk]) for i in range(0, len(content), chunk)]
    data = _varint(1 << 3) + _varint(2)  # Type: File
    data += _varint(3 << 3) + _varint(len(content))  # filesize
    for _, block in leaves:
        data += _varint(4 << 3) + _varint(len(block))  # blocksizes
    body = b""
    for cid, block in leaves:
        entry = _field(1, cid.to_bytes()) + _field(2, b"") + _varint(3 << 3) + _varint(len(block))
        body += _field(2, entry)
    body += _field(1, data)
    root = Cid(1, DAG_PB, sha256_mh(body)), body
    return Dag(root[0], [root, *leaves])


def link(cid: Cid) -> cbor2.CBORTag:
    return cbor2.CBORTag(42, b"\x00" + cid.to_bytes())


def dag_cbor(value: object) -> Block:
    data = cbor2.dumps(value, canonical=True)
    return Cid(1, DAG_CBOR, sha256_mh(data)), data


def car_v1(roots: Sequence[Cid], blocks: Sequence[Block]) -> bytes:
    header = cbor2.dumps({"roots": [link(r) for r in roots], "version": 1}, canonical=True)
    out = _varint(len(header)) + header
    for cid, data in blocks:
        section = cid.to_bytes() + data
        out += _varint(len(section)) + section
    return out


def car_v2(roots: Sequence[Cid], blocks: Sequence[Block], padding: int = 13) -> bytes:
    """A CARv2 with ``padding`` bytes between its header and its data, and no index."""
    inner = car_v1(roots, blocks)
    offset = 11 + 40 + padding
    header = bytes(16) + struct.pack("<QQQ", offset, len(inner), 0)
    return bytes.fromhex("0aa16776657273696f6e02") + header + bytes(padding) + inner


@dataclass
class Dag:
    """A DAG of several levels mixing the three codecs, with a block linked twice."""

    root: Cid
    blocks: list[Block]  # depth first from the root, each once

    @property
    def cids(self) -> list[Cid]:
        return [cid for cid, _ in self.blocks]


def sample_dag(salt: str = "") -> Dag:
    """root (dag-cbor) -> {dir (dag-pb) -> [a, b (raw), sub (dag-pb v0) -> [a, c (raw)]],
    meta (dag-cbor) -> [c], shared (raw: a again)}: 4 levels, 3 codecs, a and c linked twice."""
    a = raw(f"leaf a {salt}".encode())
    b = raw(f"leaf b {salt}".encode())
    c = raw(f"leaf c {salt}".encode())
    sub = dag_pb([(a[0], "a"), (c[0], "c")], b"\x08\x01", v0=True)
    directory = dag_pb([(a[0], "a"), (b[0], "b"), (sub[0], "sub")], b"\x08\x01")
    meta = dag_cbor({"about": salt, "parts": [link(c[0])]})
    root = dag_cbor({"dir": link(directory[0]), "meta": link(meta[0]), "shared": link(a[0])})
    return Dag(root[0], [root, directory, a, b, sub, c, meta])
