"""Blocks: the DAG under a root, for recursive Provide.

- :mod:`dhtd.blocks.car`: CAR files (v1, v2) read as a stream;
- :mod:`dhtd.blocks.dag`: checking a block against its CID, reading its links
  (raw, dag-pb, dag-cbor);
- :mod:`dhtd.blocks.walk`: every CID reachable from a root, from blocks in any order;
- :mod:`dhtd.blocks.sources`: where blocks come from (``--block-source``: a
  directory of CAR files, a trustless gateway);
- :mod:`dhtd.blocks.provide`: the walk and the announcements together.
"""

from __future__ import annotations

from dhtd.blocks.provide import provide_dags
from dhtd.blocks.sources import DEFAULT_SOURCE_TIMEOUT, BlockSource, parse_source

__all__ = ["DEFAULT_SOURCE_TIMEOUT", "BlockSource", "parse_source", "provide_dags"]
