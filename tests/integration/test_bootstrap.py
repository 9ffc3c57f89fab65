"""A node whose bootstrap peer is not up yet joins within seconds of it appearing.

Kubernetes starts pods in any order. Measured before: node B started with
--bootstrap pointing at A before A was up joined only ~60 s after A came up,
because py-libp2p's negative dial cache answered every retry ("recently failed
all addresses"). Promise: every retry really dials (dhtd.p2p.Host.connect clears
the cache), retries back off to at most BOOTSTRAP_RETRY_MAX, so B joins within
BOOTSTRAP_RETRY_MAX plus a dial of A's start.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dhtd.ids import peer_id_to_str
from dhtd.p2p import load_or_create_identity, peer_id_of
from dhtd.refresh import BOOTSTRAP_RETRY_MAX
from tests.swarm import READY_TIMEOUT, spawn_node, start_node, wait_ready, wait_until

pytestmark = pytest.mark.integration

# A dial and identify on loopback take well under this.
JOIN_SLACK = 4.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failed_attempts(lines: list[dict[str, object]]) -> int:
    return sum(1 for line in lines if str(line.get("msg", "")).startswith("bootstrap peer "))


def test_a_node_joins_soon_after_its_bootstrap_peer_appears(tmp_path: Path) -> None:
    a_id = peer_id_to_str(peer_id_of(load_or_create_identity(tmp_path / "a")))
    a_port = free_port()
    b = start_node("b", tmp_path / "b",
                   ["--bootstrap", f"/ip4/127.0.0.1/tcp/{a_port}/p2p/{a_id}"])
    a = None
    try:
        # Let B fail a few times, so that the negative dial cache holds A.
        wait_until(lambda: failed_attempts(b.lines) >= 3, 30, "three failed bootstrap dials")
        assert b.node_info().routing_table_size == 0
        a = spawn_node("a", tmp_path / "a", listen=f"/ip4/127.0.0.1/tcp/{a_port}")
        wait_ready(a, READY_TIMEOUT)
        wait_until(lambda: b.node_info().routing_table_size >= 1,
                   BOOTSTRAP_RETRY_MAX + JOIN_SLACK, "B to join once A is up")
        assert "negative cache" not in "\n".join(str(line) for line in b.lines)
    finally:
        b.stop()
        if a is not None:
            a.stop()
