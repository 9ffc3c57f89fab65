"""Value records held for other peers (PUT_VALUE / GET_VALUE), in SQLite.

The records live in the ``records`` table of records.db (:mod:`dhtd.stores.db`);
memory holds each owner's bytes (:class:`dhtd.stores.shares.Usage`) and SQLite's
bounded page cache. Like :mod:`dhtd.stores.providers`, the methods run their SQL
inline on the one connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dhtd.errors import InvalidRecord
from dhtd.stores.db import memory_connection
from dhtd.stores.shares import Owner, StoreFull, Usage

# go-libp2p-kad-dht amino.DefaultMaxRecordAge (48 h): how long a value record
# (PutValue: /pk, /ipns, ...) is kept after it was received.
MAX_RECORD_AGE = 48 * 3600.0

# Ours (go-libp2p-kad-dht's datastore is unbounded): the bytes of value records
# held for other peers, keys and a per-record overhead included. 64 MiB holds
# about 6,000 IPNS records at their 10 KiB maximum, 100,000+ typical ones.
MAX_VALUE_STORE_BYTES = 64 << 20

# Ours: one peer's share, 5% of the store (see ProviderStore).
MAX_VALUE_BYTES_PER_PEER = MAX_VALUE_STORE_BYTES // 20

# What one record costs beyond its key and value: its row and index entries.
RECORD_OVERHEAD_BYTES = 256

# Expired records collected on every put (see dhtd.stores.providers).
COLLECT_PER_PUT = 4


# The SQL, named (case and spacing are SQLite's business, not the logic's).
_USAGE = "SELECT owner, sum(cost) FROM records WHERE owner IS NOT NULL GROUP BY owner"
_COUNT = "SELECT count(*) FROM records"
_HELD = "SELECT value, owner, cost, received FROM records WHERE key = ?"
_UPSERT = ("INSERT INTO records (key, value, owner, received, cost) VALUES (?, ?, ?, ?, ?) "
           "ON CONFLICT (key) DO UPDATE SET value = excluded.value, owner = excluded.owner, "
           "received = excluded.received, cost = excluded.cost")
_OLDEST_OF = "SELECT key, cost FROM records WHERE owner = ? ORDER BY received"
_GET = "SELECT value, received FROM records WHERE key = ?"
_DELETE = "DELETE FROM records WHERE key = ? RETURNING owner, cost"
_EXPIRED = "SELECT key FROM records WHERE received <= ? ORDER BY received LIMIT ?"


@dataclass(frozen=True)
class StoredRecord:
    """A value record as held here; ``received_at`` is epoch seconds."""

    key: bytes
    value: bytes
    received_at: float


class BetterRecordHeld(Exception):
    """A put lost to the record already held under its key (see ValueStore.put)."""


# Chooses among candidate records of one key: the index of the best
# (dhtd.handlers.record_selector wraps dhtd.records.Validators.select).
Select = Callable[[bytes, Sequence[StoredRecord]], int]


class ValueStore:
    """Value records by key, expiring by age; bounded in bytes and fair per peer.

    A record is live while ``now - received_at < max_age``. The store does not
    validate values: callers validate before putting. A put is paid by ``owner``
    (the peer that sent it; None for this node's own Put, exempt). Each owner
    may hold at most ``per_peer`` bytes and the store ``max_bytes``; a full
    store evicts the oldest records of its biggest owner if that owner holds
    more than the newcomer would, else refuses (:class:`StoreFull`). A refused
    put leaves the old record in place.
    """

    def __init__(
        self,
        conn: sqlite3.Connection | None = None,
        max_bytes: int = MAX_VALUE_STORE_BYTES,
        per_peer: int = MAX_VALUE_BYTES_PER_PEER,
        max_age: float = MAX_RECORD_AGE,
    ) -> None:
        if max_bytes < 1 or per_peer < 1:
            raise ValueError("capacity and per_owner must be at least 1")
        if not max_age > 0:
            raise ValueError("max_age must be positive")
        self._db = conn if conn is not None else memory_connection()
        self.max_bytes = max_bytes
        self.per_peer = per_peer
        self.max_age = max_age
        self._usage: Usage[bytes] = Usage()
        self._count: int  # set by reload
        self.reload()

    def reload(self) -> None:
        """Reads the owners' usage and the count again (at start, after a rollback)."""
        rows = self._db.execute(_USAGE)
        self._usage.reset({bytes(owner): int(cost) for owner, cost in rows})
        self._count = int(self._db.execute(_COUNT).fetchone()[0])

    def put(self, key: bytes, value: bytes, now: float, owner: Owner = None,
            select: Select | None = None) -> StoredRecord:
        """Stores ``value`` under ``key`` received at ``now``, replacing any old one.

        With ``select``, a different value already held competes first: if
        ``select`` prefers the held one (index 0), BetterRecordHeld is raised
        and nothing changes. Raises InvalidRecord for an empty key, StoreFull."""
        if not key:
            raise InvalidRecord("record key is empty")
        db = self._db
        self.collect(now, COLLECT_PER_PUT)
        old = db.execute(_HELD, (key,)).fetchone()
        if (old is not None and select is not None and bytes(old[0]) != value
                and now - old[3] < self.max_age):
            held = StoredRecord(key, bytes(old[0]), float(old[3]))
            if select(key, [held, StoredRecord(key, value, now)]) == 0:
                raise BetterRecordHeld("a better record is already stored")
        old_owner = bytes(old[1]) if old is not None and old[1] is not None else None
        old_cost = int(old[2]) if old is not None else 0
        cost = len(key) + len(value) + RECORD_OVERHEAD_BYTES
        evicted: list[bytes] = []
        if owner is not None:
            after = self._usage[owner] - (old_cost if old_owner == owner else 0) + cost
            if after > self.per_peer:
                raise StoreFull(
                    f"this peer's share of the store is used up ({self.per_peer} units)")
            freed = old_cost if old_owner is not None else 0
            evicted = self._plan_room(self._usage.total - freed + cost, after, key)
        for victim in evicted:
            self.remove(victim)
        db.execute(_UPSERT, (key, value, owner, now, cost))
        if old is None:
            self._count += 1
        elif old_owner is not None:
            self._usage.charge(old_owner, -old_cost)
        if owner is not None:
            self._usage.charge(owner, cost)
        return StoredRecord(key=key, value=value, received_at=now)

    def _plan_room(self, needed: int, newcomer: int, keep: bytes) -> list[bytes]:
        """The keys to evict so that ``needed`` fits; StoreFull if it cannot (then
        nothing is evicted). Takes the oldest records of the biggest owners, each
        only while it holds more than ``newcomer`` (the admitted owner's usage
        after the put, so never the admitted owner itself), and never ``keep``
        (the record being replaced)."""
        if needed <= self.max_bytes:
            return []
        plan: list[bytes] = []
        freed = 0
        for victim in self._usage.biggest_first():
            left = self._usage[victim]
            rows = self._db.execute(_OLDEST_OF, (victim,))
            for key, cost in rows:
                if needed - freed <= self.max_bytes:
                    break
                if left <= newcomer:
                    raise StoreFull("the store is full and no peer holds more than this one")
                if bytes(key) == keep:
                    continue
                plan.append(bytes(key))
                freed += int(cost)
                left -= int(cost)
                if left <= newcomer:
                    break
            if needed - freed <= self.max_bytes:
                return plan
        raise StoreFull("the store is full and no peer holds more than this one")

    def get(self, key: bytes, now: float) -> StoredRecord | None:
        """The live record for ``key``, or None; an expired one is removed."""
        row = self._db.execute(_GET, (key,)).fetchone()
        if row is None:
            return None
        if now - row[1] >= self.max_age:
            self.remove(key)
            return None
        return StoredRecord(key=key, value=bytes(row[0]), received_at=float(row[1]))

    def remove(self, key: bytes) -> None:
        """Forgets ``key``; no error if absent."""
        row = self._db.execute(_DELETE, (key,)).fetchone()
        if row is None:
            return
        self._count -= 1
        if row[0] is not None:
            self._usage.charge(bytes(row[0]), -int(row[1]))

    def collect(self, now: float, budget: int) -> int:
        """Removes up to ``budget`` expired records, oldest first; returns how many."""
        rows = self._db.execute(_EXPIRED, (now - self.max_age, budget)).fetchall()
        for (key,) in rows:
            self.remove(bytes(key))
        return len(rows)

    def expire(self, now: float) -> int:
        """Removes every record expired at ``now``."""
        return self.collect(now, len(self))

    def usage(self, peer: bytes) -> int:
        return self._usage[peer]

    def __len__(self) -> int:
        """Records held, including expired ones not yet collected (from memory)."""
        return self._count


__all__ = ["BetterRecordHeld", "StoreFull", "StoredRecord", "ValueStore"]
