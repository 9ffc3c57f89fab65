"""CAR files (content-addressable archives), v1 and v2, read as a stream.

A CARv1 (ipld.io/specs/transport/car/carv1) is a varint-length-prefixed
dag-cbor header, ``{"version": 1, "roots": [CID, ...]}``, then sections until
the end: a varint length, a binary CID, and the block's bytes. A CARv2 (carv2)
starts with an 11-byte pragma (a CARv1 header that says version 2) and a
40-byte header that says where its inner CARv1 lies; the index after it is not
needed to read the blocks in order.

Promises: only one section is in memory at a time, and every length read from
the input is bounded (MAX_HEADER_BYTES, MAX_SECTION_BYTES) before anything is
allocated for it, so a 1 GiB CAR, or a hostile one, costs at most a few MiB.
Whatever is wrong with the input raises :class:`CarError`, which says what.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

import cbor2

from dhtd.ids import DAG_PB, SHA2_256, SHA2_256_LEN, Cid, decode_uvarint

# Ours: the longest CAR header read. A header holds the roots only (about 40
# bytes each); go-car allows 32 MiB, which no real CAR comes near.
MAX_HEADER_BYTES = 64 * 1024

# The largest block read, plus its CID: 2 MiB is the block size limit of the
# IPFS stacks (boxo's bitswap and Kubo refuse larger blocks), so a larger
# section cannot hold a block any peer would fetch.
MAX_BLOCK_BYTES = 2 * 1024 * 1024
MAX_SECTION_BYTES = MAX_BLOCK_BYTES + 256

# The CARv2 pragma: varint 10, then dag-cbor {"version": 2}.
CARV2_PRAGMA = bytes.fromhex("0aa16776657273696f6e02")
CARV2_HEADER_BYTES = 40

# Bytes asked of the source per read.
READ_CHUNK = 256 * 1024

# Tag 42: a CID link in dag-cbor, its bytes prefixed with the identity multibase (0x00).
CID_TAG = 42


class CarError(Exception):
    """Not a CAR, or one that breaks the spec or dhtd's limits."""


class ByteSource(Protocol):
    """Where a CAR's bytes come from (a file, an HTTP body)."""

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes; b"" at the end."""
        ...


@dataclass(frozen=True)
class CarHeader:
    version: int  # 1 or 2, as the file says
    roots: tuple[Cid, ...]


def read_cid(data: bytes, pos: int = 0) -> tuple[Cid, int]:
    """The binary CID at ``data[pos:]`` and where it ends. Raises ValueError."""
    if data[pos:pos + 2] == bytes((SHA2_256, SHA2_256_LEN)):  # a CIDv0: a bare multihash
        end = pos + 2 + SHA2_256_LEN
        if end > len(data):
            raise ValueError("a CIDv0 is cut short")
        return Cid(0, DAG_PB, data[pos:end]), end
    version, at = decode_uvarint(data, pos)
    if version != 1:
        raise ValueError(f"unsupported CID version {version}")
    codec, start = decode_uvarint(data, at)
    _, at = decode_uvarint(data, start)
    length, at = decode_uvarint(data, at)
    end = at + length
    if end > len(data):
        raise ValueError("a CID's multihash is cut short")
    return Cid(1, codec, data[start:end]), end


def cid_of_link(value: object) -> Cid:
    """The CID in a dag-cbor link (tag 42: 0x00, then the binary CID). Raises ValueError."""
    if not isinstance(value, bytes) or not value or value[0] != 0:
        raise ValueError("a tag 42 link must be bytes starting with 0x00")
    cid, end = read_cid(value, 1)
    if end != len(value):
        raise ValueError("a tag 42 link has bytes after its CID")
    return cid


class CarReader:
    """Reads one CAR from ``source``: :meth:`header`, then :meth:`blocks`."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._buf = b""
        self._at = 0  # bytes consumed from the source
        self._end: int | None = None  # CARv2: where the inner CARv1 ends
        self._header: CarHeader | None = None

    async def _fill(self, n: int) -> bool:
        """At least ``n`` bytes buffered; False if the source ended first."""
        while len(self._buf) < n:
            chunk = await self._source.read(max(READ_CHUNK, n - len(self._buf)))
            if not chunk:
                return False
            self._buf += chunk
        return True

    async def _take(self, n: int, what: str) -> bytes:
        if not await self._fill(n):
            raise CarError(f"the CAR ends inside {what}")
        data, self._buf = self._buf[:n], self._buf[n:]
        self._at += n
        return data

    async def _uvarint(self, what: str) -> int | None:
        """A varint, or None at a clean end of input."""
        await self._fill(10)
        if not self._buf:
            return None
        try:
            value, used = decode_uvarint(self._buf[:10])
        except ValueError as exc:
            raise CarError(f"{what}: {exc}") from None
        self._buf = self._buf[used:]
        self._at += used
        return value

    async def header(self) -> CarHeader:
        """Reads the header (both of a CARv2's), and is then ready for :meth:`blocks`."""
        if self._header is None:
            header = await self._car_header()
            if header.version == 2:
                await self._carv2()
                header = await self._car_header()
                if header.version != 1:
                    raise CarError(f"a CARv2's inner CAR says version {header.version}, not 1")
                header = CarHeader(2, header.roots)
            elif header.version != 1:
                raise CarError(f"CAR version {header.version} is not supported (1 and 2 are)")
            self._header = header
        return self._header

    async def _car_header(self) -> CarHeader:
        length = await self._uvarint("the header's length")
        if length is None:
            raise CarError("the input is empty: not a CAR")
        if not 0 < length <= MAX_HEADER_BYTES:
            raise CarError(f"a header of {length} bytes (at most {MAX_HEADER_BYTES})")
        raw = await self._take(length, "its header")
        try:
            decoded = cbor2.loads(raw)
            version = decoded["version"]
            roots: list[Cid] = []
            for root in decoded.get("roots", []):
                if not isinstance(root, cbor2.CBORTag) or root.tag != CID_TAG:
                    raise ValueError("its roots must be CID links (tag 42)")
                roots.append(cid_of_link(root.value))
        except Exception as exc:  # whatever a malformed header makes cbor2 or us raise
            raise CarError(f"the header is not a CAR header: {exc}") from None
        if not isinstance(version, int) or isinstance(version, bool):
            raise CarError("the header's version is not a number")
        return CarHeader(version, tuple(roots))

    async def _carv2(self) -> None:
        raw = await self._take(CARV2_HEADER_BYTES, "the CARv2 header")
        offset, size, _index = struct.unpack_from("<QQQ", raw, 16)
        if offset < self._at:
            raise CarError(f"the CARv2 data offset {offset} points into its header")
        while self._at < offset:  # skip padding, a chunk at a time
            await self._take(min(offset - self._at, READ_CHUNK), "the CARv2 padding")
        self._end = offset + size

    async def blocks(self) -> AsyncGenerator[tuple[Cid, bytes], None]:
        """Each section's CID and bytes, in file order (not verified: see dhtd.blocks.dag)."""
        await self.header()
        while self._end is None or self._at < self._end:
            length = await self._uvarint("a section's length")
            if length is None:
                if self._end is not None:
                    raise CarError("the CARv2 ends before its data size")
                return
            if not 0 < length <= MAX_SECTION_BYTES:
                raise CarError(f"a section of {length} bytes (blocks are at most "
                               f"{MAX_BLOCK_BYTES})")
            if self._end is not None and self._at + length > self._end:
                raise CarError("a section runs past the CARv2's data size")
            section = await self._take(length, "a section")
            try:
                cid, start = read_cid(section)
            except ValueError as exc:
                raise CarError(f"a section's CID: {exc}") from None
            yield cid, section[start:]
