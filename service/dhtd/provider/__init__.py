"""What this node provides: the provide set (:mod:`.keyset`) and the reprovide
cycle that keeps it announced, with its status (:mod:`.cycle`). The sweep that
announces many keys at once is :mod:`dhtd.sweep`."""

from dhtd.provider.cycle import CHUNK, EARLY, Cycle, Reprovider, Status, check_period
from dhtd.provider.keyset import DiskProvideSet, ProvideSet

__all__ = ["CHUNK", "EARLY", "Cycle", "DiskProvideSet", "ProvideSet", "Reprovider", "Status",
           "check_period"]
