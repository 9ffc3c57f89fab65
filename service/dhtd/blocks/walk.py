"""Walking a DAG from its root through a stream of blocks, in whatever order they come.

:func:`walk` reads blocks once, in the order a source gives them (a CAR file's
order, a gateway's depth-first order), and yields every CID reachable from the
root as soon as it is known to be reachable and its block checked. Blocks that
arrive before anything links to them are remembered by their links only (never
their bytes), so memory grows with the number of blocks, never with their size.

Promises:
- a CID is yielded once per multihash (provider records are keyed by multihash);
- every yielded block matched its CID, and its links were read;
- the stream stops being read as soon as the DAG is complete;
- a bad block (:class:`dhtd.blocks.dag.BadBlock`) or a missing one
  (:class:`MissingBlock`) does not stop the walk: every CID reachable without it
  is yielded first, then the first bad block, else the first missing one, is raised;
- at most MAX_DAG_BLOCKS blocks are tracked (:class:`DagTooLarge` past it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from dhtd.blocks.dag import BadBlock, links, verify
from dhtd.ids import IDENTITY, Cid, decode_multihash

# Ours: the most blocks one walk tracks (reached, waiting or seen early), about
# 200 bytes of memory each. A 1 GiB file in 256 KiB chunks is 4,000 blocks.
MAX_DAG_BLOCKS = 1_000_000


class MissingBlock(Exception):
    """A block the DAG links to is in no block the source gave."""

    def __init__(self, cid: Cid, parent: Cid | None, missing: int) -> None:
        under = f" (linked from {parent})" if parent is not None else ""
        more = f", and {missing - 1} more" if missing > 1 else ""
        super().__init__(f"block {cid}{under} is missing from the source{more}")
        self.cid = cid
        self.missing = missing


class DagTooLarge(Exception):
    """The walk would track more than MAX_DAG_BLOCKS blocks."""


async def walk(blocks: AsyncGenerator[tuple[Cid, bytes], None], root: Cid,
               max_blocks: int | None = None) -> AsyncGenerator[Cid, None]:
    """Yields every CID reachable from ``root`` through ``blocks`` (see the module),
    tracking at most ``max_blocks`` (default MAX_DAG_BLOCKS). ``blocks`` is closed
    when the walk ends, early or not (so a file or a connection closes at once)."""
    state = _Walk(root, MAX_DAG_BLOCKS if max_blocks is None else max_blocks)
    for cid in state.start():
        yield cid
    async with aclosing(blocks):
        while state.wanted:  # (an inline root may need no block at all)
            try:
                cid, data = await anext(blocks)
            except StopAsyncIteration:
                break
            for reached in state.take(cid, data):
                yield reached
    state.finish()


class _Walk:
    """The walk's state: what was reached, what is wanted, what came early."""

    def __init__(self, root: Cid, limit: int) -> None:
        self.root = root
        self.limit = limit
        self.done: set[bytes] = set()  # multihashes reached
        self.wanted: dict[bytes, tuple[Cid, Cid | None]] = {root.multihash: (root, None)}
        self.early: dict[bytes, list[Cid] | BadBlock] = {}  # seen before reached
        self.faults: list[BadBlock] = []  # bad blocks reached: the walk goes around them

    def start(self) -> list[Cid]:
        """An inline (identity) root needs no block."""
        if self.root.multihash[0] != IDENTITY:
            return []
        return self._reach(self.root, _read(self.root, _inline(self.root)))

    def take(self, cid: Cid, data: bytes) -> list[Cid]:
        """Reads one block from the source; returns what became reachable with it."""
        mh = cid.multihash
        if mh in self.done or mh in self.early:
            return []  # a duplicate
        entry = self.wanted.get(mh)
        # A block is read as the link that wants it says (its codec), else as its CID does.
        result = _read(entry[0] if entry else cid, data)
        if entry is None:
            self.early[mh] = result
            self._room()
            return []
        return self._reach(entry[0], result)

    def finish(self) -> None:
        """Raises the first bad block reached, else the first block still wanted."""
        if self.faults:
            raise self.faults[0]
        if self.wanted:
            first, parent = next(iter(self.wanted.values()))
            raise MissingBlock(first, parent, len(self.wanted))

    def _room(self) -> None:
        if len(self.done) + len(self.wanted) + len(self.early) > self.limit:
            raise DagTooLarge(f"the DAG has more than {self.limit} blocks")

    def _reach(self, cid: Cid, found: list[Cid] | BadBlock) -> list[Cid]:
        """Marks ``cid`` reached, and what it reaches through blocks that came early;
        returns the reached CIDs to provide, depth first."""
        order: list[Cid] = []
        stack: list[tuple[Cid, list[Cid] | BadBlock]] = [(cid, found)]
        while stack:
            node, result = stack.pop()
            self.done.add(node.multihash)
            self.wanted.pop(node.multihash, None)
            if isinstance(result, BadBlock):
                self.faults.append(result)
                continue
            if node.multihash[0] != IDENTITY:  # inline data: nothing to provide
                order.append(node)
            for child in reversed(result):
                mh = child.multihash
                if mh in self.done or mh in self.wanted:
                    continue
                if mh[0] == IDENTITY:
                    stack.append((child, _read(child, _inline(child))))
                elif mh in self.early:
                    stack.append((child, self.early.pop(mh)))
                else:
                    self.wanted[mh] = (child, node)
                    self._room()
        return order


def _read(cid: Cid, data: bytes) -> list[Cid] | BadBlock:
    """The block's links once it is checked, or what is wrong with it."""
    try:
        verify(cid, data)
        return links(cid, data)
    except BadBlock as exc:
        return exc


def _inline(cid: Cid) -> bytes:
    """The data an identity-multihash CID carries."""
    return decode_multihash(cid.multihash)[1]
