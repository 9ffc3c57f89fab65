"""The WAN lab (bench/wan), small: 12 dhtd nodes in 6 processes behind 5-20 ms of delay,
with one process gone, one black-holed and one frozen. It asserts what the lab promises
and that DHT operations still succeed, never how long they take:

- the proxy really delays: a round trip through it takes at least the configured one;
- the stale processes are what they claim: a dial to the gone one is refused, a dial to
  the black hole hangs, the frozen one is stopped;
- Provide then FindProvs finds the provider, Put then Get gets the value, and the
  records are held by live nodes;
- everything the lab starts ends with it, also when the bench is killed mid-run: no
  process is left in its network namespace.

The lab needs root, unshare and iptables (scripts/test-tools.d/47-iptables installs
iptables); without them the tests skip, which fails on CI (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.wan.lab import why_not
from tests.swarm import die_with_parent, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 110.0  # the whole small run, on a loaded 2-core machine
EXIT_TIMEOUT = 15.0
SMALL = ["--only", "dhtd", "--nodes", "12", "--per-process", "2", "--cases", "mixed",
         "--stale", "0.5", "--ops", "1", "--short-delays", "--interleave", "--store-wait", "1",
         "--op-timeout", "40", "--json"]
OPS_MARK = "stale processes; ops"


@pytest.fixture(scope="module", autouse=True)
def lab_possible() -> None:
    if problem := why_not():
        pytest.skip(problem)


class Bench:
    """``python -m bench.wan ARGS`` as a child process; its output lines in queues."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            die_with_parent([sys.executable, "-m", "bench.wan", *args]), cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: queue.Queue[str | None] = queue.Queue()
        self.err_lines: list[str] = []
        self.netns: str | None = None
        self.pumps = [threading.Thread(target=self._pump_out, daemon=True),
                      threading.Thread(target=self._pump_err, daemon=True)]
        for pump in self.pumps:
            pump.start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.put(line)
        self.err.put(None)

    def wait_for(self, mark: str, timeout: float) -> None:
        """Reads stderr until a line with ``mark``; notes the bench's network namespace
        (it is in the lab's by the time it says anything)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.err.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {mark!r} within {timeout}s: {self.tail()}") from None
            if line is None:
                raise AssertionError(f"the bench ended before {mark!r}: {self.tail()}")
            self.err_lines.append(line)
            if self.netns is None:
                self.netns = os.readlink(f"/proc/{self.proc.pid}/ns/net")
            if mark in line:
                return

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the bench ran over {timeout}s: {self.tail()}") from None
        while (line := self.err.get(timeout=EXIT_TIMEOUT)) is not None:
            self.err_lines.append(line)
        assert self.out and self.out[-1].startswith("{"), self.tail()
        return dict(json.loads(self.out[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(EXIT_TIMEOUT)

    def close(self) -> None:
        self.kill()
        for pump in self.pumps:
            pump.join(EXIT_TIMEOUT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def tail(self) -> str:
        return "".join(self.err_lines[-15:] + self.out[-30:])[-4000:]


@pytest.fixture
def bench() -> Iterator[list[Bench]]:
    started: list[Bench] = []
    yield started
    for b in started:
        b.close()


def in_namespace(netns: str) -> list[int]:
    """Pids of the processes in the network namespace ``netns`` (e.g. net:[4026532...])."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "net") == netns:
                    pids.append(int(entry.name))
            except OSError:
                continue  # ended meanwhile
    return pids


def test_small_lab_delays_makes_nodes_stale_and_ops_still_succeed(bench: list[Bench]) -> None:
    b = Bench(SMALL)
    bench.append(b)
    b.wait_for(OPS_MARK, RUN_TIMEOUT)
    out = b.finish(RUN_TIMEOUT)
    assert b.proc.returncode == 0, b.tail()
    assert b.netns is not None and b.netns != os.readlink("/proc/self/ns/net")

    probe = out["probe"]
    assert all(rtt >= probe["want_rtt_ms"] for rtt in probe["rtt_ms"]), probe
    # A new connection also pays the TCP handshake's round trip.
    assert probe["rtt_ms"][0] >= 2 * probe["want_rtt_ms"], probe

    (case,) = out["results"]
    assert "error" not in case, case.get("error")
    assert sorted(case["victims"].values()) == ["blackhole", "frozen", "gone"]
    checks = {c["kind"]: c for c in case["checks"]}
    assert checks["gone"]["connect"] == "refused" and checks["gone"]["state"] == "gone"
    assert checks["blackhole"]["connect"] == "timeout", checks
    assert checks["blackhole"]["state"] in ("S", "R"), checks
    assert checks["frozen"]["state"] == "T", checks

    for op in ("provide", "findprovs", "put", "get"):
        figures = case["op"][op]
        assert figures["n"] == 1 and figures["ok"] == 1, (op, figures["errors"])
    for op in ("provide", "put"):
        assert case["records"][op]["on_true_min"] >= 1, case["records"]
    assert case["op"]["provide"]["kad_per_op"] > 0  # read from the issuer's /metrics

    wait_until(lambda: not in_namespace(str(b.netns)), EXIT_TIMEOUT,
               "every process of the lab to end")


def test_killing_the_bench_mid_run_ends_every_process_of_the_lab(bench: list[Bench]) -> None:
    b = Bench(["--only", "dhtd", "--nodes", "6", "--per-process", "2", "--cases", "frozen",
               "--ops", "1", "--short-delays", "--json"])
    bench.append(b)
    b.wait_for(OPS_MARK, RUN_TIMEOUT)
    assert b.netns is not None
    lab = in_namespace(b.netns)
    assert len(lab) >= 5  # the bench, the proxy, 3 dhtd (one of them frozen)
    assert any(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
               for pid in lab), "no frozen process in the lab"
    b.kill()
    wait_until(lambda: not in_namespace(str(b.netns)), EXIT_TIMEOUT,
               "every process of the killed lab to end")
