"""A batched Provide on a 30-node network: 2,000 CIDs in one call.

3 dhtd processes with 9 dev peers each (30 DHT nodes on 127.0.0.1). After the
call, sampled CIDs are found from another process, and each sampled CID's
provider record sits on exactly its true 20 closest peers (asked one by one
with GET_PROVIDERS), from a handful of lookups instead of one walk per CID.
"""

from __future__ import annotations

import hashlib
import random
import re
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from bench.mass_start import Network, kad, network
from dht.v1 import dht_pb2 as pb
from dhtd.ids import b58decode, parse_cid
from dhtd.kadmsg import MessageType, new_message
from tests.hostile.peer import Peer, run
from tests.integration.test_swarm import cid_for
from tests.swarm import Node, wait_until

pytestmark = pytest.mark.integration

CIDS = 2000
SAMPLE = 20
K = 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("batched"), 3, 9) as started:
        yield started


def addrs_of(procs: list[Node]) -> dict[str, str]:
    """Every node's dial address: /ip4/…/tcp/…/p2p/<id>."""
    out = {p.peer_id: p.p2p_addr for p in procs}
    for proc in procs:
        for line in proc.lines:
            if line.get("msg") == "dev peer started":
                out[str(line["peer_id"])] = f"{line['addr']}/p2p/{line['peer_id']}"
    return out


def knows_everyone(node: Node, net: Network) -> bool:
    """The node's walk to a random target finds its true 20 closest."""
    target = random.choice(net.peer_ids)
    try:
        found = {r.event.id for r in node.dht.Query(pb.QueryRequest(peer_id=target),
                                                     timeout=20)
                 if r.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER}
    except grpc.RpcError:
        return False
    return found == net.true_closest(target, K, node.peer_id)


def settled(net: Network) -> None:
    """Waits until every process's walks to 3 random targets in a row find their
    true 20 closest (the tables of the 30 nodes have filled)."""
    for node in net.procs:
        streak = [0]

        def three_in_a_row(n: Node = node, streak: list[int] = streak) -> bool:
            streak[0] = streak[0] + 1 if knows_everyone(n, net) else 0
            return streak[0] >= 3

        wait_until(three_in_a_row, 90, f"{node.name} to know the network")


def outbound_find_nodes(node: Node) -> float:
    text = urllib.request.urlopen(f"http://{node.info['metrics_addr']}/metrics",
                                  timeout=10).read().decode()
    pattern = r'^dht_outbound_requests_total\{[^}]*message_type="FIND_NODE"[^}]*\} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.M))


def holders_of(key: bytes, net: Network, provider: str) -> set[str]:
    """The true 20 closest nodes to a provider key, without the provider."""
    target = int.from_bytes(hashlib.sha256(key).digest(), "big")
    ranked = sorted((p for p in net.peer_ids if p != provider),
                    key=lambda p: int.from_bytes(kad(p), "big") ^ target)
    return set(ranked[:K])


def test_2000_cids_in_one_call_land_on_their_true_closest(net: Network) -> None:
    provider, asker = net.procs[0], net.procs[2]
    settled(net)
    cids = [cid_for(f"batched {i}") for i in range(CIDS)]
    before = outbound_find_nodes(provider)
    responses = list(provider.dht.Provide(pb.ProvideRequest(cids=cids, batch_events=True),
                                          timeout=120))
    walked = outbound_find_nodes(provider) - before
    finals = [e for r in responses for e in r.events
              if e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER]
    assert {e.cid for e in finals} == set(cids)
    assert walked < CIDS / 10, walked  # a walk per CID sends several FIND_NODEs per CID

    sample = random.Random(1).sample(cids, SAMPLE)
    for cid in sample:
        found = list(asker.dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=1),
                                         timeout=20))
        assert [f.provider.id for f in found] == [provider.peer_id], cid

    # Each sampled record sits on exactly its CID's true 20 closest. (A holder
    # handles its ADD_PROVIDERs in order, about 1,300 of them here: its answers
    # may lag the announcement by seconds, so each is asked until they agree.)
    keys = {cid: parse_cid(cid).multihash for cid in sample}
    expected = {cid: holders_of(key, net, provider.peer_id) for cid, key in keys.items()}
    provider_id = b58decode(provider.peer_id)
    for node_id, addr in addrs_of(net.procs).items():
        if node_id == provider.peer_id:
            continue

        async def ask(peer: Peer) -> set[str]:
            held = set()
            for cid, key in keys.items():
                answer = await peer.request(new_message(MessageType.GET_PROVIDERS, key))
                if any(p.id == provider_id for p in answer.providerPeers):
                    held.add(cid)
            return held

        should = {cid for cid in sample if node_id in expected[cid]}

        def agrees(addr: str = addr, should: set[str] = should, node_id: str = node_id) -> bool:
            held = run(addr, ask, timeout=60)
            assert held <= should, (node_id, held - should)  # never a wrong holder
            return held == should

        wait_until(agrees, 60, f"{node_id} to hold {len(should)} sampled records")
