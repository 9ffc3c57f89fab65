"""Recursive Provide: every CID of the DAG under a root, read from the block sources.

The walk (:mod:`dhtd.blocks.walk`) runs ahead of the announcements by at most
WALK_AHEAD CIDs; the CIDs it has found are handed to :meth:`DhtNode.provide`
PROVIDE_BATCH at a time, so each batch is committed to the provide set before
its first event, and announced as the rest of the DAG is still being read.

Sources are tried in order until one has the root; that one supplies the
whole DAG. Outcomes, as the API states them:

| what happened                         | events, then status                                  |
|---------------------------------------|------------------------------------------------------|
| no --block-source                     | FAILED_PRECONDITION, naming the flag                 |
| the root in no source                 | NOT_FOUND                                            |
| a source down, slow, or not a CAR     | UNAVAILABLE, naming it                               |
| a block missing partway               | the reachable CIDs; QUERY_ERROR; FAILED_PRECONDITION |
| a block that does not hash to its CID | the reachable CIDs; QUERY_ERROR; DATA_LOSS           |
| more than MAX_DAG_BLOCKS blocks       | what was provided; RESOURCE_EXHAUSTED                |

(The QUERY_ERROR names the block's CID, and says what is wrong with it.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

import trio

from dhtd.blocks.dag import BadBlock
from dhtd.blocks.sources import BlockSource, RootNotFound, SourceUnavailable, describe
from dhtd.blocks.walk import DagTooLarge, MissingBlock, walk
from dhtd.errors import (
    DataLoss,
    DeadlineExceeded,
    DhtdError,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from dhtd.ids import Cid
from dhtd.lookup import EventType, QueryEvent

if TYPE_CHECKING:
    from dhtd.node import DhtNode

# Ours: CIDs announced per DhtNode.provide call: one commit to the provide set,
# then one sweep (dhtd.sweep: at least --provide-batch-min of them, else a walk each).
PROVIDE_BATCH = 512

# Ours: how long a batch waits for more CIDs after its first (a slow source's
# CIDs are announced at most this late; a fast one fills PROVIDE_BATCH first).
BATCH_LINGER = 0.5

# Ours: how far the walk may run ahead of the announcements, in CIDs.
WALK_AHEAD = 1024

NO_SOURCE = (
    "recursive provide reads the DAG from a block source, and this node has none: "
    "start dhtd with --block-source file:///dir (a directory of CAR files) or "
    "--block-source http://host:port (a trustless gateway); env DHTD_BLOCK_SOURCE"
)

EmitCid = Callable[[Cid, QueryEvent], None]


async def provide_dags(node: DhtNode, sources: Sequence[BlockSource], roots: Sequence[Cid],
                       emit: EmitCid, timeout: float | None, batch_timeout: float) -> int:
    """Provides every CID reachable from each of ``roots`` (see the module); returns
    how many CIDs were provided. Raises the errors in the module's table, and
    DeadlineExceeded once ``timeout`` (the caller's deadline; None: none) passed.
    Each batch's announcements get at most ``batch_timeout`` (--query-timeout):
    a DAG may take longer than one operation, and every step of it is bounded
    (reads by the source timeout, the DAG by MAX_DAG_BLOCKS)."""
    if not sources:
        raise FailedPrecondition(NO_SOURCE)
    total = missed = 0
    budget = math.inf if timeout is None else timeout
    with trio.move_on_after(budget) as scope:
        deadline = trio.current_time() + budget
        for root in dict.fromkeys(roots):
            done, failed = await _one_dag(node, sources, root, emit,
                                          lambda: min(batch_timeout,
                                                      deadline - trio.current_time()))
            total, missed = total + done, missed + failed
    if scope.cancelled_caught:
        raise DeadlineExceeded(f"the DAGs were not provided within {budget:g} s "
                               f"({total} CIDs were)")
    if missed:
        raise Unavailable(f"no peer accepted the provider record of {missed} of {total} CIDs")
    return total


async def _one_dag(node: DhtNode, sources: Sequence[BlockSource], root: Cid, emit: EmitCid,
                   budget: Callable[[], float]) -> tuple[int, int]:
    down: list[str] = []
    for source in sources:
        send, receive = trio.open_memory_channel[Cid | Exception](WALK_AHEAD)

        async def read(source: BlockSource = source,
                       send: trio.MemorySendChannel[Cid | Exception] = send) -> None:
            async with send:
                try:
                    async with aclosing(walk(source.blocks(root), root)) as cids:
                        async for cid in cids:
                            await send.send(cid)
                except (BadBlock, MissingBlock, DagTooLarge, RootNotFound,
                        SourceUnavailable) as exc:
                    with contextlib.suppress(trio.BrokenResourceError):
                        await send.send(exc)
                except trio.BrokenResourceError:
                    pass  # the announcements stopped (an error there): so does the walk

        failed: DhtdError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            try:
                provided, missed, fault = await _announce(node, receive, emit, budget)
            except DhtdError as exc:  # raised below, outside the nursery (not in a group)
                failed = exc
            nursery.cancel_scope.cancel()  # (the walk has ended, or must)
        if failed is not None:
            raise failed
        if provided == 0 and _root_absent(fault, root):
            continue
        if provided == 0 and isinstance(fault, SourceUnavailable):
            down.append(str(fault))
            continue
        if fault is not None:
            raise _status(fault, node, root, emit)
        return provided, missed
    if down:
        raise Unavailable("; ".join(down))
    raise NotFound(f"the root {root} is in none of the block sources ({describe(sources)})")


async def _announce(node: DhtNode, receive: trio.MemoryReceiveChannel[Cid | Exception],
                    emit: EmitCid, budget: Callable[[], float]
                    ) -> tuple[int, int, Exception | None]:
    """Provides what the walk sends, a batch at a time; returns (provided, of which
    no peer took, the walk's fault). Unavailable at once if the node has no peers.

    A batch is PROVIDE_BATCH CIDs, or what the walk found by BATCH_LINGER after
    the batch's first CID, or the rest when the walk ends: large enough to be
    announced in one sweep (dhtd.sweep), soon enough from a slow source."""
    provided = missed = 0
    ended = False
    async with receive:
        while not ended:
            batch: list[Cid] = []
            fault: Exception | None = None
            with trio.move_on_after(math.inf) as linger:
                while len(batch) < PROVIDE_BATCH:
                    try:
                        item = await receive.receive()
                    except trio.EndOfChannel:
                        ended = True
                        break
                    if isinstance(item, Exception):
                        fault, ended = item, True
                        break
                    batch.append(item)
                    if len(batch) == 1:
                        linger.deadline = trio.current_time() + BATCH_LINGER
            if batch:
                counts = await node.provide([c.multihash for c in batch],
                                            _tagged(batch, emit), budget(), strict=False)
                provided += len(batch)
                missed += counts.count(0)
            if fault is not None:
                return provided, missed, fault
    return provided, missed, None


def _tagged(batch: list[Cid], emit: EmitCid) -> Callable[[int, QueryEvent], None]:
    return lambda i, event: emit(batch[i], event)


def _root_absent(fault: Exception | None, root: Cid) -> bool:
    return isinstance(fault, RootNotFound) or (
        isinstance(fault, MissingBlock) and fault.cid.multihash == root.multihash)


def _status(fault: Exception, node: DhtNode, root: Cid, emit: EmitCid) -> Exception:
    """Tells the caller which CID went wrong (a QUERY_ERROR), and the status to end with."""
    cid = getattr(fault, "cid", root)
    emit(cid, QueryEvent(EventType.QUERY_ERROR, node.self_id, extra=str(fault)))
    if isinstance(fault, BadBlock):
        return DataLoss(str(fault)) if fault.mismatch else FailedPrecondition(str(fault))
    if isinstance(fault, MissingBlock):
        return FailedPrecondition(f"{fault}; the CIDs reachable without it were provided")
    if isinstance(fault, DagTooLarge):
        return ResourceExhausted(f"{fault}; the CIDs found before were provided")
    return Unavailable(str(fault))
