"""Value records held for other peers (PUT_VALUE / GET_VALUE)."""

from __future__ import annotations

from dataclasses import dataclass

from dhtd.errors import InvalidRecord
from dhtd.stores.shares import Owner, Shares, StoreFull

# go-libp2p-kad-dht amino.DefaultMaxRecordAge (48 h): how long a value record
# (PutValue: /pk, /ipns, ...) is kept after it was received.
MAX_RECORD_AGE = 48 * 3600.0

# Ours (go-libp2p-kad-dht's datastore is unbounded): the bytes of value records
# held for other peers, keys and a per-record overhead included. 64 MiB holds
# about 6,000 IPNS records at their 10 KiB maximum, 100,000+ typical ones.
MAX_VALUE_STORE_BYTES = 64 << 20

# Ours: one peer's share, 5% of the store (dhtd.stores.shares).
MAX_VALUE_BYTES_PER_PEER = MAX_VALUE_STORE_BYTES // 20

# What one record costs beyond its key and value: the Python objects around it.
RECORD_OVERHEAD_BYTES = 256

# Expired records collected on every put (see dhtd.stores.shares).
COLLECT_PER_PUT = 4


@dataclass(frozen=True)
class StoredRecord:
    """A value record as held here; ``received_at`` is epoch seconds."""

    key: bytes
    value: bytes
    received_at: float


class ValueStore:
    """Value records by key, expiring by age; bounded in bytes and fair per peer.

    A record is live while ``now - received_at < max_age``. The store does not
    validate values: callers validate (and select) before putting. A put is paid
    by ``owner`` (the peer that sent it; None for this node's own Put, exempt);
    a refused put raises :class:`StoreFull` and leaves the old record in place.
    """

    def __init__(
        self,
        max_bytes: int = MAX_VALUE_STORE_BYTES,
        per_peer: int = MAX_VALUE_BYTES_PER_PEER,
        max_age: float = MAX_RECORD_AGE,
    ) -> None:
        self._shares: Shares[bytes] = Shares(max_bytes, per_peer, max_age)
        self._records: dict[bytes, StoredRecord] = {}

    def put(self, key: bytes, value: bytes, now: float, owner: Owner = None) -> StoredRecord:
        """Stores ``value`` under ``key`` received at ``now``, replacing any old one."""
        if not key:
            raise InvalidRecord("record key is empty")
        for gone in self._shares.collect(now, COLLECT_PER_PUT):
            self._records.pop(gone, None)
        cost = len(key) + len(value) + RECORD_OVERHEAD_BYTES
        for evicted in self._shares.admit(key, owner, cost, now):
            self._records.pop(evicted, None)
        record = StoredRecord(key=key, value=value, received_at=now)
        self._records[key] = record
        return record

    def get(self, key: bytes, now: float) -> StoredRecord | None:
        """The live record for ``key``, or None; an expired one is removed."""
        record = self._records.get(key)
        if record is None:
            return None
        if now - record.received_at >= self._shares.max_age:
            self.remove(key)
            return None
        return record

    def remove(self, key: bytes) -> None:
        """Forgets ``key``; no error if absent."""
        self._records.pop(key, None)
        self._shares.remove(key)

    def collect(self, now: float, budget: int) -> int:
        """Removes up to ``budget`` expired records; returns how many."""
        gone = self._shares.collect(now, budget)
        for key in gone:
            self._records.pop(key, None)
        return len(gone)

    def expire(self, now: float) -> int:
        """Removes every record expired at ``now``."""
        return self.collect(now, len(self._records))

    def usage(self, peer: bytes) -> int:
        return self._shares.usage(peer)

    def __len__(self) -> int:
        """Records held, including expired ones not yet collected."""
        return len(self._records)


__all__ = ["StoreFull", "StoredRecord", "ValueStore"]
