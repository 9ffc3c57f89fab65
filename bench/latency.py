"""Median latency of every dhtd RPC on a 5-process swarm on 127.0.0.1.

    .venv/bin/python -m bench.latency [--rounds N] [--dev-peers N]

Starts five dhtd OS processes bootstrapped as a chain (the integration tests'
harness), then times each RPC from n0 through the generated stubs, end to end
(gRPC call to last message). Each round uses fresh keys and CIDs, so nothing
is answered from a cache. Prints one line per RPC: median, p90, min.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dht.v1 import dht_pb2 as pb
from tests.integration.test_swarm import cid_for
from tests.swarm import Node, swarm


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def one_round(
    a: Node, far: Node, cid: str, key: bytes, first_provider: list[float]
) -> dict[str, Callable[[], object]]:
    """The calls of one round, each with its own fresh CID or key."""

    def find_provs() -> None:
        start = time.perf_counter()
        request = pb.FindProvsRequest(cid=cid, num_providers=1)
        for n, _ in enumerate(far.dht.FindProvs(request, timeout=20)):
            if n == 0:
                first_provider.append((time.perf_counter() - start) * 1000)

    return {
        "Provide": lambda: list(a.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=20)),
        "FindProvs": find_provs,
        "Put": lambda: list(a.dht.Put(pb.PutRequest(key=key, value=b"v"), timeout=20)),
        "Get": lambda: far.dht.Get(pb.GetRequest(key=key), timeout=20),
        "FindPeer": lambda: a.dht.FindPeer(pb.FindPeerRequest(peer_id=far.peer_id), timeout=20),
        "Query": lambda: list(a.dht.Query(pb.QueryRequest(peer_id=far.peer_id), timeout=20)),
        "Info": lambda: a.node.Info(pb.InfoRequest(), timeout=5),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dev-peers", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, swarm(
        Path(tmp), 5, extra=["--namespace", "bench", "--dev-peers", str(args.dev_peers)]
    ) as nodes:
        a, far = nodes[0], nodes[-1]
        # One warm-up round so that connections exist, as in a running daemon.
        list(a.dht.Query(pb.QueryRequest(peer_id=far.peer_id), timeout=20))
        samples: dict[str, list[float]] = {}
        first_provider: list[float] = []
        for i in range(args.rounds):
            tag = f"{time.time_ns()}-{i}"
            cid = cid_for(tag)
            key = f"/bench/{hashlib.sha256(tag.encode()).hexdigest()[:16]}".encode()

            runs = one_round(a, far, cid, key, first_provider)
            for name, run in runs.items():
                samples.setdefault(name, []).append(timed(run))
        nodes_total = 5 * (1 + args.dev_peers)
        print(f"dhtd RPC latency, 5 processes ({nodes_total} DHT nodes), "
              f"{args.rounds} rounds, ms")
        print(f"{'rpc':<22}{'median':>8}{'p90':>8}{'min':>8}")
        samples["FindProvs first result"] = first_provider
        for name, values in samples.items():
            values.sort()
            p90 = values[int(len(values) * 0.9) - 1]
            print(f"{name:<22}{statistics.median(values):8.1f}{p90:8.1f}{values[0]:8.1f}")


if __name__ == "__main__":
    main()
