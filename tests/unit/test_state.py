"""Unit tests for dhtd.state: state.db, its lock, schema, writer, and failures."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from dhtd.ids import kad_key
from dhtd.lookup import PeerRecord
from dhtd.provider import ProvideSet
from dhtd.state import (
    CorruptDatabase,
    Database,
    DataDirLocked,
    DiskState,
    Loaded,
    NodeState,
    StorageFull,
    StorageUnavailable,
)
from dhtd.state.db import MIGRATIONS
from dhtd.stores import HeldRecords, RecordsDb

KEY_A, KEY_B = b"\x12\x20" + b"\x01" * 32, b"\x12\x20" + b"\x02" * 32


def test_a_new_data_dir_gets_a_versioned_database(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "d")
    try:
        assert (tmp_path / "d" / "state.db").is_file()
        assert db.read("PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert db.read("PRAGMA journal_mode") == [("wal",)]
    finally:
        db.close()


def test_a_second_daemon_on_the_same_dir_fails_at_once_with_one_line(tmp_path: Path) -> None:
    db = Database.open(tmp_path)
    try:
        with pytest.raises(DataDirLocked, match=r"another dhtd \(pid \d+\) is using the data dir"):
            Database.open(tmp_path)
        # Another process too (flock is per open file, so this is the real case).
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; "
                "from dhtd.state import Database; Database.open(Path(sys.argv[1]))",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert other.returncode != 0
        assert "another dhtd" in other.stderr
    finally:
        db.close()
    Database.open(tmp_path).close()  # released on close


def test_commitments_survive_reopening(tmp_path: Path) -> None:
    async def main() -> None:
        db = Database.open(tmp_path)
        state = DiskState(db)
        keys = state.provide_set(Loaded())
        await keys.add([KEY_A, KEY_B], 100.0)
        keys.announced([KEY_A], 150.0)
        await state.add_published(b"/demo/k", b"v1", 100.0)
        await state.add_published(b"/demo/k", b"v2", 110.0)  # a new value replaces the old
        state.republished(b"/demo/k", 160.0)
        state.save_peers(
            [PeerRecord(KEY_A, (b"\x04\x7f\x00\x00\x01\x06\x10\x00", b"x")), PeerRecord(KEY_B, ())],
            170.0,
        )
        assert await keys.remove([KEY_B, KEY_B]) == 1
        db.close()

    trio.run(main)
    db = Database.open(tmp_path)
    try:
        state = DiskState(db)
        loaded = state.load()
        provided = dict(state.provide_set(loaded))
    finally:
        db.close()
    assert provided == {KEY_A: 150.0}
    assert loaded.published == {b"/demo/k": (b"v2", 160.0)}
    # Peers without addresses are useless to a restarted node, so not saved.
    assert loaded.peers == [PeerRecord(KEY_A, (b"\x04\x7f\x00\x00\x01\x06\x10\x00", b"x"))]


def test_a_corrupt_file_is_refused_or_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptDatabase, match="is not a readable SQLite database"):
        Database.open(tmp_path)
    assert (tmp_path / "state.db").read_bytes().startswith(b"this is not")  # untouched
    db = Database.open(tmp_path, recover=True)
    db.close()
    aside = list(tmp_path.glob("state.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


def test_a_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    Database.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(CorruptDatabase, match="newer than this dhtd knows"):
        Database.open(tmp_path)


def test_a_full_disk_fails_writes_with_a_clear_error_and_reads_go_on(tmp_path: Path) -> None:
    async def main() -> None:
        db = Database.open(tmp_path)
        keys = DiskState(db).provide_set(Loaded())
        await keys.add([KEY_A], 1.0)
        pages = db.read("PRAGMA page_count")[0][0]
        db._writer.execute(f"PRAGMA max_page_count = {pages}")  # as if the disk were full
        with pytest.raises(StorageFull, match="is full"):
            await keys.add([b"\x12\x20" + bytes([i]) * 32 for i in range(200)], 2.0)
        assert db.broken is not None
        # Reads keep working, nothing half-written, and the size counts what is there.
        assert dict(keys) == {KEY_A: 0.0} and len(keys) == 1
        db._writer.execute("PRAGMA max_page_count = 1000000")
        assert await keys.add([KEY_B], 3.0) == [KEY_B]  # writes resume once there is room
        assert db.broken is None
        db.close()

    trio.run(main)


def test_an_unwritable_database_fails_writes_as_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        db = Database.open(tmp_path)
        db._writer.execute("PRAGMA query_only = ON")  # as if the dir had turned read-only
        with pytest.raises(StorageUnavailable, match="cannot be written"):
            await DiskState(db).provide_set(Loaded()).add([KEY_A], 1.0)
        db.close()

    trio.run(main)


def test_many_concurrent_writers_are_all_committed(tmp_path: Path) -> None:
    async def main() -> None:
        db = Database.open(tmp_path)
        keys = DiskState(db).provide_set(Loaded())
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(keys.add, [bytes([i % 256, i // 256]) * 17], 1.0)
        assert db.read("SELECT count(*) FROM provided") == [(300,)]
        db.close()

    trio.run(main)


def test_the_operator_command_shows_stats_and_vacuums(tmp_path: Path) -> None:
    async def fill() -> None:
        db = Database.open(tmp_path)
        state = DiskState(db)
        keys = state.provide_set(Loaded())
        await keys.add([bytes([i]) * 34 for i in range(200)], 1.0)
        keys.announced([bytes([0]) * 34], 2.0)
        await state.add_published(b"/demo/k", b"v" * 1000, 1.0)
        await keys.remove([bytes([i]) * 34 for i in range(100, 200)])
        db.close()

    trio.run(fill)
    run = [sys.executable, "-m", "dhtd.state"]
    shown = subprocess.run([*run, "stats", str(tmp_path)], capture_output=True, text=True,
                           check=True, timeout=60)
    stats = json.loads(shown.stdout)
    assert (stats["provided"], stats["provided_never_announced"], stats["published"],
            stats["saved_peers"], stats["provider_records"], stats["schema_version"]
            ) == (100, 99, 1, 0, 0, len(MIGRATIONS))
    vacuumed = subprocess.run([*run, "vacuum", str(tmp_path)], capture_output=True, text=True,
                              check=True, timeout=60)
    sizes = json.loads(vacuumed.stdout)
    assert sizes["bytes_after"] <= sizes["bytes_before"]
    db = Database.open(tmp_path)  # still whole
    try:
        assert DiskState(db).load().published == {b"/demo/k": (b"v" * 1000, 0.0)}
        # While a dhtd holds the dir, the command refuses with one line.
        busy = subprocess.run([*run, "stats", str(tmp_path)], capture_output=True, text=True,
                              check=False, timeout=60)
        assert busy.returncode == 1
        assert busy.stderr.startswith("dhtd.state: another dhtd")
    finally:
        db.close()


# --- the provide set (dhtd.provider.keyset), in memory and in state.db ---------------------

PROVIDE_KEYS = [b"\x12\x20" + bytes([i]) * 32 for i in range(40)]


@pytest.mark.parametrize("on_disk", [False, True])
def test_the_provide_set_lists_due_keys_in_keyspace_order_a_chunk_at_a_time(
    tmp_path: Path, on_disk: bool
) -> None:
    """Both sets answer alike: due keys come in Kademlia-key order after a cursor, only
    those last announced at or before the time; sizes, pages and the oldest time agree."""

    async def main() -> None:
        db = Database.open(tmp_path) if on_disk else None
        keys = DiskState(db).provide_set(Loaded()) if db else NodeState().provide_set(Loaded())
        assert keys.oldest() is None and len(keys) == 0
        assert await keys.add(PROVIDE_KEYS + PROVIDE_KEYS[:3], 5.0) == PROVIDE_KEYS
        assert await keys.add(PROVIDE_KEYS[:2], 6.0) == []
        keys.announced(PROVIDE_KEYS[:10], 100.0)
        keys.announced(PROVIDE_KEYS[10:20], 200.0)
        keys.announced([b"\x12\x20" + b"\xff" * 32], 300.0)  # not in the set: ignored
        if db:
            await db.call(lambda conn: None)  # (bookkeeping is queued: let it commit)
        assert len(keys) == 40 and keys.oldest() == 0.0
        assert await keys.count_due(0.0) == 20 and await keys.count_due(100.0) == 30
        by_kad = sorted((kad_key(k), k) for k in PROVIDE_KEYS[:10] + PROVIDE_KEYS[20:])
        first = await keys.due(100.0, b"", 7)
        assert first == by_kad[:7]
        assert await keys.due(100.0, first[-1][0], 100) == by_kad[7:]
        assert await keys.due(100.0, by_kad[-1][0], 100) == []
        assert keys.page(b"", 3) == [(k, keys[k]) for k in sorted(PROVIDE_KEYS)[:3]]
        assert keys.page(sorted(PROVIDE_KEYS)[-2], 3) == [(sorted(PROVIDE_KEYS)[-1], 0.0)]
        assert PROVIDE_KEYS[0] in keys and b"nope" not in keys
        assert await keys.remove([*PROVIDE_KEYS[20:], b"nope"]) == 20
        assert len(keys) == 20 and keys.oldest() == 100.0
        with pytest.raises(KeyError) as missing:
            keys[PROVIDE_KEYS[20]]
        assert missing.value.args == (PROVIDE_KEYS[20],)
        # A key whose multihash starts above any sentinel byte but 0xff (blake2b-256:
        # varint 0xb220) is not listed again after itself.
        blake = b"\xa0\xe4\x02\x20" + bytes(32)
        assert await keys.add([blake], 7.0) == [blake]
        assert await keys.due(0.0, b"", 100) == [(kad_key(blake), blake)]  # the only one due
        assert await keys.due(0.0, kad_key(blake), 100) == []
        assert await keys.remove([blake, PROVIDE_KEYS[0]]) == 2 and len(keys) == 19
        assert await keys.due(150.0, b"", 100) == sorted(
            (kad_key(k), k) for k in PROVIDE_KEYS[1:10])
        if db:
            before = dict(keys)
            db.close()
            db = Database.open(tmp_path)
            reopened = DiskState(db).provide_set(Loaded())
            assert len(reopened) == 19 and dict(reopened) == before
            db.close()

    trio.run(main)


def test_a_schema_1_file_gets_the_keyspace_position_of_every_provided_key(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    conn.executemany("INSERT INTO provided (key, added, announced) VALUES (?, 1, ?)",
                     [(k, float(i)) for i, k in enumerate(PROVIDE_KEYS)])
    conn.commit()
    conn.close()

    async def main() -> None:
        db = Database.open(tmp_path)
        keys = DiskState(db).provide_set(Loaded())
        assert len(keys) == 40 and keys[PROVIDE_KEYS[7]] == 7.0
        assert await keys.due(1e9, b"", 100) == sorted((kad_key(k), k) for k in PROVIDE_KEYS)
        db.close()

    trio.run(main)


def test_the_in_memory_set_tells_its_state_of_every_change() -> None:
    told: list[tuple[str, object]] = []

    class Told(NodeState):
        async def add_provided(self, keys: object, now: float) -> None:
            told.append(("add", list(keys)))  # type: ignore[call-overload]

        def announced(self, keys: object, now: float) -> None:
            told.append(("announced", list(keys)))  # type: ignore[call-overload]

        async def remove_provided(self, keys: object) -> None:
            told.append(("remove", list(keys)))  # type: ignore[call-overload]

    async def main() -> None:
        keys: ProvideSet = Told().provide_set(Loaded(provided={KEY_A: 3.0}))
        await keys.add([KEY_A, KEY_B], 4.0)
        keys.announced([KEY_B, b"other"], 5.0)
        await keys.remove([KEY_A, b"other"])
        await keys.remove([b"other"])

    trio.run(main)
    assert told == [("add", [KEY_B]), ("announced", [KEY_B]), ("remove", [KEY_A])]


# --- jobs on the writer thread, and the records held for others ------------------------------


def test_held_records_survive_reopening_with_their_accounting(tmp_path: Path) -> None:
    from dhtd.handlers import record_selector
    from tests.unit.test_handlers import World

    peer, other = b"\x00\x24" + b"\x01" * 36, b"\x00\x24" + b"\x02" * 36
    select = record_selector(World().h.validators)

    async def fill() -> None:
        db = RecordsDb.open(tmp_path)
        held = HeldRecords.open(db)
        await held.add_provider(KEY_A, peer, [b"\x04\x7f\x00\x00\x01\x06\x10\x00"], 1000.0)
        await held.add_provider(KEY_B, peer, [], 1001.0)
        await held.put_value(b"/app/k", b"v1", 1002.0, other, select)
        db.close()

    async def reopen() -> None:
        db = RecordsDb.open(tmp_path)
        held = HeldRecords.open(db)
        assert held.provider_count() == 2 and held.value_count() == 1
        assert held.providers.usage(peer) == 2
        assert held.values.usage(other) == len(b"/app/k") + len(b"v1") + 256
        [record] = await held.providers_of(KEY_A, 1010.0)
        assert (record.peer, record.addrs) == (peer, (b"\x04\x7f\x00\x00\x01\x06\x10\x00",))
        assert record.expires_at == 1000.0 + 48 * 3600
        stored = await held.value_of(b"/app/k", 1010.0)
        assert stored is not None and (stored.value, stored.received_at) == (b"v1", 1002.0)
        # Past 48 h: neither served nor kept.
        assert await held.providers_of(KEY_A, 1000.0 + 48 * 3600) == []
        assert await held.collect_providers(1001.0 + 48 * 3600, 10) == 2
        assert await held.value_of(b"/app/k", 1002.0 + 48 * 3600) is None
        assert held.provider_count() == 0 and held.value_count() == 0
        db.close()
        db = RecordsDb.open(tmp_path)
        for table in ("provider_records", "records", "provider_peers"):
            assert db.conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        db.close()

    trio.run(fill)
    trio.run(reopen)


def test_a_commit_lost_to_a_full_disk_is_forgotten_by_the_counts_too(tmp_path: Path) -> None:
    """...and writes are then refused at once for 1 s, 2 s, 4 s ... (up to 30 s) while
    they keep failing, so that a flood on a full disk cannot make the stores re-read
    their counts every 50 ms; reads go on meanwhile."""
    import trio.testing

    peer = b"\x00\x24" + b"\x01" * 36

    async def main() -> None:
        db = RecordsDb.open(tmp_path)
        held = HeldRecords.open(db)
        await held.add_provider(KEY_A, peer, [], 1000.0)
        db.commit()
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages}")  # as if the disk were full
        with pytest.raises(StorageFull, match="is full"):
            for i in range(5000):  # until the file cannot grow
                await held.add_provider(b"\x12\x20" + i.to_bytes(32, "big"), peer,
                                        [b"\x04" + bytes(200)], 1000.0)
        db.commit()
        # What the failed transaction had added is gone from the file and the counts.
        committed = db.conn.execute("SELECT count(*) FROM provider_records").fetchone()[0]
        assert held.providers.usage(peer) == held.provider_count() == committed == 1
        assert db.broken is not None
        db.conn.execute("PRAGMA max_page_count = 1000000")  # room again
        statements: list[str] = []
        db.conn.set_trace_callback(statements.append)
        for _ in range(100):  # refused at once, not even tried, for the first second
            with pytest.raises(StorageFull, match="is full"):
                await held.add_provider(KEY_B, peer, [], 1001.0)
        assert statements == []
        assert [r.peer for r in await held.providers_of(KEY_A, 1001.0)] == [peer]
        await trio.sleep(0.999)
        with pytest.raises(StorageFull):
            await held.add_provider(KEY_B, peer, [], 1001.0)
        await trio.sleep(0.001)
        await held.add_provider(KEY_B, peer, [], 1001.0)  # writes resume once there is room
        db.commit()
        assert held.providers.usage(peer) == 2 and db.broken is None
        # A failure again backs off 1 s: the write that went through reset the backoff.
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages}")
        for backoff in (1.0, 2.0, 4.0):
            with pytest.raises(StorageFull):
                for i in range(5000):
                    await held.add_provider(b"\x13\x20" + i.to_bytes(32, "big"), peer,
                                            [b"\x04" + bytes(200)], 1002.0)
            await trio.sleep(backoff - 0.001)
            with pytest.raises(StorageFull):
                await held.add_provider(KEY_B, peer, [], 1003.0)
            await trio.sleep(0.001)
        db.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_corrupt_records_file_is_refused_or_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "records.db").write_bytes(b"not a database" * 100)
    with pytest.raises(CorruptDatabase, match=r"records\.db"):
        RecordsDb.open(tmp_path)
    db = RecordsDb.open(tmp_path, recover=True)
    assert db.conn.execute("SELECT count(*) FROM provider_records").fetchone() == (0,)
    db.close()
    moved = [p.name.split("-")[0] for p in tmp_path.glob("records.db.corrupt-*")]
    assert moved == ["records.db.corrupt"]


def test_records_are_committed_in_the_background_and_checkpointed_off_the_loop(
        tmp_path: Path) -> None:
    async def main() -> None:
        db = RecordsDb.open(tmp_path)
        held = HeldRecords.open(db)
        reader = sqlite3.connect(tmp_path / "records.db")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(held.run)
            await held.add_provider(KEY_A, b"\x00\x24" + b"\x01" * 36, [], 1000.0)
            assert reader.execute("SELECT count(*) FROM provider_records").fetchone() == (0,)
            with trio.fail_after(5):  # committed within COMMIT_DELAY (50 ms)
                while reader.execute("SELECT count(*) FROM provider_records").fetchone() != (1,):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            reader.close()
            # The store's own loop may be checkpointing too (its first commit starts
            # one); a PASSIVE checkpoint beside it copies nothing, so retry until one
            # reports the whole log copied.
            with trio.fail_after(5):
                while not await db.checkpoint():  # noqa: ASYNC110
                    await trio.sleep(0.01)
            # The log was copied into the file: a copy of the file alone holds the record.
            copy = tmp_path / "copy.db"
            copy.write_bytes((tmp_path / "records.db").read_bytes())
            copied = sqlite3.connect(copy)
            assert copied.execute("SELECT count(*) FROM provider_records").fetchone() == (1,)
            copied.close()
            nursery.cancel_scope.cancel()
        db.close()

    trio.run(main)


def test_records_commit_once_after_a_write_and_an_idle_store_never_wakes() -> None:
    import trio.testing

    db = RecordsDb.memory()
    commits: list[float] = []
    real_commit = db.commit

    def commit() -> None:
        commits.append(trio.current_time())
        real_commit()

    db.commit = commit  # type: ignore[method-assign]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.run)
            await trio.sleep(100)
            assert commits == []  # idle: no wake-ups at all
            for _ in range(3):  # three writes, one transaction, one commit
                await db.call(lambda c: c.execute(
                    "INSERT OR REPLACE INTO provider_peers (id, peer) VALUES (1, x'01')"))
            await trio.sleep(1)
            assert commits == [pytest.approx(100.05)]
            assert not db.conn.in_transaction
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
