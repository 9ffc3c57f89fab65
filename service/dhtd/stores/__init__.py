"""Records this node holds for other peers: provider records and value records.

Both stores are bounded and fair (:mod:`dhtd.stores.shares`): one peer cannot take
more than its share, a full store makes room by evicting from its biggest holder,
and every cap check costs O(1). Records expire by age and are collected a few at a
time (never by a sweep over the whole store).
"""

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

__all__ = [
    "MAX_PROVIDERS_PER_KEY",
    "MAX_PROVIDER_ADDRS",
    "MAX_PROVIDER_RECORDS",
    "MAX_RECORD_AGE",
    "MAX_VALUE_STORE_BYTES",
    "PROVIDE_VALIDITY",
    "ProviderRecord",
    "ProviderStore",
    "StoreFull",
    "StoredRecord",
    "ValueStore",
]
