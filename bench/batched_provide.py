"""Batched providing against a walk per CID, on one 30-node network.

    .venv/bin/python -m bench.batched_provide [--cids 10000] [--sample 50]

Issue 10's figure: 3 dhtd processes with 9 dev peers each (30 DHT nodes on
127.0.0.1). Process 0 provides --cids CIDs in one Provide call, batched (the
default: one sweep, dhtd.sweep); process 1, started with --provide-batch-min 0,
provides another --cids CIDs with a walk per CID (both with --query-timeout
3600: with the default 60 s, a walk per CID does not finish 10,000). For each: the FIND_NODE
requests it sent per CID and all the requests it sent (dht_outbound_requests_total),
the wall time of the call, and the CPU seconds of all three processes meanwhile
(every node of the network works for an announcement). Then --sample CIDs of
each are looked up from process 2: each must be found.

Targets (issue 10): at least 10x fewer walk requests per CID, at least 2x less
wall time. On a network this small the ADD_PROVIDER sends (20 per CID) are most
of the work either way, and batching cannot remove them.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

from bench.mass_start import network
from dht.v1 import dht_pb2 as pb
from tests.integration.test_batched_provide import settled
from tests.integration.test_swarm import cid_for
from tests.swarm import Node


def requests_sent(node: Node) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{node.info['metrics_addr']}/metrics",
                                  timeout=10).read().decode()
    out: dict[str, float] = {}
    for kind, value in re.findall(
            r'^dht_outbound_requests_total\{[^}]*message_type="([A-Z_]+)"[^}]*\} (\S+)$',
            text, re.M):
        out[kind] = out.get(kind, 0.0) + float(value)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(label: str, node: Node, everyone: list[Node], cids: list[str]) -> dict[str, float]:
    before = requests_sent(node)
    cpu = sum(cpu_seconds(n.proc.pid) for n in everyone)
    started = time.perf_counter()
    for i in range(0, len(cids), 10_000):  # (the per-call cap)
        for _ in node.dht.Provide(pb.ProvideRequest(cids=cids[i:i + 10_000], batch_events=True),
                                  timeout=3600):
            pass
    wall = time.perf_counter() - started
    cpu = sum(cpu_seconds(n.proc.pid) for n in everyone) - cpu
    after = requests_sent(node)
    sent = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    figures = {"find_node_per_cid": sent.get("FIND_NODE", 0.0) / len(cids),
               "requests": sum(sent.values()), "wall": wall, "cpu": cpu}
    print(f"{label:>9}: {figures['find_node_per_cid']:.3f} FIND_NODE per CID, "
          f"{figures['requests']:,.0f} requests in all "
          f"({', '.join(f'{k} {v:,.0f}' for k, v in sorted(sent.items()) if v)}), "
          f"{wall:.1f} s wall, {cpu:.1f} CPU-s (3 processes)")
    return figures


def found(asker: Node, provider: Node, cids: list[str]) -> int:
    hits = 0
    for cid in cids:
        try:
            got = list(asker.dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=1),
                                           timeout=20))
        except grpc.RpcError:
            continue
        hits += [f.provider.id for f in got] == [provider.peer_id]
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cids", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, network(
            Path(tmp), 3, 9, extra=[["--query-timeout", "3600"],
                                    ["--query-timeout", "3600", "--provide-batch-min", "0"]]
    ) as net:
        batched_node, per_cid_node, asker = net.procs
        settled(net)
        batched_cids = [cid_for(f"batched {i}") for i in range(args.cids)]
        per_cid_cids = [cid_for(f"per cid {i}") for i in range(args.cids)]
        print(f"{args.cids:,} CIDs on 30 nodes (3 processes x 10)")
        batched = run_one("batched", batched_node, net.procs, batched_cids)
        per_cid = run_one("per CID", per_cid_node, net.procs, per_cid_cids)
        rng = random.Random(1)
        for label, node, cids in (("batched", batched_node, batched_cids),
                                  ("per CID", per_cid_node, per_cid_cids)):
            sample = rng.sample(cids, args.sample)
            print(f"{label:>9}: {found(asker, node, sample)} of {args.sample} sampled CIDs "
                  "found from another process")
        print(f"ratios (per CID / batched): FIND_NODE per CID "
              f"{per_cid['find_node_per_cid'] / max(batched['find_node_per_cid'], 1e-9):.0f}x, "
              f"requests {per_cid['requests'] / batched['requests']:.2f}x, "
              f"wall {per_cid['wall'] / batched['wall']:.2f}x, "
              f"CPU {per_cid['cpu'] / batched['cpu']:.2f}x")


if __name__ == "__main__":
    main()
