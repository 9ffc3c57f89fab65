"""Clients that cancel calls must not cost the node its connections.

A cancelled gRPC call cancels the lookup it started, and with it requests to
peers in the middle of a write. py-libp2p's noise session advanced its nonce
before sending, so a write cut short desynchronised the two ends: the peer
failed to authenticate the next frame and dropped the connection, and the
node's routing table emptied (seen in the Node client suite: "no peer answered
the query" right after a call with a 1 ms deadline).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from tests.swarm import Node, dev_node

pytestmark = pytest.mark.integration

# Deadlines that end calls while their requests to peers are being written.
SHORT_DEADLINES = (0.001, 0.003, 0.01, 0.03)
ROUNDS = 40  # before the fix, the table lost peers within the first 2 rounds


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with dev_node("cancel", tmp_path_factory.mktemp("cancel")) as live:
        yield live


def cancel_calls(node: Node, target: str) -> None:
    """One round: every call ends before its walk does."""
    for deadline in SHORT_DEADLINES:
        try:
            for _ in node.dht.Query(pb.QueryRequest(peer_id=target), timeout=deadline):
                pass
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
        try:
            node.dht.FindPeer(pb.FindPeerRequest(peer_id=target), timeout=deadline)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    walk = node.dht.Query(pb.QueryRequest(peer_id=target), timeout=30)
    next(walk)
    walk.cancel()


def test_cancelled_calls_keep_every_peer(node: Node) -> None:
    target = node.dev_peer_ids()[0]
    sizes = []
    for _ in range(ROUNDS):
        cancel_calls(node, target)
        sizes.append(node.node_info().routing_table_size)
    assert min(sizes) == 4, f"routing table sizes after each round: {sizes}"
    # And the connections still carry whole walks.
    events = list(node.dht.Query(pb.QueryRequest(peer_id=target), timeout=30))
    assert any(e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER for e in events)
