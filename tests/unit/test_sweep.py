"""dhtd.sweep: the k closest peers of many keys from a few lookups per region, checked
against the true k closest in synthetic networks (a lookup here is ideal: it
returns the true k closest live peers of its target)."""

from __future__ import annotations

import hashlib
import heapq
import random

import pytest
import trio

from dhtd.ids import kad_key
from dhtd.lookup import PeerRecord
from dhtd.sweep import FEW_KEYS, Plan, plan

K = 20


def ids(count: int, seed: int, tag: bytes = b"peer") -> list[bytes]:
    rng = random.Random(seed)
    return [b"\x12\x20" + hashlib.sha256(tag + rng.randbytes(8)).digest() for _ in range(count)]


class Network:
    """``dead`` peers are in every answer that would name them, and answer nothing:
    a lookup finds the live ones among the k closest, and fails on the rest."""

    def __init__(self, peers: list[bytes], dead: frozenset[bytes] = frozenset()) -> None:
        self.peers = peers
        self.dead = dead
        self.points = {p: int.from_bytes(kad_key(p), "big") for p in peers}
        self.asked: list[bytes] = []

    def ranked(self, key: bytes, k: int = K) -> list[bytes]:
        at = int.from_bytes(kad_key(key), "big")
        return heapq.nsmallest(k, self.peers, key=lambda p: self.points[p] ^ at)

    def true_closest(self, key: bytes, k: int = K) -> set[bytes]:
        """The live peers among the k closest (what a walk per key finds)."""
        return {p for p in self.ranked(key, k) if p not in self.dead}

    def closest_live(self, key: bytes, k: int = K) -> set[bytes]:
        at = int.from_bytes(kad_key(key), "big")
        live = (p for p in self.peers if p not in self.dead)
        return set(heapq.nsmallest(k, live, key=lambda p: self.points[p] ^ at))

    async def lookup(self, target: bytes) -> tuple[list[PeerRecord], list[bytes]]:
        await trio.lowlevel.checkpoint()
        self.asked.append(target)
        met = self.ranked(target)
        return ([PeerRecord(p, ()) for p in met if p not in self.dead],
                [p for p in met if p in self.dead])


def planned(net: Network, keys: list[bytes], **kw: int) -> Plan:
    return trio.run(lambda: plan(keys, net.lookup, **kw))


@pytest.mark.parametrize(("peers", "keys", "most_lookups"), [
    (30, 2000, 4),  # the test swarm's size: the whole network in a few lookups
    (1000, 5000, 137),  # (as measured: fewer is fine, more means wasted lookups)
    (3000, 3000, 428),  # regions hold fewer keys each
])
def test_every_key_gets_its_true_k_closest_from_far_fewer_lookups(
        peers: int, keys: int, most_lookups: int) -> None:
    net = Network(ids(peers, seed=peers))
    wanted = ids(keys, seed=7, tag=b"key")
    result = planned(net, wanted)
    assert set(result.peers_of) == set(wanted)
    wrong = [k for k in wanted if {p.id for p in result.peers_of[k]} != net.true_closest(k)]
    assert wrong == []
    assert result.lookups == len(net.asked) <= most_lookups, result.lookups


def test_with_down_peers_every_key_gets_its_k_closest_live_peers() -> None:
    """A fifth of the peers are down but still named in answers: the sweep gives each
    key its 20 closest live peers, a superset of the live ones a walk per key finds."""
    peers = ids(1500, seed=13)
    net = Network(peers, frozenset(random.Random(14).sample(peers, 300)))
    wanted = ids(3000, seed=15, tag=b"key")
    result = planned(net, wanted)
    for key in wanted:
        got = {p.id for p in result.peers_of[key]}
        assert got == net.closest_live(key) and net.true_closest(key) <= got
    # Measured 172 in 36 of 40 runs and 173 in 4: with peers down, which of two
    # concurrent lookups answers first depends on trio's scheduling order, which trio
    # varies from run to run. More than 175 means wasted lookups.
    assert result.lookups <= 175, result.lookups


def test_a_network_smaller_than_k_is_known_from_one_lookup() -> None:
    net = Network(ids(12, seed=1))
    wanted = ids(100, seed=2, tag=b"key")
    result = planned(net, wanted)
    assert result.lookups == 1
    assert all({p.id for p in result.peers_of[k]} == set(net.peers) for k in wanted)


def test_few_keys_walk_one_by_one() -> None:
    net = Network(ids(500, seed=3))
    wanted = ids(FEW_KEYS, seed=4, tag=b"key")
    result = planned(net, wanted)
    assert result.walked == FEW_KEYS == result.lookups
    assert sorted(net.asked) == sorted(wanted)


def test_keys_in_sparse_regions_walk_while_dense_ones_are_swept() -> None:
    net = Network(ids(2000, seed=5))
    dense = [k for k in ids(20000, seed=6, tag=b"key")
             if int.from_bytes(kad_key(k), "big") >> 252 == 0b1010][:400]
    lonely = ids(2, seed=8, tag=b"far")
    result = planned(net, dense + lonely)
    wrong = [k for k in dense + lonely
             if {p.id for p in result.peers_of[k]} != net.true_closest(k)]
    assert wrong == [] and result.lookups < 120
    assert set(lonely) <= set(net.asked)  # each walked to itself


def test_never_more_exploring_lookups_than_keys_however_the_lookups_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A network that lies: toward a key it names 10 peers right beside it and 10 in
    the other half of the keyspace (so the key's half looks small, and the other
    half must be explored), toward any other point 20 right beside it (so every
    region explored looks full, down to the bottom). The budget (as many exploring
    lookups as keys) stops it; the keys left walk one by one. (Places are the
    digest itself here, so the liar can name peers anywhere.)"""
    from dhtd import sweep

    def at(point: bytes) -> bytes:
        return b"\x12\x20" + point

    monkeypatch.setattr(sweep, "kad_key", lambda data: data[2:34])
    monkeypatch.setattr(sweep, "_hash_with_prefix",
                        lambda d, v: at(((v << (256 - d)) if d else 0).to_bytes(32, "big")))
    wanted = ids(40, seed=10, tag=b"key")
    keys = set(wanted)

    async def liar(target: bytes) -> tuple[list[PeerRecord], list[bytes]]:
        await trio.lowlevel.checkpoint()
        point = target[2:34]
        beside = [at(point[:31] + bytes([200 + i])) for i in range(K)]
        if target in keys:
            far = bytes([point[0] ^ 0x80]) + point[1:31]
            beside = beside[:10] + [at(far + bytes([200 + i])) for i in range(10)]
        return [PeerRecord(p, ()) for p in beside], []

    result = trio.run(lambda: plan(wanted, liar))
    assert set(result.peers_of) == keys and result.walked > 0
    assert result.lookups - result.walked <= len(wanted), (result.lookups, result.walked)


def test_a_region_without_a_known_point_gets_one_by_hashing() -> None:
    from dhtd import sweep

    for d, v in ((0, 0), (5, 0b10110), (12, 0xABC)):
        found = sweep._hash_with_prefix(d, v)
        assert found[:2] == b"\x12\x20" and len(found) == 34
        assert d == 0 or int.from_bytes(kad_key(found), "big") >> (256 - d) == v

    async def targets() -> list[bytes]:
        s = sweep._Sweep(Network(ids(10, seed=1)).lookup, K, FEW_KEYS, budget=10,
                         concurrency=1)
        s._seen[seen] = None
        out = [await s.target(16, at >> 240, ()), await s.target(16, (at >> 240) ^ 1, ())]
        with pytest.raises(sweep._Incomplete, match="17 bits deep"):
            await s.target(17, (at >> 239) ^ 1, ())
        return out

    seen = ids(1, seed=2)[0]
    at = int.from_bytes(kad_key(seen), "big")
    known, hashed = trio.run(targets)
    assert known == seen  # a peer seen there: no hashing
    assert int.from_bytes(kad_key(hashed), "big") >> 240 == (at >> 240) ^ 1  # hashed there


def test_a_sweep_finds_its_targets_without_hashing_when_peers_are_known(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dhtd import sweep

    calls: list[int] = []
    real = sweep._hash_with_prefix
    monkeypatch.setattr(sweep, "_hash_with_prefix", lambda d, v: calls.append(d) or real(d, v))
    net = Network(ids(1000, seed=16))
    result = planned(net, ids(2000, seed=17, tag=b"key"))
    assert calls == [] and result.walked == 0


def test_duplicate_keys_are_planned_once() -> None:
    net = Network(ids(100, seed=11))
    key = ids(1, seed=12, tag=b"key")[0]
    result = planned(net, [key] * 10)
    assert list(result.peers_of) == [key] and result.lookups == 1
