"""What this node provides: the provide set (:mod:`.keyset`), the reprovide cycle
that keeps it announced, with its status (:mod:`.cycle`), and the batched
announcement of many keys at once (:mod:`.batch`, over :mod:`dhtd.sweep`)."""

from dhtd.provider import batch
from dhtd.provider.cycle import CHUNK, EARLY, Cycle, Reprovider, Status, check_period
from dhtd.provider.keyset import DiskProvideSet, ProvideSet

__all__ = ["CHUNK", "EARLY", "Cycle", "DiskProvideSet", "ProvideSet", "Reprovider", "Status",
           "batch", "check_period"]
