"""Put answers UNAVAILABLE, against a real dhtd, when no peer accepts the record.

The only DHT peer of the dhtd under test is a kad peer on a real libp2p host that
answers every request but never stores a record (its PUT_VALUE answer does not echo
the record back).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.kadmsg import new_message
from dhtd.wire.kad_pb2 import Message
from tests.hostile.peer import Peer, run
from tests.swarm import start_node

pytestmark = pytest.mark.integration


def test_put_is_unavailable_when_no_peer_stores_the_record(tmp_path: Path) -> None:
    node = start_node("lonely", tmp_path / "lonely", ["--namespace", "app"])

    async def refuse(peer: bytes, request: Message) -> Message:
        return new_message(request.type, request.key)  # no closer peers, no echo

    async def attack(peer: Peer) -> tuple[grpc.StatusCode, str, list[int]]:
        added = await peer.call(lambda: node.node.Connect(
            pb.ConnectRequest(addr=peer.addr()), timeout=10).added_to_routing_table)
        assert added
        events: list[int] = []

        def put() -> tuple[grpc.StatusCode, str]:
            try:
                for response in node.dht.Put(pb.PutRequest(key=b"/app/k", value=b"v"),
                                             timeout=10):
                    events.append(response.event.type)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

        code, details = await peer.call(put)
        return code, details, events

    try:
        code, details, events = run(node.p2p_addr, attack, handler=refuse)
    finally:
        node.stop()
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "no peer accepted the record" in details
    # The peer was asked and its refusal streamed before the status.
    assert pb.QUERY_EVENT_TYPE_QUERY_ERROR in events
    assert pb.QUERY_EVENT_TYPE_FINAL_PEER not in events
