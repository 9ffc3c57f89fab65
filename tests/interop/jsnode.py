"""Drives js-libp2p nodes (tests/interop/js/node.mjs) as OS processes.

Each node answers JSON-line commands on stdin with JSON lines on stdout. It
exits when its stdin closes, which happens when the test process dies however
it dies (no other process holds the pipe: Popen closes inherited fds); it also
exits by itself after MAX_LIFETIME seconds. Every call waits for its answer at
most ``timeout``.

No ``preexec_fn`` (tests.swarm uses one for PR_SET_PDEATHSIG): it makes Python
fork and run code in the child, and once the test process has gRPC channels
open, gRPC's fork handlers can abort that child before it execs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from tests.swarm import STOP_TIMEOUT

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "node.mjs"
# The js node's own limit on its life, in seconds, whatever happens to the tests.
MAX_LIFETIME = 600
CALL_TIMEOUT = 30.0


def missing_requirement() -> str | None:
    """Why js nodes cannot run here, or None when they can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "libp2p").is_dir():
        return "tests/interop/js/node_modules is missing: run scripts/test-tools"
    return None


class JsError(Exception):
    """A command the js node answered with ok: false."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class JsNode:
    """One js-libp2p node process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            ["node", str(SCRIPT), "--max-lifetime", str(MAX_LIFETIME)],
            cwd=JS_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.stderr: list[str] = []
        self._answers: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._next_id = 0
        self._write = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read_stdout, name=f"{name}-out", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"{name}-err", daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.peer_id = ""
        self.addrs: list[str] = []

    # -- plumbing -------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                self.stderr.append(f"(stdout) {line.rstrip()}")
                continue
            with self._cond:
                self._answers[answer.get("id")] = answer
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            del self.stderr[:-200]

    def call(self, cmd: str, timeout: float = CALL_TIMEOUT, **args: Any) -> dict[str, Any]:
        """Sends one command and returns its answer; JsError if it failed."""
        with self._write:
            self._next_id += 1
            ident = self._next_id
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}) + "\n")
                self.proc.stdin.flush()
            except OSError as exc:
                self.proc.wait(STOP_TIMEOUT)
                self._readers[1].join(STOP_TIMEOUT)
                raise AssertionError(
                    f"js node {self.name} is gone ({exc}; exit status {self.proc.returncode}) "
                    f"on {cmd}:\n{self.log_text()}") from None
        with self._cond:
            done = self._cond.wait_for(
                lambda: ident in self._answers or self.proc.poll() is not None, timeout)
            answer = self._answers.pop(ident, None)
        if answer is None:
            why = "exited" if done else f"did not answer within {timeout}s"
            raise AssertionError(f"js node {self.name} {why} on {cmd}:\n{self.log_text()}")
        if not answer["ok"]:
            raise JsError(answer.get("name", "Error"), answer.get("error", ""))
        return answer

    def log_text(self) -> str:
        return "\n".join(self.stderr[-40:])

    # -- commands ---------------------------------------------------------------

    def start(self, namespaces: Sequence[str], deny: Sequence[str] = (),
              security: str = "noise", muxer: str = "yamux") -> None:
        """Starts the node; it refuses every connection with a peer in ``deny``, and
        offers only ``security`` (noise, tls) and ``muxer`` (yamux, mplex)."""
        res = self.call("start", namespaces=list(namespaces), deny=list(deny),
                        security=security, muxer=muxer)
        self.peer_id = res["peerId"]
        self.addrs = res["addrs"]

    @property
    def tcp_addr(self) -> str:
        """This node's listen address without /p2p/."""
        return self.addrs[0].rsplit("/p2p/", 1)[0]

    def connect(self, addr: str) -> dict[str, Any]:
        return self.call("connect", addr=addr)

    def info(self) -> dict[str, Any]:
        return self.call("info")

    def provide(self, cid: str) -> dict[str, Any]:
        return self.call("provide", cid=cid)

    def find_providers(self, cid: str, count: int = 20) -> list[dict[str, Any]]:
        return list(self.call("findProviders", cid=cid, count=count)["providers"])

    def put(self, key: bytes, value: bytes) -> dict[str, Any]:
        return self.call("put", key=b64(key), value=b64(value))

    def get(self, key: bytes) -> bytes:
        return unb64(self.call("get", key=b64(key))["value"])

    def find_peer(self, peer_id: str) -> dict[str, Any]:
        """Over the network only: the js node's own peer store is not consulted."""
        return dict(self.call("findPeer", peerId=peer_id, useCache=False)["peer"])

    def closest_peers(self, peer_id: str) -> list[dict[str, Any]]:
        return list(self.call("getClosestPeers", peerId=peer_id)["peers"])

    def new_public_key(self) -> tuple[bytes, bytes]:
        res = self.call("newPublicKey", type="RSA")
        return unb64(res["key"]), unb64(res["value"])

    def stop(self) -> int:
        if self.proc.poll() is None:
            with suppress(AssertionError, JsError, OSError):
                self.call("stop", timeout=STOP_TIMEOUT)
        if self.proc.stdin is not None:
            with suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        for reader in self._readers:
            reader.join(STOP_TIMEOUT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode
