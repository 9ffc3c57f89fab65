"""Batched providing at internet scale, simulated: dhtd's own lookup and sweep over a fake network.

    .venv/bin/python -m bench.sweep_sim [--peers 10000] [--cids 100000] [--per-cid-sample 2000]

Issue 10's second figure. The code under test is dhtd's: ``dhtd.lookup.lookup``
(alpha 10, k 20, its per-request timeout) and ``dhtd.sweep.plan``. The network
is fake and runs on trio's MockClock, so time is simulated:

- --peers peers with random IDs; 20% never answer (the lookup's request
  timeout passes); the others answer after a round-trip time drawn once per
  peer from 20 to 300 ms, with the 20 peers closest to the target among all
  (routing tables hold dead peers too);
- the providing node starts each walk from its own table: --table random peers.

Both ways announce --cids CIDs with 8 walks at once (dhtd.node's
PROVIDE_CONCURRENCY): a walk per CID, then one sweep. For each: lookups,
FIND_NODE requests, ADD_PROVIDER sends (20 per CID either way), and simulated
time until every CID's closest peers are known. A walk per CID costs the same
for every CID, so it runs on --per-cid-sample CIDs and is scaled up (said so).
Kubo reports about 3,000 lookups per 22 h cycle with its sweep provider,
against one walk per CID for the legacy one.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import random
from collections.abc import Sequence

import trio
import trio.testing

from dhtd.ids import kad_key
from dhtd.lookup import PeerRecord, lookup
from dhtd.sweep import Plan, plan

K = 20
CONCURRENCY = 8
DEAD_SHARE = 0.2


class FakeNet:
    """Who exists, who answers, and how fast."""

    def __init__(self, peers: int, seed: int) -> None:
        rng = random.Random(seed)
        ids = [b"\x12\x20" + rng.randbytes(32) for _ in range(peers)]
        self.point = {p: int.from_bytes(kad_key(p), "big") for p in ids}
        self.sorted = sorted(ids, key=self.point.__getitem__)
        self.points = [self.point[p] for p in self.sorted]
        self.dead = set(rng.sample(ids, int(peers * DEAD_SHARE)))
        self.rtt = {p: rng.uniform(0.020, 0.300) for p in ids}
        self.asked = 0

    def closest(self, target: int, count: int = K, among: Sequence[bytes] | None = None
                ) -> list[bytes]:
        """The ``count`` peers nearest ``target`` (of ``among``, or all)."""
        if among is not None:
            return sorted(among, key=lambda p: self.point[p] ^ target)[:count]
        # The nearest by XOR share the longest prefix with the target: widen the
        # prefix subtree around it until it holds enough peers.
        for depth in range(256, -1, -1):
            low = target >> (256 - depth) << (256 - depth) if depth else 0
            high = low + (1 << (256 - depth))
            i, j = bisect.bisect_left(self.points, low), bisect.bisect_left(self.points, high)
            if j - i >= count or depth == 0:
                return sorted(self.sorted[i:j], key=lambda p: self.point[p] ^ target)[:count]
        raise AssertionError("unreachable")


class Transport:
    def is_connected(self, peer: bytes) -> bool:
        return True

    def learn(self, peers: Sequence[PeerRecord]) -> None:
        pass

    def forget(self, peer: bytes) -> None:
        pass

    def responded(self, peer: bytes) -> None:
        pass

    def suspect(self, peer: bytes) -> None:
        pass


async def walk(net: FakeNet, table: list[bytes], key: bytes
               ) -> tuple[list[PeerRecord], list[bytes]]:
    target = int.from_bytes(kad_key(key), "big")

    async def ask(peer: bytes) -> list[PeerRecord]:
        net.asked += 1
        if peer in net.dead:
            await trio.sleep_forever()  # the lookup's request timeout ends it
        await trio.sleep(net.rtt[peer])
        return [PeerRecord(p, (b"\x04",)) for p in net.closest(target)]

    seeds = [PeerRecord(p, (b"\x04",)) for p in net.closest(target, K, table)]
    result = await lookup(key, seeds, Transport(), ask, lambda e: None, self_id=b"me")
    return result.closest, result.unreachable


def exact(net: FakeNet, peers_of: dict[bytes, list[PeerRecord]]) -> float:
    """The share of keys whose records reach every live peer among their true 20
    closest (the dead ones cannot take a record; peers answer with the 20 closest,
    dead included, so no walk learns of the live ones beyond them)."""
    hits = 0
    for key, peers in peers_of.items():
        target = int.from_bytes(kad_key(key), "big")
        live = {p for p in net.closest(target) if p not in net.dead}
        hits += live <= {p.id for p in peers}
    return hits / len(peers_of)


def per_cid(net: FakeNet, table: list[bytes], keys: list[bytes]
            ) -> tuple[int, int, float, float]:
    """Lookups, FIND_NODE requests, simulated seconds and the share of keys given their
    true closest, for a walk per key."""
    peers_of: dict[bytes, list[PeerRecord]] = {}

    async def main() -> float:
        limiter = trio.CapacityLimiter(CONCURRENCY)

        async def one(key: bytes) -> None:
            async with limiter:
                peers_of[key] = (await walk(net, table, key))[0]

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(one, key)
        return trio.current_time()

    net.asked = 0
    took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return len(keys), net.asked, took, exact(net, peers_of)


def batched(net: FakeNet, table: list[bytes], keys: list[bytes]
            ) -> tuple[int, int, float, int, float]:
    """Lookups, FIND_NODE requests, simulated seconds, per-key walks and the share of
    keys given their true closest, for one sweep."""

    async def main() -> tuple[Plan, float]:
        found = await plan(keys, lambda t: walk(net, table, t), k=K, concurrency=CONCURRENCY)
        return found, trio.current_time()

    net.asked = 0
    found, took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return found.lookups, net.asked, took, found.walked, exact(net, found.peers_of)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--cids", type=int, default=100_000)
    parser.add_argument("--per-cid-sample", type=int, default=2_000)
    parser.add_argument("--table", type=int, default=200)
    args = parser.parse_args()
    net = FakeNet(args.peers, seed=1)
    rng = random.Random(2)
    table = rng.sample(net.sorted, args.table)
    keys = [b"\x12\x20" + hashlib.sha256(b"cid %d" % i).digest() for i in range(args.cids)]
    print(f"{args.peers:,} simulated peers ({DEAD_SHARE:.0%} never answer, RTT 20-300 ms), "
          f"{args.cids:,} CIDs, {CONCURRENCY} walks at once")
    sample = keys[:args.per_cid_sample]
    lookups, asked, took, right = per_cid(net, table, sample)
    scale = args.cids / len(sample)
    print(f"walk per CID (measured on {len(sample):,}, scaled x{scale:g}): "
          f"{lookups * scale:,.0f} lookups, {asked * scale:,.0f} FIND_NODE, "
          f"{took * scale / 3600:.1f} h simulated; {right:.1%} of CIDs reach every live "
          "peer of their true 20 closest")
    b_lookups, b_asked, b_took, walked, b_right = batched(net, table, keys)
    print(f"one sweep: {b_lookups:,} lookups ({walked:,} of them a walk for one CID), "
          f"{b_asked:,} FIND_NODE, {b_took / 60:.1f} min simulated; {b_right:.1%} of CIDs "
          "reach every live peer of their true 20 closest")
    print(f"ADD_PROVIDER sends: {args.cids * K:,} either way")
    print(f"ratios (per CID / sweep): lookups {lookups * scale / b_lookups:.0f}x, "
          f"FIND_NODE {asked * scale / b_asked:.0f}x, time {took * scale / b_took:.0f}x")


if __name__ == "__main__":
    main()
