"""This node's durable state: what it promised to keep announcing, and whom it knew.

The node keeps its provide set and its published records in memory and tells
a :class:`NodeState` of every change. :class:`DiskState` commits them to
state.db in the data dir (:mod:`dhtd.state.db`); :class:`NodeState` itself keeps
nothing (for in-process dev peers and tests).

Promises, as the node uses them:

- ``add_provided`` / ``add_published`` return once the commitment is durable: a
  Provide or Put sends its first event only after that, so an acknowledged
  commitment survives kill -9.
- ``announced`` / ``republished`` / ``save_peers`` are bookkeeping, queued
  without waiting: losing the last of them to a crash costs at most one early
  re-announcement.
- ``remove_*`` return once the removal is durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dhtd.lookup import PeerRecord
from dhtd.state.db import (
    CorruptDatabase,
    Database,
    DataDirLocked,
    StorageFull,
    StorageUnavailable,
    pack_addrs,
    unpack_addrs,
)

if TYPE_CHECKING:
    from dhtd.provider.keyset import ProvideSet

__all__ = [
    "CorruptDatabase",
    "DataDirLocked",
    "Database",
    "DiskState",
    "Loaded",
    "NodeState",
    "StorageFull",
    "StorageUnavailable",
]

# Routing-table peers read back at start, most recently seen first (go-libp2p-kad-dht
# seeds a restarted node from its saved peers the same way; k * 3 is plenty to rejoin).
MAX_SAVED_PEERS = 60


@dataclass
class Loaded:
    """What a node finds at start."""

    # key -> when it last reached a peer (0: never)
    provided: dict[bytes, float] = field(default_factory=dict)
    # key -> (value, when it last reached a peer)
    published: dict[bytes, tuple[bytes, float]] = field(default_factory=dict)
    peers: list[PeerRecord] = field(default_factory=list)


class NodeState:
    """Keeps nothing: every method succeeds at once."""

    def load(self) -> Loaded:
        return Loaded()

    def provide_set(self, loaded: Loaded) -> ProvideSet:
        """The provide set, which tells this state of each change."""
        from dhtd.provider.keyset import ProvideSet

        return ProvideSet(self, loaded.provided)

    async def add_provided(self, keys: Sequence[bytes], now: float) -> None:
        return None

    def announced(self, keys: Sequence[bytes], now: float) -> None:
        return None

    async def remove_provided(self, keys: Sequence[bytes]) -> None:
        return None

    async def add_published(self, key: bytes, value: bytes, now: float) -> None:
        return None

    def republished(self, key: bytes, now: float) -> None:
        return None

    async def remove_published(self, key: bytes) -> None:
        return None

    def save_peers(self, peers: Sequence[PeerRecord], now: float) -> None:
        return None


class DiskState(NodeState):
    """The same, committed to state.db."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def load(self) -> Loaded:
        """The published records and saved peers (the provide set stays on disk:
        :meth:`provide_set`)."""
        loaded = Loaded()
        for key, value, put_at in self.db.read("SELECT key, value, put_at FROM published"):
            loaded.published[bytes(key)] = (bytes(value), float(put_at))
        rows = self.db.read("SELECT id, addrs FROM peers ORDER BY seen DESC LIMIT ?",
                            (MAX_SAVED_PEERS,))
        loaded.peers = [PeerRecord(bytes(peer), unpack_addrs(bytes(addrs))) for peer, addrs in rows]
        return loaded

    def provide_set(self, loaded: Loaded) -> ProvideSet:
        """The provide set, read and written in state.db (none of it in memory)."""
        from dhtd.provider.keyset import DiskProvideSet

        return DiskProvideSet(self.db)

    async def add_published(self, key: bytes, value: bytes, now: float) -> None:
        await self.db.write([(
            "INSERT INTO published (key, value, added, put_at) VALUES (?, ?, ?, 0) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, put_at = 0",
            (key, value, now),
        )])

    def republished(self, key: bytes, now: float) -> None:
        self.db.write_soon([("UPDATE published SET put_at = ? WHERE key = ?", (now, key))])

    async def remove_published(self, key: bytes) -> None:
        await self.db.write([("DELETE FROM published WHERE key = ?", (key,))])

    def save_peers(self, peers: Sequence[PeerRecord], now: float) -> None:
        self.db.write_soon([("DELETE FROM peers", ())] + [
            ("INSERT INTO peers (id, addrs, seen) VALUES (?, ?, ?)",
             (p.id, pack_addrs(p.addrs), now))
            for p in peers if p.addrs
        ])
