"""A worker process driven by JSON lines: the Go peers (bench/go_worker.py) and the Kubo
peer (tests/interop/kubo/worker.py) both speak it.

The worker prints one ``{"event": "ready", ...}`` line, then answers each command line
``{"op": ..., "id": N, ...}`` with one line carrying the same "id", "ok" (bool), "ms"
and, when not ok, "error". It leaves on stdin EOF, so :meth:`JsonLineWorker.stop`
closes stdin first; it runs under ``setpriv --pdeathsig``, so it also dies with this
process.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from tests.swarm import die_with_parent

STOP_TIMEOUT = 15.0
# Lines read while waiting for one answer or the ready line: late answers to calls
# that timed out here, and stray output.
MAX_SKIPPED = 1000


class OpFailed(Exception):
    """A worker's call that failed; the message says how."""


class JsonLineWorker:
    """One worker process: ``cmd`` under die_with_parent, stderr to ``log_path``."""

    def __init__(self, name: str, cmd: Sequence[str], op_timeout: float,
                 log_path: Path) -> None:
        self.name, self.op_timeout, self.log_path = name, op_timeout, log_path
        self.inner_ms: float | None = None  # the last call's time inside the worker
        self._next_id = 0
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._log: IO[str] = log_path.open("w")
        self.proc = subprocess.Popen(die_with_parent(cmd), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.pid = self.proc.pid
        self._pump = threading.Thread(target=self._read, name=f"pump-{name}", daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._replies.put(json.loads(line))
            except json.JSONDecodeError:
                self._replies.put({"event": "noise", "line": line.rstrip()})
        self._replies.put(None)

    def _next(self, deadline: float, what: str) -> dict[str, Any]:
        try:
            reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise OpFailed(f"{self.name}: no {what} in time") from None
        if reply is None:
            self._replies.put(None)
            raise OpFailed(f"{self.name} exited ({self.proc.poll()}): {self.log_tail()}")
        return reply

    def log_tail(self) -> str:
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return " | ".join(lines[-5:]) or "(no stderr)"

    def wait_ready_line(self, timeout: float) -> dict[str, Any]:
        """The worker's ready line; OpFailed if it exits or says nothing in time."""
        deadline = time.monotonic() + timeout
        for _ in range(MAX_SKIPPED):
            reply = self._next(deadline, "ready line")
            if reply.get("event") == "ready":
                return reply
        raise OpFailed(f"{self.name}: no ready line among its first {MAX_SKIPPED}")

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One op's answer; OpFailed when the worker says it failed or does not answer
        within its op timeout (plus 5 s)."""
        self._next_id += 1
        ident = self._next_id
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, "id": ident, **fields}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise OpFailed(f"{self.name}: cannot send {op}: {exc}") from None
        deadline = time.monotonic() + self.op_timeout + 5
        for _ in range(MAX_SKIPPED):
            reply = self._next(deadline, f"answer to {op}")
            if reply.get("id") == ident:
                self.inner_ms = float(reply["ms"])
                if not reply["ok"]:
                    raise OpFailed(str(reply["error"]))
                return reply
        raise OpFailed(f"{self.name}: no answer to {op} among {MAX_SKIPPED} lines")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Ends the worker (stdin EOF, then SIGTERM, then SIGKILL) and closes its pipes
        and log, also when it was killed before."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            with suppress(OSError):
                self.proc.stdin.close()  # the worker leaves on EOF
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT)
        self._pump.join(STOP_TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()
        self._log.close()
