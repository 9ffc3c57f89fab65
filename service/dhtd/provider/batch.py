"""Announcing many keys at once: one sweep (:mod:`dhtd.sweep`) finds every key's
k closest peers from a few lookups per keyspace region, then each of those peers
gets the ADD_PROVIDER of every key it is among the closest of, one after another
on one stream (go-libp2p-kad-dht's sweep provider batches the same way).

Promises:

- Each key's events are SENDING_QUERY, then FINAL_PEER or QUERY_ERROR, per peer
  it is sent to; there is no walk of its own to report.
- The returned count of a key is the number of peers that took its record.
- Once a send to a peer fails, the rest of that peer's keys are not tried (each
  gets QUERY_ERROR with the same reason); other peers are not affected.
- At most :data:`SEND_CONCURRENCY` peers are sent to at once, and the loops over
  every key let other tasks run every :data:`dhtd.sweep.CHECKPOINT` keys.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from dhtd import sweep
from dhtd.lookup import EventType, PeerRecord, QueryEvent, describe

log = logging.getLogger("dhtd.provider")

# Ours: peers a batched provide sends ADD_PROVIDERs to at once (each gets its keys
# one after another, on one stream).
SEND_CONCURRENCY = 32

# Where the loops over every key let other tasks run (a name of its own, so that
# tests can count the yields).
_checkpoint = trio.lowlevel.checkpoint


async def announce(
    keys: Sequence[bytes],
    closest: sweep.Lookup,
    send: Callable[[bytes, bytes], Awaitable[None]],
    emit: Callable[[bytes, QueryEvent], None],
    k: int,
    lookups: int,
) -> dict[bytes, int]:
    """Announces ``keys`` (each once); returns how many peers took each.

    ``closest`` is a FIND_NODE walk (the sweep's lookup: the peers that answered,
    and those that did not), ``send(peer, key)`` delivers the key's ADD_PROVIDER,
    ``emit(key, event)`` reports; ``k`` peers per key, ``lookups`` at once. Raises
    what ``closest`` raises when the sweep cannot start (no peers)."""
    found = await sweep.plan(keys, closest, k=k, concurrency=lookups)
    to_peer: dict[bytes, tuple[PeerRecord, list[bytes]]] = {}
    for i, (key, peers) in enumerate(found.peers_of.items(), 1):
        for peer in peers:
            to_peer.setdefault(peer.id, (peer, []))[1].append(key)
        if i % sweep.CHECKPOINT == 0:
            await _checkpoint()
    taken = dict.fromkeys(keys, 0)
    limiter = trio.CapacityLimiter(SEND_CONCURRENCY)

    async def send_all(peer: PeerRecord, mine: list[bytes]) -> None:
        failure = ""  # once a send to this peer failed, the rest are not tried
        async with limiter:
            for key in mine:
                emit(key, QueryEvent(EventType.SENDING_QUERY, peer.id))
                if not failure:
                    try:
                        await send(peer.id, key)
                    except Exception as exc:  # one peer's failure is that peer's
                        failure = describe(exc)
                if failure:
                    emit(key, QueryEvent(EventType.QUERY_ERROR, peer.id, extra=failure))
                    continue
                taken[key] += 1
                emit(key, QueryEvent(EventType.FINAL_PEER, peer.id, responses=(peer,)))

    async with trio.open_nursery() as nursery:
        for peer, mine in to_peer.values():
            nursery.start_soon(send_all, peer, mine)
    log.debug("batched provide", extra={"keys": len(taken), "lookups": found.lookups,
                                        "walked": found.walked, "peers": len(to_peer)})
    return taken
