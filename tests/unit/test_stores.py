"""The record stores: fair shares per peer, bounded totals, O(1) caps, incremental GC."""

from __future__ import annotations

import pytest

from dhtd.errors import InvalidRecord
from dhtd.stores import MAX_PROVIDER_ADDRS, ProviderStore, StoreFull, ValueStore
from dhtd.stores.shares import Usage

NOW = 1_750_000_000.0
HOUR = 3600.0


def key(i: int) -> bytes:
    return b"\x12\x20" + i.to_bytes(32, "big")


# --- Usage: each owner's total, biggest first -------------------------------------------


def test_usage_ranks_owners_biggest_first_and_follows_every_change() -> None:
    usage = Usage()
    for owner, delta in ((b"a", 3), (b"b", 5), (b"c", 1)):
        usage.charge(owner, delta)
    assert list(usage.biggest_first()) == [b"b", b"a", b"c"] and usage.total == 9
    assert usage.charge(b"b", -4) == 1
    assert usage.biggest() == b"a" == next(iter(usage.biggest_first()))
    assert usage.charge(b"a", -3) == 0  # refunded to nothing: no longer an owner
    assert (usage[b"a"], len(usage), usage.total) == (0, 2, 2)
    assert sorted(usage.biggest_first()) == [b"b", b"c"]
    assert Usage().biggest() is None


def test_usage_read_back_ranks_the_owners_again() -> None:
    usage = Usage()
    usage.charge(b"old", 100)
    usage.reset({b"x": 2, b"y": 7})
    assert list(usage.biggest_first()) == [b"y", b"x"] and usage.total == 9
    assert usage[b"old"] == 0


def test_usage_keeps_its_heap_bounded_through_many_changes() -> None:
    usage = Usage()
    for i in range(10_000):
        usage.charge(b"abc"[i % 3:i % 3 + 1], 1 if i % 2 else 2)
    assert len(usage._heap) <= 4 * len(usage) + 64 + 1
    assert list(usage.biggest_first()) == sorted((b"a", b"b", b"c"), key=lambda o: -usage[o])


def test_usage_knows_the_biggest_right_after_its_heap_was_rebuilt() -> None:
    usage = Usage()
    for _ in range(69):  # the 69th pair passes 4 * 1 + 64: the heap is rebuilt
        usage.charge(b"a", 1)
    assert len(usage._heap) == 1 and usage.biggest() == b"a"
    assert list(usage.biggest_first()) == [b"a"]


def test_usage_never_names_an_owner_that_holds_nothing() -> None:
    usage: Usage[bytes] = Usage()
    usage.charge(b"a", 1)
    usage.charge(b"a", -1)  # its (-1, a) pair is stale now
    assert usage.biggest() is None and list(usage.biggest_first()) == []


def test_usage_names_each_owner_once_though_its_pair_was_pushed_twice() -> None:
    usage: Usage[bytes] = Usage()
    for delta in (1, 1, -1):  # pairs (-1, a), (-2, a), (-1, a): two valid ones
        usage.charge(b"a", delta)
    usage.charge(b"b", 1)
    assert sorted(usage.biggest_first()) == [b"a", b"b"]


# --- ProviderStore ------------------------------------------------------------------------


def test_provider_store_refresh_and_ordering() -> None:
    store = ProviderStore(validity=HOUR)
    store.add(key(1), b"peer-a", [b"/addr/a"], NOW)
    store.add(key(1), b"peer-b", [b"/addr/b"], NOW + 10)
    assert [r.peer for r in store.get(key(1), NOW + 20)] == [b"peer-b", b"peer-a"]
    refreshed = store.add(key(1), b"peer-a", [], NOW + 20)
    assert refreshed.expires_at == NOW + 20 + HOUR
    assert refreshed.addrs == (b"/addr/a",)  # kept when re-added without addrs
    assert [r.peer for r in store.get(key(1), NOW + 30)] == [b"peer-a", b"peer-b"]
    assert store.add(key(1), b"peer-a", [b"/addr/a2"], NOW + 30).addrs == (b"/addr/a2",)
    assert len(store) == 2 and store.keys_count == 1
    assert [r.peer for r in store.get(key(1), NOW + 10 + HOUR)] == [b"peer-a"]
    assert store.get(b"unknown", NOW) == []


def test_provider_store_expire_and_collect() -> None:
    store = ProviderStore(validity=HOUR)
    store.add(key(1), b"p", [], NOW)
    store.add(key(2), b"p", [], NOW + 100)
    store.add(key(2), b"q", [], NOW)
    assert store.expire(NOW + HOUR - 1) == 0
    assert store.expire(NOW + HOUR) == 2  # by received time, whatever the order of adds
    assert store.collect(NOW + HOUR + 100, 10) == 1
    assert len(store) == 0 and store.keys_count == 0


def test_provider_store_honest_records_are_stored_while_one_peer_floods() -> None:
    store = ProviderStore(validity=HOUR, max_records=1000, per_peer=50)
    refused = 0
    for i in range(5000):
        try:
            store.add(key(i), b"flooder", [b"/x"], NOW)
        except StoreFull:
            refused += 1
    assert store.usage(b"flooder") == 50 and refused == 4950
    for i in range(20):
        store.add(key(10_000 + i), b"honest-%d" % i, [b"/h"], NOW)
        assert store.get(key(10_000 + i), NOW)[0].peer == b"honest-%d" % i


def test_provider_store_many_flooders_make_way_for_a_newcomer() -> None:
    store = ProviderStore(validity=HOUR, max_records=100, per_peer=10)
    for f in range(10):
        for i in range(10):
            store.add(key(f * 100 + i), b"flooder-%d" % f, [], NOW)
    assert len(store) == 100
    store.add(key(99_999), b"honest", [b"/h"], NOW)
    assert [r.peer for r in store.get(key(99_999), NOW)] == [b"honest"]
    assert len(store) == 100


def test_provider_store_keeps_at_most_max_per_key_and_bounded_addrs() -> None:
    store = ProviderStore(validity=HOUR, max_per_key=2)
    store.add(key(1), b"p1", [], NOW)
    store.add(key(1), b"p2", [], NOW)
    with pytest.raises(StoreFull, match="too many providers"):
        store.add(key(1), b"p3", [], NOW)
    record = store.add(key(2), b"p1", [b"%d" % i for i in range(10_000)], NOW)
    assert len(record.addrs) == MAX_PROVIDER_ADDRS


def test_provider_store_rejects_empty_ids() -> None:
    store = ProviderStore()
    with pytest.raises(InvalidRecord):
        store.add(b"", b"p", [], NOW)
    with pytest.raises(InvalidRecord):
        store.add(key(1), b"", [], NOW)


# --- ValueStore ---------------------------------------------------------------------------


def test_value_store_put_get_replace_remove_and_expiry() -> None:
    store = ValueStore(max_age=HOUR)
    stored = store.put(b"/app/k", b"v1", NOW, owner=b"a")
    assert store.get(b"/app/k", NOW) == stored
    store.put(b"/app/k", b"v2", NOW + 1, owner=b"b")
    got = store.get(b"/app/k", NOW + 1)
    assert got is not None and got.value == b"v2"
    assert store.usage(b"a") == 0 and store.usage(b"b") > 0  # the new holder pays
    assert store.get(b"/app/k", NOW + 1 + HOUR) is None
    assert len(store) == 0
    store.put(b"/app/j", b"v", NOW)
    store.remove(b"/app/j")
    store.remove(b"/app/j")
    assert store.get(b"/app/j", NOW) is None


def test_value_store_share_is_in_bytes_and_a_refusal_keeps_the_old_record() -> None:
    store = ValueStore(max_bytes=100_000, per_peer=2_000, max_age=HOUR)
    store.put(b"/app/k", b"small", NOW, owner=b"p")
    with pytest.raises(StoreFull, match="share"):
        store.put(b"/app/k", bytes(5_000), NOW + 1, owner=b"p")
    got = store.get(b"/app/k", NOW + 1)
    assert got is not None and got.value == b"small"


def test_value_store_own_records_are_never_refused() -> None:
    store = ValueStore(max_bytes=1_000, per_peer=1_000, max_age=HOUR)
    store.put(b"/app/flood", bytes(600), NOW, owner=b"p")
    for i in range(10):
        store.put(b"/app/mine-%d" % i, bytes(500), NOW)  # owner None: this node
    assert len(store) == 11


def test_records_live_48_hours_written_out() -> None:
    """The validity is go-libp2p-kad-dht's 48 h, checked against the number itself."""
    providers, values = ProviderStore(), ValueStore()
    providers.add(key(1), b"p", [], NOW)
    values.put(b"/app/k", b"v", NOW, owner=b"p")
    assert providers.get(key(1), NOW + 48 * HOUR - 1) and values.get(b"/app/k", NOW + 48 * HOUR - 1)
    assert not providers.get(key(1), NOW + 48 * HOUR)
    assert values.get(b"/app/k", NOW + 48 * HOUR) is None
