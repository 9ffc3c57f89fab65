"""Varint-framed kad messages read through a buffer, whatever the chunking."""

from __future__ import annotations

import pytest
import trio

from dhtd.ids import encode_uvarint
from dhtd.lookup import PeerRequestError
from dhtd.p2p import MAX_MESSAGE_BYTES, _Framed


class ChunkedStream:
    """Hands out the given bytes in the given chunk sizes, then EOF."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = data
        self.sizes = sizes

    async def read(self, n: int) -> bytes:
        await trio.lowlevel.checkpoint()
        size = min(self.sizes.pop(0) if self.sizes else n, n)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def frame(body: bytes) -> bytes:
    return encode_uvarint(len(body)) + body


def read_all(data: bytes, sizes: list[int]) -> list[bytes]:
    async def main() -> list[bytes]:
        framed = _Framed(ChunkedStream(data, sizes))
        out = []
        while True:
            try:
                out.append(await framed.read_frame())
            except EOFError:
                return out

    return trio.run(main)


@pytest.mark.parametrize("sizes", [[1] * 1000, [3, 1, 500], [10_000], [2, 2, 2, 2, 2, 2]])
def test_messages_survive_any_chunking(sizes: list[int]) -> None:
    bodies = [b"", b"a", b"x" * 200, b"y" * 300]
    assert read_all(b"".join(frame(b) for b in bodies), list(sizes)) == bodies


def test_truncated_message_is_an_error() -> None:
    with pytest.raises(PeerRequestError, match="inside a message"):
        read_all(frame(b"hello")[:-1], [])


def test_truncated_prefix_is_an_error() -> None:
    with pytest.raises(PeerRequestError, match="inside a length prefix"):
        read_all(encode_uvarint(300)[:1], [])


def test_oversized_message_is_refused_before_reading_it() -> None:
    with pytest.raises(PeerRequestError, match="over"):
        read_all(encode_uvarint(MAX_MESSAGE_BYTES + 1), [])


def test_garbage_prefix_is_an_error() -> None:
    with pytest.raises(PeerRequestError, match="bad length prefix"):
        read_all(b"\xff" * 12, [])
