"""Records this node holds for other peers: provider records and value records.

Both stores are bounded and fair (:mod:`dhtd.stores.shares`): one peer cannot take
more than its share, a full store makes room by evicting from its biggest holder,
and every cap check costs O(log owners). Records expire by age and are collected
a few at a time (never by a sweep over the whole store).

Provider records live in state.db (:mod:`dhtd.stores.providers`) and are reached
through :class:`HeldRecords`, which runs each call on the database's writer
thread; value records are held in memory (:mod:`dhtd.stores.values`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from dhtd.state.db import MemoryDatabase
from dhtd.stores.providers import (
    MAX_PROVIDER_ADDRS,
    MAX_PROVIDER_RECORDS,
    MAX_PROVIDERS_PER_KEY,
    PROVIDE_VALIDITY,
    ProviderRecord,
    ProviderStore,
)
from dhtd.stores.shares import StoreFull
from dhtd.stores.values import MAX_RECORD_AGE, MAX_VALUE_STORE_BYTES, StoredRecord, ValueStore

T = TypeVar("T")


class JobRunner(Protocol):
    """Where the stores' SQL runs: dhtd.state.db.Database (its writer thread) or
    MemoryDatabase (inline)."""

    on_rollback: list[Callable[[sqlite3.Connection], None]]

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


class HeldRecords:
    """The provider records held for other peers, each call run in order where the
    database's connection lives. A call sees every call before it.

    Open with :meth:`open`."""

    def __init__(self, db: JobRunner, providers: ProviderStore) -> None:
        self._db = db
        self.providers = providers

    @classmethod
    def in_memory(cls) -> HeldRecords:
        """Stores that keep nothing past the process (dev peers, tests)."""
        db = MemoryDatabase()
        providers = ProviderStore(db.conn)
        db.on_rollback.append(lambda conn: providers.reload())
        return cls(db, providers)

    @classmethod
    async def open(
        cls, db: JobRunner,
        make_providers: Callable[[sqlite3.Connection], ProviderStore] = ProviderStore,
    ) -> HeldRecords:
        """Reads the stores' accounting from ``db`` (``make_providers``: a
        ProviderStore with other limits, for tests)."""
        providers = await db.call(make_providers)
        db.on_rollback.append(lambda conn: providers.reload())
        return cls(db, providers)

    async def add_provider(self, key: bytes, peer: bytes, addrs: Sequence[bytes], now: float
                           ) -> ProviderRecord:
        """ProviderStore.add: raises StoreFull, InvalidRecord, or a storage error."""
        return await self._db.call(lambda _: self.providers.add(key, peer, addrs, now))

    async def providers_of(self, key: bytes, now: float) -> list[ProviderRecord]:
        return await self._db.call(lambda _: self.providers.get(key, now))

    async def collect_providers(self, now: float, budget: int) -> int:
        return await self._db.call(lambda _: self.providers.collect(now, budget))

    def provider_count(self) -> int:
        """Provider records held (from memory, at once)."""
        return len(self.providers)


__all__ = [
    "MAX_PROVIDERS_PER_KEY",
    "MAX_PROVIDER_ADDRS",
    "MAX_PROVIDER_RECORDS",
    "MAX_RECORD_AGE",
    "MAX_VALUE_STORE_BYTES",
    "PROVIDE_VALIDITY",
    "HeldRecords",
    "JobRunner",
    "ProviderRecord",
    "ProviderStore",
    "StoreFull",
    "StoredRecord",
    "ValueStore",
]
