"""The SQLite file behind this node's durable state: locking, schema, one writer.

- **One database file**, ``state.db`` in the data dir, in WAL mode, from Python's
  standard library: nothing to install or run beside dhtd.
- **One daemon per data dir.** ``dhtd.lock`` is held with ``flock`` for the life
  of the process; a second dhtd on the same dir fails at once with one line.
  The kernel drops the lock when the process dies, even by kill -9.
- **A schema version** in ``PRAGMA user_version``. Each release migrates older
  files forward (:data:`MIGRATIONS`) and refuses a file from a newer release.
- **One writer thread** owns the one writing connection. Jobs are queued and run
  in order, in batches of one transaction each (synchronous=FULL: a committed
  batch survives power loss too), so the trio loop never blocks on the disk.
  :meth:`Database.write` returns once its batch is committed: "acknowledged"
  can mean "durable". Bookkeeping queued with :meth:`Database.write_soon`
  waits up to COMMIT_DELAY for company, so a stream of it costs few fsyncs.
  (Records held for other peers are in their own file: :mod:`dhtd.stores.db`.)
- **Reads** of this node's commitments are small indexed queries, run on the
  caller's thread on their own connection (WAL lets them run beside the writer).
- **Failures.** A full disk is :class:`StorageFull` (RESOURCE_EXHAUSTED), any
  other write failure (read-only dir, I/O error) :class:`StorageUnavailable`
  (UNAVAILABLE); both name the reason, and reads keep working. A file that fails
  its integrity check at start is :class:`CorruptDatabase`: dhtd refuses to
  start, or with ``--db-recover`` moves the file aside and starts empty. Nothing
  is dropped silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import trio

from dhtd.errors import ResourceExhausted, Unavailable
from dhtd.ids import decode_uvarint, encode_uvarint

log = logging.getLogger("dhtd.state")

DB_FILE = "state.db"
LOCK_FILE = "dhtd.lock"

# The schema each version adds; user_version = len(MIGRATIONS) once all ran.
MIGRATIONS: tuple[str, ...] = (
    # 1: what this node promised to keep announcing, and whom it knew.
    """
    CREATE TABLE provided (
        key BLOB PRIMARY KEY,           -- multihash of the CID
        added REAL NOT NULL,            -- epoch seconds of the first Provide
        announced REAL NOT NULL         -- last announcement that reached a peer; 0: none yet
    ) WITHOUT ROWID;
    CREATE TABLE published (
        key BLOB PRIMARY KEY,           -- record key, e.g. /ipns/<peer id>
        value BLOB NOT NULL,
        added REAL NOT NULL,
        put_at REAL NOT NULL            -- last Put that reached a peer; 0: none yet
    ) WITHOUT ROWID;
    CREATE TABLE peers (
        id BLOB PRIMARY KEY,            -- routing-table peer
        addrs BLOB NOT NULL,            -- its binary multiaddrs, varint-length-prefixed
        seen REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: the provide set by keyspace position (the reprovide cycle sweeps it region
    # by region: dhtd.provider) and by when each key last reached a peer.
    """
    ALTER TABLE provided ADD COLUMN kad BLOB NOT NULL DEFAULT x'';
    UPDATE provided SET kad = dhtd_sha256(key);
    CREATE INDEX provided_by_kad ON provided (kad);
    CREATE INDEX provided_by_announced ON provided (announced);
    """,
)

# Jobs committed in one transaction at most (ours: a Provide of 1,000 CIDs is
# one job; a batch of many small writes costs one fsync).
MAX_BATCH = 2048

# Ours: how long an open transaction of jobs nobody waits on (records held for
# other peers, bookkeeping) waits for more before it commits. A stream of
# ADD_PROVIDERs then costs one fsync per COMMIT_DELAY, not one per message; a
# crash loses at most this much of them. A durable write commits at once.
COMMIT_DELAY = 0.05

# How long the writer thread gets to commit what is queued when dhtd stops.
CLOSE_TIMEOUT = 10.0

Statement = tuple[str, Sequence[Any]]
T = TypeVar("T")


class StorageFull(ResourceExhausted):
    """The disk under --data-dir is full: nothing new can be committed."""


class StorageUnavailable(Unavailable):
    """The data dir cannot be written (read-only, I/O error)."""


class CorruptDatabase(Exception):
    """state.db failed its integrity check at start."""


class DataDirLocked(Exception):
    """Another dhtd holds the data dir."""


@dataclass
class _Job:
    """``run`` on the writer's connection; ``done`` gets its result or error, after
    the commit if ``durable``, else at once."""

    run: Callable[[sqlite3.Connection], Any]
    done: Callable[[Any, BaseException | None], None]
    durable: bool


class Database:
    """state.db in ``data_dir``: use :meth:`open`, then :meth:`close`."""

    def __init__(self, data_dir: Path, lock_fd: int, reader: sqlite3.Connection,
                 writer: sqlite3.Connection) -> None:
        self.data_dir = data_dir
        self.path = data_dir / DB_FILE
        self._lock_fd = lock_fd
        self._reader = reader
        self._writer = writer
        # Long reads (a sweep of the provide set) run on a worker thread, one at a
        # time, on a connection of their own.
        self._scanner = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                        check_same_thread=False)
        self._scanning = trio.CapacityLimiter(1)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="dhtd-db-writer",
                                        daemon=True)
        self._thread.start()
        self.broken: str | None = None  # the last write failure, until a write succeeds

    # -- opening and closing --------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path, recover: bool = False) -> Database:
        """Locks ``data_dir`` and opens (or creates) state.db in it.

        Raises DataDirLocked, CorruptDatabase (unless ``recover``: then the bad file
        is renamed to state.db.corrupt-<time> and an empty one is created), or
        OSError/sqlite3.Error for a dir that cannot be used at all."""
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(data_dir)
        try:
            path = data_dir / DB_FILE
            writer = open_checked(path, MIGRATIONS, "FULL", recover)
            reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            return cls(data_dir, lock_fd, reader, writer)
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        """Commits what is queued (bounded by CLOSE_TIMEOUT), closes, unlocks."""
        self._queue.put(None)
        self._thread.join(CLOSE_TIMEOUT)
        self._reader.close()
        self._scanner.close()
        if not self._thread.is_alive():
            self._writer.close()
        os.close(self._lock_fd)

    # -- writing ----------------------------------------------------------------

    async def write(self, statements: Sequence[Statement]) -> None:
        """Commits ``statements`` in one transaction; returns once they are durable.

        Raises StorageFull or StorageUnavailable. Cancelling the wait does not
        cancel the write."""
        await self._submit(_executor(statements), durable=True)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``fn`` on the writer's connection, in a transaction; returns its result
        once it is durable. Raises what ``fn`` raised (its writes undone), or
        StorageFull / StorageUnavailable."""
        return cast(T, await self._submit(fn, durable=True))

    def write_soon(self, statements: Sequence[Statement]) -> None:
        """Queues ``statements`` without waiting (bookkeeping whose loss costs at
        most a repeated announcement); a failure is logged and kept in ``broken``."""
        self._queue.put(_Job(_executor(statements), lambda result, exc: None, durable=False))

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any], durable: bool) -> Any:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[tuple[Any, BaseException | None]] = []

        def finished(result: Any, exc: BaseException | None) -> None:
            outcome.append((result, exc))
            token.run_sync_soon(done.set)

        self._queue.put(_Job(fn, finished, durable))
        await done.wait()
        result, exc = outcome[0]
        if exc is not None:
            raise exc
        return result

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None or self._run_batch(first):
                return

    def _run_batch(self, first: _Job) -> bool:
        """Runs ``first`` and the jobs that follow it in one transaction, each in its
        own savepoint, then commits: as soon as the queue is empty if a durable
        job waits, else once no job came for COMMIT_DELAY, or at MAX_BATCH jobs.
        Every job's ``done`` is called exactly once, whatever fails. Returns True
        if close() asked the writer to stop."""
        durable: list[tuple[_Job, Any]] = []
        current: _Job | None = first
        ran = 0
        stop = False
        try:
            self._writer.execute("BEGIN")
            while current is not None:
                ok, result = _run_job(self._writer, current, self.data_dir)
                ran += 1
                if ok and current.durable:
                    durable.append((current, result))
                else:
                    _deliver(current, result if ok else None, None if ok else result)
                current = None
                if ran >= MAX_BATCH:
                    break
                try:
                    if durable:
                        current = self._queue.get_nowait()
                    else:
                        current = self._queue.get(timeout=COMMIT_DELAY)
                except queue.Empty:
                    break
                if current is None:
                    stop = True
            self._writer.execute("COMMIT")
        except Exception as exc:
            # A full disk or an I/O error can end the whole transaction (SQLite
            # rolls it back itself), even in the middle of a job.
            error = self._failed(exc)
            for job, _ in durable:
                _deliver(job, None, error)
            if current is not None:
                _deliver(current, None, error)
            return stop
        self.broken = None
        for job, result in durable:
            _deliver(job, result, None)
        return stop

    def _failed(self, exc: Exception) -> Exception:
        with contextlib.suppress(sqlite3.Error):
            self._writer.execute("ROLLBACK")
        error = storage_error(exc, self.data_dir)
        if self.broken != str(error):
            log.error("state.db write failed", extra={"error": str(error)})
        self.broken = str(error)
        return error

    def vacuum(self) -> None:
        """Rewrites the file to its smallest size (offline use: python -m dhtd.state)."""
        # Let what is queued commit, then use the writer's connection while its
        # thread waits for the next job.
        idle = threading.Event()
        self._queue.put(_Job(lambda conn: None, lambda result, exc: idle.set(), durable=True))
        idle.wait(CLOSE_TIMEOUT)
        self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._writer.execute("VACUUM")
        self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading ------------------------------------------------------------------

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A small indexed query, on the caller's thread."""
        return self._reader.execute(sql, params).fetchall()

    async def scan(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A query that may visit many rows, on a worker thread (the trio loop runs on)."""
        async with self._scanning:
            return await trio.to_thread.run_sync(
                lambda: self._scanner.execute(sql, params).fetchall())


def _executor(statements: Sequence[Statement]) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        for sql, params in statements:
            conn.execute(sql, params)

    return run


def _run_job(conn: sqlite3.Connection, job: _Job, data_dir: Path) -> tuple[bool, Any]:
    """(True, result) or (False, the error); a failed job's writes are undone.
    An SQLite error is translated (StorageFull, StorageUnavailable)."""
    conn.execute("SAVEPOINT job")
    try:
        result = job.run(conn)
    except Exception as exc:
        if not conn.in_transaction:
            # SQLite ended the whole transaction (a full disk, an I/O error): the
            # batch fails with this error.
            raise
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return False, storage_error(exc, data_dir) if isinstance(exc, sqlite3.Error) else exc
    conn.execute("RELEASE job")
    return True, result


def _deliver(job: _Job, result: Any, error: BaseException | None) -> None:
    # RuntimeError: the trio loop is gone, nobody waits any more.
    with contextlib.suppress(RuntimeError):
        job.done(result, error)


def _lock(data_dir: Path) -> int:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirLocked(
            f"another dhtd (pid {holder}) is using the data dir {data_dir}: "
            "give each dhtd its own --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def open_checked(path: Path, migrations: Sequence[str], synchronous: str,
                 recover: bool = False) -> sqlite3.Connection:
    """A connection (autocommit, WAL) to the integrity-checked, migrated file at ``path``.

    Raises CorruptDatabase, unless ``recover``: then the bad file is renamed to
    <name>.corrupt-<time> and an empty one is created."""
    try:
        return _connect(path, migrations, synchronous)
    except CorruptDatabase as exc:
        if not recover:
            raise
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        log.warning("%s was corrupt: moved aside, starting empty", path.name,
                    extra={"moved_to": str(aside), "error": str(exc)})
        return _connect(path, migrations, synchronous)


def _connect(path: Path, migrations: Sequence[str], synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.create_function("dhtd_sha256", 1, _sha256, deterministic=True)  # (migrations)
    try:
        try:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "") in _CORRUPT:
                raise CorruptDatabase(f"{path} is not a readable SQLite database ({exc})"
                                      ) from None
            raise  # an I/O error, a full disk: the file may be fine, never move it aside
        if ok != "ok":
            raise CorruptDatabase(f"{path} failed its integrity check: {ok}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")  # one of our constants
        migrate(conn, path, migrations)
    except BaseException:
        conn.close()
        raise
    return conn


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# SQLite result codes that mean the file itself is bad (not the disk, not access).
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})


def migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[str]) -> None:
    """Runs the steps of ``migrations`` the file has not had yet."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise CorruptDatabase(
            f"{path} has schema version {version}, newer than this dhtd knows "
            f"({len(migrations)}): run the newer dhtd, or another --data-dir"
        )
    for number in range(version, len(migrations)):
        if version:  # (a new file is not news)
            log.info("migrating %s to schema version %d", path.name, number + 1,
                     extra={"file": str(path)})
        # One transaction per step: a crash mid-migration leaves the old version.
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{migrations[number]}\nPRAGMA user_version = {number + 1};\nCOMMIT;"
        )


def storage_error(exc: Exception, data_dir: Path) -> Exception:
    """StorageFull or StorageUnavailable for an SQLite failure to write."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "full" in text:
        return StorageFull(f"the disk under the data dir {data_dir} is full: {text}")
    return StorageUnavailable(f"the data dir {data_dir} cannot be written: {text}")


# -- column encodings -------------------------------------------------------------


def pack_addrs(addrs: Sequence[bytes]) -> bytes:
    """Binary multiaddrs in one BLOB, each prefixed with its length as a uvarint."""
    return b"".join(encode_uvarint(len(a)) + a for a in addrs)


def unpack_addrs(data: bytes) -> tuple[bytes, ...]:
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        length, pos = decode_uvarint(data, pos)
        out.append(data[pos:pos + length])
        pos += length
    return tuple(out)
