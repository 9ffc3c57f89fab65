"""dhtd against go-libp2p-kad-dht: the same DHT workload on a swarm of each, CPU and latency.

    .venv/bin/python -m bench.go_compare [--nodes 30] [--ops 20] [--idle 20]
                                         [--via client|stub|stub-batched ...]
                                         [--only go|dhtd] [--json]

For issue 12 (CPU per DHT request). Runs, one after the other (never both at once):

- a **Go swarm**: --nodes Go DHT nodes (go-libp2p v0.24.2 + go-libp2p-kad-dht v0.20.0,
  from the ``libp2p-go`` wheel), one per OS process (bench/go_worker.py), server mode;
- a **dhtd swarm**: --nodes dhtd processes with ``--dev-peers 0``, driven over gRPC.

Both listen on 127.0.0.1 TCP with the private protocol prefix --prefix (default /bench:
under /ipfs Go accepts only its /pk and /ipns validators). Process i starts when
process i-1 is ready, bootstrapped to up to --bootstrap-peers earlier processes (the same
random choice for both swarms). The phases of each swarm, with the CPU time
(utime + stime from /proc/<pid>/stat) of every process read at each boundary:

- **start**: from the first exec until all are ready, each has a DHT peer, each has
  refreshed (dhtd: a Query for its own ID; Go: the DHT's Bootstrap) and knows
  min(20, nodes - 1) peers (dhtd: routing table size; Go: peers in its peerstore, the
  binding shows no routing table), then --grace seconds;
- **idle**: --idle seconds of nothing;
- **ops**: the workload, one call at a time: --ops Provide (by a seeded random node) and
  as many FindProvs of those CIDs, then --ops Put and as many Get of those keys. Each
  FindProvs and Get is asked by a node outside the key's true 20 closest of the swarm
  (XOR of sha256(key) and sha256(peer ID bytes)), never the provider or putter itself.
  Records are ``/pk/<identity multihash of an Ed25519 public key>`` holding the
  marshalled key, valid for both dhtd's and Go's default validators.

How the dhtd swarm is called (--via; give it more than once and each way gets a
dhtd swarm of its own, in the same sitting, each compared with the one Go swarm):

- ``client`` (the default): the dhtd_client library (clients/python), as a program
  using it does. It asks Provide, Put and Query for batch_events and yields the
  events one by one.
- ``stub``: the generated gRPC stubs with the requests' defaults, as grpcurl and a
  program that writes its own requests do: one gRPC message per walk event.
- ``stub-batched``: the stubs with batch_events set on Provide and Put.

Latency is end to end from this process: a gRPC call to its last message for dhtd; a
JSON line round trip to the worker for Go (which also reports the time spent in the Go
call alone, shown as "in-proc"). FindProvs asks for up to 20 providers on both sides
(Go's FindProviders collects up to its bucket size; dhtd's default num_providers is 20).
Figures: median and p90 per op, success counts (a FindProvs counts only if it returned
the provider, a Get only if it returned the value), CPU per process per phase, and the
swarm's CPU per op; then the ratios dhtd/Go.

CPU comes in clock ticks (10 ms) per process and read, so a 20-call batch's "CPU ms/op"
is good to about +-1 ms (30 processes); the whole ops phase's figure to about +-0.3 ms.
A Go process's CPU includes its worker's Python (interpreter start-up, JSON, msgpack and
ctypes per call): small next to the Go code, but counted. On 2 cores a run of the
defaults takes about 3 minutes. The Go nodes run in their own venv (--go-venv, default
.venv-go-bench), which this script creates from bench/requirements-go.lock (pinned,
hashed; about 15 s) when it is missing or the lock changed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.jsonline import JsonLineWorker, OpFailed
from dht.v1 import dht_pb2 as pb
from dhtd.ids import b58decode
from dhtd_client import Client, DhtdError, NotFoundError
from tests.swarm import Node, spawn_node, wait_ready

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().with_name("go_worker.py")
GO_LOCK = REPO / "bench" / "requirements-go.lock"
GO_WHEEL = "libp2p-go==0.1.4"
GO_STAMP = ".go-compare-lock-sha256"

K = 20  # Kademlia's bucket size and replication, in both implementations
READY_TIMEOUT = 60.0  # one process, exec to ready, on 2 busy cores
CONNECT_TIMEOUT = 60.0  # all processes to have one DHT peer
SETTLE_TIMEOUT = 90.0  # all processes to know min(20, n - 1) peers
POLL = 0.5
INFO_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
VENV_TIMEOUT = 900.0
OPS = ("provide", "findprovs", "put", "get")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- Setup of the Go peers' venv ---------------------------------------------------


def fail(message: str) -> None:
    print(f"go_compare: {message}", file=sys.stderr)
    raise SystemExit(2)


def pip_error(output: str) -> str:
    """The line of pip's output that says what failed, with the artifact it was at."""
    lines = [line.rstrip() for line in output.splitlines()
             if not line.startswith("WARNING: Location")]
    first = next((i for i, line in enumerate(lines)
                  if line.startswith(("ERROR:", "error:"))), None)
    if first is None:
        return lines[-1].strip() if lines else "failed without a message"
    line = lines[first].strip()
    # A hash mismatch names the artifact on a following line; anything else happened
    # while pip was at the last "Collecting ..." before the error.
    if re.search(r"\S==\S", line):
        return line
    named = None
    if "HASHES" in line:
        named = next((m.group(1) for later in lines[first + 1:]
                      if (m := re.match(r"\s+(\S+==\S+)", later))), None)
    if named is None:
        named = next((m.group(1) for earlier in reversed(lines[:first])
                      if (m := re.match(r"(?:Collecting|Processing) (\S+)", earlier))), None)
    return f"{line} (at {named})" if named and named not in line else line


def lock_entry(lock: str, name: str) -> str:
    """The lines of one package's pin in a hashed requirements file."""
    entry: list[str] = []
    for line in lock.splitlines():
        if entry and (not line.startswith(" ") or line.lstrip().startswith("#")):
            break
        if entry or line.startswith(f"{name}=="):
            entry.append(line)
    if not entry:
        fail(f"{GO_LOCK.relative_to(REPO)} has no {name}== pin")
    return "\n".join(entry) + "\n"


def ensure_go_venv(venv: Path) -> Path:
    """The Go venv's python; creates the venv from GO_LOCK if missing or out of date."""
    python = venv / "bin" / "python"
    want = hashlib.sha256(GO_LOCK.read_bytes()).hexdigest()
    stamp = venv / GO_STAMP
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    if sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64":
        fail(f"{GO_WHEEL} has only a CPython 3.11 x86_64 Linux wheel; this is Python "
             f"{platform.python_version()} on {platform.machine()}")
    print(f"go_compare: setting up {venv} from {GO_LOCK.relative_to(REPO)}", file=sys.stderr)
    lock = str(GO_LOCK.relative_to(REPO))
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check",
           "--require-hashes"]
    with tempfile.TemporaryDirectory(prefix="go-compare-venv-") as tmp:
        build = Path(tmp) / "setuptools.txt"
        build.write_text(lock_entry(GO_LOCK.read_text(), "setuptools"))
        steps: list[tuple[list[str], str]] = [
            ([sys.executable, "-m", "venv", "--clear", str(venv)], f"python -m venv {venv}"),
            # varint has only an sdist: first the pinned setuptools, then everything,
            # built with it (--no-build-isolation), so nothing unpinned is fetched.
            ([*pip, "--no-deps", "-r", str(build)], f"pip install the setuptools of {lock}"),
            ([*pip, "--no-build-isolation", "-r", str(GO_LOCK)],
             f"pip install --require-hashes -r {lock}"),
            ([str(python), "-c", "import libp2p.dht"], f"import libp2p.dht from {GO_WHEEL}"),
        ]
        for cmd, what in steps:
            try:
                done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, timeout=VENV_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                fail(f"cannot set up {venv}: {what} took over {VENV_TIMEOUT:g}s")
            if done.returncode != 0:
                fail(f"cannot set up {venv}: {what}: {pip_error(done.stdout)}")
    stamp.write_text(want + "\n")
    return python


# --- The workload's keys -------------------------------------------------------------


def cid_for(text: str) -> tuple[str, bytes]:
    """A CIDv1 (raw, sha2-256) as base32 text, and its multihash (the DHT key)."""
    mh = b"\x12\x20" + hashlib.sha256(text.encode()).digest()
    raw = b"\x01\x55" + mh
    return "b" + base64.b32encode(raw).decode().lower().rstrip("="), mh


def pk_record(seed: str) -> tuple[bytes, bytes]:
    """A /pk/ record: key /pk/<identity multihash of the marshalled key>, value the key."""
    private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    marshalled = b"\x08\x01\x12\x20" + raw  # libp2p PublicKey{Type: Ed25519, Data: raw}
    return b"/pk/" + bytes([0x00, len(marshalled)]) + marshalled, marshalled


@dataclass(frozen=True)
class Keys:
    cids: list[tuple[str, bytes]]
    records: list[tuple[bytes, bytes]]


def make_keys(seed: int, ops: int) -> Keys:
    return Keys([cid_for(f"go-compare-{seed}-cid-{i}") for i in range(ops)],
                [pk_record(f"go-compare-{seed}-pk-{i}") for i in range(ops)])


def kad(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def far_from(key: bytes, peer_ids: Sequence[str]) -> list[int]:
    """Indexes of the nodes outside the key's true 20 closest (at least one node)."""
    target = kad(key)
    ranked = sorted(range(len(peer_ids)), key=lambda i: kad(b58decode(peer_ids[i])) ^ target)
    return ranked[min(K, len(ranked) - 2):]


@dataclass(frozen=True)
class Step:
    actor: int  # provider or putter
    querier: int  # asks FindProvs or Get


def plan(keys: Sequence[bytes], peer_ids: Sequence[str], rng: random.Random) -> list[Step]:
    steps = []
    for key in keys:
        actor = rng.randrange(len(peer_ids))
        far = [i for i in far_from(key, peer_ids) if i != actor]
        steps.append(Step(actor, rng.choice(far)))
    return steps


# --- The two kinds of node -------------------------------------------------------------


class Peer(Protocol):
    name: str
    peer_id: str
    addr: str
    pid: int
    inner_ms: float | None  # time of the last call inside the node, where it says

    def provide(self, cid: str) -> None: ...
    def find_providers(self, cid: str) -> list[str]: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def get(self, key: bytes) -> bytes | None: ...
    def peer_count(self) -> int: ...
    def refresh(self) -> None: ...
    def alive(self) -> bool: ...
    def stop(self) -> None: ...


class GoPeer(JsonLineWorker):
    """One bench/go_worker.py process, driven by JSON lines."""

    def __init__(self, name: str, python: Path, prefix: str, boots: Sequence[str],
                 op_timeout: float, log_path: Path, extra: Sequence[str] = ()) -> None:
        cmd = [str(python), str(WORKER), "--prefix", prefix, "--op-timeout", str(op_timeout)]
        for addr in boots:
            cmd += ["--bootstrap", addr]
        super().__init__(name, [*cmd, *extra], op_timeout, log_path)
        self.peer_id, self.addr = "", ""
        self.boot_errors: list[str] = []

    def wait_ready(self, timeout: float) -> None:
        reply = self.wait_ready_line(timeout)
        self.peer_id = str(reply["peer_id"])
        self.addr = str(reply["addrs"][0])
        self.boot_errors = list(reply["boot_errors"])

    def provide(self, cid: str) -> None:
        self.call("provide", cid=cid)

    def find_providers(self, cid: str) -> list[str]:
        return [str(p) for p in self.call("find_providers", cid=cid)["providers"]]

    def put(self, key: bytes, value: bytes) -> None:
        self.call("put", key=key.hex(), value=value.hex())

    def get(self, key: bytes) -> bytes | None:
        value = self.call("get", key=key.hex())["value"]
        return None if value is None else bytes.fromhex(value)

    def peer_count(self) -> int:
        return int(self.call("peers")["peers"])

    def refresh(self) -> None:
        self.call("refresh")


def rpc_error(exc: grpc.RpcError) -> OpFailed:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return OpFailed(f"{code.name if code else 'RpcError'}: {details}")


VIAS = ("client", "stub", "stub-batched")


def client_error(exc: DhtdError) -> OpFailed:
    """A dhtd_client error as a failed op (as rpc_error does for the stubs)."""
    return OpFailed(f"{type(exc).__name__}: {exc}")


class DhtdPeer:
    """One dhtd process (tests/swarm.py's harness), driven over gRPC ``via`` the
    client library or the stubs (see the module doc)."""

    def __init__(self, node: Node, op_timeout: float, via: str) -> None:
        self.node, self.op_timeout = node, op_timeout
        self.via = via
        self.batch_events = via == "stub-batched"
        # On the harness's channel, so the client costs no extra connection.
        self.client = Client(channel=node.channel, timeout=op_timeout)
        self.name, self.peer_id, self.addr = node.name, node.peer_id, node.p2p_addr
        self.pid = node.proc.pid
        self.inner_ms: float | None = None

    def provide(self, cid: str) -> None:
        if self.via == "client":
            try:
                list(self.client.provide(cid))
            except DhtdError as exc:
                raise client_error(exc) from None
            return
        try:
            list(self.node.dht.Provide(pb.ProvideRequest(
                cids=[cid], batch_events=self.batch_events), timeout=self.op_timeout))
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None

    def find_providers(self, cid: str) -> list[str]:
        if self.via == "client":
            try:
                return [p.id for p in self.client.find_provs(cid)]
            except DhtdError as exc:
                raise client_error(exc) from None
        try:
            return [r.provider.id for r in self.node.dht.FindProvs(
                pb.FindProvsRequest(cid=cid), timeout=self.op_timeout)]
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None

    def put(self, key: bytes, value: bytes) -> None:
        if self.via == "client":
            try:
                list(self.client.put(key, value))
            except DhtdError as exc:
                raise client_error(exc) from None
            return
        try:
            list(self.node.dht.Put(pb.PutRequest(
                key=key, value=value, batch_events=self.batch_events), timeout=self.op_timeout))
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None

    def get(self, key: bytes) -> bytes | None:
        if self.via == "client":
            try:
                return self.client.get(key)
            except NotFoundError:
                return None
            except DhtdError as exc:
                raise client_error(exc) from None
        try:
            return bytes(self.node.dht.Get(pb.GetRequest(key=key),
                                           timeout=self.op_timeout).value)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise rpc_error(exc) from None

    def peer_count(self) -> int:
        try:
            return int(self.node.node.Info(pb.InfoRequest(),
                                           timeout=INFO_TIMEOUT).routing_table_size)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None

    def refresh(self) -> None:
        try:
            list(self.node.dht.Query(pb.QueryRequest(peer_id=self.peer_id),
                                     timeout=self.op_timeout))
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None

    def alive(self) -> bool:
        return self.node.proc.poll() is None

    def stop(self) -> None:
        self.node.stop()


# --- One swarm, phase by phase -----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpus(peers: Sequence[Peer]) -> list[float]:
    dead = [p.name for p in peers if not p.alive()]
    if dead:
        raise OpFailed(f"processes died: {', '.join(dead)}")
    return [cpu_seconds(p.pid) for p in peers]


def wait_counts(peers: Sequence[Peer], want: int, timeout: float) -> list[int]:
    """Polls every peer's count until all reach ``want`` or ``timeout`` passes; the last."""
    deadline = time.monotonic() + timeout
    counts = [0] * len(peers)
    for _ in range(int(timeout / POLL) + 2):
        for i, peer in enumerate(peers):
            if counts[i] < want:
                try:
                    counts[i] = peer.peer_count()
                except OpFailed:
                    counts[i] = 0
        if min(counts) >= want or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    return counts


def quantile_90(samples: Sequence[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=10, method="inclusive")[-1]


@dataclass
class OpStats:
    ok: int = 0
    ms: list[float] = field(default_factory=list)
    inner_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0  # whole swarm, over the batch

    def figures(self) -> dict[str, Any]:
        n = len(self.ms)
        return {
            "ok": self.ok, "n": n,
            "median_ms": statistics.median(self.ms) if n else None,
            "p90_ms": quantile_90(self.ms) if n else None,
            "inner_median_ms": statistics.median(self.inner_ms) if self.inner_ms else None,
            "cpu_ms_per_op": 1000 * self.cpu_s / n if n else None,
            "errors": self.errors,
        }


def attempt(peer: Peer, stats: OpStats, call: Callable[[], str | None]) -> None:
    """Runs one call, timed; ``call`` returns None on success, else why it failed."""
    peer.inner_ms = None
    start = time.perf_counter()
    try:
        problem = call()
    except OpFailed as exc:
        problem = str(exc)
    stats.ms.append((time.perf_counter() - start) * 1000)
    if peer.inner_ms is not None:
        stats.inner_ms.append(peer.inner_ms)
    if problem is None:
        stats.ok += 1
    else:
        stats.errors.append(f"{peer.name}: {problem}"[:300])


def workload(peers: Sequence[Peer], keys: Keys, seed: int) -> dict[str, OpStats]:
    """Provide then FindProvs of each CID, Put then Get of each record; CPU per batch."""
    rng = random.Random(seed)
    ids = [p.peer_id for p in peers]
    cid_steps = plan([mh for _cid, mh in keys.cids], ids, rng)
    record_steps = plan([key for key, _value in keys.records], ids, rng)
    stats = {op: OpStats() for op in OPS}

    def batch(op: str, run: Callable[[int], None], count: int) -> None:
        before = sum(cpus(peers))
        for i in range(count):
            run(i)
        stats[op].cpu_s = sum(cpus(peers)) - before

    def provide(i: int) -> None:
        peer = peers[cid_steps[i].actor]
        attempt(peer, stats["provide"], lambda: peer.provide(keys.cids[i][0]))

    def findprovs(i: int) -> None:
        peer, provider = peers[cid_steps[i].querier], ids[cid_steps[i].actor]

        def call() -> str | None:
            found = peer.find_providers(keys.cids[i][0])
            return None if provider in found else f"provider not among the {len(found)} found"
        attempt(peer, stats["findprovs"], call)

    def put(i: int) -> None:
        peer = peers[record_steps[i].actor]
        attempt(peer, stats["put"], lambda: peer.put(*keys.records[i]))

    def get(i: int) -> None:
        peer = peers[record_steps[i].querier]

        def call() -> str | None:
            value = peer.get(keys.records[i][0])
            if value == keys.records[i][1]:
                return None
            return "not found" if value is None else f"another value ({len(value)} bytes)"
        attempt(peer, stats["get"], call)

    batch("provide", provide, len(keys.cids))
    batch("findprovs", findprovs, len(keys.cids))
    batch("put", put, len(keys.records))
    batch("get", get, len(keys.records))
    return stats


def phase(before: Sequence[float], after: Sequence[float], wall: float) -> dict[str, float]:
    deltas = [b - a for a, b in zip(before, after, strict=True)]
    mean = statistics.mean(deltas)
    return {"wall_s": wall, "cpu_mean_s": mean, "cpu_max_s": max(deltas),
            "cpu_total_s": sum(deltas), "core_pct_mean": 100 * mean / wall if wall else 0.0}


def run_swarm(impl: str, spawn: Callable[[int, list[str]], Peer], args: argparse.Namespace,
              keys: Keys) -> dict[str, Any]:
    """Starts the swarm, measures start, idle and ops, stops it; the figures."""
    peers: list[Peer] = []
    notes: list[str] = []
    rng = random.Random(args.seed)
    load = os.getloadavg()[0]
    try:
        t0 = time.monotonic()
        for i in range(args.nodes):
            boots = rng.sample(peers, min(args.bootstrap_peers, len(peers)))
            peers.append(spawn(i, [p.addr for p in boots]))
            if (i + 1) % 10 == 0 or i + 1 == args.nodes:
                print(f"  {impl}: {i + 1}/{args.nodes} ready after {time.monotonic() - t0:.1f}s",
                      file=sys.stderr, flush=True)
        ready_s = time.monotonic() - t0
        counts = wait_counts(peers, 1, CONNECT_TIMEOUT)
        if min(counts) < 1:
            notes.append(f"{counts.count(0)} nodes had no DHT peer after "
                         f"{CONNECT_TIMEOUT:g}s")
        for peer in peers:
            try:
                peer.refresh()
            except OpFailed as exc:
                notes.append(f"refresh of {peer.name} failed: {exc}")
        want = min(K, args.nodes - 1)
        counts = wait_counts(peers, want, SETTLE_TIMEOUT)
        if min(counts) < want:
            notes.append(f"after {SETTLE_TIMEOUT:g}s {sum(c < want for c in counts)} nodes "
                         f"knew fewer than {want} peers (min {min(counts)})")
        time.sleep(args.grace)
        start_wall = time.monotonic() - t0
        at_start = cpus(peers)
        zero = [0.0] * len(peers)
        print(f"  {impl}: started in {start_wall:.1f}s; idle {args.idle:g}s", file=sys.stderr,
              flush=True)
        t1 = time.monotonic()
        time.sleep(args.idle)
        after_idle = cpus(peers)
        t2 = time.monotonic()
        print(f"  {impl}: ops", file=sys.stderr, flush=True)
        stats = workload(peers, keys, args.seed + 1)
        after_ops = cpus(peers)
        t3 = time.monotonic()
        result: dict[str, Any] = {
            "impl": impl, "nodes": args.nodes, "loadavg_1m_before": load,
            "ready_wall_s": ready_s, "peers_known_min": min(counts), "peers_wanted": want,
            "start": phase(zero, at_start, start_wall),
            "idle": phase(at_start, after_idle, t2 - t1),
            "ops": phase(after_idle, after_ops, t3 - t2),
            "total": phase(zero, after_ops, t3 - t0),
            "op": {op: s.figures() for op, s in stats.items()},
            "notes": notes,
        }
        ops_n = sum(len(s.ms) for s in stats.values())
        result["ops"]["cpu_ms_per_op"] = 1000 * result["ops"]["cpu_total_s"] / ops_n
        idle_rate = result["idle"]["cpu_total_s"] / result["idle"]["wall_s"]
        result["ops"]["cpu_ms_per_op_net_of_idle"] = 1000 * (
            result["ops"]["cpu_total_s"] - idle_rate * result["ops"]["wall_s"]) / ops_n
        return result
    finally:
        for peer in peers:
            peer.stop()


@contextmanager
def go_spawner(args: argparse.Namespace, tmp: Path) -> Iterator[Callable[[int, list[str]], Peer]]:
    python = ensure_go_venv(args.go_venv)

    def spawn(i: int, boots: list[str]) -> Peer:
        peer = GoPeer(f"go{i}", python, args.prefix, boots, args.op_timeout,
                      tmp / f"go{i}.log")
        try:
            peer.wait_ready(READY_TIMEOUT)
        except OpFailed:
            peer.stop()
            raise
        if peer.boot_errors:
            print(f"  go{i}: bootstrap errors: {peer.boot_errors}", file=sys.stderr)
        return peer

    yield spawn


@contextmanager
def dhtd_spawner(args: argparse.Namespace, tmp: Path, via: str
                 ) -> Iterator[Callable[[int, list[str]], Peer]]:
    def spawn(i: int, boots: list[str]) -> Peer:
        extra = ["--dev-peers", "0", "--protocol-prefix", args.prefix]
        for addr in boots:
            extra += ["--bootstrap", addr]
        node = spawn_node(f"d{i}", tmp / f"d{i}", extra)
        for _ in range(int(READY_TIMEOUT / POLL) + 1):  # fails at once if dhtd exits
            if node.ready.wait(POLL) or node.proc.poll() is not None:
                break
        if node.proc.poll() is not None and node.pump is not None:
            node.pump.join(STOP_TIMEOUT)  # its last log lines, for the error
        wait_ready(node, 0.1)
        return DhtdPeer(node, args.op_timeout, via)

    yield spawn


# --- Report ----------------------------------------------------------------------------------


LABELS = {"provide": "Provide", "findprovs": "FindProvs", "put": "Put", "get": "Get"}
CHECKS = {"provide": "returned", "findprovs": "found the provider", "put": "returned",
          "get": "returned the value"}


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_swarm(r: dict[str, Any], title: str) -> None:
    print(f"\n== {title}: {r['nodes']} processes (load average before: "
          f"{r['loadavg_1m_before']:.2f}) ==")
    print(f"{'op':<10}{'ok':>7}  {'median ms':>10}{'p90 ms':>10}{'in-proc ms':>11}"
          f"{'CPU ms/op':>11}  check")
    for op in OPS:
        f = r["op"][op]
        print(f"{LABELS[op]:<10}{f['ok']:>4}/{f['n']:<2}  {fmt(f['median_ms']):>10}"
              f"{fmt(f['p90_ms']):>10}{fmt(f['inner_median_ms']):>11}"
              f"{fmt(f['cpu_ms_per_op']):>11}  {CHECKS[op]}")
    print("(CPU ms/op: CPU of all the swarm's processes over the batch / calls"
          + ("; in-proc: time in the Go call, inside the worker)" if r["impl"] == "go" else ")"))
    print(f"{'phase':<8}{'wall s':>8}{'CPU s/proc':>12}{'max s':>8}{'% core/proc':>13}")
    for name in ("start", "idle", "ops", "total"):
        p = r[name]
        print(f"{name:<8}{p['wall_s']:>8.1f}{p['cpu_mean_s']:>12.3f}{p['cpu_max_s']:>8.2f}"
              f"{p['core_pct_mean']:>13.2f}")
    print(f"all ready after {r['ready_wall_s']:.1f}s; fewest peers known at settle "
          f"{r['peers_known_min']} (wanted {r['peers_wanted']}); ops: "
          f"{fmt(r['ops']['cpu_ms_per_op'])} ms CPU per call for the swarm "
          f"({fmt(r['ops']['cpu_ms_per_op_net_of_idle'])} net of idle)")
    for note in r["notes"]:
        print(f"NOTE: {note}")
    for op in OPS:
        errors = r["op"][op]["errors"]
        for error in errors[:5]:
            print(f"FAILED {LABELS[op]}: {error}")
        if len(errors) > 5:
            print(f"FAILED {LABELS[op]}: ... and {len(errors) - 5} more")


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def ratios(d: dict[str, Any], g: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    rows: list[tuple[str, float | None, float | None]] = [
        ("ops-phase CPU s/process", d["ops"]["cpu_mean_s"], g["ops"]["cpu_mean_s"]),
        ("CPU ms per call (swarm)", d["ops"]["cpu_ms_per_op"], g["ops"]["cpu_ms_per_op"]),
        ("idle CPU % core/process", d["idle"]["core_pct_mean"], g["idle"]["core_pct_mean"]),
        ("start CPU s/process", d["start"]["cpu_mean_s"], g["start"]["cpu_mean_s"]),
        ("total CPU s/process", d["total"]["cpu_mean_s"], g["total"]["cpu_mean_s"]),
    ]
    for op in ("findprovs", "provide", "put", "get"):
        rows.append((f"median {LABELS[op]} ms", d["op"][op]["median_ms"],
                     g["op"][op]["median_ms"]))
    return rows


def print_ratios(d: dict[str, Any], g: dict[str, Any], title: str) -> None:
    print(f"\n== dhtd / Go: {title} ==")
    print(f"{'figure':<26}{'dhtd':>10}{'Go':>10}{'dhtd/Go':>10}")
    for name, a, b in ratios(d, g):
        print(f"{name:<26}{fmt(a, 3):>10}{fmt(b, 3):>10}{ratio(a, b):>10}")
    print("successes   dhtd: " + ", ".join(f"{LABELS[o]} {d['op'][o]['ok']}/{d['op'][o]['n']}"
                                            for o in OPS))
    print("            Go:   " + ", ".join(f"{LABELS[o]} {g['op'][o]['ok']}/{g['op'][o]['n']}"
                                            for o in OPS))


TITLES = {"go": "Go: go-libp2p-kad-dht v0.20.0 (libp2p-go 0.1.4 wheel)",
          "dhtd/client": "dhtd, via dhtd_client (batch_events)",
          "dhtd/stub": "dhtd, via the stubs (one gRPC message per event)",
          "dhtd/stub-batched": "dhtd, via the stubs with batch_events"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--ops", type=int, default=20, help="calls of each kind")
    parser.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds after settling before the idle window")
    parser.add_argument("--only", choices=("go", "dhtd"))
    parser.add_argument("--json", action="store_true", help="also print one JSON object")
    parser.add_argument("--prefix", default="/bench", help="kad protocol prefix of both swarms")
    parser.add_argument("--bootstrap-peers", type=int, default=3)
    parser.add_argument("--op-timeout", type=float, default=30.0)
    parser.add_argument("--via", choices=VIAS, action="append",
                        help="how the dhtd swarm is called (default client); more than "
                             "once: a dhtd swarm for each, in this order")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--go-venv", type=Path, default=REPO / ".venv-go-bench")
    args = parser.parse_args()
    if args.nodes < 3 or args.ops < 1:
        parser.error("--nodes must be at least 3 and --ops at least 1")
    if args.nodes <= K + 1:
        print(f"go_compare: with {args.nodes} nodes no querier can be outside a key's "
              f"{K} closest; queriers are the farthest nodes instead", file=sys.stderr)
    started = time.monotonic()
    keys = make_keys(args.seed, args.ops)
    dhtds = [f"dhtd/{via}" for via in dict.fromkeys(args.via or ["client"])]
    impls = (["go"] if args.only != "dhtd" else []) + (dhtds if args.only != "go" else [])
    if "go" in impls:
        ensure_go_venv(args.go_venv)  # before any swarm, so a missing wheel fails at once
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for impl in impls:
        print(f"go_compare: {impl} swarm of {args.nodes}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"go-compare-{impl.replace('/', '-')}-") as tmp:
            spawner = (go_spawner(args, Path(tmp)) if impl == "go"
                       else dhtd_spawner(args, Path(tmp), impl.partition("/")[2]))
            try:
                with spawner as spawn:
                    results[impl] = run_swarm(impl, spawn, args, keys)
            except (OpFailed, RuntimeError, AssertionError, OSError) as exc:
                # e.g. a process that did not become ready: tests/swarm.py's message
                # carries the tail of its log.
                failed[impl] = f"{type(exc).__name__}: {exc}"
                print(f"go_compare: the {impl} swarm FAILED: {failed[impl]}", file=sys.stderr,
                      flush=True)
    print(f"\ngo_compare: {args.nodes} nodes per swarm, {args.ops} calls of each kind, idle "
          f"{args.idle:g}s, prefix {args.prefix}, {os.cpu_count()} cores, "
          f"{time.monotonic() - started:.0f}s in all")
    for impl in impls:
        if impl in results:
            print_swarm(results[impl], TITLES[impl])
        else:
            print(f"\n== {TITLES[impl]}: FAILED ==\n{failed[impl]}")
    for impl in dhtds:
        if "go" in results and impl in results:
            print_ratios(results[impl], results["go"], TITLES[impl])
    if args.json:
        out: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in vars(args).items()}, **results}
        for impl in dhtds:
            if "go" in results and impl in results:
                out[f"ratio_{impl}_over_go"] = {
                    name: (a / b if a is not None and b else None)
                    for name, a, b in ratios(results[impl], results["go"])}
        if failed:
            out["failed"] = failed
        print(json.dumps(out))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
