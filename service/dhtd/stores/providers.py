"""Provider records held for other peers (ADD_PROVIDER / GET_PROVIDERS), in SQLite.

The records live in the ``provider_records`` and ``provider_peers`` tables of
records.db (:mod:`dhtd.stores.db`); memory holds only what each peer holding
records needs (its row number, its count of records, when its oldest expires)
and SQLite's bounded page cache, so a million records cost about as much RAM
as a thousand. The methods run their
SQL inline, on the one connection (dhtd: from the trio thread, through
:class:`dhtd.stores.HeldRecords`), so a read sees every write before it,
committed or not.
"""

from __future__ import annotations

import heapq
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
# for other peers. On disk a record costs about 110 bytes with its index (measured:
# 108 MiB for 1,000,000), and no more RAM than a small store. A node among N
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
# Peers are rows of provider_peers; the records name them by row number, so a
# record and its index entry cost about 45 bytes instead of 80, and memory maps
# each peer holding records to its row.
_PEERS = "SELECT id, peer FROM provider_peers"
_USAGE = "SELECT peer, count(*), min(received) FROM provider_records GROUP BY peer"
_AT_KEY = "SELECT count(*), coalesce(max(peer = ?), 0) FROM provider_records WHERE key = ?"
_NEW_PEER = ("INSERT INTO provider_peers (peer, addrs) VALUES (?, ?) "
             "ON CONFLICT (peer) DO UPDATE SET addrs = excluded.addrs RETURNING id")
_SET_ADDRS = "UPDATE provider_peers SET addrs = ?2 WHERE id = ?1 AND addrs != ?2"
_INSERT = "INSERT INTO provider_records (key, peer, received) VALUES (?, ?, ?)"
_REFRESH = "UPDATE provider_records SET received = ? WHERE key = ? AND peer = ?"
_OLDEST_OF = "SELECT key FROM provider_records WHERE peer = ? ORDER BY received LIMIT 1"
_FIRST_RECEIVED = "SELECT min(received) FROM provider_records WHERE peer = ?"
_LIVE = ("SELECT p.peer, r.received, p.addrs FROM provider_records r "
         "JOIN provider_peers p ON p.id = r.peer "
         "WHERE r.key = ? AND r.received > ? ORDER BY r.received DESC")
_ADDRS = "SELECT addrs FROM provider_peers WHERE id = ?"
_EXPIRED_AT_KEY = "SELECT peer FROM provider_records WHERE key = ? AND received <= ?"
_EXPIRED_OF = ("SELECT key FROM provider_records WHERE peer = ? AND received <= ? "
               "ORDER BY received LIMIT ?")
_DELETE = "DELETE FROM provider_records WHERE key = ? AND peer = ?"
_DELETE_PEER = "DELETE FROM provider_peers WHERE id = ?"
_KEYS = "SELECT count(DISTINCT key) FROM provider_records"


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

    Every method leaves the tables and the counts in memory in agreement after
    each statement, so a call needs no savepoint: what a refusal or an SQLite
    error stops is not half done (an error that undoes the whole transaction is
    followed by :meth:`reload`).
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
        self._usage: Usage[int] = Usage()  # by provider_peers.id
        # (all four filled by reload)
        self._ids: dict[bytes, int]  # peers holding records -> their row
        self._peers: dict[int, bytes]
        self._addrs_seen: dict[int, int]  # holder -> hash of the addresses last stored
        # When each holder's oldest record expires, lazily: an entry may be early (a
        # refresh), or name a holder whose last record went by a key's cap; each is
        # used up when it comes due, so there are at most about as many entries as
        # holders. What collect() visits.
        self._due: list[tuple[float, int]]
        self.reload()

    def reload(self) -> None:
        """Reads every peer's count of records again (at start, and after the
        database rolled back a batch)."""
        names = {int(i): bytes(peer) for i, peer in self._db.execute(_PEERS)}
        counts: dict[int, int] = {}
        self._due = []
        for pid, n, first in self._db.execute(_USAGE):
            counts[int(pid)] = int(n)
            self._due.append((float(first) + self.validity, int(pid)))
        heapq.heapify(self._due)
        self._usage.reset(counts)
        self._peers = {pid: names[pid] for pid in counts}
        self._addrs_seen = {}
        self._ids = {peer: pid for pid, peer in self._peers.items()}

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
        kept = tuple(addrs[:MAX_PROVIDER_ADDRS])
        pid = self._ids.get(peer)
        count, known = db.execute(_AT_KEY, (pid, key)).fetchone()
        if known:
            assert pid is not None
            db.execute(_REFRESH, (now, key, pid))
        else:
            self._admit(key, peer, count, now)
            if pid is None:
                # A new holder (or one whose row a failed insert left behind).
                pid = int(db.execute(_NEW_PEER, (peer, pack_addrs(kept))).fetchone()[0])
                db.execute(_INSERT, (key, pid, now))
                self._ids[peer], self._peers[pid] = pid, peer
                heapq.heappush(self._due, (now + self.validity, pid))
            else:
                db.execute(_INSERT, (key, pid, now))
            self._usage.charge(pid, 1)
        if kept:
            seen = hash(kept)
            if self._addrs_seen.get(pid) != seen:  # (most adds repeat the last list)
                db.execute(_SET_ADDRS, (pid, pack_addrs(kept)))  # writes only a change
                self._addrs_seen[pid] = seen
        else:
            kept = self._addrs_of(pid)
        return ProviderRecord(peer, kept, now + self.validity)

    def _admit(self, key: bytes, peer: bytes, at_key: int, now: float) -> None:
        """Makes room for a new record of ``peer`` under ``key`` (which has
        ``at_key`` providers), or raises StoreFull."""
        db = self._db
        if at_key >= self._max_per_key:
            self._expire_key(key, now)
            if db.execute(_AT_KEY, (None, key)).fetchone()[0] >= self._max_per_key:
                raise StoreFull("too many providers for this key")
        after = self.usage(peer) + 1
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
        oldest = db.execute(_OLDEST_OF, (victim,)).fetchone()
        self._remove(bytes(oldest[0]), victim)

    def get(self, key: bytes, now: float) -> list[ProviderRecord]:
        """The live providers of ``key``, most recently added first."""
        rows = self._db.execute(_LIVE, (key, now - self.validity)).fetchall()
        return [ProviderRecord(bytes(peer), unpack_addrs(bytes(addrs)),
                               received + self.validity)
                for peer, received, addrs in rows]

    def _addrs_of(self, pid: int) -> tuple[bytes, ...]:
        """The addresses of a holder (whose row exists while it holds a record)."""
        return unpack_addrs(bytes(self._db.execute(_ADDRS, (pid,)).fetchone()[0]))

    def _expire_key(self, key: bytes, now: float) -> None:
        rows = self._db.execute(_EXPIRED_AT_KEY, (key, now - self.validity)).fetchall()
        for (pid,) in rows:
            self._remove(key, int(pid))

    def _remove(self, key: bytes, pid: int) -> None:
        self._db.execute(_DELETE, (key, pid))
        if self._usage.charge(pid, -1) <= 0:
            self._ids.pop(self._peers.pop(pid), None)
            self._addrs_seen.pop(pid, None)
            self._db.execute(_DELETE_PEER, (pid,))  # (a row left by a failure is reused)

    def collect(self, now: float, budget: int) -> int:
        """Removes up to ``budget`` expired records, visiting the holders whose
        oldest record expired first; returns how many were removed. It costs
        nothing when no holder's oldest record has expired, and at most
        ``budget`` visits otherwise."""
        removed = visits = 0
        cutoff = now - self.validity
        due = self._due
        while removed < budget and visits < budget and due and due[0][0] <= now:
            _, pid = heapq.heappop(due)
            if not self._usage[pid]:
                continue  # holds nothing any more
            visits += 1
            rows = self._db.execute(_EXPIRED_OF, (pid, cutoff, budget - removed)).fetchall()
            for (key,) in rows:
                self._remove(bytes(key), pid)
            removed += len(rows)
            if self._usage[pid]:
                first = self._db.execute(_FIRST_RECEIVED, (pid,)).fetchone()[0]
                at = float(first) + self.validity
                if not rows:  # early (rounding): not again in this call
                    at = max(at, now + 1e-3)
                heapq.heappush(due, (at, pid))
        return removed

    def expire(self, now: float) -> int:
        """Removes every record expired at ``now`` (tests and shutdown; the node
        collects incrementally with :meth:`collect`)."""
        # One call visits every holder due (there are at most len(self) of them).
        return self.collect(now, max(len(self), 1))

    def usage(self, peer: bytes) -> int:
        """Records paid for by ``peer``."""
        return self._usage[self._ids.get(peer, -1)]  # (rows are numbered from 1)

    @property
    def keys_count(self) -> int:
        """Keys with at least one record held (a scan: for tests and tools)."""
        return int(self._db.execute(_KEYS).fetchone()[0])

    def __len__(self) -> int:
        """Records held, including expired ones not yet collected (from memory)."""
        return self._usage.total


__all__ = ["ProviderRecord", "ProviderStore", "StoreFull"]
