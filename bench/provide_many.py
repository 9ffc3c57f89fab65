"""A million CIDs handed to dhtd through one ProvideMany stream.

    .venv/bin/python -m bench.provide_many [--cids 1000000] [--peers 2] [--batch 10000]

Issue 10, part 3: a caller hands dhtd a huge set without one giant message, with
progress, while dhtd holds no more than a batch of it and keeps answering other
calls. One dhtd with --peers dev peers (in the same process, so the announcement
work of the whole network is on this one process, the worst case for the
caller); the Python client streams --cids CIDs from a generator (never a list),
--batch per message. Printed:

- the stream's rate, from first message to last answer, and per batch (commit,
  then announce), and dhtd's CPU meanwhile;
- dhtd's RSS before, at its peak (VmHWM) and after: the provide set is in
  state.db, so the peak stays the batch's worth above idle, whatever --cids;
- Info's latency while the stream runs (a second client asking every 50 ms):
  other calls are not blocked;
- state.db's size and ProvideStatus once done, and the time to SERVING after a
  restart with the whole set on disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.batched_provide import cpu_seconds
from dhtd_client import Client
from tests.integration.test_swarm import cid_for
from tests.swarm import Node, start_node, wait_until

INFO_EVERY = 0.05  # seconds between two Info calls of the second client


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cids(count: int) -> Iterator[str]:
    for i in range(count):
        yield cid_for(f"provide-many bench {i}")


def stream(node: Node, count: int, batch: int) -> dict[str, float]:
    pid = node.proc.pid
    latencies: list[float] = []
    done = threading.Event()

    def ask() -> None:
        with Client(node.grpc_addr, timeout=30) as other:
            while not done.wait(INFO_EVERY):
                t0 = time.perf_counter()
                other.info()
                latencies.append(time.perf_counter() - t0)

    idle_rss = rss_kib(pid, "VmRSS")
    cpu0 = cpu_seconds(pid)
    asker = threading.Thread(target=ask)
    asker.start()
    started = time.perf_counter()
    committed_at: list[float] = []
    last = None
    try:
        with Client(node.grpc_addr, timeout=24 * 3600) as client:
            for last in client.provide_many(cids(count), batch_size=batch):
                if last.batches * batch < last.committed:  # a "committed" message
                    committed_at.append(time.perf_counter() - started)
                if last.batches and last.batches % 10 == 0 and \
                        last.announced + last.failed == last.committed:
                    print(f"  {last.committed:>9,} CIDs committed, {last.announced:,} announced, "
                          f"{time.perf_counter() - started:7.1f} s, "
                          f"RSS {rss_kib(pid, 'VmRSS') / 1024:.0f} MiB", flush=True)
            wall = time.perf_counter() - started
            status = client.provide_status()
    finally:
        done.set()
        asker.join()
    assert last is not None and last.committed == count, last
    cpu = cpu_seconds(pid) - cpu0
    lat = sorted(latencies)
    return {
        "wall": wall, "rate": count / wall, "cpu": cpu,
        "announced": last.announced, "failed": last.failed, "set": status.cids,
        "rss_idle": idle_rss / 1024, "rss_peak": rss_kib(pid, "VmHWM") / 1024,
        "rss_after": rss_kib(pid, "VmRSS") / 1024,
        "info_p50": statistics.median(lat) * 1000, "info_p99": lat[int(len(lat) * 0.99)] * 1000,
        "info_max": lat[-1] * 1000, "info_calls": len(lat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cids", type=int, default=1_000_000)
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-many-") as tmp:
        data = Path(tmp) / "d"
        print(f"ProvideMany: {args.cids:,} CIDs, {args.batch:,} per message, one dhtd with "
              f"{args.peers} dev peers", flush=True)
        node = start_node("many", data, ["--dev-peers", str(args.peers),
                                         "--query-timeout", "3600"])
        try:
            wait_until(lambda: node.node_info().routing_table_size >= args.peers, 30,
                       "the dev peers")
            r = stream(node, args.cids, args.batch)
        finally:
            node.stop()
        size = sum(p.stat().st_size for p in data.glob("state.db*"))
        print(f"stream: {r['wall']:.1f} s, {r['rate']:,.0f} CIDs/s end to end "
              f"({r['announced']:,} announced to the {args.peers} peers, {r['failed']:,} to none); "
              f"dhtd CPU {r['cpu']:.1f} s")
        print(f"dhtd RSS: idle {r['rss_idle']:.0f} MiB, peak {r['rss_peak']:.0f} MiB, "
              f"after {r['rss_after']:.0f} MiB")
        print(f"Info meanwhile ({r['info_calls']} calls): p50 {r['info_p50']:.1f} ms, "
              f"p99 {r['info_p99']:.1f} ms, max {r['info_max']:.1f} ms")
        print(f"provide set: {r['set']:,} CIDs; state.db {size / 2**20:.0f} MiB "
              f"({size / max(1, r['set']):.0f} bytes per CID)")
        t0 = time.perf_counter()
        again = start_node("many-again", data, ["--dev-peers", str(args.peers)])
        try:
            ready = time.perf_counter() - t0
            with Client(again.grpc_addr, timeout=60) as client:
                wait_until(lambda: client.provide_status().cids == r["set"], 60,
                           "the restarted node's provide set")
            print(f"restart with {r['set']:,} CIDs on disk: ready in {ready:.2f} s, "
                  f"RSS {rss_kib(again.proc.pid, 'VmRSS') / 1024:.0f} MiB")
        finally:
            again.stop()


if __name__ == "__main__":
    main()
