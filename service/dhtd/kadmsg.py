"""Building and reading kad wire messages (libp2p kad-dht spec).

Small, pure helpers shared by the inbound handlers and the outbound
operations, so both sides encode peers and record times one way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from dhtd.ids import encode_uvarint, is_peer_id
from dhtd.lookup import PeerRecord
from dhtd.wire.kad_pb2 import Message, Record

MessageType = Message.MessageType

# RFC 3339 date-time: full date, full time, optional fraction, required offset.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def new_message(kind: int, key: bytes = b"") -> Message:
    message = Message()
    message.type = kind  # type: ignore[assignment]
    message.key = key
    return message


def add_peers(field: object, peers: Iterable[PeerRecord], connected: frozenset[bytes]) -> None:
    """Appends ``peers`` to a repeated ``Message.Peer`` field."""
    for peer in peers:
        entry = field.add()  # type: ignore[attr-defined]
        entry.id = peer.id
        entry.addrs.extend(peer.addrs)
        entry.connection = Message.CONNECTED if peer.id in connected else Message.CAN_CONNECT


# Ours (go-libp2p bounds addresses only by the 4 MiB message): addresses kept per
# peer read from the network. Kubo announces about 10; the rest are dropped.
MAX_ADDRS_PER_PEER = 32

# Ours: the longest binary multiaddr kept. A /dns4 name is at most 255 bytes and a
# webtransport address with two certhashes about 150: longer ones are junk.
MAX_ADDR_BYTES = 512

# The multicodec of the /p2p/ multiaddr component (0x01a5), as a varint.
_P2P_CODE = b"\xa5\x03"


def strip_own_p2p(peer: bytes, addr: bytes) -> bytes:
    """A binary multiaddr without a trailing ``/p2p/<peer>`` naming ``peer`` itself.

    js-libp2p announces its addresses with that suffix (in ADD_PROVIDER and
    FIND_NODE answers); go-libp2p and dhtd send them without it. Peer addresses
    are kept and served in the second form."""
    suffix = _P2P_CODE + encode_uvarint(len(peer)) + peer
    if peer and addr.endswith(suffix) and len(addr) > len(suffix):
        return addr[: -len(suffix)]
    return addr


def peer_addrs(peer: bytes, addrs: Iterable[bytes]) -> tuple[bytes, ...]:
    """``addrs`` of ``peer`` as received, each without a redundant /p2p/<peer>,
    deduplicated; at most MAX_ADDRS_PER_PEER, none longer than MAX_ADDR_BYTES."""
    out: dict[bytes, None] = {}
    for addr in addrs:
        if 0 < len(addr) <= MAX_ADDR_BYTES:
            out[strip_own_p2p(peer, addr)] = None
            if len(out) == MAX_ADDRS_PER_PEER:
                break
    return tuple(out)


def read_peers(field: Sequence[Message.Peer], limit: int) -> list[PeerRecord]:
    """Decodes the first ``limit`` entries of a repeated ``Message.Peer`` field
    (the rest of an oversized answer is ignored); entries with no ID or an ID that
    is not a peer multihash are dropped."""
    out = []
    for p in field[:limit]:
        # addrs[:] copies the repeated field in C; tuple(p.addrs) iterates it
        # in Python, which took half the time of reading a 20-peer answer.
        record = _read_peer(p.id, tuple(p.addrs[:]))
        if record is not None:
            out.append(record)
    return out


# Every answer of a walk names mostly the same peers with the same addresses:
# decoding them is cached (bounded: a peer sending made-up peers only cycles it).
_READ_CACHE = 8192


@functools.lru_cache(maxsize=_READ_CACHE)
def _read_peer(peer: bytes, addrs: tuple[bytes, ...]) -> PeerRecord | None:
    return PeerRecord(peer, peer_addrs(peer, addrs)) if is_peer_id(peer) else None


def new_record(key: bytes, value: bytes, received_at: float | None = None) -> Record:
    record = Record()
    record.key = key
    record.value = value
    if received_at is not None:
        record.timeReceived = format_time(received_at)
    return record


def format_time(epoch: float) -> str:
    """RFC 3339 with nanoseconds and a Z, as go-libp2p writes Record.timeReceived."""
    dt = datetime.fromtimestamp(epoch, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond * 1000:09d}Z"


def parse_time(text: str) -> float | None:
    """Reads an RFC 3339 time (any fraction length); None if it is not one."""
    text = text.strip()
    if not _RFC3339.fullmatch(text):
        return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    head, sep, rest = text.partition(".")
    if sep:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.timestamp()
