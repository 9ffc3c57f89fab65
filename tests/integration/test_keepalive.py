"""yamux keepalive against a real frozen process: a dhtd stopped with SIGSTOP keeps
its TCP connections (its kernel still takes what is sent) and answers nothing.
An in-process host connected to it, with the keepalive at 2 s + 2 s, closes the
connection within the two, and reaches the process afresh once it runs again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID

from dhtd import p2p
from dhtd.kadmsg import new_message
from dhtd.p2p import Host, yamux
from tests.swarm import start_node

pytestmark = pytest.mark.integration

INTERVAL = 2.0
TIMEOUT = 2.0
# What a loaded 2-core machine may add to a wall-clock bound.
SLACK = 2.0
KEY = b"\x12\x20" + b"k" * 32


def test_a_stopped_process_loses_its_connection_within_the_keepalive_interval_and_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamux, "KEEPALIVE_INTERVAL", INTERVAL)
    monkeypatch.setattr(yamux, "KEEPALIVE_TIMEOUT", TIMEOUT)
    node = start_node("frozen", tmp_path / "frozen")
    peer = ID.from_base58(node.peer_id).to_bytes()
    addr = bytes(multiaddr.Multiaddr(node.p2p_addr).to_bytes())

    async def main() -> None:
        gone = trio.Event()

        def disconnected(who: bytes) -> None:
            if who == peer:
                gone.set()

        host = Host(p2p.new_identity(), "/ipfs/kad/1.0.0")
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0").to_bytes()]
        async with host.open(listen, None, lambda _: None, disconnected):
            await host.connect(peer, addr)
            await host.request(peer, new_message(4, KEY))  # FIND_NODE, answered
            os.kill(node.proc.pid, signal.SIGSTOP)
            stopped_at = trio.current_time()
            try:
                with trio.fail_after(INTERVAL + TIMEOUT + 10):
                    await gone.wait()
            finally:
                os.kill(node.proc.pid, signal.SIGCONT)
            took = trio.current_time() - stopped_at
            # Silent since its answer: pinged INTERVAL later, closed TIMEOUT after.
            assert TIMEOUT <= took < INTERVAL + TIMEOUT + SLACK
            assert not host.is_connected(peer)
            with trio.fail_after(p2p.DIAL_TIMEOUT + 10):  # a new connection answers
                await host.request(peer, new_message(4, KEY))

    try:
        trio.run(main)
    finally:
        node.stop()
