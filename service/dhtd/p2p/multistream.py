"""multistream-select 1.0 (multiformats/multistream-select), as dhtd speaks it on
sockets during connection set-up (dhtd.p2p.upgrade) and on every stream.

Each message is a uvarint length, the text, and a newline. dhtd pipelines: as the
dialler it sends the header and its first proposal in one write, and on streams
the first request right behind them, without waiting for the answer ("lazy"
negotiation, as go-libp2p does for a single protocol); as the listener it answers
header and choice in one write when the proposal is already there. py-libp2p's
negotiation cost two round trips and four separate writes per stream.

Promises: a message longer than MAX_MESSAGE bytes, a dialler's proposal past the
MAX_PROPOSALS-th, and anything that is not multistream-select end the
negotiation with :class:`NegotiationError`; the caller resets or closes.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from contextlib import suppress
from typing import Any

from dhtd.ids import decode_uvarint, encode_uvarint

HEADER = "/multistream/1.0.0"
NA = "na"
# go-multistream: a message longer than 1024 bytes is an error.
MAX_MESSAGE = 1024
# Ours: protocols a dialler may propose before it is dropped (a real one offers two
# or three: /tls/1.0.0, /noise; /ipfs/kad/1.0.0, ...).
MAX_PROPOSALS = 8
# Bytes asked of a stream per read while negotiating.
READ_CHUNK = 16 << 10


class NegotiationError(Exception):
    """The peer broke multistream-select or shares no protocol."""


def encode(*messages: str) -> bytes:
    out = []
    for text in messages:
        body = text.encode() + b"\n"
        out.append(encode_uvarint(len(body)) + body)
    return b"".join(out)


def parse(buf: bytearray) -> str | None:
    """Takes one whole message off the front of ``buf`` and returns its text
    without the newline; None (``buf`` untouched) if it is not all there yet."""
    try:
        length, start = decode_uvarint(bytes(buf[:10]))
    except ValueError:
        if len(buf) >= 10:
            raise NegotiationError("bad multistream length") from None
        return None
    if length > MAX_MESSAGE:
        raise NegotiationError(f"multistream message of {length} bytes")
    if len(buf) < start + length:
        return None
    body = bytes(buf[start:start + length])
    del buf[:start + length]
    if not body.endswith(b"\n"):
        raise NegotiationError("multistream message without a newline")
    try:
        return body[:-1].decode()
    except UnicodeDecodeError:
        raise NegotiationError("multistream message is not UTF-8") from None


class Buffered:
    """A byte channel to negotiate on: what arrived but is not parsed yet, and what
    waits to be sent. Subclasses say how bytes come in and go out."""

    def __init__(self) -> None:
        self.plain = bytearray()
        self.out: list[bytes] = []

    async def more(self) -> None:
        """Appends at least one more byte to ``plain``, or raises."""
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    def queue(self, data: bytes) -> None:
        self.out.append(data)

    def queue_messages(self, *messages: str) -> None:
        self.queue(encode(*messages))

    async def flush(self) -> None:
        if self.out:
            data, self.out = b"".join(self.out), []
            await self.send(data)

    async def message(self) -> str:
        while True:
            text = parse(self.plain)
            if text is not None:
                return text
            await self.more()

    def has_message(self) -> bool:
        try:
            length, start = decode_uvarint(bytes(self.plain[:10]))
        except ValueError:
            return False
        return len(self.plain) >= start + length


class StreamIO(Buffered):
    """A libp2p stream (anything with ``read(n)`` and ``write(data)``)."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    async def more(self) -> None:
        try:
            data = await self.stream.read(READ_CHUNK)
        except EOFError:
            data = b""
        if not data:
            raise NegotiationError("stream closed during negotiation")
        self.plain += data

    async def send(self, data: bytes) -> None:
        await self.stream.write(data)


async def select(io: Buffered, protocols: Sequence[str], first_sent: bool = False) -> str:
    """Negotiates as the dialler: the header and the first proposal go in one write
    (with whatever else was queued, or already went when ``first_sent``), the
    next proposals only after a "na". Returns the protocol chosen."""
    if not first_sent:
        io.queue_messages(HEADER)
    header_read = False
    for index, protocol in enumerate(protocols):
        if index or not first_sent:
            io.queue_messages(protocol)
        await io.flush()
        if not header_read:
            await expect_header(io)
            header_read = True
        answer = await io.message()
        if answer == protocol:
            return protocol
        if answer != NA:
            raise NegotiationError(f"peer answered {answer[:64]!r} to {protocol}")
    raise NegotiationError(f"peer refused {', '.join(protocols)}")


async def handle(io: Buffered, protocols: Container[str]) -> str:
    """Negotiates as the listener: the first proposal in ``protocols`` is chosen,
    any other gets "na"; header and answer go out in one write when the dialler
    pipelined them. Returns the protocol chosen."""
    await expect_header(io)
    io.queue_messages(HEADER)
    try:
        for _ in range(MAX_PROPOSALS):
            if not io.has_message():
                await io.flush()  # a dialler that waits for our header before proposing
            proposal = await io.message()
            if proposal in protocols:
                io.queue_messages(proposal)
                await io.flush()
                return proposal
            io.queue_messages(NA)
    except NegotiationError:
        # A lazy dialler's request behind a refused proposal reads as a broken
        # message: it still gets the "na" before the stream ends.
        with suppress(Exception):
            await io.flush()
        raise
    await io.flush()
    raise NegotiationError(f"no shared protocol in {MAX_PROPOSALS} proposals")


async def expect_header(io: Buffered) -> None:
    if await io.message() != HEADER:
        raise NegotiationError("peer does not speak multistream-select 1.0")
