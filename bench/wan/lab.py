"""The WAN lab itself: a network namespace, the delaying proxy, the rules that make
nodes stale, and probes that check each of them.

Layout. Lab process ``i`` (one Go node, or one dhtd with its dev peers) runs with group
id ``GID_BASE + i`` (uid stays 0: the interpreter lives under /root) and listens on
``node_ip(i)`` (127.1.x.y); dhtd's dev peers listen on 127.0.0.1:PORT, which the lab
registers with the proxy. One nat OUTPUT rule per process sends every TCP connection it
opens to 127.0.0.0/8 to its own port on the proxy (bench/wan/proxy.py), which knows the
dialler by that port and the target by the original destination. The bench driver and
the proxy keep group 0 and are not redirected: gRPC, /metrics and the record
inspector talk to the nodes directly, with no delay.

Stale nodes, applied after the network has formed:

- gone: SIGKILL, and a filter OUTPUT rule rejects (TCP RST) every new connection to its
  addresses, so a dial is refused at once (a dead host's refusal would come one round
  trip later; the proxy cannot answer a SYN for someone else);
- black hole: raw OUTPUT drops every packet to its addresses and every packet its
  process sends (by group id), so dials hang (no SYN-ACK) and open connections go
  silent both ways; the process keeps running;
- frozen: SIGSTOP; connections stay open and the kernel still accepts bytes, nothing
  answers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.jsonline import JsonLineWorker

GID_BASE = 61000
MAX_PROCS = 1000
NETNS_ENV = "DHTD_WAN_LAB_NETNS"  # set in the re-executed bench, inside the namespace
PROXY = Path(__file__).resolve().with_name("proxy.py")
REPO = PROXY.parents[2]
RAW_CHAIN = "WAN_STALE"
GONE_CHAIN = "WAN_GONE"
PROBE_TIMEOUT = 10.0
PROXY_NICE = -10
IPTABLES_TIMEOUT = 30.0
CASES = ("latency", "gone", "blackhole", "frozen")
STALE_KINDS = ("gone", "blackhole", "frozen")


def node_ip(index: int) -> str:
    """Process ``index``'s address: 127.1.0.1, 127.1.0.2, ... (250 per third byte)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


def gid(index: int) -> int:
    return GID_BASE + index


def as_process(index: int) -> list[str]:
    """A command prefix: run as lab process ``index`` (its group id), killed (SIGKILL,
    which also ends a stopped process) when the bench driver dies."""
    return ["setpriv", f"--regid={gid(index)}", "--clear-groups", "--pdeathsig", "KILL", "--"]


def draw_delays(seed: int, count: int, low_ms: float, high_ms: float) -> list[float]:
    """One-way delay of each process, uniform in [low, high], seeded."""
    rng = random.Random(f"wan-delays-{seed}")
    return [round(rng.uniform(low_ms, high_ms), 1) for _ in range(count)]


def missing_tools() -> list[str]:
    return [tool for tool in ("unshare", "iptables", "ip", "setpriv")
            if shutil.which(tool) is None]


def why_not() -> str | None:
    """Why the lab cannot run here, or None: root, the tools, and a namespace whose nat
    and raw tables can be used."""
    if os.geteuid() != 0:
        return "the WAN lab needs root (a network namespace and iptables)"
    if missing := missing_tools():
        return f"the WAN lab needs {', '.join(missing)} (Debian: util-linux, iproute2, iptables)"
    try:
        done = subprocess.run(
            ["unshare", "--net", "--", "sh", "-c",
             "iptables -w -t nat -L OUTPUT -n && iptables -w -t raw -L OUTPUT -n"],
            capture_output=True, text=True, timeout=IPTABLES_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return "unshare --net with iptables took too long"
    if done.returncode != 0:
        return f"no network namespace with iptables nat and raw tables here: " \
               f"{done.stderr.strip()[-200:]}"
    return None


def enter_namespace(argv: Sequence[str]) -> None:
    """Re-executes this bench in a fresh network namespace (does not return)."""
    os.environ[NETNS_ENV] = "1"
    os.chdir(REPO)  # python -m bench.wan, and the tests package, import from there
    os.execvp("unshare", ["unshare", "--net", "--", sys.executable, "-m", "bench.wan", *argv])


def in_namespace() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def sh(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=IPTABLES_TIMEOUT,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def iptables(*args: str) -> None:
    sh("iptables", "-w", *args)


@dataclass
class Stale:
    """What one stale process is: its index, pid and listening addresses."""

    index: int
    pid: int
    kind: str
    listen_ports: tuple[int, ...] = ()  # its dev peers' ports on 127.0.0.1


class Proxy(JsonLineWorker):
    """The proxy process (bench/wan/proxy.py)."""

    def __init__(self, delays_ms: Sequence[float], log_path: Path) -> None:
        cmd = [sys.executable, str(PROXY), "--delays", ",".join(f"{d:g}" for d in delays_ms)]
        super().__init__("proxy", cmd, 10.0, log_path)
        self.ports = [int(p) for p in self.wait_ready_line(30.0)["ports"]]
        self.lock = threading.Lock()  # calls come from several op threads

    def stats(self, reset_late: bool = False) -> dict[str, Any]:
        with self.lock:
            return self.call("stats", reset_late=reset_late)

    def register(self, addr: str, proc: int) -> None:
        with self.lock:
            self.call("register", addr=addr, proc=proc)


class Lab:
    """The namespace's rules and the proxy, for up to ``len(delays_ms)`` processes."""

    def __init__(self, delays_ms: Sequence[float], work: Path) -> None:
        if not in_namespace():
            raise RuntimeError("the lab runs only inside its own network namespace")
        if len(delays_ms) > MAX_PROCS:
            raise ValueError(f"at most {MAX_PROCS} lab processes")
        self.delays_ms = list(delays_ms)
        sh("ip", "link", "set", "lo", "up")
        self.proxy = Proxy(self.delays_ms, work / "proxy.log")
        try:
            # Its timers must fire on time while the swarm keeps the cores busy; it
            # needs little CPU, so this costs the nodes little.
            os.setpriority(os.PRIO_PROCESS, self.proxy.pid, PROXY_NICE)
            for i, port in enumerate(self.proxy.ports):
                iptables("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.0/8",
                         "-m", "owner", "--gid-owner", str(gid(i)),
                         "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}")
            iptables("-t", "raw", "-N", RAW_CHAIN)
            iptables("-t", "raw", "-A", "OUTPUT", "-j", RAW_CHAIN)
            iptables("-t", "filter", "-N", GONE_CHAIN)
            iptables("-t", "filter", "-A", "OUTPUT", "-j", GONE_CHAIN)
        except BaseException:
            self.proxy.stop()
            raise

    def close(self) -> None:
        self.proxy.stop()

    def cpu_seconds(self) -> float:
        from bench.go_compare import cpu_seconds
        return cpu_seconds(self.proxy.pid) if self.proxy.alive() else 0.0

    # -- stale nodes ----------------------------------------------------------------

    def make_stale(self, victim: Stale) -> None:
        ip = node_ip(victim.index)
        if victim.kind == "gone":
            for match in (["--ctorigdst", ip],
                          *(["--ctorigdst", "127.0.0.1", "--ctorigdstport", str(p)]
                            for p in victim.listen_ports)):
                iptables("-t", "filter", "-A", GONE_CHAIN, "-p", "tcp", "-m", "conntrack",
                         "--ctstate", "NEW", *match, "-j", "REJECT",
                         "--reject-with", "tcp-reset")
            os.kill(victim.pid, signal.SIGKILL)
        elif victim.kind == "blackhole":
            for match in (["-d", ip], ["-s", ip],
                          ["-m", "owner", "--gid-owner", str(gid(victim.index))],
                          *(["-d", "127.0.0.1", "-p", "tcp", "--dport", str(p)]
                            for p in victim.listen_ports)):
                iptables("-t", "raw", "-A", RAW_CHAIN, *match, "-j", "DROP")
        elif victim.kind == "frozen":
            os.kill(victim.pid, signal.SIGSTOP)
        else:
            raise ValueError(f"unknown kind of stale node {victim.kind!r}")

    def clear_stale(self, victims: Sequence[Stale]) -> None:
        """Lifts every rule and thaws frozen processes (before the next swarm)."""
        for victim in victims:
            if victim.kind == "frozen":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim.pid, signal.SIGCONT)
        iptables("-t", "raw", "-F", RAW_CHAIN)
        iptables("-t", "filter", "-F", GONE_CHAIN)


# -- probes: each promise of the lab, checked on the running lab -------------------------


def connect_outcome(ip: str, port: int, timeout: float) -> str:
    """'connected', 'refused', 'timeout' or the error of a plain TCP connect."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return "connected"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (T: stopped), or 'gone'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def check_stale(victim: Stale, port: int, timeout: float = 2.0) -> dict[str, str]:
    """What a dial from outside sees of a stale process, and its state."""
    state = process_state(victim.pid)
    # A zombie (Z) is gone too: its parent (this driver) has not reaped it yet.
    return {"kind": victim.kind, "connect": connect_outcome(node_ip(victim.index), port, timeout),
            "state": "gone" if state == "Z" else state}


_PROBE = r"""
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
rtts = []
for i in range(4):
    t0 = time.monotonic()
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    rtts.append((time.monotonic() - t0) * 1000)
print(json.dumps(rtts))
"""


def probe_round_trips(src: int, dst: int) -> list[float]:
    """Round trips (ms) of 1 byte from process ``src`` to an echo server at ``dst``'s
    address, through the proxy: the first on a new connection, then three more."""
    server = socket.create_server((node_ip(dst), 0))
    port = server.getsockname()[1]
    server.settimeout(PROBE_TIMEOUT)

    def echo() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(PROBE_TIMEOUT)
            try:
                for _ in range(4):
                    data = conn.recv(1)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        done = subprocess.run([*as_process(src), sys.executable, "-c", _PROBE, node_ip(dst),
                               str(port)], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT * 2, check=False)
    finally:
        thread.join(PROBE_TIMEOUT)
        server.close()
    if done.returncode != 0:
        raise RuntimeError(f"delay probe failed: {done.stderr.strip()[-300:]}")
    return [float(x) for x in json.loads(done.stdout)]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return float(total - idle), float(total)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_state(pid) in ("gone", "Z"):
            return True
        time.sleep(0.02)
    return False
