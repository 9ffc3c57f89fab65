"""--announce and --announce-append on real dhtd processes: what identify, provider
records and answers about a node carry.

``appender`` keeps its listen address and adds an HTTP gateway address and an
HTTPS name; ``replacer`` tells peers only a made-up address. A third node, which
knows both only through the DHT, reads their provider records (FindProvs) and
their addresses (FindPeer).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dht.v1 import dht_pb2 as pb
from tests.integration.test_swarm import cid_for
from tests.swarm import Node, dev_node, start_node, wait_until

pytestmark = pytest.mark.integration

GATEWAY = "/ip4/127.0.0.1/tcp/8080/http"
PUBLIC = "/dns4/gw.example.com/tcp/443/https"
ELSEWHERE = "/ip4/127.0.0.2/tcp/4999"  # nobody listens there: only what C says


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node, Node]]:
    tmp: Path = tmp_path_factory.mktemp("announce")
    with dev_node("hub", tmp / "hub") as hub:
        started: list[Node] = []
        try:
            for name, args in (("appender", ["--announce-append", GATEWAY,
                                             "--announce-append", PUBLIC]),
                               ("replacer", ["--announce", ELSEWHERE])):
                started.append(start_node(name, tmp / name,
                                          ["--bootstrap", hub.p2p_addr, *args]))
            for node in started:
                wait_until(lambda n=node: n.node_info().routing_table_size >= 4, 20,
                           f"{node.name}'s table")
            yield hub, started[0], started[1]
        finally:
            for node in started:
                node.stop()


def provider_addrs(asker: Node, cid: str, provider: Node) -> list[str]:
    for response in asker.dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=5),
                                        timeout=30):
        if response.provider.id == provider.peer_id:
            return list(response.provider.addrs)
    raise AssertionError(f"{provider.name} not found as a provider of {cid}")


def provide(node: Node, cid: str) -> None:
    list(node.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=30))


def test_appended_addresses_ride_in_provider_records_after_the_listen_address(
        nodes: tuple[Node, Node, Node]) -> None:
    hub, appender, _ = nodes
    info = appender.node_info()
    assert list(info.announced_addrs) == [*info.addrs, GATEWAY, PUBLIC]
    cid = cid_for("announce-append")
    provide(appender, cid)
    assert provider_addrs(hub, cid, appender) == [*info.addrs, GATEWAY, PUBLIC]


def test_announce_replaces_the_listen_addresses_everywhere(
        nodes: tuple[Node, Node, Node]) -> None:
    hub, appender, replacer = nodes
    info = replacer.node_info()
    assert list(info.announced_addrs) == [ELSEWHERE] and list(info.addrs) != [ELSEWHERE]
    cid = cid_for("announce")
    provide(replacer, cid)
    assert provider_addrs(hub, cid, replacer) == [ELSEWHERE]
    # Identify told the others too: FindPeer from a third node gets the announced
    # address only (nobody dials the replacer at its listen address: it dials them).
    found = appender.dht.FindPeer(pb.FindPeerRequest(peer_id=replacer.peer_id), timeout=30)
    assert list(found.peer.addrs) == [ELSEWHERE]
