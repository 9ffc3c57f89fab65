"""A million provider records held for other peers: memory, latency, ingest, restart.

    .venv/bin/python -m bench.held_records [--records 1000000] [--provided 100000]
                                           [--seconds 10] [--senders 4]

Issue 9's figures, measured as a user would:

1. **Restart time.** records.db is filled with --records provider records (from
   40 peers, each under its share) and state.db with a provide set of --provided
   CIDs; then dhtd starts on that data dir, three times, and the time from spawn
   until gRPC health says SERVING is printed.
2. **RSS** of that dhtd, against a dhtd on an empty data dir, and against the
   in-memory store of commit 776d13c (before the records moved to disk) holding
   the same number of records in a bare Python process.
3. **GET_PROVIDERS latency** over the wire (a libp2p peer asks, one request at a
   time, for keys that are held), p50 and p99; and the store's own lookup, in
   process, on the same file.
4. **ADD_PROVIDER ingest**, sustained for --seconds: over the wire from --senders
   peers at once (dhtd's count of records is read from its metrics), one message
   per write as Go sends them, then 16 per write (so that the Python senders,
   which share the machine's 2 cores with dhtd, are not the limit), with dhtd's
   share of a core; and the store's own rate in process, committing and
   checkpointing as dhtd does.

Targets (issue 9): RSS under 250 MiB, p99 under 5 ms, at least 5,000 adds/s.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dhtd.ids import encode_uvarint
from dhtd.kadmsg import MessageType, add_peers, new_message
from dhtd.lookup import PeerRecord
from dhtd.state import Database
from dhtd.state.db import pack_addrs
from dhtd.stores import HeldRecords, RecordsDb
from tests.hostile.peer import Peer, run
from tests.swarm import Node, spawn_node, start_node

PEERS = 40
NOW = time.time()
REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "776d13c"  # the last commit with provider records in memory


def key_of(i: int) -> bytes:
    return b"\x12\x20" + i.to_bytes(32, "big")


def peer_of(i: int) -> bytes:
    return b"\x00\x24\x08\x01\x12\x20" + i.to_bytes(32, "big")


def fill(data_dir: Path, records: int, provided: int) -> None:
    """records.db with ``records`` provider records; state.db with a provide set."""
    t0 = time.perf_counter()
    db = RecordsDb.open(data_dir)
    conn = db.conn
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO provider_peers (id, peer, addrs) VALUES (?, ?, ?)",
        ((p + 1, peer_of(p), pack_addrs([bytes([4, 10, 0, p // 256, p % 256, 6, 15, 161])]))
         for p in range(PEERS)),
    )
    conn.executemany(
        "INSERT INTO provider_records (key, peer, received) VALUES (?, ?, ?)",
        ((key_of(i), i % PEERS + 1, NOW - random.random() * 3600) for i in range(records)),
    )
    conn.execute("COMMIT")
    db.close()
    state = Database.open(data_dir)
    state._writer.execute("BEGIN")
    state._writer.executemany(
        "INSERT INTO provided (key, added, announced) VALUES (?, ?, ?)",
        ((b"\x12\x20" + (10**12 + i).to_bytes(32, "big"), NOW, NOW) for i in range(provided)),
    )
    state._writer.execute("COMMIT")
    state.close()
    size = sum(p.stat().st_size for p in data_dir.iterdir() if p.is_file())
    print(f"filled {records:,} provider records and a provide set of {provided:,} "
          f"in {time.perf_counter() - t0:.1f} s ({size / 2**20:.0f} MiB on disk)")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def serving_after(data_dir: Path, bootstrap: Node) -> tuple[float, Node]:
    """Seconds from spawn until gRPC health is SERVING (dhtd serves once its table
    holds a peer: ``bootstrap``)."""
    t0 = time.perf_counter()
    node = spawn_node("bench", data_dir, ["--bootstrap", bootstrap.p2p_addr])
    if not node.ready.wait(300):
        node.stop()
        raise RuntimeError(node.log_text())
    health = health_pb2_grpc.HealthStub(node.channel)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                    health_pb2.HealthCheckResponse.SERVING:
                return time.perf_counter() - t0, node
        except grpc.RpcError:
            pass
        time.sleep(0.01)
    node.stop()
    raise RuntimeError("dhtd did not become SERVING within 300 s")


def old_store_rss(records: int) -> float:
    """RSS growth of a Python process holding ``records`` in the in-memory store of
    OLD_COMMIT (its modules, read from git, run in a bare process)."""
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "oldstores"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        for name in ("shares", "providers"):
            text = subprocess.run(["git", "-C", str(REPO), "show",
                                   f"{OLD_COMMIT}:service/dhtd/stores/{name}.py"],
                                  capture_output=True, text=True, check=True).stdout
            (pkg / f"{name}.py").write_text(text.replace("dhtd.stores.", "oldstores."))
        script = f"""
import sys
sys.path.insert(0, {tmp!r})
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from oldstores.providers import ProviderStore
before = rss()
store = ProviderStore(max_records={records + 1}, per_peer={records + 1})
for i in range({records}):
    store.add(b"\\x12\\x20" + i.to_bytes(32, "big"),
              b"\\x00\\x24\\x08\\x01\\x12\\x20" + (i % {PEERS}).to_bytes(32, "big"),
              [b"\\x04\\x0a\\x00\\x00\\x01\\x06\\x0f\\xa1"], 1.0)
print(rss() - before)
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(REPO / "service")})
        return float(out.stdout.strip())


def metric(node: Node, series: str) -> float:
    text = urllib.request.urlopen(f"http://{node.info['metrics_addr']}/metrics",
                                  timeout=5).read().decode()
    match = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.M)
    assert match, series
    return float(match.group(1))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wire_latency(node: Node, records: int, count: int = 2000, held: bool = True
                 ) -> list[float]:
    """GET_PROVIDERS round trips for keys the node holds (``held``), or asked of a
    node that holds nothing (the transport's share of the time)."""

    async def ask(peer: Peer) -> list[float]:
        took = []
        await peer.request(new_message(MessageType.PING))  # connected, stream open
        for _ in range(count):
            message = new_message(MessageType.GET_PROVIDERS, key_of(random.randrange(records)))
            t0 = time.perf_counter()
            answer = await peer.request(message)
            took.append(time.perf_counter() - t0)
            assert len(answer.providerPeers) == (1 if held else 0)
        return took

    return run(node.p2p_addr, ask, timeout=600)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Seconds the senders get to start, encode their messages and connect before they
# all begin at once.
SENDER_LEAD = 8.0


def wire_ingest(node: Node, seconds: float, senders: int, coalesce: int = 1
                ) -> tuple[float, float]:
    """ADD_PROVIDERs per second that dhtd handled and stored (none refused), from
    ``senders`` peers at once, each in its own process, and dhtd's share of a core
    meanwhile. The senders start together and the rate counts from then until
    the last one's final PING was answered (so everything sent was handled).
    The store is full: each new record evicts an old one from the biggest
    holder, as a full node would."""
    handled = 'dht_inbound_requests_total{message_type="ADD_PROVIDER"}'
    refused = 'dht_store_refusals_total{store="provider"}'
    before = metric(node, handled) - metric(node, refused)
    start = time.time() + SENDER_LEAD
    procs = [subprocess.Popen([sys.executable, "-c",
                               f"from bench.held_records import _flood; _flood({node.p2p_addr!r}, "
                               f"{seconds}, {k * 10**7}, {coalesce}, {start})"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
             for k in range(senders)]
    time.sleep(max(0.0, start - time.time()))
    cpu = cpu_seconds(node.proc.pid)
    ends = [float(proc.communicate()[0].split()[-1]) for proc in procs]
    window = max(ends) - start
    return ((metric(node, handled) - metric(node, refused) - before) / window,
            (cpu_seconds(node.proc.pid) - cpu) / window)


# ADD_PROVIDERs one sender prepares per second of the run: more than it can send.
FRAMES_PER_SECOND = 10_000


def _flood(addr: str, seconds: float, offset: int, coalesce: int, start: float) -> None:
    """One sender process of wire_ingest. It encodes its messages and connects, waits
    for ``start`` (epoch seconds), then writes them on one stream, ``coalesce`` per
    write: with 1, one yamux frame and one noise message per ADD_PROVIDER, as
    go-libp2p-kad-dht sends them; with more, the senders' own CPU (encrypting as
    much as dhtd decrypts, four Python processes sharing the cores with dhtd)
    stops being the limit. Prints when its last message was handled."""

    async def flood(peer: Peer) -> None:
        frames = []
        for i in range(int(seconds * FRAMES_PER_SECOND)):
            message = new_message(MessageType.ADD_PROVIDER, key_of(10**9 + offset + i))
            add_peers(message.providerPeers,
                      [PeerRecord(peer.id, (bytes([4, 127, 0, 0, 1, 6, 15, 161]),))],
                      frozenset())
            body = message.SerializeToString()
            frames.append(encode_uvarint(len(body)) + body)
        await peer.request(new_message(MessageType.PING))
        stream = await peer.stream()
        await trio.sleep(max(0.0, start - time.time()))
        deadline = time.monotonic() + seconds
        for i in range(0, len(frames), coalesce):
            if time.monotonic() >= deadline:
                break
            await stream.write(b"".join(frames[i:i + coalesce]))
        await peer.request(new_message(MessageType.PING))  # the flood was handled
        print(time.time(), flush=True)

    run(addr, flood, timeout=seconds + SENDER_LEAD + 120)


def store_figures(data_dir: Path, records: int, seconds: float) -> tuple[list[float], float]:
    """In process, on the filled file: lookup times, and adds per second."""

    async def main() -> tuple[list[float], float]:
        db = RecordsDb.open(data_dir)
        held = HeldRecords.open(db)
        took = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(held.run)
            for _ in range(5000):
                k = key_of(random.randrange(records))
                t0 = time.perf_counter()
                await held.providers_of(k, time.time())
                took.append(time.perf_counter() - t0)
            adds, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                await held.add_provider(key_of(2 * 10**9 + adds), peer_of(PEERS + adds % 50),
                                        [bytes([4, 127, 0, 0, 1, 6, 15, 161])], time.time())
                adds += 1
            rate = adds / (time.perf_counter() - t0)
            nursery.cancel_scope.cancel()
        db.close()
        return took, rate

    return trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--provided", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    ms = 1000.0
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "full"
        data_dir.mkdir()
        fill(data_dir, args.records, args.provided)

        peer = start_node("peer", Path(tmp) / "peer")
        starts = []
        for _ in range(3):
            took, node = serving_after(data_dir, peer)
            starts.append(took)
            node.stop()
        print(f"restart until SERVING: median {statistics.median(starts):.2f} s "
              f"(runs: {', '.join(f'{s:.2f}' for s in starts)})")

        empty = start_node("empty", Path(tmp) / "empty")
        rss_empty = rss_mib(empty.proc.pid)
        empty.stop()
        _, node = serving_after(data_dir, peer)
        try:
            rss_full = rss_mib(node.proc.pid)
            took = wire_latency(node, args.records)
            bare = wire_latency(peer, args.records, held=False)

            def pcts(values: list[float]) -> str:
                return (f"p50 {percentile(values, 0.5) * ms:.2f} ms, "
                        f"p99 {percentile(values, 0.99) * ms:.2f} ms")

            print(f"GET_PROVIDERS over the wire, {len(took)} one at a time: {pcts(took)}; "
                  f"asked of a node that holds nothing: {pcts(bare)}")
            for coalesce in (1, 16):
                rate, core = wire_ingest(node, args.seconds, args.senders, coalesce)
                print(f"ADD_PROVIDER over the wire from {args.senders} peers, {coalesce} per "
                      f"write: {rate:,.0f} stored/s, dhtd using {core:.0%} of a core "
                      f"({rate / core:,.0f} per CPU-second)")
            rss_after = rss_mib(node.proc.pid)
        finally:
            node.stop()
            peer.stop()
        old = old_store_rss(args.records)
        print(f"RSS: {rss_full:.0f} MiB holding {args.records:,} records "
              f"({rss_after:.0f} MiB after the load), {rss_empty:.0f} MiB empty; "
              f"the in-memory store of {OLD_COMMIT} alone: +{old:.0f} MiB for the same records")

        took, rate = store_figures(data_dir, args.records, args.seconds)
        print(f"store in process: lookup p50 {percentile(took, 0.5) * ms:.3f} ms, "
              f"p99 {percentile(took, 0.99) * ms:.3f} ms; {rate:,.0f} adds/s")


if __name__ == "__main__":
    main()
