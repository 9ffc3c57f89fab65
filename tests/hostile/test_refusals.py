"""Put and Provide answer UNAVAILABLE, against a real dhtd, when no peer accepts.

The only DHT peer of the dhtd under test is a kad peer on a real libp2p host. For
Put it answers every request but never stores a record (its PUT_VALUE answer does
not echo the record back); for Provide it resets every kad stream about the provided CID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.ids import parse_cid
from dhtd.kadmsg import new_message
from dhtd.wire.kad_pb2 import Message
from tests.hostile.peer import Handler, Peer, run
from tests.swarm import Node, start_node

pytestmark = pytest.mark.integration

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def stream_against(node: Node, handler: Handler,
                   call: Callable[[], Iterator[object]]) -> tuple[grpc.StatusCode, str, list[int]]:
    """Connects a peer running ``handler`` to ``node``, then runs the streaming ``call``."""

    async def attack(peer: Peer) -> tuple[grpc.StatusCode, str, list[int]]:
        added = await peer.call(lambda: node.node.Connect(
            pb.ConnectRequest(addr=peer.addr()), timeout=10).added_to_routing_table)
        assert added
        events: list[int] = []

        def consume() -> tuple[grpc.StatusCode, str]:
            try:
                for response in call():
                    event = response.event  # type: ignore[attr-defined]
                    events.append(event.type)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

        code, details = await peer.call(consume)
        return code, details, events

    try:
        return run(node.p2p_addr, attack, handler=handler)
    finally:
        node.stop()


def test_put_is_unavailable_when_no_peer_stores_the_record(tmp_path: Path) -> None:
    node = start_node("lonely", tmp_path / "lonely", ["--namespace", "app"])

    async def refuse(peer: bytes, request: Message) -> Message:
        return new_message(request.type, request.key)  # no closer peers, no echo

    code, details, events = stream_against(
        node, refuse, lambda: node.dht.Put(pb.PutRequest(key=b"/app/k", value=b"v"), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "no peer accepted the record" in details
    # The peer was asked and its refusal streamed before the status.
    assert pb.QUERY_EVENT_TYPE_QUERY_ERROR in events
    assert pb.QUERY_EVENT_TYPE_FINAL_PEER not in events


def test_provide_is_unavailable_when_no_peer_takes_the_record(tmp_path: Path) -> None:
    node = start_node("lonely", tmp_path / "lonely")

    key = parse_cid(CID).multihash

    async def reset(peer: bytes, request: Message) -> Message:
        # Only requests for this CID: the node's own refresh walks (other keys) get an
        # answer, so the peer stays in the table until the Provide reaches it.
        if request.key == key:
            raise RuntimeError("this peer resets every stream about the CID")
        return new_message(request.type, request.key)

    code, details, events = stream_against(
        node, reset, lambda: node.dht.Provide(pb.ProvideRequest(cids=[CID]), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "no peer accepted the provider record of 1 of 1 CIDs" in details
    assert pb.QUERY_EVENT_TYPE_QUERY_ERROR in events
    assert pb.QUERY_EVENT_TYPE_FINAL_PEER not in events
