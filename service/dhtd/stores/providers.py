"""Provider records held for other peers (ADD_PROVIDER / GET_PROVIDERS)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dhtd.errors import InvalidRecord
from dhtd.stores.shares import Shares, StoreFull

# go-libp2p-kad-dht amino.DefaultProvideValidity (48 h): how long a provider
# record lasts before it must be re-provided.
PROVIDE_VALIDITY = 48 * 3600.0

# Ours (go-libp2p-kad-dht's datastore is unbounded): the most provider records held
# for other peers. A record costs ~200 bytes here, so about 40 MB at the cap. A node
# among N receives about 20/N of every provider's keys: 200,000 covers a provider
# of 100 M keys in a 10,000-node network.
MAX_PROVIDER_RECORDS = 200_000

# Ours: the share of one peer, 5% of the store, so at least 20 peers are needed to
# fill it, and a full store then evicts from the biggest of them (dhtd.stores.shares).
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


@dataclass(frozen=True)
class ProviderRecord:
    """One peer providing one key, until ``expires_at`` (epoch seconds).

    ``addrs`` are binary multiaddrs."""

    peer: bytes
    addrs: tuple[bytes, ...]
    expires_at: float


class ProviderStore:
    """Provider records: key multihash -> provider peer -> record, bounded and fair.

    A record is live while ``now < received + validity``. Each peer may hold at most
    ``per_peer`` records, the store at most ``max_records``; a full store evicts the
    oldest records of its biggest holder to admit a smaller one, else refuses
    (:class:`StoreFull`). A key keeps at most ``max_per_key`` providers. Addresses
    are kept once per peer, at most MAX_PROVIDER_ADDRS of them.
    """

    def __init__(
        self,
        validity: float = PROVIDE_VALIDITY,
        max_records: int = MAX_PROVIDER_RECORDS,
        per_peer: int = MAX_PROVIDER_RECORDS_PER_PEER,
        max_per_key: int = MAX_PROVIDERS_PER_KEY,
    ) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key must be at least 1")
        self._shares: Shares[tuple[bytes, bytes]] = Shares(max_records, per_peer, validity)
        self._max_per_key = max_per_key
        self._keys: dict[bytes, dict[bytes, None]] = {}
        self._addrs: dict[bytes, tuple[bytes, ...]] = {}

    @property
    def validity(self) -> float:
        return self._shares.max_age

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
        for entry in self._shares.collect(now, COLLECT_PER_ADD):
            self._forget(entry)
        peers = self._keys.get(key)
        entry = (key, peer)
        known = peers is not None and peer in peers
        if not known and peers is not None and len(peers) >= self._max_per_key:
            self._expire_key(key, now)
            peers = self._keys.get(key)
            if peers is not None and len(peers) >= self._max_per_key:
                raise StoreFull("too many providers for this key")
        for evicted in self._shares.admit(entry, peer, 1, now):
            self._forget(evicted)
        peers = self._keys.setdefault(key, {})
        peers.pop(peer, None)
        peers[peer] = None  # most recently added last
        if addrs:
            self._addrs[peer] = tuple(addrs[:MAX_PROVIDER_ADDRS])
        return ProviderRecord(peer, self._addrs.get(peer, ()), now + self.validity)

    def get(self, key: bytes, now: float) -> list[ProviderRecord]:
        """The live providers of ``key``, most recently added first."""
        peers = self._keys.get(key)
        if not peers:
            return []
        out = []
        for peer in reversed(peers):
            found = self._shares.get((key, peer))
            if found is not None and now - found.received_at < self.validity:
                out.append(ProviderRecord(peer, self._addrs.get(peer, ()),
                                          found.received_at + self.validity))
        return out

    def _expire_key(self, key: bytes, now: float) -> None:
        for peer in list(self._keys.get(key, ())):
            if not self._shares.live((key, peer), now):
                self._shares.remove((key, peer))
                self._forget((key, peer))

    def _forget(self, entry: tuple[bytes, bytes]) -> None:
        key, peer = entry
        peers = self._keys.get(key)
        if peers is not None:
            peers.pop(peer, None)
            if not peers:
                del self._keys[key]
        if self._shares.usage(peer) == 0:
            self._addrs.pop(peer, None)

    def collect(self, now: float, budget: int) -> int:
        """Removes up to ``budget`` expired records; returns how many."""
        gone = self._shares.collect(now, budget)
        for entry in gone:
            self._forget(entry)
        return len(gone)

    def expire(self, now: float) -> int:
        """Removes every record expired at ``now`` (tests and shutdown; the node
        collects incrementally with :meth:`collect`)."""
        return self.collect(now, len(self._shares))

    def usage(self, peer: bytes) -> int:
        """Records paid for by ``peer``."""
        return self._shares.usage(peer)

    @property
    def keys_count(self) -> int:
        """Keys with at least one record held."""
        return len(self._keys)

    def __len__(self) -> int:
        """Records held, including expired ones not yet collected."""
        return len(self._shares)


__all__ = ["ProviderRecord", "ProviderStore", "StoreFull"]
