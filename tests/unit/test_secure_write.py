"""A write to a secure channel finishes or breaks the connection (dhtd.p2p).

py-libp2p's noise session advances its nonce before it sends; a write cut short
by cancellation left the ends out of step and the peer dropped the connection.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.network.connection.exceptions import RawConnError
from libp2p.security.secure_session import SecureSession

from dhtd import p2p


class SlowConn:
    """Stands in for the noise read-writer under a SecureSession."""

    def __init__(self, takes: float) -> None:
        self.takes = takes
        self.sent: list[bytes] = []
        self.closed = False

    async def write_msg(self, data: bytes) -> None:
        await trio.sleep(self.takes)
        self.sent.append(data)

    async def close(self) -> None:
        self.closed = True


class Session:
    def __init__(self, conn: SlowConn) -> None:
        self.conn = conn

    async def close(self) -> None:
        await self.conn.close()


def run(fn):  # type: ignore[no-untyped-def]
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_py_libp2p_secure_writes_go_through_dhtd() -> None:
    assert SecureSession.write is p2p._whole_write


def test_a_cancelled_write_still_sends_the_whole_frame() -> None:
    conn = SlowConn(takes=1.0)

    async def main() -> None:
        with trio.move_on_after(0.1) as scope:
            await SecureSession.write(Session(conn), b"frame")  # type: ignore[arg-type]
        assert scope.cancel_called  # the caller was cancelled...
        assert trio.current_time() == pytest.approx(1.0)  # ...once the write is done
        assert conn.sent == [b"frame"]
        assert not conn.closed

    run(main)


def test_a_write_that_never_ends_breaks_the_connection() -> None:
    conn = SlowConn(takes=3600.0)

    async def main() -> None:
        with pytest.raises(RawConnError, match="10s"):
            await SecureSession.write(Session(conn), b"frame")  # type: ignore[arg-type]
        assert trio.current_time() == pytest.approx(10.0)  # go-libp2p yamux's write timeout
        assert conn.sent == []
        assert conn.closed

    run(main)
