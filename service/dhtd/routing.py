"""The Kademlia routing table: k-buckets keyed by SHA-256 distance.

Pure data structure: no I/O, no clock, no libp2p. Peers are the binary
multihash of their peer ID. Keys are converted with :func:`dhtd.ids.kad_key`
(SHA-256), as go-libp2p-kbucket does, so dhtd measures distance exactly like
go-libp2p and js-libp2p peers.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from dhtd.ids import common_prefix_len, kad_key

# k, the bucket size and the number of peers a lookup returns
# (go-libp2p-kad-dht amino/defaults.go: DefaultBucketSize = 20).
BUCKET_SIZE = 20

# One bucket per possible common-prefix length of two SHA-256 keys.
KEY_BITS = 256


class RoutingTable:
    """k-buckets around ``self_id``.

    Promises: the table never holds ``self_id``; a bucket never holds more
    than ``bucket_size`` peers; a full bucket keeps its older peers (new ones
    are refused until a peer is removed), as the Kademlia paper prescribes.
    """

    def __init__(self, self_id: bytes, bucket_size: int = BUCKET_SIZE) -> None:
        self.self_id = self_id
        self._self_key = kad_key(self_id)
        self.bucket_size = bucket_size
        # Each bucket's peers in the order they joined (dicts: ordered sets).
        self._buckets: list[dict[bytes, None]] = [{} for _ in range(KEY_BITS + 1)]
        # Every peer held, with its kad key as an int: what closest() ranks and
        # __contains__ looks up (both run for every request the node serves).
        self._keys: dict[bytes, int] = {}

    def _bucket_of(self, peer: bytes) -> tuple[dict[bytes, None], bytes]:
        key = kad_key(peer)
        return self._buckets[common_prefix_len(self._self_key, key)], key

    def add(self, peer: bytes) -> bool:
        """Adds ``peer``; returns True if it is in the table afterwards."""
        if peer == self.self_id:
            return False
        bucket, key = self._bucket_of(peer)
        if peer in bucket:
            return True
        if len(bucket) >= self.bucket_size:
            return False
        bucket[peer] = None
        self._keys[peer] = int.from_bytes(key, "big")
        return True

    def remove(self, peer: bytes) -> bool:
        """Removes ``peer``; returns True if it was there."""
        if self._keys.pop(peer, None) is None:
            return False
        bucket, _ = self._bucket_of(peer)
        del bucket[peer]
        return True

    def __contains__(self, peer: object) -> bool:
        return isinstance(peer, bytes) and peer in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def bucket_len(self, cpl: int) -> int:
        """Peers in the bucket of common prefix length ``cpl``."""
        return len(self._buckets[cpl]) if 0 <= cpl <= KEY_BITS else 0

    def deepest_cpl(self) -> int:
        """The longest common prefix with this node of any peer held (0 when empty)."""
        for cpl in range(KEY_BITS, -1, -1):
            if self._buckets[cpl]:
                return cpl
        return 0

    def peers(self) -> list[bytes]:
        """Every peer in the table, nearest buckets last."""
        return [p for bucket in self._buckets for p in bucket]

    def closest(self, target_key: bytes, count: int = BUCKET_SIZE) -> list[bytes]:
        """The ``count`` peers nearest to ``target_key`` (a kad key), nearest first."""
        return nearest(int.from_bytes(target_key, "big"), self._keys.items(), count)


def nearest(target: int, entries: Iterable[tuple[bytes, int]], count: int) -> list[bytes]:
    """The ``count`` peers of ``(peer, kad key as an int)`` pairs nearest to ``target``
    by XOR distance, nearest first."""
    ranked = heapq.nsmallest(count, entries, key=lambda e: e[1] ^ target)
    return [peer for peer, _ in ranked]


def closest_to(
    target_key: bytes, entries: Iterable[tuple[bytes, bytes]], count: int
) -> list[bytes]:
    """Sorts ``(peer, kad_key)`` pairs by XOR distance to ``target_key``; keeps ``count``."""
    return nearest(int.from_bytes(target_key, "big"),
                   ((p, int.from_bytes(k, "big")) for p, k in entries), count)
