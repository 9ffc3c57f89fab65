"""The provide set: the keys this node promised to keep announcing.

Each key (a CID's multihash) carries when it last reached a peer (0: not yet).
The node reads the set through :class:`ProvideSet`, which keeps it in memory
(in-process dev peers, tests); :class:`DiskProvideSet` keeps it in state.db
only, so a node providing millions of CIDs holds none of them in memory.

Promises, as the node uses them:

- :meth:`~ProvideSet.add` returns once the keys are durable, and says which
  were new: a Provide sends its first event only after that.
- :meth:`~ProvideSet.announced` is bookkeeping, queued without waiting; losing
  it to a crash costs one early re-announcement.
- :meth:`~ProvideSet.remove` returns once the removal is durable.
- :meth:`~ProvideSet.due` lists keys in keyspace order (by their Kademlia key),
  so that a chunk of them is a few keyspace regions: the reprovide cycle
  announces each chunk with one sweep (:mod:`dhtd.sweep`).
- Iterating the set reads all of it: for tests and tools, not for the node.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from dhtd.ids import kad_key
from dhtd.state.db import Database

if TYPE_CHECKING:
    from dhtd.state import NodeState


class ProvideSet(Mapping[bytes, float]):
    """The provide set in memory: key -> when it last reached a peer (0: not yet).

    Each change is told to ``state`` (:class:`dhtd.state.NodeState`'s
    ``add_provided``, ``announced``, ``remove_provided``)."""

    def __init__(self, state: NodeState | None = None,
                 loaded: Mapping[bytes, float] | None = None) -> None:
        self._state = state
        self._at: dict[bytes, float] = dict(loaded or {})

    # -- Mapping (tests and tools) ----------------------------------------

    def __getitem__(self, key: bytes) -> float:
        return self._at[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._at))

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    # -- the node's uses ----------------------------------------------------

    async def add(self, keys: Sequence[bytes], now: float) -> list[bytes]:
        """Adds ``keys`` (never announced yet); returns those that were not in the
        set, once they are durable, in their first order."""
        new = [k for k in dict.fromkeys(keys) if k not in self._at]
        if new and self._state is not None:
            await self._state.add_provided(new, now)
        for key in new:
            self._at.setdefault(key, 0.0)
        return new

    def announced(self, keys: Sequence[bytes], now: float) -> None:
        """``keys`` reached a peer at ``now`` (keys no longer in the set are skipped)."""
        mine = [k for k in keys if k in self._at]
        for key in mine:
            self._at[key] = now
        if mine and self._state is not None:
            self._state.announced(mine, now)

    async def remove(self, keys: Sequence[bytes]) -> int:
        """Removes ``keys``; returns how many were in the set."""
        known = [k for k in dict.fromkeys(keys) if k in self._at]
        if known and self._state is not None:
            await self._state.remove_provided(known)
        for key in known:
            self._at.pop(key, None)
        return len(known)

    def page(self, after: bytes, limit: int) -> list[tuple[bytes, float]]:
        """Up to ``limit`` keys after ``after`` in byte order, with their times."""
        keys = sorted(self._at)
        start = bisect.bisect_right(keys, after)
        return [(k, self._at[k]) for k in keys[start:start + limit]]

    async def due(self, before: float, after_kad: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (Kademlia key, key) pairs of keys last announced at or
        before ``before``, whose Kademlia key follows ``after_kad``, in keyspace order."""
        pairs = sorted((kad_key(k), k) for k, at in self._at.items() if at <= before)
        start = bisect.bisect_right(pairs, (after_kad, b"\xff" * 64))
        return pairs[start:start + limit]

    async def count_due(self, before: float) -> int:
        """Keys last announced at or before ``before``."""
        return sum(1 for at in self._at.values() if at <= before)

    def oldest(self) -> float | None:
        """The earliest last announcement (0: a key never announced); None if empty."""
        return min(self._at.values(), default=None)


class DiskProvideSet(ProvideSet):
    """The provide set in state.db's ``provided`` table; only its size is in memory."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        self._count = int(db.read("SELECT count(*) FROM provided")[0][0])

    def __getitem__(self, key: bytes) -> float:
        rows = self.db.read("SELECT announced FROM provided WHERE key = ?", (key,))
        if not rows:
            raise KeyError(key)
        return float(rows[0][0])

    def __iter__(self) -> Iterator[bytes]:
        return iter([bytes(k) for k, in self.db.read("SELECT key FROM provided ORDER BY key")])

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return bool(self.db.read("SELECT 1 FROM provided WHERE key = ?", (key,)))

    async def add(self, keys: Sequence[bytes], now: float) -> list[bytes]:
        unique = list(dict.fromkeys(keys))

        def insert(conn: object) -> list[bytes]:
            execute = conn.execute  # type: ignore[attr-defined]
            new = []
            for key in unique:
                cursor = execute("INSERT OR IGNORE INTO provided (key, added, announced, kad) "
                                 "VALUES (?, ?, 0, ?)", (key, now, kad_key(key)))
                if cursor.rowcount:
                    new.append(key)
            return new

        new = await self.db.call(insert)
        self._count += len(new)
        return new

    def announced(self, keys: Sequence[bytes], now: float) -> None:
        self.db.write_soon([("UPDATE provided SET announced = ? WHERE key = ?", (now, k))
                            for k in keys])

    async def remove(self, keys: Sequence[bytes]) -> int:
        unique = list(dict.fromkeys(keys))

        def delete(conn: object) -> int:
            execute = conn.execute  # type: ignore[attr-defined]
            return sum(execute("DELETE FROM provided WHERE key = ?", (k,)).rowcount
                       for k in unique)

        removed = int(await self.db.call(delete))
        self._count -= removed
        return removed

    def page(self, after: bytes, limit: int) -> list[tuple[bytes, float]]:
        rows = self.db.read("SELECT key, announced FROM provided WHERE key > ? "
                            "ORDER BY key LIMIT ?", (after, limit))
        return [(bytes(k), float(at)) for k, at in rows]

    async def due(self, before: float, after_kad: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        # Walks the keyspace index from ``after_kad``: over a whole cycle that is one
        # pass over the set, on a worker thread.
        rows = await self.db.scan(
            "SELECT kad, key FROM provided INDEXED BY provided_by_kad "
            "WHERE kad > ? AND announced <= ? ORDER BY kad LIMIT ?", (after_kad, before, limit))
        return [(bytes(kad), bytes(key)) for kad, key in rows]

    async def count_due(self, before: float) -> int:
        rows = await self.db.scan("SELECT count(*) FROM provided WHERE announced <= ?",
                                  (before,))
        return int(rows[0][0])

    def oldest(self) -> float | None:
        value = self.db.read("SELECT min(announced) FROM provided")[0][0]
        return None if value is None else float(value)
