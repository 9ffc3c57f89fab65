"""Helia's Delegated Routing V1 client (npm @helia/delegated-routing-v1-http-api-client)
against a live dhtd's --routing-http-addr: providers (streamed as NDJSON, as the client
asks by default), peers, closest peers, and IPNS get and put, the record's bytes
unchanged both ways (tests/interop/helia/routing_client.mjs)."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.ids import LIBP2P_KEY, Cid
from tests.integration.test_routing_http import GATEWAY, routing_node
from tests.integration.test_swarm import cid_for
from tests.interop.test_helia import HELIA_DIR, missing_requirement
from tests.ipns import Ed25519Identity, ipns_record
from tests.swarm import Node

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing_requirement() is not None, reason=missing_requirement() or ""),
]

@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with routing_node(tmp_path_factory.mktemp("client"), "client") as started:
        yield started


def client(node: Node, *args: str) -> dict[str, Any]:
    run = subprocess.run(
        ["node", str(HELIA_DIR / "routing_client.mjs"), f"http://{node.info['routing_http_addr']}",
         *args], capture_output=True, text=True, timeout=90, check=False, cwd=HELIA_DIR)
    lines = run.stdout.strip().splitlines()
    assert lines, run.stderr[-2000:]
    result: dict[str, Any] = json.loads(lines[-1])
    assert result["ok"], (result, run.stderr[-2000:])
    return result


def test_providers_stream_with_this_nodes_record_first(node: Node) -> None:
    cid = cid_for("routing client providers")
    list(node.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=30))
    got = client(node, "providers", cid)
    (record,) = got["records"]
    assert record["id"] == node.peer_id
    assert GATEWAY in record["addrs"]
    assert record["protocols"] == ["transport-ipfs-gateway-http"]
    # Streamed: the record arrived before the stream (and the walk behind it) ended.
    assert record["ms"] <= got["endMs"]


def test_peers_and_closest_peers(node: Node) -> None:
    peer = node.dev_peer_ids()[0]
    (record,) = client(node, "peers", peer)["records"]
    assert record["id"] == peer and record["addrs"]
    closest = client(node, "closest", cid_for("routing client closest"))["records"]
    assert {r["id"] for r in closest} == set(node.dev_peer_ids())


def test_ipns_put_and_get_through_the_client_keep_the_record_bytes(node: Node) -> None:
    owner = Ed25519Identity()
    name = str(Cid(1, LIBP2P_KEY, owner.peer_id))
    record = ipns_record(owner, sequence=7)
    client(node, "ipns-put", name, base64.b64encode(record).decode())
    got = client(node, "ipns-get", name)
    assert got["sequence"] == "7"
    assert got["value"] == "/ipfs/bafkqaddwgevxmmraojswg33smq"
    assert base64.b64decode(got["record"]) == record
    # And the DHT has it: Get through gRPC reads the same bytes.
    value = node.dht.Get(pb.GetRequest(key=b"/ipns/" + owner.peer_id), timeout=30).value
    assert value == record
