"""dhtd.p2p.multistream: the wire format, both roles, pipelining and the bounds,
between two in-memory ends."""

from __future__ import annotations

import pytest
import trio

from dhtd.ids import encode_uvarint
from dhtd.p2p import multistream as ms


class End(ms.Buffered):
    """One end of an in-memory pipe; ``writes`` records each write."""

    def __init__(self, incoming: trio.MemoryReceiveChannel[bytes],
                 outgoing: trio.MemorySendChannel[bytes]) -> None:
        super().__init__()
        self.incoming, self.outgoing = incoming, outgoing
        self.writes: list[bytes] = []

    async def more(self) -> None:
        try:
            self.plain += await self.incoming.receive()
        except trio.EndOfChannel:
            raise ms.NegotiationError("closed") from None

    async def send(self, data: bytes) -> None:
        self.writes.append(data)
        await self.outgoing.send(data)


def pipe() -> tuple[End, End]:
    a_send, b_receive = trio.open_memory_channel[bytes](64)
    b_send, a_receive = trio.open_memory_channel[bytes](64)
    return End(a_receive, a_send), End(b_receive, b_send)


def test_messages_are_a_varint_the_text_and_a_newline() -> None:
    assert ms.encode("/noise") == b"\x07/noise\n"
    buf = bytearray(ms.encode("na", "/yamux/1.0.0") + b"\x05ab")
    assert ms.parse(buf) == "na"
    assert ms.parse(buf) == "/yamux/1.0.0"
    assert ms.parse(buf) is None and buf == b"\x05ab"  # incomplete: left alone


@pytest.mark.parametrize(("data", "why"), [
    (b"\x04abcd", "without a newline"),
    (b"\xff\xff\x01", "bytes"),  # over MAX_MESSAGE
    (b"\x03\xff\xfe\n", "not UTF-8"),
    (b"\xff" * 10, "bad multistream length"),
])
def test_malformed_messages_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(ms.NegotiationError, match=why):
        ms.parse(bytearray(data))


def negotiate(offered: list[str], supported: set[str]
              ) -> tuple[str | Exception, str | Exception, End, End]:
    dialler, listener = pipe()
    out: dict[str, str | Exception] = {}

    async def run(name: str, fn: object) -> None:
        try:
            out[name] = await fn()  # type: ignore[operator]
        except ms.NegotiationError as exc:
            out[name] = exc  # and the side that gave up closes its end
            await (listener if name == "listener" else dialler).outgoing.aclose()

    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "dialler", lambda: ms.select(dialler, offered))
                nursery.start_soon(run, "listener", lambda: ms.handle(listener, supported))

    trio.run(main)
    return out["dialler"], out["listener"], dialler, listener


def test_the_first_supported_proposal_wins_and_each_side_writes_once_per_round() -> None:
    chosen, handled, dialler, listener = negotiate(["/yamux/1.0.0"], {"/yamux/1.0.0"})
    assert chosen == handled == "/yamux/1.0.0"
    assert dialler.writes == [ms.encode(ms.HEADER, "/yamux/1.0.0")]
    assert listener.writes == [ms.encode(ms.HEADER, "/yamux/1.0.0")]


def test_a_refused_proposal_gets_na_and_the_next_one_is_tried() -> None:
    chosen, handled, dialler, listener = negotiate(["/tls/1.0.0", "/noise"], {"/noise"})
    assert chosen == handled == "/noise"
    assert dialler.writes == [ms.encode(ms.HEADER, "/tls/1.0.0"), ms.encode("/noise")]
    assert listener.writes == [ms.encode(ms.HEADER, "na"), ms.encode("/noise")]


def test_no_shared_protocol_fails_both_sides() -> None:
    chosen, handled, _, _ = negotiate(["/a", "/b"], {"/c"})
    assert isinstance(chosen, ms.NegotiationError)
    assert isinstance(handled, ms.NegotiationError)


def test_a_dialler_gets_a_bounded_number_of_proposals() -> None:
    offered = [f"/p/{i}" for i in range(ms.MAX_PROPOSALS + 5)]
    _, handled, _, listener = negotiate(offered, {"/p/never"})
    assert isinstance(handled, ms.NegotiationError)
    assert f"{ms.MAX_PROPOSALS} proposals" in str(handled)
    assert b"".join(listener.writes) == ms.encode(ms.HEADER, *["na"] * ms.MAX_PROPOSALS)


def test_a_dialler_that_waits_for_the_header_before_proposing_is_served() -> None:
    """py-libp2p's own dialler sends its header, waits for ours, then proposes."""
    dialler, listener = pipe()
    result: list[str] = []

    async def slow_dialler() -> None:
        dialler.queue_messages(ms.HEADER)
        await dialler.flush()
        await ms.expect_header(dialler)
        dialler.queue_messages("/kad")
        await dialler.flush()
        result.append(await dialler.message())

    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_dialler)
                result.append(await ms.handle(listener, {"/kad"}))

    trio.run(main)
    assert sorted(result) == ["/kad", "/kad"]


def test_a_request_behind_a_refused_lazy_proposal_still_gets_the_na() -> None:
    dialler, listener = pipe()

    async def main() -> None:
        await dialler.send(ms.encode(ms.HEADER, "/kad") + b"\x05hello")  # lazy: no wait
        with pytest.raises(ms.NegotiationError):
            await ms.handle(listener, {"/other"})

    trio.run(main)
    assert b"".join(listener.writes) == ms.encode(ms.HEADER, "na")


@pytest.mark.parametrize(("data", "text"), [
    (b"\x04abcd", "multistream message without a newline"),
    (b"\x03\xff\xfe\n", "multistream message is not UTF-8"),
    (b"\xff" * 10, "bad multistream length"),
])
def test_each_refusal_says_what_was_wrong(data: bytes, text: str) -> None:
    with pytest.raises(ms.NegotiationError) as err:
        ms.parse(bytearray(data))
    assert str(err.value) == text


def test_a_message_of_exactly_the_cap_is_read_and_one_byte_more_is_not() -> None:
    body = b"/" + b"p" * (ms.MAX_MESSAGE - 2) + b"\n"
    assert ms.parse(bytearray(encode_uvarint(len(body)) + body)) == body[:-1].decode()
    longer = body[:-1] + b"p\n"
    with pytest.raises(ms.NegotiationError) as err:
        ms.parse(bytearray(encode_uvarint(len(longer)) + longer))
    assert str(err.value) == f"multistream message of {ms.MAX_MESSAGE + 1} bytes"


def test_has_message_only_when_the_whole_message_is_there() -> None:
    end, _ = pipe()
    whole = ms.encode("/kad/1.0.0")
    end.plain += whole[:-1]
    assert not end.has_message()
    end.plain += whole[-1:]
    assert end.has_message()


def test_the_dialler_says_who_refused_what() -> None:
    chosen, _, _, _ = negotiate(["/a", "/b"], {"/c"})
    assert str(chosen) == "peer refused /a, /b"
    dialler, listener = pipe()

    async def main() -> None:
        await listener.send(ms.encode(ms.HEADER, "/odd"))
        with pytest.raises(ms.NegotiationError) as err:
            await ms.select(dialler, ["/a"])
        assert str(err.value) == "peer answered '/odd' to /a"
        await listener.send(ms.encode("/multistream/2.0.0"))
        with pytest.raises(ms.NegotiationError) as err:
            await ms.expect_header(dialler)
        assert str(err.value) == "peer does not speak multistream-select 1.0"

    trio.run(main)


class FakeStream:
    def __init__(self, chunks: list[bytes | Exception]) -> None:
        self.chunks = chunks
        self.asked: list[int] = []
        self.written: list[bytes] = []

    async def read(self, n: int) -> bytes:
        self.asked.append(n)
        chunk = self.chunks.pop(0)
        if isinstance(chunk, Exception):
            raise chunk
        return chunk

    async def write(self, data: bytes) -> None:
        self.written.append(data)


@pytest.mark.parametrize("end", [b"", EOFError("closed")])
def test_a_stream_is_read_in_chunks_and_its_end_is_a_refusal(end: bytes | Exception) -> None:
    message = ms.encode("/kad/1.0.0")
    stream = FakeStream([message[:3], message[3:], end])
    io = ms.StreamIO(stream)

    async def main() -> None:
        assert await io.message() == "/kad/1.0.0"
        assert stream.asked == [ms.READ_CHUNK, ms.READ_CHUNK]
        with pytest.raises(ms.NegotiationError) as err:
            await io.message()
        assert str(err.value) == "stream closed during negotiation"
        assert io.plain == b""
        io.queue_messages("na")
        await io.flush()
        assert stream.written == [ms.encode("na")]

    trio.run(main)


def test_a_long_odd_answer_is_quoted_cut_to_64_characters() -> None:
    dialler, listener = pipe()

    async def main() -> None:
        await listener.send(ms.encode(ms.HEADER, "/" + "x" * 99))
        with pytest.raises(ms.NegotiationError) as err:
            await ms.select(dialler, ["/a"])
        assert str(err.value) == f"peer answered {('/' + 'x' * 63)!r} to /a"

    trio.run(main)


def test_a_refusal_stands_when_the_na_cannot_be_sent() -> None:
    """The "na" owed to a lazy dialler is best effort: a broken stream under it
    leaves the refusal as it was."""
    dialler, listener = pipe()

    async def broken(data: bytes) -> None:
        raise OSError("stream reset")

    async def main() -> None:
        await dialler.send(ms.encode(ms.HEADER, "/kad") + b"\x05hello")
        listener.send = broken  # type: ignore[method-assign]
        with pytest.raises(ms.NegotiationError):
            await ms.handle(listener, {"/other"})

    trio.run(main)
