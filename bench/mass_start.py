"""Mass start: 100+ DHT nodes in 6 dhtd processes started at the same second.

    .venv/bin/python -m bench.mass_start [--processes 6] [--dev-peers 16] [--rounds 20]
                                          [--within 60] [--churn]

Each process runs a main node (gRPC) and --dev-peers in-process DHT peers and is
bootstrapped to one other process only (a ring: p_i -> p_{i-1}). Identities and
ports are fixed before the start, so every process starts at once, as a Kubernetes
rollout starts its sidecars. The script then runs ROUNDS of each workload across
processes (Provide -> FindProvs, Put -> Get, FindPeer of another process's dev peer,
Query vs the true 20 closest), again and again until all reach 19 of 20 or --within
seconds after the start have passed, and prints the figures of every round, with
each process's CPU share. --churn then kills a third of the processes with SIGKILL
and measures the survivors the same way.

Issue 8 asks for >= 19 of 20 within 60 s; tests/integration/test_mass_start.py
asserts it in ./dev test. On this 2-core machine the first full round now ends
about 47 s after the start (it did not end within 115 s before dhtd's own
connection set-up, identify and stream negotiation, and the refresh that skips
buckets the self-lookup covered): the start-up storm takes about 45 s of both
cores instead of 110 s.
"""


from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from dht.v1 import dht_pb2 as pb
from dhtd.ids import b58decode, peer_id_to_str
from dhtd.p2p import load_or_create_identity, peer_id_of
from tests.swarm import Node, spawn_node, wait_ready

PROCESSES = 6
DEV_PEERS = 16  # 6 x (1 + 16) = 102 nodes
NAMESPACE = "mass"
# Start-up of 6 processes with 17 libp2p hosts each on 2 cores.
READY_TIMEOUT = 120.0
# The routing-table refresh interval of every process (dhtd's default).
REFRESH_INTERVAL = "600"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kad(peer_id: str) -> bytes:
    return hashlib.sha256(b58decode(peer_id)).digest()


@dataclass
class Network:
    procs: list[Node]
    peer_ids: list[str]  # every DHT node of the network
    started: float  # time.monotonic() when the last process was started
    ready: float  # when the last one logged "dhtd ready"

    def true_closest(self, target: str, count: int, exclude: str) -> set[str]:
        key = kad(target)
        ranked = sorted((p for p in self.peer_ids if p != exclude),
                        key=lambda p: int.from_bytes(kad(p), "big") ^ int.from_bytes(key, "big"))
        return set(ranked[:count])


@contextmanager
def network(tmp: Path, processes: int, dev_peers: int,
            extra: Sequence[Sequence[str]] = ()) -> Iterator[Network]:
    """``processes`` dhtd processes with ``dev_peers`` each, in a ring; ``extra[i]``
    are more flags for process i."""
    ids, ports = [], []
    for i in range(processes):
        pair = load_or_create_identity(tmp / f"p{i}")
        ids.append(peer_id_to_str(peer_id_of(pair)))
        ports.append(free_port())
    procs: list[Node] = []
    try:
        for i in range(processes):
            j = (i - 1) % processes
            procs.append(spawn_node(
                f"p{i}", tmp / f"p{i}",
                ["--dev-peers", str(dev_peers), "--namespace", NAMESPACE,
                 "--refresh-interval", REFRESH_INTERVAL,
                 "--bootstrap", f"/ip4/127.0.0.1/tcp/{ports[j]}/p2p/{ids[j]}",
                 *(extra[i] if i < len(extra) else ())],
                listen=f"/ip4/127.0.0.1/tcp/{ports[i]}",
            ))
        started = time.monotonic()
        for proc in procs:
            wait_ready(proc, READY_TIMEOUT)
        ready = time.monotonic()
        peer_ids = [p.peer_id for p in procs] + [d for p in procs for d in p.dev_peer_ids()]
        assert len(set(peer_ids)) == processes * (1 + dev_peers)
        yield Network(procs, peer_ids, started, ready)
    finally:
        for proc in procs:
            proc.stop()


CONVERGE_WITHIN = 60.0
NEED = 19
CALL_TIMEOUT = 10.0


def cid_for(text: str) -> str:
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(text.encode()).digest()
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def random_target(rng: random.Random) -> str:
    return peer_id_to_str(b"\x12\x20" + rng.randbytes(32))


def pair(rng: random.Random, n: int) -> tuple[int, int]:
    a = rng.randrange(n)
    return a, (a + rng.randrange(1, n)) % n


def provided(a: Node, b: Node, cid: str) -> bool:
    list(a.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=CALL_TIMEOUT))
    return any(r.provider.id == a.peer_id for r in b.dht.FindProvs(
        pb.FindProvsRequest(cid=cid, num_providers=1), timeout=CALL_TIMEOUT))


def stored(a: Node, b: Node, key: bytes) -> bool:
    list(a.dht.Put(pb.PutRequest(key=key, value=b"v" + key), timeout=CALL_TIMEOUT))
    return b.dht.Get(pb.GetRequest(key=key), timeout=CALL_TIMEOUT).value == b"v" + key


def located(a: Node, target: str) -> bool:
    return bool(a.dht.FindPeer(pb.FindPeerRequest(peer_id=target),
                               timeout=CALL_TIMEOUT).peer.addrs)


def closest(querier: Node, goal: str) -> set[str]:
    events = querier.dht.Query(pb.QueryRequest(peer_id=goal), timeout=CALL_TIMEOUT)
    return {e.event.id for e in events if e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER}


def ok(fn: Callable[..., object], *args: object) -> bool:
    try:
        return bool(fn(*args))
    except grpc.RpcError:
        return False


def measure(net: Network, rng: random.Random, tag: str, rounds: int) -> dict[str, float]:
    """One pass of each workload across processes: successes, and mean Query overlap."""
    procs = net.procs
    found = {"findprovs": 0, "get": 0, "findpeer": 0}
    overlap = 0
    for i in range(rounds):
        a, b = pair(rng, len(procs))
        found["findprovs"] += ok(provided, procs[a], procs[b], cid_for(f"{tag}-{i}"))
        a, b = pair(rng, len(procs))
        found["get"] += ok(stored, procs[a], procs[b], f"/{NAMESPACE}/{tag}-{i}".encode())
        a, b = pair(rng, len(procs))
        found["findpeer"] += ok(located, procs[a], rng.choice(procs[b].dev_peer_ids()))
        querier = procs[rng.randrange(len(procs))]
        goal = random_target(rng)
        try:
            finals = closest(querier, goal)
        except grpc.RpcError:
            finals = set()
        overlap += len(finals & net.true_closest(goal, 20, exclude=querier.peer_id))
    return {**found, "query_overlap": overlap / rounds}


def cpu_seconds(node: Node) -> float:
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def converge(net: Network, rng: random.Random, rounds: int, within: float, tag: str) -> None:
    deadline = time.monotonic() + within
    for attempt in range(1000):
        live = [p for p in net.procs if p.proc.poll() is None]
        # The true closest are among the nodes still running.
        live_ids = [p.peer_id for p in live] + [d for p in live for d in p.dev_peer_ids()]
        cpu0, t0 = [cpu_seconds(p) for p in live], time.monotonic()
        figures = measure(Network(live, live_ids, net.started, net.ready), rng,
                          f"{tag}{attempt}", rounds)
        busy = [round(100 * (cpu_seconds(p) - c) / (time.monotonic() - t0)) for p, c
                in zip(live, cpu0, strict=True)]
        print(f"{tag}: {time.monotonic() - net.started:6.1f}s after the start: {figures}  "
              f"cpu% per process {busy}", flush=True)
        if (all(figures[k] >= NEED for k in ("findprovs", "get", "findpeer"))
                and figures["query_overlap"] >= NEED):
            print(f"{tag}: converged", flush=True)
            return
        if time.monotonic() > deadline:
            print(f"{tag}: NOT converged within {within:g}s", flush=True)
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=PROCESSES)
    parser.add_argument("--dev-peers", type=int, default=DEV_PEERS)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--within", type=float, default=CONVERGE_WITHIN)
    parser.add_argument("--churn", action="store_true")
    args = parser.parse_args()
    rng = random.Random(20261129)
    with tempfile.TemporaryDirectory() as tmp, network(Path(tmp), args.processes,
                                                         args.dev_peers) as net:
        print(f"{len(net.peer_ids)} nodes in {args.processes} processes; all ready "
              f"{net.ready - net.started:.1f}s after the start", flush=True)
        converge(net, rng, args.rounds, args.within, "mass start")
        if args.churn:
            victims = net.procs[: max(1, args.processes // 3)]
            for victim in victims:
                victim.proc.send_signal(signal.SIGKILL)
            for victim in victims:  # gone, not only signalled, before the next round
                victim.proc.wait(timeout=10)
            killed = time.monotonic()
            print(f"churn: killed {len(victims)} of {args.processes} processes", flush=True)
            converge(net, rng, args.rounds, args.within, "churn")
            print(f"churn: measured {time.monotonic() - killed:.1f}s after the kill")


if __name__ == "__main__":
    main()
