"""Real library noise from real dhtd processes: every line on stdout and stderr is
one JSON object, and the noise is counted on /metrics.

The harness in tests/swarm.py reads only stderr (stdout goes to /dev/null) and
turns lines that are not JSON into records, so these tests start their processes
themselves and keep every raw line of both streams.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from tests.swarm import READY_TIMEOUT, Node, die_with_parent, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Dev peers in the noisy process: enough connections that a dead peer is dialled
# by several nodes, few enough to start in a couple of seconds.
DEV_PEERS = 8
# How long the test waits for the counter to rise after the noise was provoked.
NOISE_WAIT = 20.0

COUNTER = re.compile(
    r'^dhtd_library_log_messages_total\{kind="([^"]*)",level="([^"]*)",source="([^"]*)"\} '
    r"([0-9.e+]+)$", re.M)


@dataclass
class Raw:
    """Every line one process wrote, as written, per stream."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


def _read(pipe: IO[str], into: list[str], node: Node | None) -> None:
    for raw in pipe:
        into.append(raw)
        if node is None:
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict):
            node.lines.append(line)
            if line.get("msg") == "dhtd ready":
                node.info = line
                node.ready.set()


@contextmanager
def raw_node(name: str, data_dir: Path, args: Sequence[str] = ()) -> Iterator[tuple[Node, Raw]]:
    """One dhtd (json logs, metrics on) with both streams kept raw; stops it on exit."""
    cmd = [sys.executable, "-m", "dhtd", "--grpc-addr", "127.0.0.1:0",
           "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(data_dir),
           "--log-format", "json", "--shutdown-grace", "1",
           "--metrics-addr", "127.0.0.1:0", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DHTD_", "LIBP2P_"))}
    proc = subprocess.Popen(die_with_parent(cmd), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    node = Node(name, proc, data_dir)
    raw = Raw()
    assert proc.stdout is not None and proc.stderr is not None
    for pipe, into, parse in ((proc.stderr, raw.stderr, node), (proc.stdout, raw.stdout, None)):
        thread = threading.Thread(target=_read, args=(pipe, into, parse), daemon=True,
                                  name=f"raw-{name}")
        thread.start()
        raw.threads.append(thread)
    node.pump = raw.threads[0]
    try:
        if not node.ready.wait(READY_TIMEOUT):
            raise RuntimeError(f"{name} did not become ready:\n{''.join(raw.stderr[-40:])}")
        yield node, raw
    finally:
        node.stop()
        for thread in raw.threads:
            thread.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def dead_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def library_counts(node: Node) -> dict[tuple[str, str, str], float]:
    url = f"http://{node.info['metrics_addr']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as res:
        page = res.read().decode()
    return {(source, kind, level): float(value)
            for kind, level, source, value in COUNTER.findall(page)}


def assert_all_json(name: str, raw: Raw) -> None:
    for stream, lines in (("stdout", raw.stdout), ("stderr", raw.stderr)):
        for line in lines:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{name} wrote a line on {stream} that is not JSON: {line!r}")
            assert isinstance(obj, dict), (name, stream, line)
            assert line.endswith("\n") and line.count("\n") == 1


def test_real_library_noise_is_json_rate_limited_and_counted(tmp_path: Path) -> None:
    started = time.monotonic()
    gone = dead_port()
    with ExitStack() as stack:
        a, a_raw = stack.enter_context(raw_node("logs-a", tmp_path / "a",
                                                ["--dev-peers", str(DEV_PEERS)]))
        b, b_raw = stack.enter_context(raw_node("logs-b", tmp_path / "b",
                                                ["--bootstrap", a.p2p_addr]))
        wait_until(lambda: a.node_info().routing_table_size >= DEV_PEERS + 1, 20,
                   "a's dev peers and b in a's routing table")
        # Kill b the hard way: a and its dev peers still hold b in their tables.
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        # A bootstrap peer that is not there: dhtd retries it with backoff.
        nowhere = f"/ip4/127.0.0.1/tcp/{gone}/p2p/{b.peer_id}"
        c, c_raw = stack.enter_context(raw_node("logs-c", tmp_path / "c",
                                                ["--bootstrap", nowhere]))
        # Dials to a dead port and to the dead peer, through the API.
        with pytest.raises(grpc.RpcError):
            a.node.Connect(pb.ConnectRequest(addr=nowhere), timeout=10)
        with pytest.raises(grpc.RpcError):
            a.node.Connect(pb.ConnectRequest(addr=b.p2p_addr), timeout=10)
        for _ in range(3):
            with suppress(grpc.RpcError):
                list(a.dht.Query(pb.QueryRequest(peer_id=b.peer_id), timeout=10))
        wait_until(lambda: sum(library_counts(a).values()) > 0, NOISE_WAIT,
                   "a's library noise counter to rise")
        counts = library_counts(a)
        wait_until(lambda: sum(library_counts(c).values()) > 0, NOISE_WAIT,
                   "c's library noise counter to rise")
        stack.close()  # stop every process and collect the rest of their output

    for source, kind, level in counts:
        assert source in ("libp2p", "multiaddr", "grpc", "asyncio", "trio", "warnings",
                          "stdout", "stderr", "other"), source
        assert level in ("debug", "info", "warning", "error", "critical"), level
        assert not re.search(r"12D3Koo|Qm|/ip4/|127\.0\.0\.1", kind), kind
    for name, raw in (("a", a_raw), ("b", b_raw), ("c", c_raw)):
        assert_all_json(name, raw)
        assert raw.stdout == [], (name, raw.stdout[:5])
        # The library's 8-line block arrives, if at all, as one record.
        assert not any(line.startswith(("Failed to open", "  Error:", "  Protocols:"))
                       for line in raw.stderr), name
    # What the rate limit held back was summarised (at exit at the latest).
    summaries = [json.loads(line) for line in a_raw.stderr if '"logger":"dhtd.logs"' in line]
    by_kind: dict[tuple[str, str], float] = {}
    for (source, kind, _), n in counts.items():
        by_kind[source, kind] = by_kind.get((source, kind), 0) + n
    if any(n > 3 for n in by_kind.values()):
        assert summaries and all(int(s["suppressed"]) > 0 for s in summaries), summaries
    # The rate limit held: per (logger, first words) at most BURST records passed
    # in one process (the test runs well under one interval).
    seen: dict[tuple[str, str], int] = {}
    for line in a_raw.stderr:
        record = json.loads(line)
        logger = str(record.get("logger", ""))
        if logger.startswith("libp2p"):
            key = (logger, str(record.get("msg", ""))[:20])
            seen[key] = seen.get(key, 0) + 1
    assert all(n <= 3 for n in seen.values()), seen
    assert time.monotonic() - started < 60
