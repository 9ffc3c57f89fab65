"""Where records landed: asks every live node of a swarm, over kad, whether it holds each.

One client-mode libp2p host (dhtd's, on 127.0.0.1; in the lab it has group 0, so it talks
to the nodes directly, with no delay, and no proxy counts it) sends each live node a
GET_PROVIDERS for every provided CID (held: the answer's providerPeers name the
provider) and a GET_VALUE for every put key (held: the answer's record has the value).
Both Go and dhtd answer those from their own store, so the same question serves both.
A node that cannot be reached or does not answer counts as holding nothing, and is
named in ``unreachable``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import multiaddr
import trio

from dhtd.addrs import parse_dial_addr
from dhtd.ids import b58encode
from dhtd.kadmsg import MessageType, new_message
from dhtd.p2p import Host, new_identity

ASK_TIMEOUT = 10.0
PARALLEL = 16
INSPECT_TIMEOUT = 300.0


@dataclass
class Holdings:
    providers: list[set[str]]  # per provided CID: the peer IDs holding its record
    values: list[set[str]]  # per put key
    unreachable: list[str] = field(default_factory=list)


def inspect(protocol: str, nodes: Sequence[tuple[str, str]],
            provided: Sequence[tuple[bytes, str]], put: Sequence[tuple[bytes, bytes]]
            ) -> Holdings:
    """``nodes``: (peer ID, dial addr) of the live nodes; ``provided``: (multihash,
    provider's peer ID); ``put``: (key, value)."""
    held = Holdings([set() for _ in provided], [set() for _ in put])

    async def ask(host: Host, peer_id: str, addr: str, limit: trio.CapacityLimiter) -> None:
        peer, transport = parse_dial_addr(addr)
        async with limit:
            try:
                with trio.fail_after(ASK_TIMEOUT):
                    await host.connect(peer, transport)
                for i, (mh, provider) in enumerate(provided):
                    with trio.fail_after(ASK_TIMEOUT):
                        answer = await host.request(peer, new_message(
                            MessageType.GET_PROVIDERS, mh))
                    if any(b58encode(p.id) == provider for p in answer.providerPeers):
                        held.providers[i].add(peer_id)
                for i, (key, value) in enumerate(put):
                    with trio.fail_after(ASK_TIMEOUT):
                        answer = await host.request(peer, new_message(
                            MessageType.GET_VALUE, key))
                    if answer.HasField("record") and answer.record.value == value:
                        held.values[i].add(peer_id)
            except Exception as exc:  # any failure: this node counts as holding nothing
                held.unreachable.append(f"{peer_id}: {type(exc).__name__}: {exc}"[:200])

    async def main() -> None:
        host = Host(new_identity(), protocol)
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0").to_bytes()]
        limit = trio.CapacityLimiter(PARALLEL)
        with trio.fail_after(INSPECT_TIMEOUT):
            async with host.open(listen, None, lambda peer: None), trio.open_nursery() as n:
                for peer_id, addr in nodes:
                    n.start_soon(ask, host, peer_id, addr, limit)

    # py-libp2p logs each failed dial as an error; the failures are in ``unreachable``.
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    trio.run(main)
    return held
