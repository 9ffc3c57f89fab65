"""Recursive Provide of a large DAG from a CAR file: CIDs per second and peak RSS.

    .venv/bin/python -m bench.recursive_provide [--mib 100] [--chunk-kib 256]

Issue 10's third figure. A file of --mib MiB, cut into --chunk-kib KiB raw
leaves under a balanced tree of dag-pb nodes (174 links each, as UnixFS
builds them), is written as one CARv1 (leaf by leaf: the bench never holds it
either). Then 3 dhtd processes with 9 dev peers each (30 DHT nodes) start; the
first, with --block-source on the CAR's directory, provides the root with
recursive: true. Printed: blocks, wall time and CIDs per second of the call,
the peak RSS (VmHWM) of the providing process against its RSS before the call,
and a sample of CIDs found from another process.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2

from bench.mass_start import network
from dht.v1 import dht_pb2 as pb
from dhtd.ids import DAG_PB, RAW, Cid, encode_uvarint
from tests.dag import dag_pb, link
from tests.integration.test_batched_provide import settled

FANOUT = 174  # UnixFS's balanced layout: links per dag-pb node


def leaf(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def tree(leaves: list[Cid]) -> Iterator[tuple[Cid, bytes]]:
    """The dag-pb nodes above ``leaves``, bottom level first; the last one is the root."""
    level = leaves
    while len(level) > 1 or level[0].codec == RAW:
        parents = []
        for i in range(0, len(level), FANOUT):
            node = dag_pb([(c, "") for c in level[i:i + FANOUT]], b"\x08\x02")
            parents.append(node[0])
            yield node
        level = parents


def write_car(path: Path, mib: int, chunk: int) -> tuple[Cid, int]:
    """Writes the DAG as a CARv1, root first in the header; returns the root and blocks."""
    count = mib * 1024 * 1024 // chunk
    leaves = [Cid(1, RAW, b"\x12\x20" + hashlib.sha256(leaf(i, chunk)).digest())
              for i in range(count)]
    nodes = list(tree(leaves))
    root = nodes[-1][0]
    header = cbor2.dumps({"roots": [link(root)], "version": 1}, canonical=True)
    with path.open("wb") as f:
        f.write(encode_uvarint(len(header)) + header)
        for cid, data in reversed(nodes):  # root first, as a depth-first CAR would
            section = cid.to_bytes() + data
            f.write(encode_uvarint(len(section)) + section)
        for i, cid in enumerate(leaves):
            section = cid.to_bytes() + leaf(i, chunk)
            f.write(encode_uvarint(len(section)) + section)
    assert root.codec == DAG_PB
    return root, len(nodes) + count


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--chunk-kib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cars = Path(tmp) / "cars"
        cars.mkdir()
        t0 = time.perf_counter()
        root, blocks = write_car(cars / "dag.car", args.mib, args.chunk_kib * 1024)
        size = (cars / "dag.car").stat().st_size
        print(f"a {args.mib} MiB file in {args.chunk_kib} KiB leaves: {blocks} blocks, "
              f"a CAR of {size / 2**20:.1f} MiB written in {time.perf_counter() - t0:.1f} s")
        with network(Path(tmp) / "net", 3, 9, extra=[
                ["--block-source", f"file://{cars}", "--query-timeout", "3600"]]) as net:
            settled(net)
            provider, asker = net.procs[0], net.procs[2]
            before = rss_kib(provider.proc.pid, "VmRSS")
            started = time.perf_counter()
            provided: set[str] = set()
            for response in provider.dht.Provide(
                    pb.ProvideRequest(cids=[str(root)], recursive=True, batch_events=True),
                    timeout=3600):
                provided.update(e.cid for e in response.events
                                if e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER)
            took = time.perf_counter() - started
            peak = rss_kib(provider.proc.pid, "VmHWM")
            print(f"recursive Provide: {len(provided)} of {blocks} CIDs announced in "
                  f"{took:.1f} s ({len(provided) / took:.0f} CIDs/s)")
            print(f"provider RSS: {before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB "
                  f"(VmHWM, since its start)")
            sample = random.Random(3).sample(sorted(provided), min(20, len(provided)))
            hits = sum(
                [f.provider.id for f in asker.dht.FindProvs(
                    pb.FindProvsRequest(cid=cid, num_providers=1), timeout=20)]
                == [provider.peer_id] for cid in sample)
            print(f"{hits} of {len(sample)} sampled CIDs found from another process")


if __name__ == "__main__":
    main()
