"""Records this node holds for other peers: provider records and value records.

Both stores are bounded and fair (:mod:`dhtd.stores.shares`): one peer cannot take
more than its share, a full store makes room by evicting from its biggest holder,
and every cap check costs O(log owners). Records expire by age and are collected
a few at a time (never by a sweep over the whole store).

Both live in records.db (:mod:`dhtd.stores.db`: why a file of its own, used
inline from the trio thread) and are reached through :class:`HeldRecords`: a
call sees every write before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dhtd.stores.db import RecordsDb
from dhtd.stores.providers import (
    MAX_PROVIDER_ADDRS,
    MAX_PROVIDER_RECORDS,
    MAX_PROVIDERS_PER_KEY,
    PROVIDE_VALIDITY,
    ProviderRecord,
    ProviderStore,
)
from dhtd.stores.shares import Owner, StoreFull
from dhtd.stores.values import (
    MAX_RECORD_AGE,
    MAX_VALUE_STORE_BYTES,
    BetterRecordHeld,
    Select,
    StoredRecord,
    ValueStore,
)


class HeldRecords:
    """The provider and value records held for other peers. Open with :meth:`open`
    (or :meth:`in_memory`), keep :meth:`run` running while in use, then close
    the database."""

    def __init__(self, db: RecordsDb, providers: ProviderStore, values: ValueStore) -> None:
        self._db = db
        self.providers = providers
        self.values = values
        db.on_rollback.append(lambda conn: self._reload())

    def _reload(self) -> None:
        self.providers.reload()
        self.values.reload()

    @classmethod
    def in_memory(cls) -> HeldRecords:
        """Stores that keep nothing past the process (dev peers, tests)."""
        return cls.open(RecordsDb.memory())

    @classmethod
    def open(cls, db: RecordsDb) -> HeldRecords:
        """The stores in ``db``, their accounting read from it."""
        return cls(db, ProviderStore(db.conn), ValueStore(db.conn))

    async def run(self) -> None:
        """Commits the writes in the background (RecordsDb.run)."""
        await self._db.run()

    # -- provider records ------------------------------------------------------

    async def add_provider(self, key: bytes, peer: bytes, addrs: Sequence[bytes], now: float
                           ) -> ProviderRecord:
        """ProviderStore.add: raises StoreFull, InvalidRecord, or a storage error."""
        return await self._db.call(lambda _: self.providers.add(key, peer, addrs, now),
                                   atomic=False)

    async def providers_of(self, key: bytes, now: float) -> list[ProviderRecord]:
        return await self._db.call(lambda _: self.providers.get(key, now), atomic=False,
                                   write=False)

    async def collect_providers(self, now: float, budget: int) -> int:
        return await self._db.call(lambda _: self.providers.collect(now, budget),
                                   atomic=False)

    def provider_count(self) -> int:
        """Provider records held (from memory, at once)."""
        return len(self.providers)

    # -- value records -----------------------------------------------------------

    async def put_value(self, key: bytes, value: bytes, now: float, owner: Owner,
                        select: Select) -> StoredRecord:
        """ValueStore.put: raises BetterRecordHeld, StoreFull, InvalidRecord, or a
        storage error."""
        return await self._db.call(lambda _: self.values.put(key, value, now, owner, select))

    async def value_of(self, key: bytes, now: float) -> StoredRecord | None:
        return await self._db.call(lambda _: self.values.get(key, now), write=False)

    async def collect_values(self, now: float, budget: int) -> int:
        return await self._db.call(lambda _: self.values.collect(now, budget))

    def value_count(self) -> int:
        """Value records held (from memory, at once)."""
        return len(self.values)


__all__ = [
    "MAX_PROVIDERS_PER_KEY",
    "MAX_PROVIDER_ADDRS",
    "MAX_PROVIDER_RECORDS",
    "MAX_RECORD_AGE",
    "MAX_VALUE_STORE_BYTES",
    "PROVIDE_VALIDITY",
    "BetterRecordHeld",
    "HeldRecords",
    "ProviderRecord",
    "ProviderStore",
    "RecordsDb",
    "StoreFull",
    "StoredRecord",
    "ValueStore",
]
