"""docs/http-routing.md's curl examples, run with the real curl against a dev node.

Every ``curl`` line of the document's ``sh`` blocks runs (its address replaced by the
live node's); the comment line under it names the status it must get.
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dht.v1 import dht_pb2 as pb
from tests.swarm import Node, dev_node

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("curl") is None,
                       reason="curl is not installed: scripts/test-tools.d/45-curl installs it"),
]

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-routing.md"
DOC_ADDR = "127.0.0.1:8190"
PROVIDED = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def examples() -> list[tuple[str, str]]:
    """(curl command, expected status) for every example of the document."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        lines = block.splitlines()
        for command, comment in itertools.pairwise(lines):
            if command.startswith("curl "):
                status = re.match(r"# (\d{3})\b", comment)
                assert status, f"no status under {command!r}"
                found.append((command, status.group(1)))
    return found


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    args = ["--routing-http-addr", "127.0.0.1:0", "--routing-http-put-ipns", "true"]
    with dev_node("docs", tmp_path_factory.mktemp("docs") / "d", args) as started:
        list(started.dht.Provide(pb.ProvideRequest(cids=[PROVIDED]), timeout=30))
        yield started


def test_the_document_has_examples_of_every_endpoint() -> None:
    text = " ".join(command for command, _ in examples())
    for path in ("/providers/", "/peers/", "/dht/closest/peers/", "/ipns/", "OPTIONS"):
        assert path in text, path


@pytest.mark.parametrize(("command", "status"), examples(),
                         ids=[f"{i}-{s}" for i, (_, s) in enumerate(examples())])
def test_each_example_gets_its_status(node: Node, command: str, status: str) -> None:
    argv = shlex.split(command.replace(DOC_ADDR, str(node.info["routing_http_addr"])))
    if "-w" not in argv:
        argv[1:1] = ["-w", "\n%{http_code}"]
    argv[1:1] = ["--max-time", "30"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == status, run.stdout[-500:]
