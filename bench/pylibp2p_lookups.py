"""py-libp2p's own Kademlia lookups, run from a py-libp2p KadDHT node that joins
a dhtd swarm. Used by bench/compare.py; prints one JSON object.

    python -m bench.pylibp2p_lookups BOOTSTRAP_MULTIADDR TARGET,TARGET,... [ROUNDS]

Each round walks to every target once; the samples are per lookup.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time

import libp2p.network.swarm as _swarm
import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

# The same dial setting dhtd uses (dhtd/p2p/), so both pay the same dial cost.
_swarm._HAPPY_EYEBALLS_DELAY = 0.0


async def main(bootstrap: str, targets: str, rounds: int) -> None:
    host = new_host(key_pair=create_new_key_pair())
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        dht = KadDHT(host, DHTMode.SERVER)
        async with background_trio_service(dht):
            info = info_from_p2p_addr(multiaddr.Multiaddr(bootstrap))
            await host.connect(info)
            await dht.add_peer(info.peer_id, skip_server_mode_check=True)
            await dht.peer_routing.find_closest_peers_network(host.get_id().to_bytes())
            goals = [ID.from_base58(t).to_bytes() for t in targets.split(",")]
            samples = []
            found = []
            for _ in range(rounds):
                for goal in goals:
                    start = time.perf_counter()
                    peers = await dht.peer_routing.find_closest_peers_network(goal)
                    samples.append((time.perf_counter() - start) * 1000)
                    found.append(len(peers))
            print(json.dumps({"median_ms": statistics.median(samples),
                              "min_ms": min(samples), "found": statistics.median(found)}))


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 10)
