"""Unit tests for dhtd.kadmsg: message helpers and Record.timeReceived times."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtd.kadmsg import (
    MAX_ADDR_BYTES,
    MAX_ADDRS_PER_PEER,
    MessageType,
    add_peers,
    format_time,
    new_message,
    new_record,
    parse_time,
    peer_addrs,
    read_peers,
    strip_own_p2p,
)
from dhtd.lookup import PeerRecord
from dhtd.wire.kad_pb2 import Message

NOW = 1_750_000_000.123456


# --- times ------------------------------------------------------------------------------------


def test_format_time_is_rfc3339_with_nanoseconds_and_z() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000000000Z"
    assert format_time(1_700_000_000.5) == "2023-11-14T22:13:20.500000000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", format_time(NOW))


@pytest.fixture
def local_zone_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is 3 h 30 min west of UTC (a POSIX TZ string)."""
    monkeypatch.setenv("TZ", "XYZ+03:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_not_utc")
def test_times_are_utc_whatever_the_local_time_zone() -> None:
    assert time.timezone == 3 * 3600 + 1800  # the zone is really in force
    assert format_time(0) == "1970-01-01T00:00:00.000000000Z"
    assert format_time(1_700_000_000.5) == "2023-11-14T22:13:20.500000000Z"
    assert parse_time("2023-11-14T22:13:20.5Z") == 1_700_000_000.5
    assert parse_time(format_time(NOW)) == pytest.approx(NOW, abs=1e-6)


@settings(database=None, max_examples=300)
@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_format_then_parse_round_trips_to_the_microsecond(epoch: float) -> None:
    parsed = parse_time(format_time(epoch))
    assert parsed is not None
    assert parsed == pytest.approx(epoch, abs=1e-6)
    # Formatting what was parsed gives the same text back.
    assert format_time(parsed) == format_time(epoch)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20z", 1_700_000_000.0),
        ("2023-11-14t22:13:20Z", 1_700_000_000.0),
        ("2023-11-14 22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20.5Z", 1_700_000_000.5),
        ("2023-11-14T22:13:20.123456789Z", 1_700_000_000.123456),
        ("2023-11-14T22:13:20.000000001Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20.1234567890123Z", 1_700_000_000.123456),
        ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
        ("2023-11-15T00:13:20.25+02:00", 1_700_000_000.25),
        ("2023-11-14T17:13:20.123456789-05:00", 1_700_000_000.123456),
        ("2023-11-14T22:13:20-00:00", 1_700_000_000.0),
        ("  2023-11-14T22:13:20Z\n", 1_700_000_000.0),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    parsed = parse_time(text)
    assert parsed is not None
    assert parsed == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage",
        "1700000000",
        "nan",
        "2023-11-14",  # a date is not a date-time
        "22:13:20Z",
        "2023-11-14T22:13Z",  # seconds are required
        "2023-11-14T22:13:20",  # so is the offset
        "20231114T221320Z",  # the basic ISO 8601 form is not RFC 3339
        "2023-11-14T22:13:20.Z",  # a '.' needs digits
        "2023-11-14T22:13:20.5.5Z",
        "2023-11-14T22:13:20ZZ",
        "2023-11-14T22:13:20+0200",
        "2023-13-14T22:13:20Z",  # month 13
        "2023-11-31T22:13:20Z",  # November 31st
        "2023-11-14T25:13:20Z",
        "2023-11-14T22:13:20+24:00",
        "٢٠٢٣-11-14T22:13:20Z",  # non-ASCII digits
        "2023-11-14T22:13:20Z trailing",
    ],
)
def test_parse_time_garbage_is_none(text: str) -> None:
    assert parse_time(text) is None


# --- messages -----------------------------------------------------------------------------------


def test_new_message() -> None:
    message = new_message(MessageType.GET_VALUE, b"/pk/x")
    assert message.type == Message.GET_VALUE
    assert message.key == b"/pk/x"
    assert not message.HasField("record")
    assert new_message(MessageType.PING).key == b""


def test_new_record() -> None:
    record = new_record(b"/app/k", b"v", NOW)
    assert (record.key, record.value) == (b"/app/k", b"v")
    assert record.timeReceived == format_time(NOW)
    assert new_record(b"/app/k", b"v").timeReceived == ""


def test_add_peers_then_read_peers() -> None:
    peers = [PeerRecord(b"\x12\x20" + bytes([i]) * 32, (b"a%d" % i, b"b")) for i in range(3)]
    peers.append(PeerRecord(b"\x12\x20" + b"\x09" * 32))
    message = Message()
    add_peers(message.closerPeers, peers, frozenset([peers[1].id]))
    assert [p.connection for p in message.closerPeers] == [
        Message.CAN_CONNECT, Message.CONNECTED, Message.CAN_CONNECT, Message.CAN_CONNECT
    ]
    wire = Message.FromString(message.SerializeToString())
    assert read_peers(wire.closerPeers, 10) == peers


def test_read_peers_drops_entries_without_a_peer_id() -> None:
    good = b"\x12\x20" + bytes(32)
    message = Message()
    message.closerPeers.add().addrs.append(b"orphan")
    message.closerPeers.add().id = b"p"  # not a multihash
    message.closerPeers.add().id = b"\x12\x20" + bytes(31)  # digest too short
    message.closerPeers.add().id = good
    assert read_peers(message.closerPeers, 10) == [PeerRecord(good)]


def test_read_peers_reads_at_most_limit_entries() -> None:
    message = Message()
    ids = [b"\x12\x20" + i.to_bytes(32, "big") for i in range(1200)]
    for peer in ids:
        message.closerPeers.add().id = peer
    assert [p.id for p in read_peers(message.closerPeers, 40)] == ids[:40]


def test_peer_addrs_keeps_at_most_the_cap_and_drops_oversized_addrs() -> None:
    many = [bytes([0x04, 10, 0, i // 256, i % 256, 0x06, 0x0F, 0xA1]) for i in range(10_000)]
    got = peer_addrs(PEER, many)
    assert got == tuple(many[:MAX_ADDRS_PER_PEER])
    huge = TCP_ADDR + bytes(MAX_ADDR_BYTES)
    assert peer_addrs(PEER, [huge, b"", TCP_ADDR]) == (TCP_ADDR,)


# --- /p2p/ suffixes (js-libp2p announces its addresses with one) ------------------------------

# /ip4/127.0.0.1/tcp/4001 and the identity-multihash peer IDs below, in binary.
TCP_ADDR = bytes([0x04, 127, 0, 0, 1, 0x06, 0x0F, 0xA1])
PEER = b"\x00\x24" + bytes(range(36))
OTHER = b"\x00\x24" + bytes(range(1, 37))


def p2p(peer: bytes) -> bytes:
    return b"\xa5\x03" + bytes([len(peer)]) + peer


def test_a_trailing_p2p_of_the_peer_itself_is_stripped() -> None:
    assert strip_own_p2p(PEER, TCP_ADDR + p2p(PEER)) == TCP_ADDR
    assert strip_own_p2p(PEER, TCP_ADDR) == TCP_ADDR


def test_a_p2p_of_another_peer_is_kept() -> None:
    # A relay address names the relay, not the peer: it is not redundant.
    assert strip_own_p2p(PEER, TCP_ADDR + p2p(OTHER)) == TCP_ADDR + p2p(OTHER)


def test_an_address_that_is_only_p2p_is_kept() -> None:
    assert strip_own_p2p(PEER, p2p(PEER)) == p2p(PEER)


def test_peer_addrs_strips_and_deduplicates_in_order() -> None:
    other = bytes([0x04, 10, 0, 0, 1, 0x06, 0x0F, 0xA1])
    got = peer_addrs(PEER, [TCP_ADDR + p2p(PEER), other, TCP_ADDR])
    assert got == (TCP_ADDR, other)


def test_read_peers_strips_each_peers_own_suffix() -> None:
    message = Message()
    entry = message.closerPeers.add()
    entry.id = PEER
    entry.addrs.extend([TCP_ADDR + p2p(PEER), TCP_ADDR + p2p(OTHER)])
    assert read_peers(message.closerPeers, 10) == [
        PeerRecord(PEER, (TCP_ADDR, TCP_ADDR + p2p(OTHER)))
    ]


# --- address bounds ----------------------------------------------------------------------------


# Addresses read from the network: each 1 to 512 bytes, 32 per peer (docs/limits.md).
@pytest.mark.parametrize(
    ("length", "kept"),
    [(0, False), (1, True), (511, True), (512, True), (513, False), (100_000, False)],
)
def test_peer_addrs_keeps_addresses_of_1_to_512_bytes(length: int, kept: bool) -> None:
    addr = (TCP_ADDR + bytes(length))[:length]
    assert len(addr) == length
    assert peer_addrs(PEER, [addr, TCP_ADDR]) == ((addr, TCP_ADDR) if kept else (TCP_ADDR,))


def tcp(port: int) -> bytes:
    return bytes([0x04, 10, 0, 0, 1, 0x06]) + port.to_bytes(2, "big")


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ([tcp(i) for i in range(31)], [tcp(i) for i in range(31)]),
        ([tcp(i) for i in range(32)], [tcp(i) for i in range(32)]),
        ([tcp(i) for i in range(33)], [tcp(i) for i in range(32)]),
        # Repeats and oversized addresses do not use up the 32.
        ([tcp(0)] * 10 + [bytes(513)] * 10 + [tcp(i) for i in range(40)],
         [tcp(i) for i in range(32)]),
        # Once stripped of its own /p2p/ suffix, an address is a repeat.
        ([tcp(0), tcp(0) + p2p(PEER)]
         + [tcp(i) for i in range(1, 40)], [tcp(i) for i in range(32)]),
    ],
    ids=["31", "32", "33", "repeats-and-oversized", "repeat-after-strip"],
)
def test_peer_addrs_keeps_32_distinct_addresses_in_order(
    sent: list[bytes], expected: list[bytes]
) -> None:
    assert peer_addrs(PEER, sent) == tuple(expected)
