"""records.db: the records this node holds for other peers, in their own SQLite file.

Why a file of their own, used from the trio thread, when this node's
commitments (state.db, :mod:`dhtd.state.db`) go through a writer thread:

- **Cost per message.** Every ADD_PROVIDER, GET_PROVIDERS, PUT_VALUE and
  GET_VALUE touches these tables. A hop to a thread and back costs about
  130 µs of CPU here, three times the SQL itself (measured: 47 µs per provider
  add). So the stores run their SQL inline: a read sees every write before it,
  committed or not, with no overlay to keep.
- **The loop never waits on the disk.** The file runs with synchronous=NORMAL
  and no automatic checkpoint: a COMMIT only appends to the write-ahead log
  (no fsync). Checkpoints, which fsync, run on a worker thread through their
  own connection. Reads are indexed lookups, mostly from the page cache.
- **Group commit.** Writes go into one open transaction, committed
  COMMIT_DELAY after it opened (an idle store never wakes). These records
  are not promises of this node: a peer re-sends them (reprovide, republish),
  so a crash may lose the last COMMIT_DELAY of them, never the file.
- **Memory is bounded** by the stores' in-memory counts (per owner) and
  SQLite's page cache (CACHE_KIB), whatever the number of records.

The data dir's lock (dhtd.lock, taken by :class:`dhtd.state.db.Database`)
covers this file too. A corrupt file is refused at start like state.db, or
moved aside with ``--db-recover``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from dhtd.state.db import migrate, open_checked, storage_error

log = logging.getLogger("dhtd.state")

RECORDS_FILE = "records.db"

# The schema each version adds; user_version = len(MIGRATIONS) once all ran.
MIGRATIONS: tuple[str, ...] = (
    # 1: provider and value records held for other peers.
    """
    CREATE TABLE providers (
        key BLOB NOT NULL,              -- multihash the record is for
        peer BLOB NOT NULL,             -- the provider, who sent it and pays for it
        received REAL NOT NULL,         -- epoch seconds; the record lasts 48 h from here
        PRIMARY KEY (key, peer)
    ) WITHOUT ROWID;
    CREATE INDEX providers_by_received ON providers (received);
    CREATE INDEX providers_by_peer ON providers (peer, received);
    CREATE TABLE provider_addrs (
        peer BLOB PRIMARY KEY,
        addrs BLOB NOT NULL             -- binary multiaddrs, varint-length-prefixed
    ) WITHOUT ROWID;
    -- a rowid table, since a value may be tens of KiB
    CREATE TABLE records (
        key BLOB NOT NULL UNIQUE,
        value BLOB NOT NULL,
        owner BLOB,                     -- the peer that sent it; NULL: this node's own Put
        received REAL NOT NULL,         -- epoch seconds; kept 48 h from here
        cost INTEGER NOT NULL           -- bytes charged to the owner
    );
    CREATE INDEX records_by_received ON records (received);
    CREATE INDEX records_by_owner ON records (owner, received);
    """,
    # 2: provider records name their peer by row number (half the bytes per record
    # and index entry, so ingest at 1,000,000 records dirties fewer pages), and are
    # collected per holder through (peer, received): no index by time alone.
    """
    CREATE TABLE provider_peers (
        id INTEGER PRIMARY KEY,
        peer BLOB NOT NULL UNIQUE,      -- the provider's peer ID
        addrs BLOB NOT NULL DEFAULT x'' -- binary multiaddrs, varint-length-prefixed
    );
    INSERT INTO provider_peers (peer, addrs)
        SELECT h.peer, coalesce(a.addrs, x'')
        FROM (SELECT DISTINCT peer FROM providers) h
        LEFT JOIN provider_addrs a ON a.peer = h.peer;
    CREATE TABLE provider_records (
        key BLOB NOT NULL,              -- multihash the record is for
        peer INTEGER NOT NULL,          -- provider_peers.id: who sent it and pays for it
        received REAL NOT NULL,         -- epoch seconds; the record lasts 48 h from here
        PRIMARY KEY (key, peer)
    ) WITHOUT ROWID;
    INSERT INTO provider_records (key, peer, received)
        SELECT r.key, p.id, r.received FROM providers r JOIN provider_peers p ON p.peer = r.peer;
    CREATE INDEX provider_records_by_peer ON provider_records (peer, received);
    DROP TABLE providers;
    DROP TABLE provider_addrs;
    """,
)

# Ours: how long writes wait in the open transaction before they are committed
# (appended to the write-ahead log, no fsync); what a crash may lose of them.
COMMIT_DELAY = 0.05

# Ours: how often the write-ahead log is checkpointed into the file (on a worker
# thread; this is where the fsyncs happen), and the log's size that asks for it
# sooner (pages of 4 KiB: 16 MiB).
CHECKPOINT_INTERVAL = 10.0
CHECKPOINT_PAGES = 4096

# Ours: after a failed write undid the open transaction, writes are refused at once
# (with the same error) for WRITE_BACKOFF, doubling up to WRITE_BACKOFF_MAX while
# they keep failing. Each such failure costs a re-read of the stores' counts (about
# 150 ms at 1,000,000 records): a flood of ADD_PROVIDERs on a full disk must not
# be able to make the node do that every COMMIT_DELAY.
WRITE_BACKOFF = 1.0
WRITE_BACKOFF_MAX = 30.0

# Ours: SQLite's page cache for this file, the bounded in-memory cache of records.
CACHE_KIB = 32 * 1024

T = TypeVar("T")


class RecordsDb:
    """records.db, used inline from one thread (the trio thread). Open with
    :meth:`open` or :meth:`memory`; run :meth:`run` in the background while it
    is used; then :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self.conn = conn
        self.path = path  # None: in memory
        self.broken: str | None = None
        self._refusal: Exception | None = None  # raised by writes until _refuse_until
        self._refuse_until = 0.0  # trio time
        self._backoff = WRITE_BACKOFF
        self._changes = conn.total_changes  # as of the last commit or failure
        # Called after SQLite undid writes that a store counted (a failed commit),
        # so that the stores read their counts again.
        self.on_rollback: list[Callable[[sqlite3.Connection], None]] = []
        self._written = trio.Event()  # set when a transaction opens
        self._checkpointed_at = 0.0  # trio time
        self._closed = False

    @classmethod
    def open(cls, data_dir: Path, recover: bool = False) -> RecordsDb:
        """records.db in ``data_dir`` (whose lock the caller holds). Raises
        CorruptDatabase unless ``recover``, OSError or sqlite3.Error."""
        path = data_dir / RECORDS_FILE
        conn = open_checked(path, MIGRATIONS, "NORMAL", recover)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return cls(conn, path)

    @classmethod
    def memory(cls) -> RecordsDb:
        """An in-memory database: keeps nothing (dev peers, tests)."""
        return cls(memory_connection(), None)

    async def call(self, fn: Callable[[sqlite3.Connection], T], atomic: bool = True,
                   write: bool = True) -> T:
        """Runs ``fn`` on the connection, in the open transaction.

        With ``atomic``, ``fn`` runs in a savepoint: an exception from it undoes
        what it wrote. Without, ``fn`` must itself leave its tables and its state
        in memory in agreement at every statement (it saves two statements a
        call). An exception is raised as it came, an SQLite error as StorageFull
        or StorageUnavailable. A ``write`` is refused at once with the last such
        error while the file backs off after a failure (WRITE_BACKOFF)."""
        await trio.lowlevel.checkpoint()
        if write and self._refusal is not None and trio.current_time() < self._refuse_until:
            raise type(self._refusal)(str(self._refusal))
        conn = self.conn
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN")
                self._written.set()
            if atomic:
                conn.execute("SAVEPOINT job")
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
        try:
            result = fn(conn)
        except Exception as exc:
            if not conn.in_transaction:
                # SQLite ended the whole transaction (a full disk, an I/O error).
                raise self._failed(exc) from None
            if atomic:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            if isinstance(exc, sqlite3.Error):
                raise self._failed(exc, rolled_back=False) from None
            raise
        if atomic:
            conn.execute("RELEASE job")
        return result

    def commit(self) -> None:
        """Commits the open transaction, if any. A failure is logged and kept in
        ``broken``; what it undid is read again by the stores (on_rollback)."""
        if not self.conn.in_transaction:
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed(exc)
            return
        self.broken = None
        if self.conn.total_changes != self._changes:  # a write went through: no backoff
            self._refusal, self._backoff = None, WRITE_BACKOFF
        self._changes = self.conn.total_changes

    def _failed(self, exc: Exception, rolled_back: bool = True) -> Exception:
        """The error to raise for ``exc``; if SQLite undid the transaction (or we
        do now), the stores' counts are read again."""
        error = storage_error(exc, self.path.parent if self.path else Path(":memory:"))
        if self.broken != str(error):
            log.error("records.db write failed", extra={"error": str(error)})
        self.broken = str(error)
        if rolled_back:
            with contextlib.suppress(RuntimeError):  # (outside trio: closing)
                self._refuse_until = trio.current_time() + self._backoff
                self._refusal = error
                self._backoff = min(2 * self._backoff, WRITE_BACKOFF_MAX)
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            self._changes = self.conn.total_changes
            for hook in self.on_rollback:
                hook(self.conn)
        return error

    async def run(self) -> None:
        """Commits COMMIT_DELAY after a transaction opens, and checkpoints on a worker
        thread now and then. An idle store never wakes."""
        while True:
            await self._written.wait()
            await trio.sleep(COMMIT_DELAY)
            self._written = trio.Event()
            self.commit()
            now = trio.current_time()
            if self.path is not None and (now - self._checkpointed_at >= CHECKPOINT_INTERVAL
                                          or self._wal_pages() >= CHECKPOINT_PAGES):
                self._checkpointed_at = now
                await self.checkpoint()

    async def checkpoint(self) -> bool:
        """Copies the committed log into the file on a worker thread (PASSIVE: never
        waits for the writer or a reader). True when the whole log was copied; False
        when another checkpoint or a reader held part of it back, or it failed (logged):
        the rest waits for the next one."""
        path = self.path
        if path is None:
            return True
        # (trio 0.35's decorated signature hides its keyword arguments from mypy)
        return await trio.to_thread.run_sync(  # type: ignore[call-arg]
            lambda: _checkpoint(path, "PASSIVE"), abandon_on_cancel=True)

    def _wal_pages(self) -> int:
        assert self.path is not None
        wal = Path(str(self.path) + "-wal")
        try:
            return wal.stat().st_size // 4096
        except OSError:
            return 0

    def close(self) -> None:
        """Commits, checkpoints the whole log into the file, and closes (once)."""
        if self._closed:
            return
        self._closed = True
        self.commit()
        if self.path is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()


def _checkpoint(path: Path, mode: str) -> bool:
    """Copies the write-ahead log into the file (and fsyncs it), from its own
    connection, beside the connection that writes. True when all of it was copied."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # One row: (busy, frames in the log, frames copied into the file).
        busy, logged, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    except sqlite3.Error as exc:
        log.warning("records.db checkpoint failed", extra={"error": str(exc)})
        return False
    finally:
        conn.close()
    return bool(busy == 0 and logged == copied)


def memory_connection() -> sqlite3.Connection:
    """An in-memory records database with the current schema (autocommit)."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    migrate(conn, Path(":memory:"), MIGRATIONS)
    return conn
