"""Unit tests for dhtd.routing: k-buckets, capacity, and nearest-peer ordering."""

from __future__ import annotations

import random

import pytest

from dhtd.ids import common_prefix_len, kad_key, xor_distance
from dhtd.routing import BUCKET_SIZE, RoutingTable, closest_to


def ids(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"\x12\x20" + rng.randbytes(32) for _ in range(count)]


def bucket_index(self_id: bytes, peer: bytes) -> int:
    return common_prefix_len(kad_key(self_id), kad_key(peer))


def brute_closest(target_key: bytes, peers: list[bytes], count: int) -> list[bytes]:
    return sorted(peers, key=lambda p: xor_distance(kad_key(p), target_key))[:count]


def test_never_holds_self() -> None:
    me = ids(1, 1)[0]
    table = RoutingTable(me)
    assert table.add(me) is False
    assert me not in table
    assert len(table) == 0
    assert table.peers() == []
    assert table.remove(me) is False


def test_add_contains_remove_and_len_bookkeeping() -> None:
    me, *peers = ids(2, 50)
    table = RoutingTable(me, bucket_size=len(peers))
    for n, peer in enumerate(peers, 1):
        assert table.add(peer) is True
        assert peer in table
        assert len(table) == n
    # Adding again changes nothing and still reports membership.
    assert table.add(peers[0]) is True
    assert len(table) == len(peers)

    assert table.remove(peers[0]) is True
    assert peers[0] not in table
    assert len(table) == len(peers) - 1
    assert table.remove(peers[0]) is False
    assert len(table) == len(peers) - 1
    assert table.remove(ids(3, 1)[0]) is False
    assert len(table) == len(peers) - 1

    for peer in peers[1:]:
        assert table.remove(peer)
    assert len(table) == 0
    assert table.peers() == []


def test_contains_rejects_non_bytes() -> None:
    me, peer = ids(4, 2)
    table = RoutingTable(me)
    table.add(peer)
    assert peer in table
    assert peer.hex() not in table
    assert None not in table


def test_full_bucket_refuses_new_peers_and_keeps_old_ones() -> None:
    size = 3
    me = ids(5, 1)[0]
    table = RoutingTable(me, bucket_size=size)
    # Half of all peers fall in bucket 0 (first bit differs from self).
    far = [p for p in ids(6, 100) if bucket_index(me, p) == 0]
    assert len(far) > size + 2
    for peer in far[:size]:
        assert table.add(peer) is True
    for peer in far[size:]:
        assert table.add(peer) is False
        assert peer not in table
    assert len(table) == size
    assert set(table.peers()) == set(far[:size])
    # A full bucket still answers True for a peer it holds.
    assert table.add(far[0]) is True

    # Removing one makes room for exactly one more.
    assert table.remove(far[1])
    assert table.add(far[size]) is True
    assert table.add(far[size + 1]) is False
    assert set(table.peers()) == {far[0], far[2], far[size]}
    assert len(table) == size


def test_a_full_bucket_does_not_block_other_buckets() -> None:
    me = ids(7, 1)[0]
    table = RoutingTable(me, bucket_size=2)
    peers = ids(8, 400)
    for peer in peers:
        table.add(peer)
    per_bucket: dict[int, list[bytes]] = {}
    for peer in peers:
        per_bucket.setdefault(bucket_index(me, peer), []).append(peer)
    for index, members in per_bucket.items():
        held = [p for p in table.peers() if bucket_index(me, p) == index]
        assert held == members[:2], index
    assert len(table) == sum(min(2, len(m)) for m in per_bucket.values())
    assert len(table) == len(table.peers())


def test_peers_lists_nearest_buckets_last() -> None:
    me = ids(9, 1)[0]
    table = RoutingTable(me)
    for peer in ids(10, 300):
        table.add(peer)
    indexes = [bucket_index(me, p) for p in table.peers()]
    assert indexes == sorted(indexes)
    assert len(set(indexes)) > 3


@pytest.mark.parametrize("seed", range(5))
def test_closest_matches_brute_force(seed: int) -> None:
    me, *peers = ids(100 + seed, 120)
    table = RoutingTable(me, bucket_size=1000)  # keep everyone
    for peer in peers:
        assert table.add(peer)
    rng = random.Random(seed)
    for target_key in [kad_key(rng.randbytes(10)), kad_key(peers[3]), kad_key(me)]:
        for count in (0, 1, 7, BUCKET_SIZE, len(peers), len(peers) + 5):
            got = table.closest(target_key, count)
            assert got == brute_closest(target_key, peers, count)
    # The default count is k.
    assert table.closest(kad_key(b"x")) == brute_closest(kad_key(b"x"), peers, BUCKET_SIZE)
    # A peer is nearest to its own key.
    assert table.closest(kad_key(peers[3]), 1) == [peers[3]]


def test_closest_skips_removed_peers() -> None:
    me, *peers = ids(11, 40)
    table = RoutingTable(me, bucket_size=len(peers))
    for peer in peers:
        table.add(peer)
    target = kad_key(b"target")
    first = table.closest(target, 1)[0]
    table.remove(first)
    assert first not in table.closest(target, len(peers))
    assert table.closest(target, 5) == brute_closest(
        target, [p for p in peers if p != first], 5)


def test_closest_to_orders_by_xor_distance() -> None:
    target = bytes(32)
    entries = [(b"c", bytes([0b100]) + bytes(31)), (b"a", bytes(31) + b"\x01"),
               (b"b", bytes(31) + b"\x02")]
    assert closest_to(target, entries, 3) == [b"a", b"b", b"c"]
    assert closest_to(target, entries, 2) == [b"a", b"b"]
    assert closest_to(target, [], 5) == []


def test_bucket_len_counts_the_peers_of_each_common_prefix_length() -> None:
    me = ids(12, 1)[0]
    table = RoutingTable(me)
    peers = ids(13, 400)
    for peer in peers:
        table.add(peer)
    held = table.peers()
    # 257 buckets (common prefix 0 to 256 bits); any other length holds no peer.
    for cpl in range(-3, 260):
        expected = sum(1 for p in held if bucket_index(me, p) == cpl)
        assert table.bucket_len(cpl) == expected, cpl
    assert table.bucket_len(0) == 20  # half of 400 peers share no prefix: a full bucket
    assert table.bucket_len(1) == 20
    assert sum(table.bucket_len(cpl) for cpl in range(257)) == len(table)


def test_deepest_cpl_follows_the_nearest_peer_held() -> None:
    me = ids(14, 1)[0]
    table = RoutingTable(me)
    assert table.deepest_cpl() == 0  # empty
    by_cpl: dict[int, bytes] = {}
    for peer in ids(15, 2000):
        by_cpl.setdefault(bucket_index(me, peer), peer)
    # Each step adds a peer one or more bits nearer; odd and even depths alike.
    steps = [0, 1, 2, 3, 5, 8]
    for cpl in steps:
        assert table.add(by_cpl[cpl])
        assert table.deepest_cpl() == cpl
    for shallower, cpl in zip(reversed(steps[:-1]), reversed(steps[1:]), strict=True):
        assert table.remove(by_cpl[cpl])
        assert table.deepest_cpl() == shallower
    assert table.remove(by_cpl[0])
    assert table.deepest_cpl() == 0
