"""The Go client (clients/go) against a live dhtd with four dev peers.

Builds in GOPATH mode against Debian's Go libraries in /usr/share/gocode (see
clients/go/README.md), with GOPATH and GOCACHE in a temporary directory, so the
run writes nothing into the repository. Skips only when `go` is absent;
scripts/test-tools.d/10-go installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.swarm import Node, dev_node

GO = shutil.which("go")
BUILD_TIMEOUT = 300  # one go vet/build/test; a cold build of grpc-go takes ~15 s here
RUN_TIMEOUT = 120
pytestmark = [
    pytest.mark.skipif(
        GO is None,
        reason="`go` is not installed: scripts/test-tools.d/10-go installs Debian's Go toolchain",
    ),
    pytest.mark.integration,
    # The first test also vets and builds the tree from a cold cache.
    pytest.mark.timeout(2 * BUILD_TIMEOUT),
]

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "go"
# The import path of clients/go, from go_package in protos/dht/v1/dht.proto.
IMPORT_PATH = "dhtd/clients/go"
DEBIAN_GOCODE = "/usr/share/gocode"
LIVE_TESTS = [
    "TestLiveInfo", "TestLiveFindPeer", "TestLiveProvideFindProvs", "TestLivePutGet",
    "TestLiveQuery", "TestLiveMinHolders", "TestLiveNotFound", "TestLiveInvalidArgument",
    "TestLiveInvalidArgument/peer_id", "TestLiveInvalidArgument/cids",
    "TestLiveInvalidArgument/key",
]
# Against a fake DhtService in the test process (dhtclient/batch_test.go): they run
# with or without a dhtd.
FAKE_TESTS = [
    "TestBatchEventsRequested", "TestProvideEventsInOrder", "TestPutEventsInOrder",
    "TestQueryEventsInOrder", "TestNoHoldersReported", "TestMinHoldersAndHolders",
]


@dataclass
class GoTree:
    """clients/go seen through a temporary GOPATH."""

    src: Path
    env: dict[str, str]
    tmp: Path

    def go(self, *args: str, extra_env: dict[str, str] | None = None,
           timeout: float = BUILD_TIMEOUT) -> subprocess.CompletedProcess[str]:
        assert GO is not None
        return subprocess.run(
            [GO, *args], cwd=self.src, env={**self.env, **(extra_env or {})},
            capture_output=True, text=True, timeout=timeout, check=False,
        )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> GoTree:
    tmp = tmp_path_factory.mktemp("goclient")
    gopath = tmp / "gopath"
    src = gopath / "src" / IMPORT_PATH
    src.parent.mkdir(parents=True)
    src.symlink_to(CLIENT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GO", "CGO_", "DHTD_"))}
    env.update(
        GO111MODULE="off",                      # GOPATH mode: no module proxy, no go.sum
        GOPATH=f"{gopath}:{DEBIAN_GOCODE}",
        GOCACHE=str(tmp / "cache"),
        GOTMPDIR=str(tmp),
        GOENV="off",                            # ignore the user's `go env -w` settings
        GOFLAGS="",
        GOPROXY="off",
        CGO_ENABLED="0",
        # Go takes its working directory from $PWD when it names the same
        # directory: the path through GOPATH, so packages get their import paths.
        PWD=str(src),
    )
    return GoTree(src, env, tmp)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with dev_node("go-client", tmp_path_factory.mktemp("goc")) as node:
        yield node


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


@pytest.fixture(scope="module")
def example(tree: GoTree) -> Path:
    """Vets the whole tree and builds the example program into the temporary dir."""
    vet = tree.go("vet", "./...")
    assert vet.returncode == 0, _output(vet)
    build = tree.go("build", "./...")
    assert build.returncode == 0, _output(build)
    binary = tree.tmp / "dhtd-example"
    build = tree.go("build", "-o", str(binary), "./cmd/dhtd-example")
    assert build.returncode == 0, _output(build)
    return binary


def test_go_tests_pass_against_live_dhtd(tree: GoTree, example: Path, live: Node) -> None:
    env = {"DHTD_ADDR": live.grpc_addr, "DHTD_PEER": live.dev_peer_ids()[1]}
    proc = tree.go("test", "-count=1", "-v", "./...", extra_env=env, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, _output(proc)
    out = proc.stdout
    # Built under its import path, not as a local "_/…" package.
    assert f"ok  \t{IMPORT_PATH}/dhtclient" in out, _output(proc)
    assert "--- SKIP" not in out, _output(proc)
    for name in LIVE_TESTS + FAKE_TESTS:
        assert f"--- PASS: {name} " in out, f"{name} did not pass:\n{_output(proc)}"


def test_go_tests_skip_without_dhtd(tree: GoTree, example: Path) -> None:
    proc = tree.go("test", "-count=1", "-v", "./...", timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, _output(proc)
    assert "--- SKIP: TestLiveInfo" in proc.stdout, _output(proc)
    assert "--- PASS: TestRawCID" in proc.stdout, _output(proc)
    for name in FAKE_TESTS:
        assert f"--- PASS: {name} " in proc.stdout, f"{name} did not pass:\n{_output(proc)}"


def _run_example(binary: Path, addr: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHTD_")}
    env["DHTD_ADDR"] = addr
    return subprocess.run([str(binary), *args], env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


def test_example_program(example: Path, live: Node) -> None:
    proc = _run_example(example, live.grpc_addr)
    assert proc.returncode == 0, _output(proc)
    out = proc.stdout
    assert f"info: peer {live.peer_id}, MODE_SERVER, /ipfs/kad/1.0.0" in out, out
    for peer in live.dev_peer_ids():
        assert f"query event: FINAL_PEER {peer}" in out, out
    assert "query event: SENDING_QUERY " in out and "query event: PEER_RESPONSE " in out, out
    cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert "provide event: FINAL_PEER " in out, out
    assert re.search(rf"^provide: {cid} announced to [1-9]\d* peers$", out, re.M), out
    assert f"provider: {live.peer_id} [" in out, out
    assert f"findprovs: 1 providers of {cid}" in out, out


def test_example_program_errors(example: Path, live: Node) -> None:
    bad = _run_example(example, live.grpc_addr, "not-a-cid")
    assert bad.returncode == 1, _output(bad)
    assert bad.stderr.startswith("dhtd-example: Provide: invalid argument: cids[0]:"), _output(bad)

    usage = _run_example(example, live.grpc_addr, "a", "b")
    assert usage.returncode == 2 and "usage: dhtd-example [CID]" in usage.stderr, _output(usage)

    # Port 1 on 127.0.0.1: nothing listens there.
    down = _run_example(example, "127.0.0.1:1")
    assert down.returncode == 1, _output(down)
    assert down.stderr.startswith("dhtd-example: Info: unavailable:"), _output(down)
    assert "DHTD_ADDR=127.0.0.1:1" in down.stderr, _output(down)
