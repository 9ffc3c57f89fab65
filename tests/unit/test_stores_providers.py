"""ProviderStore: provider records held for other peers (dhtd.stores.providers).

The limits are written out as docs/limits.md states them: 48 h validity
(172,800 s), 5% of 1,000,000 records per peer (50,000), 100 providers per key,
32 addresses per provider. The store runs on an in-memory SQLite database here;
dhtd's own node keeps it in state.db (tests/unit/test_state.py, tests/integration).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from dhtd.errors import InvalidRecord
from dhtd.stores import ProviderRecord, ProviderStore, StoreFull
from dhtd.stores.db import memory_connection

NOW = 1_750_000_000.0
HOUR = 3600.0
DAY2 = 172_800.0  # 48 h


def key(i: int) -> bytes:
    return b"\x12\x20" + i.to_bytes(32, "big")


def peers_of(store: ProviderStore, k: bytes, now: float) -> list[bytes]:
    return [r.peer for r in store.get(k, now)]


# --- the documented limits ---------------------------------------------------------------


def test_a_record_lasts_48_hours() -> None:
    store = ProviderStore()
    assert store.validity == DAY2
    added = store.add(key(1), b"p", [b"/a"], NOW)
    assert added == ProviderRecord(b"p", (b"/a",), NOW + DAY2)
    assert store.get(key(1), NOW + DAY2 - 0.001) == [added]
    assert store.get(key(1), NOW + DAY2) == []
    assert store.collect(NOW + DAY2 - 0.001, 10) == 0
    assert store.collect(NOW + DAY2, 10) == 1 and len(store) == 0


def test_one_peer_holds_at_most_50000_records() -> None:
    """5% of the 1,000,000 records the store holds for others. The first 49,999 are
    written straight to the file (as a previous run left them) and read back."""
    conn = memory_connection()
    conn.execute("INSERT INTO provider_peers (id, peer) VALUES (7, ?)", (b"flooder",))
    conn.executemany("INSERT INTO provider_records (key, peer, received) VALUES (?, 7, ?)",
                     ((key(i), NOW) for i in range(49_999)))
    store = ProviderStore(conn)
    store.add(key(49_999), b"flooder", [], NOW)
    with pytest.raises(StoreFull) as refused:
        store.add(key(50_000), b"flooder", [], NOW)
    assert str(refused.value) == "this peer's share of the store is used up (50000 units)"
    assert store.usage(b"flooder") == 50_000 and store.get(key(50_000), NOW) == []
    store.add(key(0), b"flooder", [], NOW + 1)  # refreshing one of its own still works
    store.add(key(50_000), b"other", [], NOW)
    assert store.usage(b"flooder") == 50_000 and len(store) == 50_001


def test_a_key_keeps_at_most_100_providers() -> None:
    store = ProviderStore()
    for i in range(100):
        store.add(key(1), b"peer-%d" % i, [], NOW)
    with pytest.raises(StoreFull) as refused:
        store.add(key(1), b"one-too-many", [], NOW)
    assert str(refused.value) == "too many providers for this key"
    assert len(store.get(key(1), NOW)) == 100 and store.usage(b"one-too-many") == 0


def test_a_provider_keeps_at_most_32_addresses() -> None:
    store = ProviderStore()
    addrs = [b"/ip4/10.0.0.%d/tcp/4001" % i for i in range(33)]
    assert store.add(key(1), b"p", addrs, NOW).addrs == tuple(addrs[:32])
    assert store.get(key(1), NOW)[0].addrs == tuple(addrs[:32])
    assert store.add(key(2), b"q", addrs[:32], NOW).addrs == tuple(addrs[:32])


# --- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "peer", "message"),
    [
        (b"", b"p", "provider key is empty"),
        (key(1), b"", "provider peer ID is empty"),
        (b"", b"", "provider key is empty"),
    ],
)
def test_empty_ids_are_invalid(k: bytes, peer: bytes, message: str) -> None:
    store = ProviderStore()
    with pytest.raises(InvalidRecord) as refused:
        store.add(k, peer, [b"/a"], NOW)
    assert str(refused.value) == message
    assert len(store) == 0 and store.keys_count == 0


def test_max_per_key_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match=r"^max_per_key must be at least 1$"):
        ProviderStore(max_per_key=0)
    store = ProviderStore(max_per_key=1)
    store.add(key(1), b"p", [], NOW)
    with pytest.raises(StoreFull, match=r"^too many providers for this key$"):
        store.add(key(1), b"q", [], NOW)


# --- records and addresses ---------------------------------------------------------------


def test_records_carry_the_peer_its_addresses_and_expiry() -> None:
    store = ProviderStore(validity=HOUR)
    assert store.add(key(1), b"bare", [], NOW) == ProviderRecord(b"bare", (), NOW + HOUR)
    assert store.add(key(1), b"full", [b"/a", b"/b"], NOW + 5) == ProviderRecord(
        b"full", (b"/a", b"/b"), NOW + 5 + HOUR)
    assert store.get(key(1), NOW + 10) == [
        ProviderRecord(b"full", (b"/a", b"/b"), NOW + 5 + HOUR),
        ProviderRecord(b"bare", (), NOW + HOUR),
    ]


def test_addresses_are_the_peers_across_keys() -> None:
    store = ProviderStore(validity=HOUR)
    store.add(key(1), b"p", [b"/old"], NOW)
    store.add(key(2), b"p", [b"/new"], NOW + 10)
    assert store.get(key(1), NOW + 20) == [ProviderRecord(b"p", (b"/new",), NOW + HOUR)]
    store.add(key(3), b"p", [], NOW + 20)  # no addresses: the known ones stay
    assert store.get(key(3), NOW + 20)[0].addrs == (b"/new",)


def test_addresses_are_kept_while_the_peer_holds_a_record_then_forgotten() -> None:
    store = ProviderStore(validity=HOUR)
    store.add(key(1), b"p", [b"/p"], NOW)
    store.add(key(2), b"p", [], NOW + 10)
    store.add(key(3), b"p", [], NOW + 20)
    store.add(key(9), b"q", [b"/q"], NOW + 30)
    assert store.collect(NOW + HOUR, 10) == 1  # key(1) expired; p still holds two
    assert store.get(key(2), NOW + HOUR)[0].addrs == (b"/p",)
    assert store.collect(NOW + HOUR + 10, 10) == 1  # key(2); p holds one
    assert store.get(key(3), NOW + HOUR + 10)[0].addrs == (b"/p",)
    assert store.collect(NOW + HOUR + 20, 10) == 1  # p holds nothing now
    assert store.add(key(4), b"p", [], NOW + HOUR + 20).addrs == ()
    assert store.get(key(9), NOW + HOUR + 20)[0].addrs == (b"/q",)


def test_a_refreshed_record_moves_first_and_lasts_longer() -> None:
    store = ProviderStore(validity=HOUR)
    for i, peer in enumerate((b"a", b"b", b"c")):
        store.add(key(1), peer, [], NOW + i)
    store.add(key(1), b"a", [], NOW + 10)
    assert peers_of(store, key(1), NOW + 10) == [b"a", b"c", b"b"]
    assert peers_of(store, key(1), NOW + HOUR + 5) == [b"a"]
    assert store.usage(b"a") == 1 and len(store) == 3


# --- a full key --------------------------------------------------------------------------


@dataclass(frozen=True)
class FullKey:
    """key(1) holds max_per_key=2 providers added at ``ages`` seconds before ``now``,
    behind four older records of other keys; then peer b"new" adds itself."""

    name: str
    ages: tuple[float, float]
    newcomer: bytes
    providers: list[bytes] | None  # key(1)'s providers after; None: refused


FULL_KEYS = [
    FullKey("a known provider refreshes itself", (10, 5), b"p0", [b"p0", b"p1"]),
    FullKey("refused while every provider is live", (10, 5), b"new", None),
    FullKey("one expired provider makes way", (HOUR, 5), b"new", [b"new", b"p1"]),
    FullKey("two expired providers make way", (HOUR + 1, HOUR), b"new", [b"new"]),
]


@pytest.mark.parametrize("case", FULL_KEYS, ids=lambda c: c.name)
def test_a_full_key_takes_a_new_provider_only_in_place_of_an_expired_one(
    case: FullKey,
) -> None:
    now = NOW + 2 * HOUR
    store = ProviderStore(validity=HOUR, max_per_key=2)
    for i in range(4):  # the oldest: collected by the add itself, before key(1)'s
        store.add(key(100 + i), b"other-%d" % i, [], now - HOUR - 10 - i)
    for i, age in enumerate(case.ages):
        store.add(key(1), b"p%d" % i, [b"/p%d" % i], now - age)
    if case.providers is None:
        with pytest.raises(StoreFull, match=r"^too many providers for this key$"):
            store.add(key(1), case.newcomer, [b"/n"], now)
        assert peers_of(store, key(1), now) == [b"p1", b"p0"]
        assert store.usage(case.newcomer) == 0 and len(store) == 2
        return
    added = store.add(key(1), case.newcomer, [], now)
    assert added.peer == case.newcomer and added.expires_at == now + HOUR
    assert peers_of(store, key(1), now) == case.providers
    assert len(store) == len(case.providers) and store.keys_count == 1
    for i in range(2):
        peer = b"p%d" % i
        assert store.usage(peer) == (1 if peer in case.providers else 0)


# --- collection and eviction ---------------------------------------------------------------


def test_every_add_collects_up_to_four_expired_records() -> None:
    store = ProviderStore(validity=HOUR)
    for i in range(10):
        store.add(key(i), b"peer-%d" % i, [b"/x"], NOW + i)
    later = NOW + HOUR + 100
    store.add(key(100), b"late", [], later)
    assert len(store) == 7 and store.keys_count == 7
    assert [store.usage(b"peer-%d" % i) for i in range(10)] == [0] * 4 + [1] * 6
    store.add(key(101), b"late", [], later)
    assert len(store) == 4 and store.keys_count == 4
    assert store.collect(later, 100) == 2 and len(store) == 2


def test_expire_removes_every_expired_record_and_only_those() -> None:
    store = ProviderStore(validity=HOUR)
    for i in range(6):
        store.add(key(i), b"p", [], NOW + i)
    assert store.expire(NOW + HOUR + 2.5) == 3
    assert len(store) == 3 and store.usage(b"p") == 3
    assert store.expire(NOW + HOUR + 2.5) == 0
    assert store.expire(NOW + 2 * HOUR) == 3 and store.keys_count == 0


def test_an_evicted_record_is_gone_from_its_key() -> None:
    store = ProviderStore(validity=HOUR, max_records=4, per_peer=3)
    for i in range(3):
        store.add(key(i), b"flooder", [b"/f"], NOW + i)
    store.add(key(0), b"honest", [b"/h"], NOW + 5)
    store.add(key(9), b"newcomer", [b"/n"], NOW + 10)
    assert peers_of(store, key(0), NOW + 10) == [b"honest"]
    assert store.get(key(1), NOW + 10)[0].addrs == (b"/f",)
    assert store.usage(b"flooder") == 2 and len(store) == 4 and store.keys_count == 4


def test_a_full_store_refuses_a_newcomer_when_no_holder_has_more_than_it_would() -> None:
    store = ProviderStore(max_records=2, per_peer=2)
    store.add(key(1), b"a", [], NOW)
    store.add(key(2), b"b", [], NOW)
    with pytest.raises(StoreFull) as refused:  # a and b hold 1 each; c would hold 1
        store.add(key(3), b"c", [], NOW)
    assert str(refused.value) == "the store is full and no peer holds more than this one"
    assert sorted(store.usage(p) for p in (b"a", b"b", b"c")) == [0, 1, 1]
    with pytest.raises(StoreFull):  # a would hold 2: nobody holds more
        store.add(key(4), b"a", [], NOW + 1)
    # A holder with more than the newcomer would hold pays with its oldest record.
    store = ProviderStore(max_records=3, per_peer=3)
    store.add(key(1), b"a", [], NOW)
    store.add(key(2), b"a", [], NOW + 1)
    store.add(key(3), b"b", [], NOW)
    store.add(key(4), b"c", [], NOW + 2)
    assert [store.usage(p) for p in (b"a", b"b", b"c")] == [1, 1, 1]
    assert store.get(key(1), NOW + 2) == [] and len(store.get(key(2), NOW + 2)) == 1


def test_the_limits_must_be_positive() -> None:
    for bad in ({"max_records": 0}, {"per_peer": 0}):
        with pytest.raises(ValueError, match=r"^capacity and per_owner must be at least 1$"):
            ProviderStore(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_age must be positive$"):
        ProviderStore(validity=0)
    tiny = ProviderStore(max_records=1, per_peer=1, validity=0.5)
    tiny.add(key(1), b"p", [], NOW)
    assert len(tiny.get(key(1), NOW + 0.4)) == 1 and tiny.get(key(1), NOW + 0.5) == []


def test_records_go_to_the_connection_given() -> None:
    conn = memory_connection()
    ProviderStore(conn).add(key(1), b"p", [b"/a"], NOW)
    assert conn.execute("SELECT p.peer FROM provider_records r JOIN provider_peers p "
                        "ON p.id = r.peer").fetchall() == [(b"p",)]
    again = ProviderStore(conn)  # counts read back from the file
    assert again.usage(b"p") == 1 and len(again) == 1 and again.keys_count == 1


def test_after_reopening_a_full_store_its_biggest_holder_still_pays() -> None:
    """The counts read back from the file rank the holders again (dhtd restarted)."""
    conn = memory_connection()
    store = ProviderStore(conn, max_records=3, per_peer=3)
    store.add(key(1), b"a", [], NOW)
    store.add(key(2), b"a", [], NOW + 1)
    store.add(key(3), b"b", [], NOW)
    again = ProviderStore(conn, max_records=3, per_peer=3)
    again.add(key(4), b"c", [], NOW + 2)
    assert again.get(key(1), NOW + 2) == []
    assert [again.usage(p) for p in (b"a", b"b", b"c")] == [1, 1, 1]


# --- collection's cost, and the file's history -----------------------------------------------


def test_collection_touches_nothing_until_a_holders_oldest_record_expires() -> None:
    """collect() runs on every add: it must cost no SQL while nothing is due, and
    then visit only the holders whose oldest record expired."""
    conn = memory_connection()
    store = ProviderStore(conn, validity=HOUR)
    for i in range(50):
        store.add(key(i), b"peer-%d" % (i % 5), [b"/x"], NOW + 10 * i)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert store.collect(NOW + HOUR - 1, 100) == 0 and statements == []
    # Only the first record (peer-0's, at NOW) has expired at NOW+HOUR+2.
    assert store.collect(NOW + HOUR + 2, 100) == 1
    assert statements and all("peer = 1" in s or "DELETE" in s for s in statements
                              if "provider_records" in s and "WHERE" in s)
    # peer-0 is due again when its next record expires (NOW+50+HOUR), peer-1 at
    # NOW+10+HOUR: nothing to do before, in this store or one reopened on the file.
    statements.clear()
    assert store.collect(NOW + HOUR + 9, 100) == 0
    assert ProviderStore(conn, validity=HOUR).collect(NOW + HOUR + 9, 100) == 0
    assert [s for s in statements if "FROM provider_records WHERE peer" in s] == []
    conn.set_trace_callback(None)
    assert [store.usage(b"peer-%d" % p) for p in range(5)] == [9, 10, 10, 10, 10]
    # A budget caps the removals: the others wait for the next call.
    assert store.collect(NOW + HOUR + 100, 3) == 3 and len(store) == 46
    assert store.expire(NOW + HOUR + 100) == 7 and len(store) == 39
    assert store.expire(NOW + 2 * HOUR) == 39 and len(store) == 0


def test_a_refresh_postpones_a_holders_collection() -> None:
    store = ProviderStore(validity=HOUR)
    store.add(key(1), b"p", [], NOW)
    store.add(key(1), b"p", [], NOW + 100)  # refreshed
    assert store.collect(NOW + HOUR + 1, 10) == 0 and len(store) == 1
    assert store.collect(NOW + HOUR + 100, 10) == 1 and len(store) == 0


def test_a_visit_that_finds_nothing_still_counts_against_the_budget() -> None:
    """A refreshed record leaves its holder's entry early; visiting it costs a visit,
    and a budget of 1 then leaves the next holder for the next call."""
    store = ProviderStore(validity=HOUR)
    store.add(key(1), b"early", [], NOW)
    store.add(key(3), b"early too", [], NOW + 1)
    store.add(key(2), b"late", [], NOW + 50)
    store.add(key(1), b"early", [], NOW + 100)  # refreshed: expires at NOW+100+HOUR
    store.add(key(3), b"early too", [], NOW + 100)
    assert store.collect(NOW + HOUR + 60, 1) == 0 and store.collect(NOW + HOUR + 60, 1) == 0
    assert len(store) == 3
    assert store.collect(NOW + HOUR + 60, 1) == 1 and store.usage(b"late") == 0
    store.add(key(2), b"late", [], NOW + 200)
    store.add(key(2), b"late", [], NOW + 300)  # early entries for two holders again
    store.add(key(1), b"early", [], NOW + 400)
    store.add(key(4), b"due", [], NOW + 250)
    # Visits in due order: "early" (refreshed: nothing to remove), "early too" (its
    # record expired: removed); a budget of 2 visits ends there, before "due".
    assert store.collect(NOW + HOUR + 260, 2) == 1 and store.usage(b"due") == 1


def test_a_holder_that_left_by_a_keys_cap_is_passed_over() -> None:
    """A holder whose last record went to make room under a full key leaves its entry
    in the schedule; when it comes due it is skipped, and the next holder is visited."""
    store = ProviderStore(validity=HOUR, max_per_key=1)
    for i in range(4):  # the four that the next add's collection takes
        store.add(key(10 + i), b"p%d" % i, [], NOW + i)
    store.add(key(1), b"gone", [], NOW + 10)
    store.add(key(2), b"next", [], NOW + 20)
    store.add(key(1), b"newcomer", [], NOW + HOUR + 30)  # key(1)'s expired record goes
    assert store.usage(b"gone") == 0 and store.usage(b"next") == 1 and len(store) == 2
    assert store.collect(NOW + HOUR + 30, 10) == 1 and store.usage(b"next") == 0


def test_a_holder_that_left_and_came_back_is_found_with_its_addresses() -> None:
    store = ProviderStore(validity=HOUR)
    store.add(key(1), b"p", [b"/old"], NOW)
    assert store.expire(NOW + HOUR) == 1 and store.usage(b"p") == 0
    store.add(key(2), b"p", [b"/old"], NOW + HOUR)
    assert store.get(key(2), NOW + HOUR) == [ProviderRecord(b"p", (b"/old",), NOW + 2 * HOUR)]


def test_a_peers_unchanged_addresses_are_not_written_again() -> None:
    conn = memory_connection()
    store = ProviderStore(conn)
    store.add(key(1), b"p", [b"/a"], NOW)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    store.add(key(2), b"p", [b"/a"], NOW + 1)
    assert not [s for s in statements if s.startswith("UPDATE provider_peers")]
    store.add(key(3), b"p", [b"/b"], NOW + 2)
    assert len([s for s in statements if s.startswith("UPDATE provider_peers")]) == 1
    assert store.get(key(1), NOW + 3)[0].addrs == (b"/b",)


def test_holders_that_come_and_go_leave_no_trace_in_memory() -> None:
    """A holder whose last record is collected is forgotten, row and all; the
    collection schedule does not grow with holders that left."""
    conn = memory_connection()
    store = ProviderStore(conn, validity=HOUR)
    for i in range(2000):  # one record each, 10 s apart: about 360 live at a time
        store.add(key(i), b"n%d" % i, [b"/n"], NOW + 10 * i)
    live = [i for i in range(2000) if store.usage(b"n%d" % i)]
    assert live == list(range(2000 - 360, 2000)) and len(store) == 360
    assert len(store._due) <= 361 and len(store._addrs_seen) <= 360  # (the bounds under test)
    assert conn.execute("SELECT count(*) FROM provider_peers").fetchone() == (360,)


def test_a_refusal_after_collecting_leaves_the_counts_equal_to_the_file() -> None:
    """An add first collects expired records, then may be refused: what it collected
    stays collected, in the file and in the counts alike (a rollback of the
    collection alone would leave the counts short of the file)."""
    import trio

    from dhtd.stores import HeldRecords, RecordsDb
    from dhtd.stores.values import ValueStore

    async def main() -> None:
        db = RecordsDb.memory()
        held = HeldRecords(db, ProviderStore(db.conn, validity=HOUR, max_per_key=1),
                           ValueStore(db.conn))
        await held.add_provider(key(1), b"gone", [], NOW)
        await held.add_provider(key(2), b"live", [], NOW + HOUR - 1)
        with pytest.raises(StoreFull, match="too many providers for this key"):
            await held.add_provider(key(2), b"late", [], NOW + HOUR + 1)
        rows = db.conn.execute("SELECT count(*) FROM provider_records").fetchone()[0]
        assert held.provider_count() == rows == 1
        assert held.providers.usage(b"gone") == 0 and held.providers.usage(b"live") == 1

    trio.run(main)


def test_records_of_the_first_schema_are_carried_over(tmp_path: Path) -> None:
    """A records.db of schema 1 (peers by ID, addresses apart) opens as schema 2 with
    every record, its received time and its peer's addresses."""
    from dhtd.state.db import migrate, pack_addrs
    from dhtd.stores import RecordsDb
    from dhtd.stores.db import MIGRATIONS

    path = tmp_path / "records.db"
    old = sqlite3.connect(path, isolation_level=None)
    migrate(old, path, MIGRATIONS[:1])
    old.executemany("INSERT INTO providers VALUES (?, ?, ?)",
                    [(key(1), b"a", NOW), (key(2), b"a", NOW + 1), (key(1), b"b", NOW + 2)])
    old.execute("INSERT INTO provider_addrs VALUES (?, ?)", (b"a", pack_addrs([b"/a1", b"/a2"])))
    old.close()
    db = RecordsDb.open(tmp_path)
    assert db.conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),) == (2,)
    store = ProviderStore(db.conn)
    assert store.get(key(1), NOW + 3) == [ProviderRecord(b"b", (), NOW + 2 + DAY2),
                                          ProviderRecord(b"a", (b"/a1", b"/a2"), NOW + DAY2)]
    assert [store.usage(p) for p in (b"a", b"b")] == [2, 1] and len(store) == 3
    tables = {name for (name,) in db.conn.execute("SELECT name FROM sqlite_master")}
    assert not tables & {"providers", "provider_addrs"}
    db.close()
