"""Provider records held for other peers (ADD_PROVIDER / GET_PROVIDERS), in SQLite.

The records live in the ``providers`` and ``provider_addrs`` tables of
records.db (:mod:`dhtd.stores.db`); memory holds only each peer's count of
records (:class:`dhtd.stores.shares.Usage`) and SQLite's bounded page cache, so
a million records cost about as much RAM as a thousand. The methods run their
SQL inline, on the one connection (dhtd: from the trio thread, through
:class:`dhtd.stores.HeldRecords`), so a read sees every write before it,
committed or not.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from dhtd.errors import InvalidRecord
from dhtd.state.db import pack_addrs, unpack_addrs
from dhtd.stores.db import memory_connection
from dhtd.stores.shares import StoreFull, Usage

# go-libp2p-kad-dht amino.DefaultProvideValidity (48 h): how long a provider
# record lasts before it must be re-provided.
PROVIDE_VALIDITY = 48 * 3600.0

# Ours (go-libp2p-kad-dht's datastore is unbounded): the most provider records held
# for other peers. On disk a record costs about 250 bytes with its indexes, so
# about 250 MB at the cap, and no more RAM than a small store. A node among N
# receives about 20/N of every provider's keys: 1 M covers providers of 500 M
# keys in a 10,000-node network.
MAX_PROVIDER_RECORDS = 1_000_000

# Ours: the share of one peer, 5% of the store, so at least 20 peers are needed to
# fill it, and a full store then evicts from the biggest of them.
MAX_PROVIDER_RECORDS_PER_PEER = MAX_PROVIDER_RECORDS // 20

# Ours (upstream is unbounded): the most providers remembered per key; five
# times amino.DefaultBucketSize (20), the number of peers a provider announces to.
MAX_PROVIDERS_PER_KEY = 100

# Ours: the addresses kept per provider (go-libp2p keeps them in its peerstore,
# unbounded). A Kubo node announces about 10 (tcp, quic, webtransport, v4 and v6);
# the rest of a longer list is dropped, and so is any single address longer than
# dhtd.kadmsg.MAX_ADDR_BYTES.
MAX_PROVIDER_ADDRS = 32

# Expired records collected on every add, so that collection keeps pace with
# additions without ever sweeping the whole store.
COLLECT_PER_ADD = 4


# The SQL, named (case and spacing are SQLite's business, not the logic's).
_USAGE = "SELECT peer, count(*) FROM providers GROUP BY peer"
_HELD = "SELECT 1 FROM providers WHERE key = ? AND peer = ?"
_UPSERT = ("INSERT INTO providers (key, peer, received) VALUES (?, ?, ?) "
           "ON CONFLICT (key, peer) DO UPDATE SET received = excluded.received")
_UPSERT_ADDRS = ("INSERT INTO provider_addrs (peer, addrs) VALUES (?, ?) "
                 "ON CONFLICT (peer) DO UPDATE SET addrs = excluded.addrs")
_KEY_COUNT = "SELECT count(*) FROM providers WHERE key = ?"
_OLDEST_OF = "SELECT key FROM providers WHERE peer = ? ORDER BY received LIMIT 1"
_LIVE = ("SELECT p.peer, p.received, a.addrs FROM providers p "
         "LEFT JOIN provider_addrs a ON a.peer = p.peer "
         "WHERE p.key = ? AND p.received > ? ORDER BY p.received DESC")
_ADDRS = "SELECT addrs FROM provider_addrs WHERE peer = ?"
_EXPIRED_OF_KEY = "SELECT peer FROM providers WHERE key = ? AND received <= ?"
_DELETE = "DELETE FROM providers WHERE key = ? AND peer = ?"
_DELETE_ADDRS = "DELETE FROM provider_addrs WHERE peer = ?"
_EXPIRED = "SELECT key, peer FROM providers WHERE received <= ? ORDER BY received LIMIT ?"
_KEYS = "SELECT count(DISTINCT key) FROM providers"


@dataclass(frozen=True)
class ProviderRecord:
    """One peer providing one key, until ``expires_at`` (epoch seconds).

    ``addrs`` are binary multiaddrs."""

    peer: bytes
    addrs: tuple[bytes, ...]
    expires_at: float


class ProviderStore:
    """Provider records: key multihash -> provider peer -> received time, bounded and fair.

    A record is live while ``now < received + validity``. Each peer may hold at most
    ``per_peer`` records, the store at most ``max_records``; a full store evicts the
    oldest record of its biggest holder to admit a peer that holds fewer, else
    refuses (:class:`StoreFull`). A key keeps at most ``max_per_key`` providers.
    Addresses are kept once per peer, at most MAX_PROVIDER_ADDRS of them, while the
    peer holds a record.
    """

    def __init__(
        self,
        conn: sqlite3.Connection | None = None,
        validity: float = PROVIDE_VALIDITY,
        max_records: int = MAX_PROVIDER_RECORDS,
        per_peer: int = MAX_PROVIDER_RECORDS_PER_PEER,
        max_per_key: int = MAX_PROVIDERS_PER_KEY,
    ) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key must be at least 1")
        if max_records < 1 or per_peer < 1:
            raise ValueError("capacity and per_owner must be at least 1")
        if not validity > 0:
            raise ValueError("max_age must be positive")
        self._db = conn if conn is not None else memory_connection()
        self.validity = validity
        self._max_records = max_records
        self._per_peer = per_peer
        self._max_per_key = max_per_key
        self._usage = Usage()
        self.reload()

    def reload(self) -> None:
        """Reads every peer's count of records again (at start, and after the
        database rolled back a batch)."""
        rows = self._db.execute(_USAGE)
        self._usage.reset({bytes(peer): int(n) for peer, n in rows})

    def add(self, key: bytes, peer: bytes, addrs: Sequence[bytes], now: float
            ) -> ProviderRecord:
        """Records that ``peer`` provides ``key`` from ``now`` for ``validity`` seconds.

        The record counts against ``peer``'s share. Re-adding refreshes the expiry;
        ``addrs`` replace the peer's known ones only if non-empty. Raises
        InvalidRecord for an empty key or peer, StoreFull when refused. (This
        node's own provider records are not kept here: see DhtNode.provided.)"""
        if not key:
            raise InvalidRecord("provider key is empty")
        if not peer:
            raise InvalidRecord("provider peer ID is empty")
        db = self._db
        self.collect(now, COLLECT_PER_ADD)
        known = db.execute(_HELD,
                           (key, peer)).fetchone() is not None
        if not known:
            self._admit(key, peer, now)
        db.execute(_UPSERT,
                   (key, peer, now))
        if addrs:
            kept = tuple(addrs[:MAX_PROVIDER_ADDRS])
            db.execute(_UPSERT_ADDRS,
                       (peer, pack_addrs(kept)))
        else:
            kept = self._addrs_of(peer)
        if not known:  # charged once every write went through
            self._usage.charge(peer, 1)
        return ProviderRecord(peer, kept, now + self.validity)

    def _admit(self, key: bytes, peer: bytes, now: float) -> None:
        """Makes room for a new record of ``peer`` under ``key``, or raises StoreFull."""
        db = self._db
        if db.execute(_KEY_COUNT, (key,)).fetchone()[0] >= self._max_per_key:
            self._expire_key(key, now)
            if db.execute(_KEY_COUNT, (key,)).fetchone()[0] >= self._max_per_key:
                raise StoreFull("too many providers for this key")
        after = self._usage[peer] + 1
        if after > self._per_peer:
            raise StoreFull(f"this peer's share of the store is used up ({self._per_peer} units)")
        if self._usage.total + 1 <= self._max_records:
            return
        # Full: the oldest record of the biggest holder goes, if it holds more than
        # this peer would after admission (so a flooder pays for room).
        # (This peer itself is never the victim: it holds fewer than ``after``.)
        victim = self._usage.biggest()
        if victim is None or self._usage[victim] <= after:
            raise StoreFull("the store is full and no peer holds more than this one")
        assert victim is not None
        oldest = db.execute(_OLDEST_OF, (victim,)).fetchone()
        self._remove(bytes(oldest[0]), victim)

    def get(self, key: bytes, now: float) -> list[ProviderRecord]:
        """The live providers of ``key``, most recently added first."""
        rows = self._db.execute(_LIVE, (key, now - self.validity)).fetchall()
        return [ProviderRecord(bytes(peer), unpack_addrs(bytes(addrs)) if addrs else (),
                               received + self.validity)
                for peer, received, addrs in rows]

    def _addrs_of(self, peer: bytes) -> tuple[bytes, ...]:
        row = self._db.execute(_ADDRS, (peer,)).fetchone()
        return unpack_addrs(bytes(row[0])) if row else ()

    def _expire_key(self, key: bytes, now: float) -> None:
        rows = self._db.execute(_EXPIRED_OF_KEY, (key, now - self.validity)).fetchall()
        for (peer,) in rows:
            self._remove(key, bytes(peer))

    def _remove(self, key: bytes, peer: bytes) -> None:
        self._db.execute(_DELETE, (key, peer))
        if self._usage.charge(peer, -1) <= 0:
            self._db.execute(_DELETE_ADDRS, (peer,))

    def collect(self, now: float, budget: int) -> int:
        """Removes up to ``budget`` expired records, oldest first; returns how many."""
        rows = self._db.execute(_EXPIRED, (now - self.validity, budget)).fetchall()
        for key, peer in rows:
            self._remove(bytes(key), bytes(peer))
        return len(rows)

    def expire(self, now: float) -> int:
        """Removes every record expired at ``now`` (tests and shutdown; the node
        collects incrementally with :meth:`collect`)."""
        return self.collect(now, len(self))

    def usage(self, peer: bytes) -> int:
        """Records paid for by ``peer``."""
        return self._usage[peer]

    @property
    def keys_count(self) -> int:
        """Keys with at least one record held (a scan: for tests and tools)."""
        return int(self._db.execute(_KEYS).fetchone()[0])

    def __len__(self) -> int:
        """Records held, including expired ones not yet collected (from memory)."""
        return self._usage.total


__all__ = ["ProviderRecord", "ProviderStore", "StoreFull"]
