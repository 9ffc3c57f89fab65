"""The record stores: fair shares per peer, bounded totals, O(1) caps, incremental GC."""

from __future__ import annotations

import time

import pytest

from dhtd.errors import InvalidRecord
from dhtd.stores import MAX_PROVIDER_ADDRS, ProviderStore, StoreFull, ValueStore
from dhtd.stores.shares import Shares

NOW = 1_750_000_000.0
HOUR = 3600.0


def key(i: int) -> bytes:
    return b"\x12\x20" + i.to_bytes(32, "big")


# --- Shares ---------------------------------------------------------------------------


def test_an_owner_cannot_take_more_than_its_share() -> None:
    shares: Shares[int] = Shares(capacity=100, per_owner=10, max_age=HOUR)
    for i in range(10):
        shares.admit(i, b"flood", 1, NOW)
    with pytest.raises(StoreFull, match="share"):
        shares.admit(10, b"flood", 1, NOW)
    shares.admit(11, b"honest", 1, NOW)
    assert shares.usage(b"flood") == 10 and shares.usage(b"honest") == 1


def test_a_full_store_evicts_the_oldest_of_its_biggest_owner() -> None:
    shares: Shares[int] = Shares(capacity=10, per_owner=6, max_age=HOUR)
    for i in range(6):
        shares.admit(i, b"big", 1, NOW + i)
    for i in range(6, 10):
        shares.admit(i, b"mid", 1, NOW + i)
    assert shares.total == 10
    evicted = shares.admit(100, b"new", 1, NOW + 20)
    assert evicted == [0]  # big's oldest
    assert shares.total == 10 and shares.usage(b"big") == 5


def test_a_full_store_of_equal_owners_refuses_and_evicts_nothing() -> None:
    shares: Shares[int] = Shares(capacity=4, per_owner=2, max_age=HOUR)
    for i, owner in enumerate((b"a", b"a", b"b", b"b")):
        shares.admit(i, owner, 1, NOW)
    shares.admit(10, b"c", 1, NOW)  # c has 0: evicts from a (2 > 1)
    with pytest.raises(StoreFull, match="full"):
        shares.admit(11, b"c", 1, NOW)  # now nobody holds more than c would (2)
    assert len(shares) == 4 and shares.total == 4


def test_exempt_entries_are_never_refused_nor_counted() -> None:
    shares: Shares[int] = Shares(capacity=1, per_owner=1, max_age=HOUR)
    shares.admit(0, b"a", 1, NOW)
    for i in range(1, 5):
        assert shares.admit(i, None, 1, NOW) == []
    assert shares.total == 1 and len(shares) == 5


def test_collect_removes_expired_entries_a_budget_at_a_time() -> None:
    shares: Shares[int] = Shares(capacity=1000, per_owner=1000, max_age=HOUR)
    for i in range(10):
        shares.admit(i, b"a", 1, NOW + i)
    assert shares.collect(NOW + HOUR + 4.5, budget=3) == [0, 1, 2]
    assert shares.collect(NOW + HOUR + 4.5, budget=100) == [3, 4]
    assert shares.collect(NOW + HOUR + 4.5, budget=100) == []
    assert shares.usage(b"a") == 5


def test_the_cap_check_costs_the_same_in_a_full_store() -> None:
    """Refusing past a share or a full store is O(1) in the store's size: no sweep."""

    def refusal_cost(size: int) -> float:
        shares: Shares[int] = Shares(capacity=size, per_owner=size // 20 or 1, max_age=HOUR)
        owner = 0
        for i in range(size):
            if shares.usage(b"%d" % owner) >= shares.per_owner:
                owner += 1
            shares.admit(i, b"%d" % owner, 1, NOW)
        t0 = time.perf_counter()
        for i in range(2000):
            with pytest.raises(StoreFull):
                shares.admit(size + i, b"0", 1, NOW)
        return time.perf_counter() - t0

    small, large = refusal_cost(1000), refusal_cost(100_000)
    assert large < small * 5, (small, large)


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
