"""dhtd's own signature check refuses IPNS records with a wrong signature.

Unit tests of dhtd.records inject a verifier; here the daemon's (dhtd.p2p's,
over py-libp2p's Ed25519) does the work, against real Ed25519 records: one put
through gRPC, one sent by a peer as PUT_VALUE. A correctly signed record is
accepted both ways, so a verifier that refuses everything fails too.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.kadmsg import MessageType, new_message, new_record
from dhtd.lookup import PeerRequestError
from dhtd.wire.kad_pb2 import Message
from tests.hostile.peer import Peer, run
from tests.ipns import Ed25519Identity, ipns_key, ipns_record
from tests.swarm import start_node

pytestmark = pytest.mark.integration


async def echo(peer: bytes, request: Message) -> Message:
    """A DHT peer that stores whatever it is sent (its answer echoes PUT_VALUE)."""
    if request.type == MessageType.PUT_VALUE:
        return request
    return new_message(request.type, request.key)


def put(dht: object, key: bytes, value: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        for _ in dht.Put(pb.PutRequest(key=key, value=value), timeout=10):  # type: ignore[attr-defined]
            pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_a_forged_ipns_record_is_refused_through_grpc_and_from_a_peer(tmp_path: Path) -> None:
    node = start_node("ipns", tmp_path / "ipns")
    alice, mallory = Ed25519Identity(), Ed25519Identity()
    key = ipns_key(alice)
    forged = ipns_record(alice, sequence=2, sign_with=mallory)
    genuine = ipns_record(alice, sequence=1)

    async def attack(peer: Peer) -> dict[str, object]:
        seen: dict[str, object] = {}
        assert await peer.call(lambda: node.node.Connect(
            pb.ConnectRequest(addr=peer.addr()), timeout=10).added_to_routing_table)
        seen["grpc forged"] = await peer.call(lambda: put(node.dht, key, forged))
        # From a peer: the forged PUT_VALUE resets the stream and stores nothing.
        message = new_message(MessageType.PUT_VALUE, key)
        message.record.CopyFrom(new_record(key, forged))
        try:
            await peer.request(message)
            seen["peer forged"] = "stored"
        except PeerRequestError:
            seen["peer forged"] = "refused"
        answer = await peer.request(new_message(MessageType.GET_VALUE, key))
        seen["held after forged"] = answer.record.value if answer.HasField("record") else None
        # The genuine record is accepted both ways.
        seen["grpc genuine"] = await peer.call(lambda: put(node.dht, key, genuine))
        answer = await peer.request(new_message(MessageType.GET_VALUE, key))
        seen["held after genuine"] = answer.record.value if answer.HasField("record") else None
        return seen

    try:
        seen = run(node.p2p_addr, attack, handler=echo)
    finally:
        node.stop()
    code, details = seen["grpc forged"]  # type: ignore[misc]
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "signature" in details
    assert seen["peer forged"] == "refused"
    assert seen["held after forged"] is None
    assert seen["grpc genuine"] == (grpc.StatusCode.OK, "")
    assert seen["held after genuine"] == genuine
