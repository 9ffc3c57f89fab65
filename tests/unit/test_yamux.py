"""dhtd's yamux (dhtd.p2p.yamux): the spec's frames, flow control, limits and errors.

Two sessions talk over an in-memory byte pipe; where a test needs a peer that
breaks the rules, the other end of the pipe is driven frame by frame. One test
runs py-libp2p's own yamux on the other side, as an independent implementation.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamReset,
)
from libp2p.stream_muxer.yamux.yamux import Yamux as StockYamux

from dhtd.p2p import yamux
from dhtd.p2p.yamux import (
    ACCEPT_BACKLOG,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_PROTOCOL_ERROR,
    INITIAL_SEND_WINDOW,
    RECEIVE_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    WINDOW_UPDATE_THRESHOLD,
    Yamux,
    YamuxStream,
    _Noise,
    _sealer,
    _Secured,
)

HEADER = struct.Struct(">BBHII")
PEER = ID(b"\x00\x24" + b"\x01" * 36)


class Pipe:
    """One end of an in-memory connection, with the secured-connection surface the
    muxer uses; counts the writes that reach it."""

    def __init__(self, stream: Any, initiator: bool) -> None:
        self.stream = stream
        self.is_initiator = initiator
        self.writes = 0
        self.closed = False

    async def read(self, n: int | None = None) -> bytes:
        return bytes(await self.stream.receive_some(n))

    async def write(self, data: bytes) -> None:
        self.writes += 1
        await self.stream.send_all(data)

    async def close(self) -> None:
        self.closed = True
        await self.stream.aclose()

    def get_transport_addresses(self) -> list[Any]:
        return []

    def get_remote_address(self) -> None:
        return None


def pair() -> tuple[Pipe, Pipe]:
    a, b = trio.testing.memory_stream_pair()
    return Pipe(a, True), Pipe(b, False)


def session(pipe: Pipe) -> Yamux:
    return Yamux(pipe, PEER)  # type: ignore[arg-type]


def run(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@asynccontextmanager
async def sessions() -> AsyncIterator[tuple[Yamux, Yamux, Pipe, Pipe, trio.Nursery]]:
    """Two running sessions on the two ends of a pipe (a dials), and a nursery for
    the test's own tasks (cancelled at the end)."""
    a_pipe, b_pipe = pair()
    a, b = session(a_pipe), session(b_pipe)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.start)
        nursery.start_soon(b.start)
        yield a, b, a_pipe, b_pipe, nursery
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def against_raw_peer() -> AsyncIterator[tuple[Yamux, Pipe, RawPeer, trio.Nursery]]:
    """A running session (it dials) whose peer is driven frame by frame, and a
    nursery for the test's own tasks (cancelled at the end)."""
    a_pipe, b_pipe = pair()
    a = session(a_pipe)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.start)
        yield a, a_pipe, RawPeer(b_pipe), nursery
        nursery.cancel_scope.cancel()


class RawPeer:
    """The far end of a pipe, driven frame by frame."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.buf = bytearray()

    async def send(self, kind: int, flags: int, stream_id: int, length: int,
                   body: bytes = b"", version: int = 0) -> None:
        await self.pipe.write(HEADER.pack(version, kind, flags, stream_id, length) + body)

    async def frame(self) -> tuple[int, int, int, int, bytes] | None:
        """The next frame, or None at EOF."""
        while True:
            if len(self.buf) >= 12:
                _, kind, flags, sid, length = HEADER.unpack_from(self.buf)
                body_len = length if kind == TYPE_DATA else 0
                if len(self.buf) >= 12 + body_len:
                    body = bytes(self.buf[12:12 + body_len])
                    del self.buf[:12 + body_len]
                    return kind, flags, sid, length, body
            try:
                chunk = await self.pipe.read(65536)
            except trio.ClosedResourceError:
                return None
            if not chunk:
                return None
            self.buf += chunk


def test_streams_carry_data_both_ways_and_close_half_at_a_time() -> None:
    async def main() -> None:
        async with sessions() as (a, b, _a_pipe, _b_pipe, _nursery):
            out = await a.open_stream()
            await out.write(b"ping")
            inbound = await b.accept_stream()
            assert inbound.stream_id == out.stream_id == 1  # the dialler's IDs are odd
            assert await inbound.read(100) == b"ping"
            await out.close()
            with pytest.raises(MuxedStreamEOF, match="closed by the peer"):
                await inbound.read(100)
            with pytest.raises(MuxedStreamClosed, match="closed for writing"):
                await out.write(b"more")
            await inbound.write(b"pong")  # the other half stays open
            assert await out.read(100) == b"pong"
            await inbound.close()
            with pytest.raises(MuxedStreamEOF):
                await out.read(100)
            assert not a._streams and not b._streams  # both ends closed: forgotten
            second = await b.open_stream()
            assert second.stream_id == 2  # the listener's IDs are even
            await a.close()
            await b.close()

    run(main)


def test_syn_and_ack_ride_on_the_first_frames() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, a_pipe, peer, _nursery):
            stream = await a.open_stream()
            assert a_pipe.writes == 0  # opening alone sends nothing
            await stream.write(b"hello")
            assert await peer.frame() == (TYPE_DATA, FLAG_SYN, 1, 5, b"hello")
            await stream.write(b"again")
            assert await peer.frame() == (TYPE_DATA, 0, 1, 5, b"again")
            # A stream the peer opens is acknowledged with our first frame.
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0)
            inbound = await a.accept_stream()
            await inbound.close()
            assert await peer.frame() == (TYPE_WINDOW_UPDATE, FLAG_ACK | FLAG_FIN, 2, 0, b"")
            # A stream reset before its first frame was never known to the peer.
            silent = await a.open_stream()
            writes = a_pipe.writes
            await silent.reset()
            assert a_pipe.writes == writes

    run(main)


def test_a_large_write_flows_through_window_updates_sent_per_half_window() -> None:
    payload = bytes(range(256)) * (4 * RECEIVE_WINDOW // 256)  # 1 MiB: four windows

    async def main() -> None:
        async with sessions() as (a, b, _a_pipe, b_pipe, nursery):
            out = await a.open_stream()
            nursery.start_soon(out.write, payload)
            inbound = await b.accept_stream()
            got = bytearray()
            while len(got) < len(payload):
                got += await inbound.read(16 * 1024)
            assert got == payload
            # Updates only once half the window was read, never per read.
            assert b_pipe.writes <= len(payload) // WINDOW_UPDATE_THRESHOLD + 1

    run(main)


def test_a_writer_stops_at_the_peers_window_and_gives_up_after_the_wait_timeout() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            stream = await a.open_stream()
            start = trio.current_time()
            with pytest.raises(MuxedStreamReset, match="window"):
                await stream.write(b"x" * (INITIAL_SEND_WINDOW + 1))
            assert trio.current_time() - start == pytest.approx(yamux.WINDOW_WAIT_TIMEOUT)
            sent = 0
            while True:
                frame = await peer.frame()
                assert frame is not None
                if frame[0] == TYPE_DATA:
                    sent += frame[3]
                if frame[1] & FLAG_RST:
                    break
            assert sent == INITIAL_SEND_WINDOW  # not one byte past the window

    run(main)


def test_a_window_update_lets_a_blocked_writer_go_on() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, nursery):
            stream = await a.open_stream()
            done = trio.Event()

            async def write() -> None:
                await stream.write(b"y" * (INITIAL_SEND_WINDOW + 10))
                done.set()

            nursery.start_soon(write)
            got = 0
            while got < INITIAL_SEND_WINDOW:
                frame = await peer.frame()
                assert frame is not None
                got += frame[3]
            await trio.sleep(1)
            assert not done.is_set()
            await peer.send(TYPE_WINDOW_UPDATE, 0, 1, 10)
            assert await peer.frame() == (TYPE_DATA, 0, 1, 10, b"y" * 10)
            await done.wait()

    run(main)


@pytest.mark.parametrize("attack", ["version", "oversized", "beyond_window", "type", "syn_twice"])
def test_a_peer_that_breaks_the_protocol_loses_the_connection(attack: str) -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, a_pipe, peer, _nursery):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0)
            stream = await a.accept_stream()
            if attack == "version":
                await peer.send(TYPE_PING, FLAG_SYN, 0, 1, version=1)
            elif attack == "oversized":
                await peer.send(TYPE_DATA, 0, 2, RECEIVE_WINDOW + 1)
            elif attack == "beyond_window":
                chunk = b"z" * (RECEIVE_WINDOW // 2)
                for _ in range(3):  # the stream is never read: 1.5 windows
                    await peer.send(TYPE_DATA, 0, 2, len(chunk), chunk)
            elif attack == "type":
                await peer.send(9, 0, 2, 0)
            else:
                await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0)
            frames = []
            while (frame := await peer.frame()) is not None:
                frames.append(frame)
            assert frames[-1] == (TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR, b"")
            assert a.is_closed and a_pipe.closed
            with pytest.raises(MuxedStreamReset):
                await stream.read(1)
            with pytest.raises(MuxedConnUnavailable):
                await a.open_stream()

    run(main)


def test_pings_are_answered_and_go_away_stops_new_streams() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            await peer.send(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF)
            assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF, b"")
            stream = await a.open_stream()
            await peer.send(TYPE_GO_AWAY, 0, 0, 0)
            await peer.send(TYPE_PING, FLAG_SYN, 0, 7)  # so we know GO_AWAY was read
            assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 7, b"")
            with pytest.raises(MuxedConnUnavailable, match="GO_AWAY"):
                await a.open_stream()
            await stream.write(b"still")  # streams already open go on
            assert await peer.frame() == (TYPE_DATA, FLAG_SYN, 1, 5, b"still")

    run(main)


def test_streams_past_the_backlog_are_reset_and_the_rest_served() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            for i in range(ACCEPT_BACKLOG + 3):
                await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 + 2 * i, 0)
            resets = set()
            while len(resets) < 3:
                frame = await peer.frame()
                assert frame is not None and frame[1] == FLAG_RST
                resets.add(frame[2])
            assert resets == {2 + 2 * i for i in range(ACCEPT_BACKLOG, ACCEPT_BACKLOG + 3)}
            first = await a.accept_stream()
            assert first.stream_id == 2

    run(main)


def test_a_reset_from_the_peer_ends_reads_and_writes() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, nursery):
            await peer.send(TYPE_DATA, FLAG_SYN, 2, 3, b"abc")
            stream = await a.accept_stream()
            reading = trio.Event()
            reset = trio.Event()

            async def read() -> None:
                assert await stream.read() == b"abc"
                reading.set()
                with pytest.raises(MuxedStreamReset):
                    await stream.read()
                reset.set()

            nursery.start_soon(read)
            await reading.wait()
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_RST, 2, 0)
            with trio.fail_after(1):
                await reset.wait()
            with pytest.raises(MuxedStreamReset):
                await stream.write(b"late")
            assert not a._streams

    run(main)


def test_what_arrived_before_the_peers_reset_is_still_read_then_the_reset() -> None:
    """go-libp2p-kad-dht writes an ADD_PROVIDER on the stream it shares per peer, then
    resets that stream when a later request on it is cancelled: the message arrived
    whole before the RST, and is read; a write fails at once."""
    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            await peer.send(TYPE_DATA, FLAG_SYN, 2, 3, b"abc")
            await peer.send(TYPE_DATA, 0, 2, 3, b"def")
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_RST, 2, 0)
            with trio.fail_after(1):
                stream = await a.accept_stream()
                await trio.testing.wait_all_tasks_blocked()  # all three frames taken
            assert not a._streams
            with pytest.raises(MuxedStreamReset):
                await stream.write(b"late")
            assert await stream.read(4) == b"abcd"
            assert await stream.read() == b"ef"
            with pytest.raises(MuxedStreamReset):
                await stream.read()

    run(main)


def test_our_own_reset_drops_what_was_not_read() -> None:
    async def main() -> None:
        stream = YamuxStream(Any, 2, outbound=True)  # type: ignore[arg-type]
        stream._conn = type("Conn", (), {"_forget": lambda self, s: None})()  # type: ignore[assignment]
        stream._on_data(b"unread")
        await stream.reset()
        with pytest.raises(MuxedStreamReset):
            await stream.read()

    trio.run(main)


def test_frames_of_concurrent_writers_go_out_in_fewer_writes() -> None:
    async def main() -> None:
        async with sessions() as (a, b, a_pipe, _b_pipe, _nursery):
            streams = [await a.open_stream() for _ in range(50)]
            async with trio.open_nursery() as writers:
                for s in streams:
                    writers.start_soon(s.write, b"m" * 100)
            assert a_pipe.writes < 50
            for _ in streams:
                inbound = await b.accept_stream()
                assert await inbound.read() == b"m" * 100

    run(main)


def test_a_write_the_socket_never_takes_closes_the_connection_after_the_timeout() -> None:
    async def main() -> None:
        a_pipe, _ = pair()
        closed = trio.Event()

        async def on_close() -> None:
            closed.set()

        a = Yamux(a_pipe, PEER, on_close=on_close)  # type: ignore[arg-type]
        stuck = trio.Event()

        async def never(data: bytes) -> None:
            await stuck.wait()

        a_pipe.write = never  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start)
            stream = await a.open_stream()
            start = trio.current_time()
            with pytest.raises(MuxedStreamReset, match="not done within"):
                await stream.write(b"x")
            assert trio.current_time() - start == pytest.approx(yamux.WRITE_TIMEOUT)
            with pytest.raises(MuxedConnUnavailable):
                await a._send(b"")
            # Nothing more can go out: the connection is closed, and the host told.
            with trio.fail_after(1):
                await closed.wait()
            assert a.is_closed and a_pipe.closed
            nursery.cancel_scope.cancel()

    run(main)


def test_the_connection_ends_when_the_peer_hangs_up() -> None:
    async def main() -> None:
        a_pipe, b_pipe = pair()
        closed = trio.Event()

        async def on_close() -> None:
            closed.set()

        a = Yamux(a_pipe, PEER, on_close=on_close)  # type: ignore[arg-type]
        assert a.peer_id == PEER and a.is_initiator
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start)
            out = await a.open_stream()
            await b_pipe.close()
            await closed.wait()
            with pytest.raises(MuxedStreamReset, match="stream reset"):
                await out.read()
            with pytest.raises(MuxedConnUnavailable, match="connection closed"):
                await a.accept_stream()
            with pytest.raises(MuxedConnUnavailable, match="connection closed"):
                await a.open_stream()
            await out.close()  # on a dead connection: nothing to send, no error
            await out.reset()

    run(main)


@pytest.mark.parametrize("stock_dials", [True, False])
def test_interoperates_with_py_libp2ps_own_yamux(stock_dials: bool) -> None:
    payload = b"q" * (RECEIVE_WINDOW + 12345)  # past one window, so updates are needed

    async def main() -> None:
        stock_pipe, ours_pipe = pair() if stock_dials else pair()[::-1]
        stock = StockYamux(stock_pipe, PEER, is_initiator=stock_dials)  # type: ignore[arg-type]
        ours = session(ours_pipe)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stock.start)
            nursery.start_soon(ours.start)
            await stock.event_started.wait()
            for opener, acceptor in ((stock, ours), (ours, stock)):
                out = await opener.open_stream()
                nursery.start_soon(out.write, payload)
                inbound = await acceptor.accept_stream()
                got = bytearray()
                while len(got) < len(payload):
                    got += await inbound.read(65536)
                assert got == payload
                await inbound.write(b"done")
                assert await out.read(4) == b"done"
                await out.close()
                await inbound.close()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_receive_window_grows_by_what_was_read_once_half_of_it_was() -> None:
    half = RECEIVE_WINDOW // 2

    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0)
            stream = await a.accept_stream()
            await peer.send(TYPE_DATA, 0, 2, half, b"a" * half)
            got = b""
            while len(got) < half - 1:
                got += await stream.read(half - 1 - len(got))
            await peer.send(TYPE_PING, FLAG_SYN, 0, 1)  # nothing but the pong so far
            assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 1, b"")
            assert await stream.read(1) == b"a"  # half the window read: one update
            assert await peer.frame() == (TYPE_WINDOW_UPDATE, FLAG_ACK, 2, half, b"")
            # The peer may now send what was left plus what was given back: a full
            # window, which only a window that adds the update to what was left allows.
            chunk = b"b" * RECEIVE_WINDOW
            await peer.send(TYPE_DATA, 0, 2, len(chunk), chunk)
            got = b""
            while len(got) < len(chunk):
                got += await stream.read()  # n left out: whatever is there
            assert got == chunk and not a.is_closed

    run(main)


def test_each_window_update_adds_to_the_send_window() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            stream = await a.open_stream()
            await stream.write(b"x")  # SYN; the window is now 256 KiB - 1
            await peer.frame()
            await peer.send(TYPE_WINDOW_UPDATE, 0, 1, 2)  # + 2, while not empty
            await peer.send(TYPE_PING, FLAG_SYN, 0, 9)
            assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 9, b"")
            with trio.fail_after(1):  # all of it goes at once: no wait for the peer
                await stream.write(b"y" * (INITIAL_SEND_WINDOW + 1))
            sent = 0
            while sent < INITIAL_SEND_WINDOW + 1:
                frame = await peer.frame()
                assert frame is not None and frame[0] == TYPE_DATA
                sent += frame[3]
            # The window is empty now; one byte of room lets exactly one byte go.
            await peer.send(TYPE_WINDOW_UPDATE, 0, 1, 1)
            with trio.fail_after(1):
                await stream.write(b"z")
            assert await peer.frame() == (TYPE_DATA, 0, 1, 1, b"z")

    run(main)


def test_reset_tells_the_peer_unless_it_never_heard_of_the_stream_or_both_sides_closed(
) -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, a_pipe, peer, _nursery):
            # The peer closed its side; ours is open: the reset must reach it.
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_FIN, 2, 0)
            half = await a.accept_stream()
            with pytest.raises(MuxedStreamEOF):
                await half.read()
            await half.reset()
            assert await peer.frame() == (TYPE_WINDOW_UPDATE, FLAG_ACK | FLAG_RST, 2, 0, b"")
            await half.close()  # after a reset: nothing more to say
            # Both sides closed: nothing to reset on the wire.
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_FIN, 4, 0)
            done = await a.accept_stream()
            await done.close()
            assert await peer.frame() == (TYPE_WINDOW_UPDATE, FLAG_ACK | FLAG_FIN, 4, 0, b"")
            writes = a_pipe.writes
            await done.reset()
            await half.close()
            assert a_pipe.writes == writes

    run(main)


def test_the_dialler_may_be_told_it_is_the_listener() -> None:
    async def main() -> None:
        a_pipe, _ = pair()  # a_pipe says initiator
        a = Yamux(a_pipe, PEER, is_initiator=False)  # type: ignore[arg-type]
        assert not a.is_initiator
        assert (await a.open_stream()).stream_id == 2

    run(main)


class _CipherState:
    """The shape of the noise library's CipherState that _sealer reads."""

    def __init__(self, key: bytes, n: int = 0) -> None:
        self.cipher = type("Cipher", (), {"cipher": ChaCha20Poly1305(key)})()
        self.n = n


def test_the_sealer_is_chachapoly_with_the_noise_nonce_counter() -> None:
    key = bytes(range(32))
    seal = _sealer(_CipherState(key, n=5), lambda d: b"fallback", True)
    open_ = _sealer(_CipherState(key, n=5), lambda d: b"fallback", False)
    first, second = seal(b"one"), seal(b"two")
    # Noise spec 5.1: nonce = 4 zero bytes and the 64-bit counter, little-endian.
    aead = ChaCha20Poly1305(key)
    assert first == aead.encrypt(bytes(4) + (5).to_bytes(8, "little"), b"one", None)
    assert second == aead.encrypt(bytes(4) + (6).to_bytes(8, "little"), b"two", None)
    assert open_(first) == b"one" and open_(second) == b"two"
    with pytest.raises(InvalidTag):  # a message out of order does not open...
        open_(first)
    assert open_(seal(b"three")) == b"three"  # ...and does not move the counter


def test_the_sealer_stops_before_the_reserved_nonce_and_keeps_other_ciphers() -> None:
    seal = _sealer(_CipherState(bytes(32), n=2**64 - 2), lambda d: b"", True)
    seal(b"last")
    with pytest.raises(yamux.ProtocolError, match="nonces used up"):
        seal(b"one too many")
    fallback = lambda data: b"other cipher"  # noqa: E731
    aes = type("State", (), {"cipher": type("C", (), {"cipher": object()})(), "n": 0})()
    assert _sealer(aes, fallback, True) is fallback


def test_a_connection_that_is_not_noise_over_tcp_keeps_its_own_reads_and_writes() -> None:
    a_pipe, _ = pair()
    assert type(_Noise.wrap(a_pipe)) is _Secured  # type: ignore[arg-type]


def test_frames_after_an_ignored_one_in_the_same_chunk_are_still_read() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            # One write: data for a stream nobody knows, a stream opened and reset at
            # once, a PING that is an answer (ACK: no reply), then a PING to answer.
            await peer.pipe.write(
                HEADER.pack(0, TYPE_DATA, 0, 40, 3) + b"abc"
                + HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_RST, 42, 0)
                + HEADER.pack(0, TYPE_PING, FLAG_ACK, 0, 5)
                + HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, 6))
            assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 6, b"")
            assert not a._streams  # stream 42 was never delivered

    run(main)


def test_stream_ids_step_by_two_and_the_stream_cap_holds_both_ways(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamux, "MAX_STREAMS", 3)

    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            assert [(await a.open_stream()).stream_id for _ in range(2)] == [1, 3]
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0)
            await a.accept_stream()  # 3 streams open: the cap
            with pytest.raises(yamux.MuxedStreamError, match="3 streams open"):
                await a.open_stream()
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 4, 0)  # one past it: refused
            assert await peer.frame() == (TYPE_WINDOW_UPDATE, FLAG_RST, 4, 0, b"")

    run(main)


def test_read_with_a_negative_size_returns_everything_and_updates_restart_from_zero() -> None:
    half = WINDOW_UPDATE_THRESHOLD

    async def main() -> None:
        async with against_raw_peer() as (a, _a_pipe, peer, _nursery):
            await peer.send(TYPE_DATA, FLAG_SYN, 2, 4, b"abcd")
            stream = await a.accept_stream()
            assert await stream.read(-1) == b"abcd"
            # Exactly one update per half window read, counted from the last update.
            for _ in range(2):
                await peer.send(TYPE_DATA, 0, 2, half, b"x" * half)
                got = 0
                while got < half:
                    got += len(await stream.read(half - got))
                frame = await peer.frame()
                assert frame is not None and frame[0] == TYPE_WINDOW_UPDATE
                assert frame[3] in (half + 4, half)  # the first also returns the 4 bytes
            await peer.send(TYPE_PING, FLAG_SYN, 0, 1)
            assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 1, b"")  # no third

    run(main)


def test_a_failed_write_breaks_the_connection_for_every_later_write() -> None:
    async def main() -> None:
        a_pipe, _ = pair()

        async def fails(data: bytes) -> None:
            raise OSError("connection reset by peer")

        a_pipe.write = fails  # type: ignore[method-assign]
        a = session(a_pipe)
        stream = await a.open_stream()
        with pytest.raises(MuxedStreamReset, match="write failed: connection reset"):
            await stream.write(b"x")
        with pytest.raises(MuxedConnUnavailable, match="write failed"):
            await a._send(b"")
        with pytest.raises(MuxedConnUnavailable, match="write failed"):
            await a.open_stream()

    run(main)


def test_closing_the_connection_says_go_away_normally_and_resets_its_streams() -> None:
    async def main() -> None:
        async with against_raw_peer() as (a, a_pipe, peer, _nursery):
            stream = await a.open_stream()
            await a.close()
            assert await peer.frame() == (TYPE_GO_AWAY, 0, 0, 0, b"")
            assert a.is_closed and a_pipe.closed
            with pytest.raises(MuxedStreamReset, match="stream reset"):
                await stream.read()
            with pytest.raises(MuxedStreamReset, match="stream reset"):
                await stream.write(b"late")

    run(main)


def test_unread_puts_bytes_back_without_counting_them_twice_against_the_window() -> None:
    """A stream negotiation that read past its end gives the rest back."""
    async def main() -> None:
        stream = YamuxStream(Any, 1, outbound=False)  # type: ignore[arg-type]
        stream._on_data(b"/kad\nrequest")
        assert await stream.read() == b"/kad\nrequest"
        stream.unread(b"request")
        assert stream._consumed == len(b"/kad\n")
        assert await stream.read(3) == b"req"
        assert await stream.read() == b"uest"
        assert stream._consumed == len(b"/kad\nrequest")

    trio.run(main)


# -- keepalive (go-yamux: KeepAliveInterval 30 s, ConnectionWriteTimeout 10 s) --------


@asynccontextmanager
async def closing_session() -> AsyncIterator[tuple[Yamux, RawPeer, trio.Event]]:
    """A running session against a raw peer, and an event set when it closed (the
    host's hook ran)."""
    a_pipe, b_pipe = pair()
    closed = trio.Event()

    async def on_close() -> None:
        closed.set()

    a = Yamux(a_pipe, PEER, on_close=on_close)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.start)
        yield a, RawPeer(b_pipe), closed
        nursery.cancel_scope.cancel()


def test_a_silent_peer_is_pinged_after_30s_and_the_connection_closed_10s_later() -> None:
    assert (yamux.KEEPALIVE_INTERVAL, yamux.KEEPALIVE_TIMEOUT) == (30.0, 10.0)

    async def main() -> None:
        async with closing_session() as (a, peer, closed):
            start = trio.current_time()
            stream = await a.open_stream()
            with trio.fail_after(100):
                frame = await peer.frame()
            assert frame is not None and frame[:2] == (TYPE_PING, FLAG_SYN)
            assert trio.current_time() - start == pytest.approx(30.0)
            # Never answered: closed 10 s later, without a GO_AWAY (nothing more is
            # sent on a connection whose peer does not answer), streams reset.
            with trio.fail_after(100):
                await closed.wait()
            assert trio.current_time() - start == pytest.approx(40.0)
            assert await peer.frame() is None
            assert a.is_closed
            with pytest.raises(MuxedStreamReset):
                await stream.read()
            with pytest.raises(MuxedConnUnavailable, match="keepalive"):
                await a._send(b"")

    run(main)


def test_answered_pings_keep_the_connection_and_only_the_right_opaque_value_counts() -> None:
    async def main() -> None:
        async with closing_session() as (a, peer, closed):
            start = trio.current_time()
            opaques = []
            for i in range(5):
                with trio.fail_after(100):
                    frame = await peer.frame()
                assert frame is not None and frame[:3] == (TYPE_PING, FLAG_SYN, 0)
                # One ping per 30 s of silence, each answered at once.
                assert trio.current_time() - start == pytest.approx(30.0 * (i + 1))
                opaques.append(frame[3])
                await peer.send(TYPE_PING, FLAG_ACK, 0, frame[3])
            assert len(set(opaques)) == 5 and not closed.is_set()
            # An ACK that answers another ping does not count.
            with trio.fail_after(100):
                frame = await peer.frame()
            assert frame is not None and frame[:2] == (TYPE_PING, FLAG_SYN)
            pinged = trio.current_time()
            await peer.send(TYPE_PING, FLAG_ACK, 0, frame[3] + 1)
            with trio.fail_after(100):
                await closed.wait()
            assert trio.current_time() - pinged == pytest.approx(10.0)
            assert a.is_closed

    run(main)


def test_a_peer_that_keeps_talking_is_never_pinged() -> None:
    async def main() -> None:
        async with closing_session() as (_a, peer, closed):
            for i in range(10):  # 250 s, a frame every 25 s: never 30 s of silence
                await trio.sleep(25)
                await peer.send(TYPE_PING, FLAG_SYN, 0, i)
                assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, i, b"")
            assert not closed.is_set()
            # Silent from here: pinged 30 s after its last frame, not earlier.
            last = trio.current_time()
            with trio.fail_after(100):
                frame = await peer.frame()
            assert frame is not None and frame[:2] == (TYPE_PING, FLAG_SYN)
            assert trio.current_time() - last == pytest.approx(30.0)

    run(main)


def stuck_pipe() -> tuple[Pipe, Pipe, trio.Event]:
    """A pipe whose first end writes nothing until the event returned is set."""
    a_pipe, b_pipe = pair()
    write = a_pipe.write
    unstuck = trio.Event()

    async def stuck(data: bytes) -> None:
        await unstuck.wait()
        await write(data)

    a_pipe.write = stuck  # type: ignore[method-assign]
    return a_pipe, b_pipe, unstuck


@asynccontextmanager
async def stuck_writer() -> AsyncIterator[tuple[Yamux, RawPeer, trio.Event]]:
    """A running session against a raw peer, with a task whose write of "first" on
    stream 1 holds the write lock until the event returned is set."""
    a_pipe, b_pipe, unstuck = stuck_pipe()
    a = session(a_pipe)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.start)
        out = await a.open_stream()
        nursery.start_soon(out.write, b"first")
        await trio.testing.wait_all_tasks_blocked()
        yield a, RawPeer(b_pipe), unstuck
        nursery.cancel_scope.cancel()


def test_the_reader_goes_on_while_a_writer_is_stuck_and_the_ack_follows_its_batch() -> None:
    """A ping answered while another task's write waits for the socket: the ACK
    is queued behind that write, and the frames after the ping are read at once
    (the reader used to wait for the write lock)."""
    async def main() -> None:
        async with stuck_writer() as (a, peer, unstuck):
            await peer.send(TYPE_PING, FLAG_SYN, 0, 77)
            await trio.testing.wait_all_tasks_blocked()  # the ping is read
            await peer.send(TYPE_DATA, FLAG_SYN, 2, 4, b"next")
            with trio.fail_after(1):  # the write would time out at 10 s
                inbound = await a.accept_stream()
                assert await inbound.read() == b"next"
            unstuck.set()
            assert await peer.frame() == (TYPE_DATA, FLAG_SYN, 1, 5, b"first")
            assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 77, b"")

    run(main)


def test_replies_queued_behind_a_stuck_write_are_capped(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(yamux, "MAX_QUEUED_REPLIES", 10 * HEADER.size)

    async def main() -> None:
        async with stuck_writer() as (_a, peer, unstuck):
            # A peer that pings and never reads: 50 pings, 10 ACKs kept.
            await peer.pipe.write(b"".join(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, i)
                                           for i in range(50)))
            await trio.testing.wait_all_tasks_blocked()
            unstuck.set()
            assert await peer.frame() == (TYPE_DATA, FLAG_SYN, 1, 5, b"first")
            for i in range(10):
                assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, i, b"")
            # Once the queue went out, pings are answered again.
            await peer.send(TYPE_PING, FLAG_SYN, 0, 99)
            assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 99, b"")

    run(main)


def test_a_ping_ack_goes_out_at_once_when_nobody_is_writing() -> None:
    async def main() -> None:
        async with against_raw_peer() as (_a, a_pipe, peer, _nursery):
            await peer.send(TYPE_PING, FLAG_SYN, 0, 3)
            with trio.fail_after(1):
                assert await peer.frame() == (TYPE_PING, FLAG_ACK, 0, 3, b"")
            assert a_pipe.writes == 1

    run(main)


def test_a_writer_cancelled_on_a_full_socket_returns_at_once_and_its_frame_goes_out() -> None:
    """A request whose walk ended while its write waited for a full socket (a silent
    peer's) used to wait out WRITE_TIMEOUT (10 s) in a shielded scope, and held the
    walk that long. Now a task of the session finishes the write; the writer leaves
    at once, and the frame still goes out whole."""
    async def main() -> None:
        a_pipe, b_pipe, unstuck = stuck_pipe()
        a = session(a_pipe)
        peer = RawPeer(b_pipe)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start)
            await trio.testing.wait_all_tasks_blocked()  # the session runs
            out = await a.open_stream()
            start = trio.current_time()
            with trio.move_on_after(0.5) as scope:
                await out.write(b"first")
            assert scope.cancelled_caught
            assert trio.current_time() - start == pytest.approx(0.5)
            unstuck.set()
            assert await peer.frame() == (TYPE_DATA, FLAG_SYN, 1, 5, b"first")
            nursery.cancel_scope.cancel()

    run(main)
