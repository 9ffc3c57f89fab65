"""A connected peer that speaks kad joins the routing table however slow its
identify is, within dhtd.p2p.IDENTIFY_TIMEOUT (dhtd.p2p.Host._watch_identify).

The regression: the watch gave up after IDENTIFY_WAIT (5 s). On a loaded
machine, identify between two nodes starting at once took longer, so neither
took the other into its table and the network stayed split in two halves (the
js interop module's flaky failures). The peerstore and the connections are
faked here; the timing runs under MockClock.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair

from dhtd import p2p

PEER = b"\x00\x24" + bytes(36)
# Stated literally: the promise is about these numbers, not the constants' names.
CALLER_WAIT = 5.0
WATCH = 30.0


class FakeIdentify:
    """When identify ends (if ever), and when the peer disconnects (if ever)."""

    def __init__(self, ends_at: float | None, kad: bool = True,
                 leaves_at: float | None = None) -> None:
        self.ends_at, self.kad, self.leaves_at = ends_at, kad, leaves_at

    def identified(self, peer: bytes) -> bool:
        return self.ends_at is not None and trio.current_time() >= self.ends_at

    def speaks_kad(self, peer: bytes) -> bool:
        return self.kad and self.identified(peer)

    def connected(self, peer: bytes) -> bool:
        return self.leaves_at is None or trio.current_time() < self.leaves_at


def host_with(fake: FakeIdentify) -> p2p.Host:
    host = p2p.Host(create_new_key_pair(), "/ipfs/kad/1.0.0")
    host._identified = fake.identified  # type: ignore[method-assign]
    host.speaks_kad = fake.speaks_kad  # type: ignore[method-assign]
    host.is_connected = fake.connected  # type: ignore[method-assign]
    return host


def watch(fake: FakeIdentify, connections: int = 1) -> list[tuple[float, bytes]]:
    """Runs the watch over ``connections`` connection events for PEER; returns
    when each on_kad_peer call came."""
    added: list[tuple[float, bytes]] = []
    host = host_with(fake)

    async def main() -> None:
        send, receive = trio.open_memory_channel[bytes](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host._watch_identify, receive,
                               lambda peer: added.append((trio.current_time(), peer)), nursery)
            for _ in range(connections):
                send.send_nowait(PEER)
            await trio.sleep(2 * WATCH)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return added


def test_a_peer_whose_identify_ends_after_the_callers_wait_still_joins() -> None:
    added = watch(FakeIdentify(ends_at=CALLER_WAIT + 3))
    assert [peer for _, peer in added] == [PEER]
    # Polled with a backoff capped at 0.5 s: noticed within that of identify's end.
    assert CALLER_WAIT + 3 <= added[0][0] <= CALLER_WAIT + 3.5


def test_the_watch_ends_at_its_timeout_and_when_the_peer_leaves() -> None:
    assert watch(FakeIdentify(ends_at=WATCH + 1)) == []
    assert watch(FakeIdentify(ends_at=None)) == []
    # Gone before identify ended: not added, even though identify would end later.
    assert watch(FakeIdentify(ends_at=10, leaves_at=2)) == []


def test_a_peer_that_does_not_speak_kad_is_not_added() -> None:
    assert watch(FakeIdentify(ends_at=0.5, kad=False)) == []


def test_many_connections_of_one_peer_make_one_watch() -> None:
    added = watch(FakeIdentify(ends_at=1), connections=5)
    assert [peer for _, peer in added] == [PEER]


def test_a_callers_wait_is_bounded_by_its_own_timeout() -> None:
    host = host_with(FakeIdentify(ends_at=CALLER_WAIT + 3))

    async def main() -> None:
        assert not await host.wait_identified(PEER)
        assert trio.current_time() == pytest.approx(CALLER_WAIT)
        assert await host.wait_identified(PEER, timeout=WATCH)
        assert trio.current_time() <= CALLER_WAIT + 3.5

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
