"""Content a client can fetch: Helia gets a file that dhtd announced, over HTTP,
from a gateway it learned of only through the DHT.

- A 1 MiB UnixFS file (a dag-pb root over 16 raw leaves) sits in a CAR file that
  dhtd reads as its --block-source, and in a trustless gateway on 127.0.0.1
  (tests/gateway.py) that serves its blocks.
- dhtd runs with --announce-append /ip4/127.0.0.1/tcp/<gateway port>/http and
  provides the root recursively: all 17 CIDs.
- Helia (npm `helia`, with only the trustless-gateway broker of
  `@helia/block-brokers` and only libp2p routing), over a js-libp2p kad-dht
  node that is given dhtd's address and nothing else, finds the providers of
  each block on the DHT, fetches the blocks from the announced HTTP address,
  checks them, and the file's bytes hash to what was written
  (tests/interop/helia/fetch.mjs).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from dht.v1 import dht_pb2 as pb
from tests.dag import car_v1, unixfs_file
from tests.gateway import gateway
from tests.swarm import dev_node

HELIA_DIR = Path(__file__).parent / "helia"
FETCH_TIMEOUT = 90  # seconds; the script ends by itself after it


def missing_requirement() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HELIA_DIR / "node_modules" / "helia").is_dir():
        return "tests/interop/helia/node_modules is missing: run scripts/test-tools"
    return None


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing_requirement() is not None, reason=missing_requirement() or ""),
]


def test_helia_fetches_a_file_from_the_gateway_dhtd_announced(tmp_path: Path) -> None:
    content = random.Random(11).randbytes(1 << 20)
    dag = unixfs_file(content, chunk=64 * 1024)
    assert len(dag.blocks) == 17
    cars = tmp_path / "cars"
    cars.mkdir()
    (cars / "file.car").write_bytes(car_v1([dag.root], dag.blocks))
    with gateway() as served:
        served.add_blocks(dag.blocks)
        port = served.url.rsplit(":", 1)[1]
        announced = f"/ip4/127.0.0.1/tcp/{port}/http"
        args = ["--block-source", f"file://{cars}", "--announce-append", announced]
        with dev_node("helia-source", tmp_path / "d", args) as node:
            finals = {r.cid for r in node.dht.Provide(
                pb.ProvideRequest(cids=[str(dag.root)], recursive=True), timeout=60)
                if r.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER}
            assert finals == {str(c) for c in dag.cids}
            fetched = subprocess.run(
                ["node", str(HELIA_DIR / "fetch.mjs"), node.p2p_addr, str(dag.root),
                 str(FETCH_TIMEOUT)],
                capture_output=True, text=True, timeout=FETCH_TIMEOUT + 30, check=False,
                cwd=HELIA_DIR)
    lines = fetched.stdout.strip().splitlines()
    assert lines, (fetched.returncode, fetched.stderr[-2000:])
    result = json.loads(lines[-1])
    assert result["ok"], (result, fetched.stderr[-2000:])
    assert result["bytes"] == len(content)
    assert result["sha256"] == hashlib.sha256(content).hexdigest()
    # The DHT named dhtd as the provider, with the gateway among its addresses.
    assert result["providers"][0]["id"] == node.peer_id
    assert announced in result["providers"][0]["addrs"]
    # And Helia took every block from that gateway, as raw blocks.
    asked = {path.split("?")[0].removeprefix("/ipfs/") for path in served.requests}
    assert {str(c) for c in dag.cids} <= asked, (sorted(asked), served.requests[:5])
