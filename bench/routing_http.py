"""Time to the first provider: the routing HTTP API's NDJSON stream against gRPC FindProvs.

    .venv/bin/python -m bench.routing_http [--cids 40]

Issue 11's comparison: 3 dhtd processes with 9 dev peers each (30 DHT nodes on
127.0.0.1). Process 0 provides --cids CIDs; process 2 (--routing-http-addr) is
asked for each, alternately first through gRPC FindProvs (num_providers 1) and
through GET /routing/v1/providers/{cid} with Accept: application/x-ndjson, from
a client that reads the stream as it comes. Each CID is asked through one path
only, so no answer comes from what the other path left in a cache or a store, and
process 2's own node is not among any CID's true 20 closest (it holds no record:
the first provider comes from a walk, as issue 12's bench asks).
Printed: median and p90 of the time from the request to the first provider, per
path, and of the time to the end of the HTTP stream (the walk's end).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.mass_start import kad, network
from dht.v1 import dht_pb2 as pb
from dhtd.ids import parse_cid
from tests.integration.test_batched_provide import settled
from tests.integration.test_swarm import cid_for


def far_cids(peer_ids: list[str], asker: str, count: int) -> list[str]:
    """``count`` CIDs whose 20 closest DHT nodes do not include ``asker``."""
    points = {p: int.from_bytes(kad(p), "big") for p in peer_ids}
    out: list[str] = []
    i = 0
    while len(out) < count:
        cid = cid_for(f"routing http bench {i}")
        i += 1
        key = int.from_bytes(hashlib.sha256(parse_cid(cid).multihash).digest(), "big")
        if asker not in sorted(points, key=lambda p: points[p] ^ key)[:20]:
            out.append(cid)
    return out


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cids", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp, \
            network(Path(tmp), 3, 9, extra=[[], [], ["--routing-http-addr", "127.0.0.1:0"]]) \
            as net:
        settled(net)
        source, asker = net.procs[0], net.procs[2]
        cids = far_cids(net.peer_ids, asker.peer_id, args.cids)
        for i in range(0, len(cids), 10):
            list(source.dht.Provide(pb.ProvideRequest(cids=cids[i:i + 10]), timeout=60))
        grpc_first: list[float] = []
        http_first: list[float] = []
        http_end: list[float] = []
        base = f"http://{asker.info['routing_http_addr']}/routing/v1/providers/"
        with httpx.Client(timeout=30) as client:
            for i, cid in enumerate(cids):
                started = time.perf_counter()
                if i % 2 == 0:
                    for _ in asker.dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=1),
                                                 timeout=30):
                        grpc_first.append((time.perf_counter() - started) * 1000)
                        break
                    continue
                with client.stream("GET", base + cid,
                                   headers={"Accept": "application/x-ndjson"}) as answer:
                    for line in answer.iter_lines():
                        if line and len(http_first) < len(http_end) + 1:
                            http_first.append((time.perf_counter() - started) * 1000)
                    http_end.append((time.perf_counter() - started) * 1000)
        print(f"{args.cids} CIDs provided by process 0, asked from process 2 "
              "(30 nodes, 3 processes, 2 cores)")
        for label, values in (("gRPC FindProvs, first provider", grpc_first),
                              ("HTTP NDJSON, first provider", http_first),
                              ("HTTP NDJSON, end of stream", http_end)):
            print(f"  {label:32} median {statistics.median(values):7.1f} ms   "
                  f"p90 {p90(values):7.1f} ms   (n={len(values)})")


if __name__ == "__main__":
    main()
