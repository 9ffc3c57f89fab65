"""The two swarms of the WAN lab: Go nodes and dhtd processes, each lab process on its own
address and group id (bench/wan/lab.py), driven as bench/go_compare.py drives them.

A lab process is one Go node (bench/wan/go_node.py, i.e. bench/go_worker.py on a lab
address) or one dhtd with --dev-peers extra DHT nodes inside it (``per_process - 1``;
0 in the Go-against-dhtd runs). Processes start in waves: the first alone, then
``WAVE`` at a time, each bootstrapped to up to 3 random processes already running (the
same seeded choice for both swarms). A swarm has formed when every process answers, each
has refreshed its table (dhtd: a Query for its own ID; Go: the DHT's Bootstrap), and
each knows min(20, nodes - 1) peers (dhtd: routing table size; Go: peers in its
peerstore, which is all the binding shows).
"""

from __future__ import annotations

import random
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.go_compare import (
    READY_TIMEOUT,
    DhtdPeer,
    GoPeer,
    K,
    Peer,
    client_error,
    cpu_seconds,
    kad,
    wait_counts,
)
from bench.jsonline import JsonLineWorker, OpFailed
from bench.wan.lab import Lab, as_process, node_ip
from dhtd.ids import b58decode
from dhtd_client import DhtdError
from tests.swarm import Node, spawn_node, wait_ready

GO_NODE = Path(__file__).resolve().with_name("go_node.py")
WAVE = 8
BOOTSTRAP_PEERS = 3
METRICS_TIMEOUT = 5.0
CONNECT_TIMEOUT = 90.0  # every process to have one DHT peer
SETTLE_TIMEOUT = 120.0  # every process to know min(20, nodes - 1) peers
STOP_WORKERS = 8
DEV_PEER_PORT = re.compile(r"/ip4/127\.0\.0\.1/tcp/(\d+)$")


@dataclass
class LabProc:
    """One process of a swarm and the DHT nodes in it (the main node first)."""

    index: int
    peer: Peer
    ids: list[str]  # peer IDs, base58
    addrs: list[str]  # their dial addresses, /ip4/.../tcp/N/p2p/ID
    listen_ports: tuple[int, ...] = ()  # dev peers' ports on 127.0.0.1
    metrics_addr: str | None = None

    @property
    def pid(self) -> int:
        return self.peer.pid

    def kad_requests(self) -> tuple[int, int] | None:
        """(sent, failed) kad requests of the main node since its start, from /metrics;
        None for Go (the binding exposes no counters)."""
        if self.metrics_addr is None:
            return None
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics",
                                    timeout=METRICS_TIMEOUT) as reply:
            text = reply.read().decode()
        return (metric_sum(text, "dht_outbound_requests_total"),
                metric_sum(text, "dht_outbound_request_errors_total"))


def metric_sum(text: str, name: str) -> int:
    """The sum of a counter's series in the Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


class LabGoPeer(GoPeer):
    """A Go node on lab process ``index``'s address and group id."""

    first_ms: float | None = None  # the binding collects providers; no first one

    def __init__(self, index: int, python: Path, prefix: str, boots: Sequence[str],
                 op_timeout: float, log_path: Path) -> None:
        cmd = [*as_process(index), str(python), str(GO_NODE), "--listen-ip", node_ip(index),
               "--prefix", prefix, "--op-timeout", str(op_timeout)]
        for addr in boots:
            cmd += ["--bootstrap", addr]
        JsonLineWorker.__init__(self, f"go{index}", cmd, op_timeout, log_path)
        self.peer_id, self.addr = "", ""
        self.boot_errors: list[str] = []


class LabDhtdPeer(DhtdPeer):
    """A dhtd main node, called through dhtd_client; FindProvs notes when the first
    provider arrived (``first_ms``)."""

    first_ms: float | None = None

    def find_providers(self, cid: str) -> list[str]:
        self.first_ms = None
        start = time.perf_counter()
        found = []
        try:
            for provider in self.client.find_provs(cid):
                if self.first_ms is None:
                    self.first_ms = (time.perf_counter() - start) * 1000
                found.append(provider.id)
        except DhtdError as exc:
            raise client_error(exc) from None
        return found


@dataclass
class Swarm:
    impl: str  # "go" or "dhtd"
    procs: list[LabProc] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)  # started, not yet ready
    start_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    peers_known_min: int = 0
    last_cpu: dict[int, float] = field(default_factory=dict)

    @property
    def nodes(self) -> int:
        return sum(len(p.ids) for p in self.procs)

    def cpu(self) -> float:
        """CPU seconds of all its processes so far (a killed one: its last reading)."""
        for proc in self.procs:
            with suppress(OSError, IndexError, ValueError):  # killed (gone), or a zombie
                self.last_cpu[proc.index] = cpu_seconds(proc.pid)
        return sum(self.last_cpu.values())

    def stop(self) -> None:
        """Stops every process (in parallel: dhtd takes its shutdown grace)."""
        stoppers: list[Callable[[], Any]] = [p.peer.stop for p in self.procs]
        stoppers += [p.stop for p in self.pending]
        with ThreadPoolExecutor(STOP_WORKERS) as pool:
            for future in [pool.submit(stop) for stop in stoppers]:
                try:
                    future.result()
                except Exception as exc:  # stop what else there is, then say so
                    print(f"  stop failed: {exc!r}", file=sys.stderr)
        self.procs.clear()
        self.pending.clear()


@dataclass
class SwarmArgs:
    impl: str
    procs: int
    per_process: int  # DHT nodes per dhtd process (1 + dev peers)
    prefix: str
    op_timeout: float
    seed: int
    go_python: Path | None
    dhtd_args: Sequence[str]
    work: Path


def spawn_go(a: SwarmArgs, index: int, boots: list[str]) -> LabGoPeer:
    assert a.go_python is not None
    return LabGoPeer(index, a.go_python, a.prefix, boots, a.op_timeout,
                     a.work / f"go{index}.log")


def ready_go(peer: LabGoPeer) -> LabProc:
    peer.wait_ready(READY_TIMEOUT)
    return LabProc(0, peer, [peer.peer_id], [peer.addr])


def spawn_dhtd(a: SwarmArgs, index: int, boots: list[str]) -> Node:
    data = a.work / f"d{index}"
    data.mkdir(parents=True, exist_ok=True)
    extra = ["--dev-peers", str(a.per_process - 1), "--protocol-prefix", a.prefix]
    for addr in boots:
        extra += ["--bootstrap", addr]
    return spawn_node(f"d{index}", data, [*extra, *a.dhtd_args],
                      listen=f"/ip4/{node_ip(index)}/tcp/0", wrap=as_process(index))


def ready_dhtd(node: Node, a: SwarmArgs, lab: Lab) -> LabProc:
    wait_ready(node, READY_TIMEOUT)
    peer = LabDhtdPeer(node, a.op_timeout, "client")
    ids, addrs, ports = [node.peer_id], [node.p2p_addr], []
    for line in node.lines:
        if line.get("msg") == "dev peer started":
            addr = str(line["addr"])
            match = DEV_PEER_PORT.search(addr)
            if match is None:
                raise RuntimeError(f"{node.name}: a dev peer at {addr}, not on 127.0.0.1")
            ports.append(int(match.group(1)))
            ids.append(str(line["peer_id"]))
            addrs.append(f"{addr}/p2p/{line['peer_id']}")
    return LabProc(0, peer, ids, addrs, tuple(ports), str(node.info["metrics_addr"]))


def start_swarm(swarm: Swarm, a: SwarmArgs, lab: Lab) -> None:
    """Starts ``a.procs`` processes into ``swarm`` (which the caller stops, also when
    this fails) and waits until the swarm has formed."""
    rng = random.Random(f"wan-bootstrap-{a.seed}")
    t0 = time.monotonic()
    waves = [[0]] + [list(range(i, min(i + WAVE, a.procs))) for i in range(1, a.procs, WAVE)]
    for wave in waves:
        for index in wave:
            boots = [p.addrs[0] for p in rng.sample(swarm.procs,
                                                   min(BOOTSTRAP_PEERS, len(swarm.procs)))]
            started: Any = (spawn_go(a, index, boots) if a.impl == "go"
                            else spawn_dhtd(a, index, boots))
            swarm.pending.append(started)
        while swarm.pending:
            started = swarm.pending[0]
            proc = ready_go(started) if a.impl == "go" else ready_dhtd(started, a, lab)
            swarm.pending.pop(0)
            proc.index = len(swarm.procs)
            swarm.procs.append(proc)
            for port in proc.listen_ports:
                lab.proxy.register(f"127.0.0.1:{port}", proc.index)
        print(f"  {a.impl}: {len(swarm.procs)}/{a.procs} processes ready after "
              f"{time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    form(swarm)
    swarm.start_s = time.monotonic() - t0


def form(swarm: Swarm) -> None:
    """Refreshes every process's table (in parallel) and waits for full tables."""
    peers = [p.peer for p in swarm.procs]
    counts = wait_counts(peers, 1, CONNECT_TIMEOUT)
    if min(counts) < 1:
        swarm.notes.append(f"{counts.count(0)} processes had no DHT peer after "
                           f"{CONNECT_TIMEOUT:g}s")

    def refresh(peer: Peer) -> None:
        try:
            peer.refresh()
        except OpFailed as exc:
            swarm.notes.append(f"refresh of {peer.name} failed: {exc}")

    with ThreadPoolExecutor(STOP_WORKERS) as pool:
        list(pool.map(refresh, peers))
    want = min(K, swarm.nodes - 1)
    counts = wait_counts(peers, want, SETTLE_TIMEOUT)
    swarm.peers_known_min = min(counts)
    if min(counts) < want:
        swarm.notes.append(f"after {SETTLE_TIMEOUT:g}s {sum(c < want for c in counts)} "
                           f"processes knew fewer than {want} peers (min {min(counts)})")


def kad_position(peer_id: str) -> int:
    return kad(b58decode(peer_id))
