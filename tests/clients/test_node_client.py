"""The Node client (clients/node) against a live dhtd with four dev peers.

Runs the package's own `node --test` suite and its example script against the
built package (clients/node/dist, made by `npm run build`). Skips only when
`node` is absent; scripts/test-tools.d/20-node runs `npm ci` and the build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.swarm import Node, dev_node

NODE = shutil.which("node")
RUN_TIMEOUT = 60  # the whole node --test run takes about a second here
pytestmark = [
    pytest.mark.skipif(
        NODE is None,
        reason="`node` is not installed: the Node client needs Node.js 20 and npm",
    ),
    pytest.mark.integration,
]

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "node"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    built = CLIENT / "dist" / "index.js"
    assert built.is_file(), f"{built} is missing: run scripts/test-tools (npm ci, npm run build)"
    with dev_node("node-client", tmp_path_factory.mktemp("nodec")) as node:
        yield node


def run_node(live: Node, *args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHTD_")}
    env |= {"DHTD_ADDR": live.grpc_addr, "NO_COLOR": "1"}
    env.pop("NODE_OPTIONS", None)
    return subprocess.run(
        [NODE, *args], cwd=CLIENT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )


def summary(output: str, name: str) -> int:
    """A count from node's test runner summary: "pass 12" after an information sign
    (U+2139) in the spec reporter, after "#" in TAP."""
    found = re.findall(rf"^(?:\u2139|#) {name} (\d+)\s*$", output, re.MULTILINE)
    assert found, f"no '{name}' line in the test runner's summary:\n{output}"
    return int(found[-1])


def test_node_test_suite(live: Node) -> None:
    result = run_node(live, "--test", "--test-reporter=spec", "--test-timeout=20000", "test/")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert summary(output, "pass") > 0, output
    assert summary(output, "fail") == 0, output
    assert summary(output, "cancelled") == 0, output
    # The live suite ran: it skips itself only when DHTD_ADDR is unset.
    assert "DHTD_ADDR is not set" not in output, output
    for name in ("info describes the node", "provide, then findProvs yields this node",
                 "breaking out of a stream early cancels it",
                 # test/batching.test.mjs, against a fake DhtService in node's process.
                 "provide, put and query ask for batch_events",
                 "provide yields every event of every message, in order, each with its CID",
                 "put yields every event of every message, in order",
                 "query yields every event of every message, in order",
                 "breaking out in the middle of a batched message cancels the call"):
        assert re.search(rf"^\s*✔ {re.escape(name)}", output, re.MULTILINE), output


def test_node_example(live: Node) -> None:
    result = run_node(live, "examples/example.mjs")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"node {live.peer_id} (server, /ipfs/kad/1.0.0, "), output
    assert re.fullmatch(r"query: [1-9]\d* closest peers to ourselves", lines[1]), output
    provided = re.fullmatch(r"provided (b[a-z2-7]+) to ([1-9]\d*) peers", lines[2])
    assert provided, output
    assert lines[3].startswith(f"provider {live.peer_id} /ip4/127.0.0.1/tcp/"), output
