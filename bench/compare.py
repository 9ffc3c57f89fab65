"""dhtd against py-libp2p's own Kademlia lookups (and js-libp2p's kad-dht when
its test harness is installed) on the same local swarm.

    .venv/bin/python -m bench.compare [--rounds N] [--dev-peers N]

Starts 5 dhtd processes (each with --dev-peers in-process peers) on 127.0.0.1.
Then, for the same targets (peer IDs of the swarm):
- dhtd: Query over gRPC from n0, timed end to end (gRPC call to last event);
- py-libp2p: a KadDHT node in its own process joins via n0 and runs
  ``find_closest_peers_network`` (bench/pylibp2p_lookups.py);
- js-libp2p: a @libp2p/kad-dht node (the interop harness, tests/interop/js)
  joins via n0 and runs ``getClosestPeers`` (timed from here: includes a local
  JSON-line round trip of well under a millisecond).
Prints median and min per implementation, in ms, and the peers found.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dht.v1 import dht_pb2 as pb
from tests.swarm import Node, swarm


def dhtd_lookups(node: Node, targets: list[str], rounds: int) -> dict[str, float]:
    samples, found = [], []
    for _ in range(rounds):
        for target in targets:
            start = time.perf_counter()
            events = list(node.dht.Query(pb.QueryRequest(peer_id=target), timeout=30))
            samples.append((time.perf_counter() - start) * 1000)
            found.append(sum(1 for e in events
                             if e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER))
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "found": statistics.median(found)}


def pylibp2p_lookups(bootstrap: str, targets: list[str], rounds: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.pylibp2p_lookups", bootstrap, ",".join(targets),
         str(rounds)], capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def js_lookups(bootstrap: str, targets: list[str], rounds: int) -> dict[str, float] | None:
    from tests.interop.jsnode import JsNode, missing_requirement

    if missing_requirement() is not None:
        return None
    js = JsNode("bench-js")
    try:
        js.start(namespaces=[])
        js.connect(bootstrap)
        js.closest_peers(js.peer_id)  # join: a self-lookup, as dhtd does on start
        samples, found = [], []
        for _ in range(rounds):
            for target in targets:
                start = time.perf_counter()
                peers = js.closest_peers(target)
                samples.append((time.perf_counter() - start) * 1000)
                found.append(len(peers))
        return {"median_ms": statistics.median(samples), "min_ms": min(samples),
                "found": statistics.median(found)}
    finally:
        js.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dev-peers", type=int, default=4)
    parser.add_argument("--targets", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, swarm(
        Path(tmp), 5, extra=["--dev-peers", str(args.dev_peers)]
    ) as nodes:
        everyone = [p for n in nodes for p in n.dev_peer_ids()] + [n.peer_id for n in nodes[1:]]
        targets = random.Random(7).sample(everyone, min(args.targets, len(everyone)))
        results: dict[str, dict[str, float]] = {
            "dhtd Query (gRPC, end to end)": dhtd_lookups(nodes[0], targets, args.rounds),
            "py-libp2p find_closest_peers_network": pylibp2p_lookups(
                nodes[0].p2p_addr, targets, args.rounds),
        }
        js = js_lookups(nodes[0].p2p_addr, targets, args.rounds)
        if js is not None:
            results["js-libp2p kad-dht getClosestPeers"] = js
        total = 5 * (1 + args.dev_peers)
        print(f"closest-peer lookups on {total} nodes, {len(targets)} targets x "
              f"{args.rounds} rounds")
        print(f"{'implementation':<40}{'median ms':>10}{'min ms':>10}{'found':>7}")
        for name, r in results.items():
            print(f"{name:<40}{r['median_ms']:>10.1f}{r['min_ms']:>10.1f}{r['found']:>7.0f}")


if __name__ == "__main__":
    main()
