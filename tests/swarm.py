"""Starts real dhtd OS processes on 127.0.0.1 for the integration tests.

Each process gets its own data dir and ports picked by the OS (port 0); the
harness learns them from the structured "dhtd ready" log line. Processes get
SIGTERM when the test process dies (PR_SET_PDEATHSIG), and every fixture stops
what it started, so nothing outlives a test run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from dht.v1 import dht_pb2 as pb
from dht.v1 import dht_pb2_grpc as pb_grpc

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def die_with_parent(cmd: Sequence[str]) -> list[str]:
    """``cmd`` run so that it gets SIGTERM when the test process dies.

    util-linux's setpriv sets PR_SET_PDEATHSIG and execs ``cmd``. A Popen
    preexec_fn could do the same, but it runs Python in the forked child, and
    once this process has gRPC channels open gRPC's fork handlers can abort
    that child before it execs."""
    return ["setpriv", "--pdeathsig", "TERM", "--", *cmd]


@dataclass
class Node:
    """One dhtd process."""

    name: str
    proc: subprocess.Popen[str]
    data_dir: Path
    lines: list[dict[str, object]] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    info: dict[str, object] = field(default_factory=dict)
    _channel: grpc.Channel | None = None
    pump: threading.Thread | None = None
    log_file: Path | None = None

    @property
    def grpc_addr(self) -> str:
        return str(self.info["grpc_addr"])

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def p2p_addr(self) -> str:
        return str(self.info["addrs"]).split(",")[0]

    def dev_peer_ids(self) -> list[str]:
        started = [line for line in self.lines if line.get("msg") == "dev peer started"]
        return [str(line["peer_id"]) for line in started]

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.grpc_addr)
        return self._channel

    @property
    def dht(self) -> pb_grpc.DhtServiceStub:
        return pb_grpc.DhtServiceStub(self.channel)

    @property
    def node(self) -> pb_grpc.NodeServiceStub:
        return pb_grpc.NodeServiceStub(self.channel)

    def node_info(self) -> pb.InfoResponse:
        return self.node.Info(pb.InfoRequest(), timeout=5)

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        keep = self.log_file.open("a") if self.log_file is not None else None
        try:
            for raw in self.proc.stderr:
                if keep is not None:
                    keep.write(raw)
                    keep.flush()
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    line = {"msg": raw.rstrip()}
                self.lines.append(line)
                if line.get("msg") == "dhtd ready":
                    self.info = line
                    self.ready.set()
        finally:
            if keep is not None:
                keep.close()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        if self.pump is not None:
            self.pump.join(STOP_TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return "\n".join(json.dumps(line) for line in self.lines[-40:])


def start_node(name: str, data_dir: Path, args: Sequence[str] = (),
               wrap: Sequence[str] = ()) -> Node:
    """Starts one dhtd and waits until it logs "dhtd ready"."""
    node = spawn_node(name, data_dir, args, wrap=wrap)
    wait_ready(node, READY_TIMEOUT)
    return node


def wait_ready(node: Node, timeout: float) -> None:
    """Waits for a spawned node's "dhtd ready" line; stops it and fails if none comes."""
    if not node.ready.wait(timeout):
        node.stop()
        raise RuntimeError(f"{node.name} did not become ready:\n{node.log_text()}")


def spawn_node(name: str, data_dir: Path, args: Sequence[str] = (),
               listen: str = "/ip4/127.0.0.1/tcp/0", wrap: Sequence[str] = ()) -> Node:
    """Starts one dhtd without waiting for it (see wait_ready). ``wrap`` is a command
    prefix dhtd runs under (e.g. prlimit)."""
    # TEST_DHTD_LOG_LEVEL=debug and TEST_LOG_DIR=<dir> keep every line of every
    # dhtd a test starts, for chasing a failure that only shows up in full runs.
    cmd = [*wrap,
        sys.executable, "-m", "dhtd",
        "--grpc-addr", "127.0.0.1:0",
        "--listen", listen,
        "--data-dir", str(data_dir),
        "--log-format", "json",
        "--shutdown-grace", "2",
        "--metrics-addr", "127.0.0.1:0",
        "--log-level", os.environ.get("TEST_DHTD_LOG_LEVEL", "info"),
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHTD_")}
    proc = subprocess.Popen(
        die_with_parent(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=env,
    )
    node = Node(name, proc, data_dir)
    if log_dir := os.environ.get("TEST_LOG_DIR"):
        node.log_file = Path(log_dir) / f"{name}-{proc.pid}.log"
    node.pump = threading.Thread(target=node._pump, name=f"pump-{name}", daemon=True)
    node.pump.start()
    return node


def wait_until(predicate: object, timeout: float, what: str) -> None:
    """Re-checks ``predicate`` until it holds or ``timeout`` passes (then fails)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def settle(nodes: Sequence[Node]) -> None:
    """Once all nodes run, each walks to its own ID (a refresh), so that every node
    has met the nodes that joined after it; then each must find every other
    (interface-ipfs-core's ensureReachable does the same before its DHT tests)."""
    for node in nodes:
        list(node.dht.Query(pb.QueryRequest(peer_id=node.peer_id), timeout=20))
    for node in nodes:
        for other in nodes:
            if other is not node:
                wait_until(lambda a=node, b=other: _finds(a, b), 10,
                           f"{node.name} to find {other.name}")


def _finds(a: Node, b: Node) -> bool:
    try:
        a.dht.FindPeer(pb.FindPeerRequest(peer_id=b.peer_id), timeout=5)
    except grpc.RpcError:
        return False
    return True


@contextmanager
def swarm(tmp: Path, count: int, *, extra: Sequence[str] = (), star: bool = False
          ) -> Iterator[list[Node]]:
    """``count`` dhtd processes in a chain (each bootstraps to the one before), or a star."""
    nodes: list[Node] = []
    try:
        for i in range(count):
            args = list(extra)
            if nodes:
                target = nodes[0] if star else nodes[-1]
                args += ["--bootstrap", target.p2p_addr]
            nodes.append(start_node(f"n{i}", tmp / f"n{i}", args))
        for node in nodes:
            wait_until(lambda n=node: n.node_info().routing_table_size >= 1, 20,
                       f"{node.name} to have a DHT peer")
        settle(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextmanager
def dev_node(name: str, data_dir: Path, args: Sequence[str] = ()) -> Iterator[Node]:
    """One dhtd with 4 in-process dev peers and the /demo/ namespace, as `./dev run`
    starts it; yields once the dev peers are in its routing table."""
    node = start_node(name, data_dir, ["--dev-peers", "4", "--namespace", "demo", *args])
    try:
        wait_until(lambda: node.node_info().routing_table_size >= 4, 20, f"{name}'s 4 dev peers")
        yield node
    finally:
        node.stop()
