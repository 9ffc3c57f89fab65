"""The README's grpcurl lines, run with the real grpcurl binary against a dev node.

Also the core checks through grpcurl and reflection alone: list, FindPeer,
Get, FindProvs, and the NOT_FOUND / INVALID_ARGUMENT statuses.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.swarm import Node
from tests.swarm import dev_node as start_dev_node

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
README_ADDR = "127.0.0.1:50051"


@pytest.fixture(scope="module")
def dev_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with start_dev_node("dev", tmp_path_factory.mktemp("dev")) as node:
        yield node


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it with grpcurl", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]



def run_line(line: str, node: Node, peer: str) -> subprocess.CompletedProcess[str]:
    words = shlex.split(line.replace("$PEER", peer))
    words = [node.grpc_addr if w == README_ADDR else w for w in words]
    assert words[0] == "grpcurl"
    return subprocess.run([GRPCURL, *words[1:]], capture_output=True, text=True, timeout=30,
                          check=False)


def test_readme_has_an_example_for_every_rpc() -> None:
    text = "\n".join(readme_commands())
    for rpc in ("FindPeer", "FindProvs", "Get", "Provide", "Put", "Query", "Info"):
        assert f"/{rpc}" in text, rpc


def test_every_readme_grpcurl_line_works(dev_node: Node) -> None:
    peer = dev_node.dev_peer_ids()[0]
    outputs = {}
    for line in readme_commands():
        done = run_line(line, dev_node, peer)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        outputs[line.split()[-1]] = done.stdout
    assert "dht.v1.DhtService" in outputs["list"]
    assert "rpc FindProvs" in outputs["dht.v1.DhtService"]
    assert json.loads(outputs["grpc.health.v1.Health/Check"]) == {"status": "SERVING"}
    assert json.loads(outputs["dht.v1.DhtService/FindPeer"])["peer"]["id"] == peer
    assert '"QUERY_EVENT_TYPE_SENDING_QUERY"' in outputs["dht.v1.DhtService/Query"]
    assert "QUERY_EVENT_TYPE_FINAL_PEER" in outputs["dht.v1.DhtService/Provide"]
    assert json.loads(outputs["dht.v1.DhtService/FindProvs"])["provider"]["id"] == (
        dev_node.peer_id)
    assert "QUERY_EVENT_TYPE_FINAL_PEER" in outputs["dht.v1.DhtService/Put"]
    assert json.loads(outputs["dht.v1.DhtService/Get"]) == {"value": "d29ybGQ="}


def call(node: Node, method: str, body: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRPCURL, "-plaintext", "-max-time", "20", "-d", json.dumps(body), node.grpc_addr,
         f"dht.v1.DhtService/{method}"],
        capture_output=True, text=True, timeout=30, check=False)


def test_grpcurl_not_found_and_invalid_argument(dev_node: Node) -> None:
    missing = call(dev_node, "FindPeer",
                   {"peer_id": "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"})
    assert missing.returncode != 0 and "Code: NotFound" in missing.stderr
    no_value = call(dev_node, "Get", {"key": "L2RlbW8vbm9wZQ=="})  # /demo/nope
    assert no_value.returncode != 0 and "Code: NotFound" in no_value.stderr
    no_provs = call(dev_node, "FindProvs",
                    {"cid": "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba"})
    assert no_provs.returncode != 0 and "Code: NotFound" in no_provs.stderr
    bad = call(dev_node, "FindProvs", {"cid": "not-a-cid"})
    assert bad.returncode != 0 and "Code: InvalidArgument" in bad.stderr
    assert "Message: cid:" in bad.stderr
    bad_key = call(dev_node, "Get", {"key": "bm8tbmFtZXNwYWNl"})  # no-namespace
    assert "Code: InvalidArgument" in bad_key.stderr and "Message: key:" in bad_key.stderr
