"""The tarpit scenario: hostile peers that name made-up closer peers at a dead-slow address.

    .venv/bin/python -m bench.wan --scenario tarpit [--tarpit-ops 3] [--dhtd-arg=...]

On loopback, no lab and no root: one dhtd (the asker) with --tarpit-honest dev peers,
and --tarpit-peers hostile kad peers (tests/hostile/peer.py: real libp2p hosts, each in
a thread of this process) that the asker connects to and keeps in its routing table.
Each hostile peer answers FIND_NODE, GET_PROVIDERS and GET_VALUE with 40 made-up peers
whose IDs are closer to the key than any real node (their sha256 shares at least
CLOSE_BITS leading bits with the key's), all at one address: a TCP port that accepts
every connection and never sends a byte (the tarpit). PUT_VALUE is accepted (echoed).

Measured, --tarpit-ops times each, up to --parallel at once, all asked of the asker:

- Get of a key the asker itself stores (it was Put there before the hostile peers came);
- FindProvs of a CID nobody provides, Get of a key nobody stores, Query of a random ID:
  time to the end of the call, and how it ended.

dhtd's --query-timeout (60 s) bounds each; the gRPC deadline is --op-timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import multiaddr
import trio

from bench.go_compare import cid_for, kad, pk_record
from dht.v1 import dht_pb2 as pb
from dhtd.ids import b58encode
from dhtd.kadmsg import MessageType, add_peers, new_message
from dhtd.lookup import PeerRecord
from dhtd.wire.kad_pb2 import Message
from tests.hostile.peer import Peer, run
from tests.swarm import Node, start_node, wait_until

FAKE_PEERS = 40
CLOSE_BITS = 12
MAX_HELD = 10_000  # tarpit connections kept open
JOIN_TIMEOUT = 60.0
HOSTILE_LIFE = 3600.0
SCENARIO_OPS = ("get_own", "findprovs_missing", "get_missing", "query_random")
TITLES = {"get_own": "Get, a key the asker holds", "findprovs_missing": "FindProvs, missing",
          "get_missing": "Get, missing", "query_random": "Query, a random ID"}


class Tarpit:
    """A TCP port on 127.0.0.1 that accepts every connection and never speaks."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="tarpit", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)
            if len(self.held) > MAX_HELD:
                self.held.pop(0).close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.held:
            conn.close()


def closer_peers(key: bytes, addr: bytes, count: int = FAKE_PEERS) -> list[PeerRecord]:
    """``count`` made-up peer IDs whose kad position shares CLOSE_BITS leading bits with
    ``key``'s, all at ``addr``."""
    target = kad(key)
    shift = 256 - CLOSE_BITS
    out: list[PeerRecord] = []
    while len(out) < count:
        peer = b"\x12\x20" + hashlib.sha256(os.urandom(16)).digest()
        if (kad(peer) ^ target) >> shift == 0:
            out.append(PeerRecord(peer, (addr,)))
    return out


class Hostile:
    """The hostile peers' shared behaviour and counts."""

    def __init__(self, tarpit: Tarpit) -> None:
        self.addr = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{tarpit.port}").to_bytes()
        self.cache: dict[bytes, list[PeerRecord]] = {}
        self.answered: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def handler(self, _peer: bytes, request: Message) -> Message | None:
        kind = request.type
        if kind == MessageType.PUT_VALUE:
            return request
        if kind not in (MessageType.FIND_NODE, MessageType.GET_PROVIDERS,
                        MessageType.GET_VALUE):
            return None
        with self.lock:
            fakes = self.cache.get(request.key)
            if fakes is None:
                fakes = self.cache[request.key] = closer_peers(request.key, self.addr)
            self.answered[Message.MessageType.Name(kind)] += 1
        answer = new_message(kind, request.key)
        add_peers(answer.closerPeers, fakes, frozenset())
        return answer


def join(node: Node, hostile: Hostile, stop: threading.Event, joined: list[bool]
         ) -> threading.Thread:
    """One hostile peer, in a thread: connects the asker to it, then serves until ``stop``."""

    async def attack(peer: Peer) -> None:
        added = await peer.call(lambda: node.node.Connect(
            pb.ConnectRequest(addr=peer.addr()), timeout=10).added_to_routing_table)
        joined.append(bool(added))
        await trio.to_thread.run_sync(stop.wait)

    def serve() -> None:
        try:
            run(node.p2p_addr, attack, handler=hostile.handler, timeout=HOSTILE_LIFE)
        except BaseException as exc:  # the scenario reports a peer that never joined
            joined.append(False)
            print(f"tarpit: a hostile peer failed: {exc!r}", file=sys.stderr)

    thread = threading.Thread(target=serve, name="hostile", daemon=True)
    thread.start()
    return thread


def outcome(call: Callable[[], str]) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        how = call()
    except grpc.RpcError as exc:
        how = exc.code().name if isinstance(exc, grpc.Call) else "RpcError"
    return (time.perf_counter() - start) * 1000, how


def random_peer_id() -> str:
    return b58encode(b"\x12\x20" + hashlib.sha256(os.urandom(16)).digest())


def run_tarpit(args: argparse.Namespace) -> None:
    started = time.monotonic()
    tarpit = Tarpit()
    hostile = Hostile(tarpit)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    joined: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="wan-tarpit-") as tmp:
        node = start_node("asker", Path(tmp) / "asker",
                          ["--dev-peers", str(args.tarpit_honest), *args.dhtd_arg])
        try:
            wait_until(lambda: node.node_info().routing_table_size >= args.tarpit_honest,
                       JOIN_TIMEOUT, "the asker's dev peers")
            own = [pk_record(f"wan-tarpit-own-{args.seed}-{i}") for i in range(args.tarpit_ops)]
            for key, value in own:  # stored by the asker, before the hostile peers come
                list(node.dht.Put(pb.PutRequest(key=key, value=value), timeout=args.op_timeout))
            for _ in range(args.tarpit_peers):
                threads.append(join(node, hostile, stop, joined))
            wait_until(lambda: len(joined) >= args.tarpit_peers, JOIN_TIMEOUT,
                       "the hostile peers to join")
            results = measure(node, args, own)
            table = node.node_info().routing_table_size
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            node.stop()
            tarpit.close()
    print_tarpit(args, results, joined, table, hostile, tarpit, time.monotonic() - started)


def measure(node: Node, args: argparse.Namespace, own: list[tuple[bytes, bytes]]
            ) -> dict[str, list[tuple[float, str]]]:
    deadline = args.op_timeout

    def get(key: bytes, want: bytes | None) -> str:
        value = node.dht.Get(pb.GetRequest(key=key), timeout=deadline).value
        return "the value" if value == want else "another value"

    def findprovs(cid: str) -> str:
        found = list(node.dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=deadline))
        return f"OK, {len(found)} providers"

    def query(peer_id: str) -> str:
        events = list(node.dht.Query(pb.QueryRequest(peer_id=peer_id), timeout=deadline))
        return f"OK, {sum(e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER for e in events)} peers"

    calls: list[tuple[str, Callable[[], str]]] = []
    for i in range(args.tarpit_ops):
        missing_key, _ = pk_record(f"wan-tarpit-missing-{args.seed}-{i}")
        missing_cid, _mh = cid_for(f"wan-tarpit-missing-{args.seed}-{i}")
        peer_id = random_peer_id()
        calls += [("get_own", partial(get, *own[i])),
                  ("findprovs_missing", partial(findprovs, missing_cid)),
                  ("get_missing", partial(get, missing_key, None)),
                  ("query_random", partial(query, peer_id))]
    results: dict[str, list[tuple[float, str]]] = {op: [] for op in SCENARIO_OPS}
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        futures = [(op, pool.submit(outcome, call)) for op, call in calls]
        for op, future in futures:
            results[op].append(future.result())
    return results


def print_tarpit(args: argparse.Namespace, results: dict[str, list[tuple[float, str]]],
                 joined: list[bool], table: int, hostile: Hostile, tarpit: Tarpit,
                 wall: float) -> None:
    print(f"\n== tarpit: {args.tarpit_peers} hostile peers answer with {FAKE_PEERS} made-up "
          f"closer peers at a port that never speaks; 1 dhtd + {args.tarpit_honest} dev peers "
          f"on loopback ==")
    print(f"hostile peers in the asker's table: {sum(joined)} of {args.tarpit_peers}; its "
          f"table at the end: {table} peers; answers sent by the hostile peers: "
          + (", ".join(f"{k} {v}" for k, v in sorted(hostile.answered.items())) or "none")
          + f"; tarpit connections: {tarpit.accepted}")
    print(f"{'op':<30}{'n':>3}{'p50 s':>8}{'max s':>8}  how it ended")
    out: dict[str, Any] = {}
    for op in SCENARIO_OPS:
        samples = results[op]
        took = [ms / 1000 for ms, _ in samples]
        ends = Counter(how for _, how in samples)
        print(f"{TITLES[op]:<30}{len(samples):>3}{statistics.median(took):>8.2f}"
              f"{max(took):>8.2f}  " + ", ".join(f"{how} x{n}" for how, n in ends.items()))
        out[op] = {"seconds": took, "ended": [how for _, how in samples]}
    print(f"({args.tarpit_ops} of each, {args.parallel} at a time; {wall:.0f}s in all)")
    if args.json:
        print(json.dumps({"scenario": "tarpit", "ops": out, "hostile_in_table": sum(joined),
                          "answered": dict(hostile.answered), "tarpit_connections":
                          tarpit.accepted, "wall_s": wall, "dhtd_args": args.dhtd_arg}))
