"""ValueStore: value records held for other peers (dhtd.stores.values).

The limits are written out as docs/limits.md states them: 48 h (172,800 s) per
record, 64 MiB in all (67,108,864 bytes), one peer 5% of it (3,355,443 bytes), a
record costing its key, its value and 256 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dhtd.errors import InvalidRecord
from dhtd.stores import BetterRecordHeld, StoredRecord, StoreFull, ValueStore
from dhtd.stores.db import memory_connection

NOW = 1_750_000_000.0
HOUR = 3600.0
DAY2 = 172_800.0  # 48 h
OVERHEAD = 256


def value_costing(k: bytes, cost: int) -> bytes:
    """A value that makes the record of key ``k`` cost exactly ``cost`` bytes."""
    return bytes(cost - len(k) - OVERHEAD)


# --- the documented limits ---------------------------------------------------------------


def test_a_record_costs_its_key_its_value_and_256_bytes() -> None:
    store = ValueStore()
    store.put(b"/app/k", b"12345", NOW, owner=b"p")
    assert store.usage(b"p") == 6 + 5 + 256
    store.put(b"/app/other", b"", NOW, owner=b"p")
    assert store.usage(b"p") == (6 + 5 + 256) + (10 + 0 + 256)
    store.put(b"/app/k", b"1", NOW, owner=b"p")  # replaced: paid once, at its new cost
    assert store.usage(b"p") == (6 + 1 + 256) + (10 + 0 + 256)
    store.remove(b"/app/k")
    assert store.usage(b"p") == 10 + 0 + 256
    store.remove(b"/app/other")
    assert store.usage(b"p") == 0 and len(store) == 0


def test_one_peer_holds_at_most_5_percent_of_64_mib() -> None:
    """5% of 64 MiB, rounded down: 3,355,443 bytes."""
    store = ValueStore()
    k = b"/app/k"
    whole_share = value_costing(k, 3_355_443)
    store.put(k, whole_share, NOW, owner=b"p")
    assert store.usage(b"p") == 3_355_443
    with pytest.raises(StoreFull) as refused:
        store.put(k, whole_share + b"!", NOW + 1, owner=b"p")
    assert str(refused.value) == "this peer's share of the store is used up (3355443 units)"
    with pytest.raises(StoreFull):
        store.put(b"/app/j", b"", NOW + 1, owner=b"p")
    got = store.get(k, NOW + 1)
    assert got is not None and got.value == whole_share and got.received_at == NOW
    assert len(store) == 1


def test_the_store_holds_64_mib_then_evicts() -> None:
    store = ValueStore()
    share = 3_355_443
    filler = value_costing(b"/app/00", share)  # one object, shared: the test stays small
    for i in range(19):
        store.put(b"/app/%02d" % i, filler, NOW, owner=b"peer-%02d" % i)
    store.put(b"/app/19", value_costing(b"/app/19", share - 1_000), NOW, owner=b"peer-19")
    left = 67_108_864 - 19 * share - (share - 1_000)
    store.put(b"/app/last", value_costing(b"/app/last", left), NOW, owner=b"last")
    owners = [b"peer-%02d" % i for i in range(20)] + [b"last"]
    assert sum(store.usage(o) for o in owners) == 67_108_864 and len(store) == 21
    store.put(b"/app/more", b"", NOW, owner=b"more")  # one byte over: evicts
    assert len(store) == 21
    assert sorted(store.usage(o) for o in owners[:19]) == [0] + [share] * 18
    assert store.usage(b"peer-19") == share - 1_000 and store.usage(b"last") == left
    assert store.usage(b"more") == 9 + 256


def test_a_record_lives_48_hours() -> None:
    store = ValueStore()
    stored = store.put(b"/app/k", b"v", NOW, owner=b"p")
    assert store.get(b"/app/k", NOW + DAY2 - 0.001) == stored
    assert store.collect(NOW + DAY2 - 0.001, 10) == 0
    assert store.collect(NOW + DAY2, 10) == 1
    assert store.get(b"/app/k", NOW + DAY2 - 0.001) is None and store.usage(b"p") == 0


# --- put, get, remove ------------------------------------------------------------------------


def test_put_returns_what_get_gives_back() -> None:
    store = ValueStore(max_age=HOUR)
    stored = store.put(b"/app/k", b"value", NOW, owner=b"p")
    assert stored == StoredRecord(key=b"/app/k", value=b"value", received_at=NOW)
    assert store.get(b"/app/k", NOW + 1) == stored
    mine = store.put(b"/app/mine", b"own", NOW + 2)
    assert mine == StoredRecord(key=b"/app/mine", value=b"own", received_at=NOW + 2)
    assert store.get(b"/app/mine", NOW + 3) == mine
    assert store.get(b"/app/unknown", NOW) is None


def test_an_empty_key_is_invalid() -> None:
    store = ValueStore()
    for owner in (b"p", None):
        with pytest.raises(InvalidRecord) as refused:
            store.put(b"", b"v", NOW, owner=owner)
        assert str(refused.value) == "record key is empty"
    assert len(store) == 0 and store.usage(b"p") == 0


def test_this_node_taking_over_a_key_frees_the_peers_share() -> None:
    store = ValueStore(max_bytes=1_000, per_peer=1_000, max_age=HOUR)
    store.put(b"/app/k", b"theirs", NOW, owner=b"p")
    store.put(b"/app/k", bytes(2_000), NOW + 1)  # this node: exempt from every cap
    assert store.usage(b"p") == 0
    got = store.get(b"/app/k", NOW + 1)
    assert got is not None and got.value == bytes(2_000)
    store.put(b"/app/j", bytes(700), NOW + 2, owner=b"p")
    assert store.usage(b"p") == 6 + 700 + 256


def test_an_evicted_record_is_gone() -> None:
    store = ValueStore(max_bytes=900, per_peer=600, max_age=HOUR)
    for i, (k, owner) in enumerate(((b"/a/0", b"a"), (b"/a/1", b"a"), (b"/b/0", b"b"))):
        store.put(k, value_costing(k, 300), NOW + i, owner=owner)
    store.put(b"/c/0", value_costing(b"/c/0", 300), NOW + 5, owner=b"c")
    assert store.get(b"/a/0", NOW + 5) is None
    assert [store.get(k, NOW + 5) is not None for k in (b"/a/1", b"/b/0", b"/c/0")] == [
        True, True, True]
    assert len(store) == 3 and store.usage(b"a") == 300
    with pytest.raises(StoreFull, match="the store is full and no peer holds more"):
        store.put(b"/d/0", value_costing(b"/d/0", 300), NOW + 6, owner=b"d")
    assert len(store) == 3


# --- expiry and collection ------------------------------------------------------------------


def test_every_put_collects_up_to_four_expired_records() -> None:
    store = ValueStore(max_age=HOUR)
    for i in range(10):
        store.put(b"/app/%d" % i, b"v", NOW + i, owner=b"peer-%d" % i)
    later = NOW + HOUR + 100
    store.put(b"/app/late-0", b"v", later, owner=b"late")
    assert len(store) == 7
    assert [store.usage(b"peer-%d" % i) > 0 for i in range(10)] == [False] * 4 + [True] * 6
    store.put(b"/app/late-1", b"v", later, owner=b"late")
    assert len(store) == 4


def test_collect_removes_expired_records_a_budget_at_a_time_oldest_first() -> None:
    store = ValueStore(max_age=HOUR)
    for i in range(6):
        store.put(b"/app/%d" % i, b"v", NOW + i, owner=b"p" if i % 2 else None)
    at = NOW + HOUR + 3.5  # /app/0 to /app/3 have expired
    assert store.collect(at, 3) == 3
    assert len(store) == 3 and store.usage(b"p") == 2 * (6 + 1 + 256)
    assert store.collect(at, 3) == 1
    assert store.collect(at, 3) == 0
    assert len(store) == 2 and store.usage(b"p") == 6 + 1 + 256
    assert [store.get(b"/app/%d" % i, NOW + 1) is not None for i in range(6)] == [
        False] * 4 + [True] * 2


def test_expire_removes_every_expired_record_and_only_those() -> None:
    store = ValueStore(max_age=HOUR)
    for i in range(10):
        store.put(b"/app/%d" % i, b"v", NOW + i, owner=b"p")
    assert store.expire(NOW + HOUR + 6.5) == 7
    assert len(store) == 3 and store.usage(b"p") == 3 * (6 + 1 + 256)
    assert store.expire(NOW + HOUR + 6.5) == 0
    assert store.expire(NOW + 2 * HOUR) == 3 and len(store) == 0


# --- replacing a record: who pays, and what competes ---------------------------------------


def test_a_peer_replacing_its_own_record_pays_for_the_new_one_only() -> None:
    """At its share's limit, a peer can still replace a record of its own: the old
    one's bytes are freed by the replacement, in the share and in a full store."""
    store = ValueStore(max_bytes=1_000, per_peer=1_000, max_age=HOUR)
    store.put(b"/app/k", value_costing(b"/app/k", 600), NOW, owner=b"p")
    store.put(b"/app/j", value_costing(b"/app/j", 400), NOW, owner=b"p")  # store full
    store.put(b"/app/k", value_costing(b"/app/k", 500), NOW + 1, owner=b"p")
    assert store.usage(b"p") == 900 and len(store) == 2
    store.put(b"/app/k", value_costing(b"/app/k", 600), NOW + 2, owner=b"p")
    assert store.usage(b"p") == 1_000
    with pytest.raises(StoreFull, match=r"^this peer's share of the store is used up"):
        store.put(b"/app/k", value_costing(b"/app/k", 601), NOW + 3, owner=b"p")
    assert store.usage(b"p") == 1_000


def test_a_peer_taking_over_anothers_record_moves_the_cost() -> None:
    store = ValueStore(max_bytes=10_000, per_peer=10_000, max_age=HOUR)
    store.put(b"/app/k", value_costing(b"/app/k", 400), NOW, owner=b"p")
    store.put(b"/app/k", value_costing(b"/app/k", 300), NOW + 1, owner=b"q")
    assert (store.usage(b"p"), store.usage(b"q"), len(store)) == (0, 300, 1)
    store.put(b"/app/k", value_costing(b"/app/k", 350), NOW + 2)  # this node: exempt
    assert (store.usage(b"q"), len(store)) == (0, 1)
    store.put(b"/app/k", value_costing(b"/app/k", 320), NOW + 3, owner=b"p")
    assert (store.usage(b"p"), len(store)) == (320, 1)


def test_taking_over_a_record_in_a_full_store_needs_room_for_the_difference_only() -> None:
    """The replaced record's bytes count as freed when a full store makes room."""
    store = ValueStore(max_bytes=1_000, per_peer=1_000, max_age=HOUR)
    store.put(b"/app/k", value_costing(b"/app/k", 500), NOW, owner=b"p")
    store.put(b"/app/j", value_costing(b"/app/j", 500), NOW, owner=b"p")
    store.put(b"/app/k", value_costing(b"/app/k", 400), NOW + 1, owner=b"q")  # no eviction
    assert (store.usage(b"p"), store.usage(b"q"), len(store)) == (500, 400, 2)
    store.put(b"/app/k", value_costing(b"/app/k", 500), NOW + 2)  # this node: exempt
    assert (store.usage(b"q"), len(store)) == (0, 2)


def test_a_held_record_competes_with_a_different_live_value_only() -> None:
    """``select`` sees the held record and the new one, by key, and may keep the held
    one; the same value again, or a held record that expired, never competes."""
    seen: list[tuple[bytes, list[StoredRecord]]] = []

    def keep_held(key: bytes, records: Sequence[StoredRecord]) -> int:
        seen.append((key, list(records)))
        return 0

    store = ValueStore(max_age=HOUR)
    store.put(b"/app/k", b"v1", NOW, owner=b"p", select=keep_held)
    assert seen == []
    store.put(b"/app/k", b"v1", NOW + 1, owner=b"p", select=keep_held)  # the same value
    assert seen == []
    with pytest.raises(BetterRecordHeld, match=r"^a better record is already stored$"):
        store.put(b"/app/k", b"v2", NOW + 2, owner=b"q", select=keep_held)
    assert seen == [(b"/app/k", [StoredRecord(b"/app/k", b"v1", NOW + 1),
                                 StoredRecord(b"/app/k", b"v2", NOW + 2)])]
    held = store.get(b"/app/k", NOW + 2)
    assert held is not None and held.value == b"v1" and store.usage(b"q") == 0
    # Expired exactly at NOW + 1 + HOUR: the new value goes in without competing.
    store.put(b"/app/k", b"v3", NOW + 1 + HOUR, owner=b"q", select=keep_held)
    assert len(seen) == 1
    got = store.get(b"/app/k", NOW + 1 + HOUR)
    assert got is not None and got.value == b"v3"


def test_the_limits_must_be_positive() -> None:
    for bad in ({"max_bytes": 0}, {"per_peer": 0}):
        with pytest.raises(ValueError, match=r"^capacity and per_owner must be at least 1$"):
            ValueStore(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_age must be positive$"):
        ValueStore(max_age=0)
    tiny = ValueStore(max_bytes=1, per_peer=1, max_age=0.5)
    tiny.put(b"/app/k", b"", NOW)  # exempt: fits whatever the caps
    assert tiny.get(b"/app/k", NOW + 0.4) is not None and tiny.get(b"/app/k", NOW + 0.5) is None


def test_records_go_to_the_connection_given() -> None:
    conn = memory_connection()
    ValueStore(conn).put(b"/app/k", b"v", NOW, owner=b"p")
    assert conn.execute("SELECT key, owner FROM records").fetchall() == [(b"/app/k", b"p")]
    assert ValueStore(conn).usage(b"p") == len(b"/app/k") + 1 + OVERHEAD  # read back


# --- a full store makes room: the oldest records of the biggest owners ----------------------


def costing(store: ValueStore, owner: bytes, *costs: int, at: float = NOW) -> list[bytes]:
    keys = []
    for i, cost in enumerate(costs):
        k = b"/%s/%d" % (owner, i)
        store.put(k, value_costing(k, cost), at + i, owner=owner)
        keys.append(k)
    return keys


def held_keys(store: ValueStore, keys: list[bytes]) -> list[bytes]:
    return [k for k in keys if store.get(k, NOW + 10) is not None]


def test_room_is_made_exactly_and_a_victim_pays_only_while_it_holds_more() -> None:
    store = ValueStore(max_bytes=10_000, per_peer=10_000, max_age=HOUR)
    a = costing(store, b"a", 1000, 5000)
    b = costing(store, b"b", 4000)  # full: 10,000
    q = costing(store, b"q", 3000, at=NOW + 5)  # needs 3,000: a's 1,000, then its 5,000
    assert held_keys(store, a) == [] and held_keys(store, b) == b and held_keys(store, q) == q
    assert (store.usage(b"a"), store.usage(b"b"), store.usage(b"q")) == (0, 4_000, 3_000)

    store = ValueStore(max_bytes=10_000, per_peer=10_000, max_age=HOUR)
    a = costing(store, b"a", 3000, 3000)
    b = costing(store, b"b", 4000)
    costing(store, b"q", 3000, at=NOW + 5)  # a's oldest frees exactly enough: no more goes
    assert held_keys(store, a) == a[1:] and held_keys(store, b) == b


def test_a_victim_that_would_drop_to_the_newcomers_size_stops_paying() -> None:
    """a holds 6,000 and pays 2,000 down to 4,000, the newcomer's size; b holds 3,900:
    nobody can pay the rest, so the put is refused and nothing is evicted."""
    store = ValueStore(max_bytes=10_000, per_peer=10_000, max_age=HOUR)
    a = costing(store, b"a", 2000, 2000, 2000)
    b = costing(store, b"b", 3900)
    full = r"^the store is full and no peer holds more than this one$"
    with pytest.raises(StoreFull, match=full):
        costing(store, b"q", 4000, at=NOW + 5)
    assert held_keys(store, a) == a and held_keys(store, b) == b and store.usage(b"q") == 0


def test_taking_over_a_record_never_evicts_that_record() -> None:
    """q takes over p's /p/0 in a full store: p's other record makes the room."""
    store = ValueStore(max_bytes=10_000, per_peer=10_000, max_age=HOUR)
    p = costing(store, b"p", 5000, 5000)
    store.put(p[0], value_costing(p[0], 6_000), NOW + 5, owner=b"q")
    got = store.get(p[0], NOW + 5)
    assert got is not None and len(got.value) + len(p[0]) + OVERHEAD == 6_000
    assert held_keys(store, p[1:]) == [] and (store.usage(b"p"), store.usage(b"q")) == (0, 6_000)


def test_eviction_stops_as_soon_as_the_record_fits() -> None:
    """a would still hold more than the newcomer, but two of its records make room:
    its third stays."""
    store = ValueStore(max_bytes=10_000, per_peer=10_000, max_age=HOUR)
    a = costing(store, b"a", 1000, 1000, 5000)
    costing(store, b"b", 3000)
    costing(store, b"q", 2000, at=NOW + 5)
    assert held_keys(store, a) == a[2:] and store.usage(b"a") == 5000


def test_when_a_victim_reaches_the_newcomers_size_the_next_biggest_pays() -> None:
    store = ValueStore(max_bytes=11_000, per_peer=11_000, max_age=HOUR)
    a = costing(store, b"a", 2000, 2000, 2000)
    b = costing(store, b"b", 5000)
    costing(store, b"q", 4000, at=NOW + 5)  # a pays 2,000 (down to 4,000), then b
    assert held_keys(store, a) == a[1:] and held_keys(store, b) == []
    assert (store.usage(b"a"), store.usage(b"b"), store.usage(b"q")) == (4000, 0, 4000)


def test_a_take_over_that_no_victim_can_make_room_for_is_refused() -> None:
    """p's other records are not enough once the record taken over is set aside."""
    store = ValueStore(max_bytes=7_000, per_peer=7_000, max_age=HOUR)
    p = costing(store, b"p", 5000, 1000, 1000)
    full = r"^the store is full and no peer holds more than this one$"
    with pytest.raises(StoreFull, match=full):
        store.put(p[0], value_costing(p[0], 6500), NOW + 5, owner=b"q")
    assert held_keys(store, p) == p and store.usage(b"q") == 0


def test_one_byte_over_the_store_is_one_byte_too_many() -> None:
    store = ValueStore(max_bytes=10_000, per_peer=10_000, max_age=HOUR)
    a = costing(store, b"a", 6000)
    costing(store, b"q", 4001, at=NOW + 5)
    assert held_keys(store, a) == [] and store.usage(b"q") == 4001
