"""dhtctl, driven as a person would: the real console script as a subprocess, against a
live dhtd with four dev peers (and, for the statuses dhtd never sends on its own, a stub
gRPC server). The progress line is checked in a real terminal, with tmux."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dht.v1 import dht_pb2_grpc as pb_grpc
from dhtd_client import QueryEventType
from tests.integration.test_swarm import cid_for
from tests.service.stub_server import serve
from tests.swarm import Node, dev_node

DHTCTL = Path(sys.executable).parent / "dhtctl"
README = Path(__file__).resolve().parents[2] / "clients" / "python" / "README.md"
EVENT_FIELDS = {"type", "type_code", "id", "responses", "extra"}
EXIT_CODES = {
    "NOT_FOUND": 3,
    "INVALID_ARGUMENT": 4,
    "DEADLINE_EXCEEDED": 5,
    "UNAVAILABLE": 6,
    "FAILED_PRECONDITION": 7,
    "CANCELLED": 8,
    "DATA_LOSS": 9,
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with dev_node("dhtctl", tmp_path_factory.mktemp("dhtctl")) as node:
        yield node


def dhtctl(*args: str, addr: str | None = None, stdin: bytes = b"",
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Runs dhtctl with stdout and stderr as pipes (not a terminal)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DHTCTL_")}
    cmd = [str(DHTCTL), *(["--addr", addr] if addr else []), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=30, check=False,
                          env=base | (env or {}))


def ok(done: subprocess.CompletedProcess[bytes]) -> str:
    """The stdout of a run that succeeded and, stderr being no terminal, said nothing else."""
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b"", done.stderr.decode()
    return done.stdout.decode(errors="replace")


def json_lines(done: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    lines = ok(done).splitlines()
    assert lines, "no NDJSON lines"
    return [json.loads(line) for line in lines]


def fails(done: subprocess.CompletedProcess[bytes], code: int, *fragments: str) -> str:
    """Asserts the exit code and one ``dhtctl: ...`` line on stderr; returns that line."""
    err = done.stderr.decode()
    assert done.returncode == code, (done.returncode, err)
    assert done.stdout == b""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dhtctl: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def check_event(event: dict[str, Any], *, with_cid: bool = False) -> None:
    assert set(event) == EVENT_FIELDS | ({"cid"} if with_cid else set()), event
    assert QueryEventType[event["type"]] == event["type_code"]
    for peer in event["responses"]:
        assert set(peer) == {"id", "addrs"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- help and docs ---------------------------------------------------------------------


def test_help_and_readme_document_every_exit_code() -> None:
    done = dhtctl("--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    for command in ("findpeer", "findprovs", "get", "put", "provide", "query", "info",
                    "connect"):
        assert re.search(rf"^\s+{command}\s", text, re.M), command
    readme = README.read_text()
    assert "## dhtctl" in readme
    documented = {**EXIT_CODES, "ok": 0, "usage": 2, "interrupted": 130}
    for name, code in documented.items():
        assert re.search(rf"^\s+{code}\s+.*{name}", text, re.M | re.I), (name, text)
        assert re.search(rf"^\| {code} \|.*{name}", readme, re.M | re.I), (name, "README")
    sub = dhtctl("get", "--help")
    assert sub.returncode == 0 and b"--key-hex" in sub.stdout and b"NOT_FOUND" in sub.stdout


# -- every command against a live dhtd --------------------------------------------------


def test_info_connect_and_the_address_variable(live: Node) -> None:
    text = ok(dhtctl("info", env={"DHTCTL_ADDR": live.grpc_addr}))
    assert re.search(rf"^peer id:\s+{live.peer_id}$", text, re.M)
    assert re.search(r"^routing table:\s+\d+ peers$", text, re.M)
    # Global options work after the command too.
    [info] = json_lines(dhtctl("info", "--json", addr=live.grpc_addr))
    assert set(info) == {"peer_id", "addrs", "mode", "protocol", "routing_table_size",
                         "connected_peers", "version", "queries_in_flight", "announced_addrs"}
    assert info["peer_id"] == live.peer_id and info["mode"] == "server"
    assert info["announced_addrs"] == info["addrs"]  # (no --announce: the listen addrs)
    assert info["routing_table_size"] >= 4

    peer = live.dev_peer_ids()[1]
    addr = ok(dhtctl("findpeer", peer, addr=live.grpc_addr)).splitlines()[0]
    target = f"{addr}/p2p/{peer}"
    assert ok(dhtctl("connect", target, addr=live.grpc_addr)).strip() == (
        f"connected {peer} (added to the routing table)")
    [result] = json_lines(dhtctl("--json", "connect", target, addr=live.grpc_addr))
    assert set(result) == {"id", "addrs", "added_to_routing_table"}
    assert result["id"] == peer and result["added_to_routing_table"] is True


def test_findpeer_and_query(live: Node) -> None:
    peer = live.dev_peer_ids()[2]
    addrs = ok(dhtctl("findpeer", peer, addr=live.grpc_addr)).splitlines()
    assert addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs)
    [found] = json_lines(dhtctl("--json", "findpeer", peer, addr=live.grpc_addr))
    assert found == {"id": peer, "addrs": addrs}

    known = set(live.dev_peer_ids()) | {live.peer_id}
    closest = ok(dhtctl("query", peer, addr=live.grpc_addr)).splitlines()
    assert peer in closest and set(closest) <= known
    events = json_lines(dhtctl("--json", "query", peer, addr=live.grpc_addr))
    for event in events:
        check_event(event)
    kinds = [e["type"] for e in events]
    assert "SENDING_QUERY" in kinds and "PEER_RESPONSE" in kinds
    finals = [e["id"] for e in events if e["type"] == "FINAL_PEER"]
    assert peer in finals and set(finals) <= known
    assert all(e["responses"] for e in events if e["type"] == "FINAL_PEER")

    verbose = dhtctl("-v", "query", peer, addr=live.grpc_addr)
    assert verbose.returncode == 0
    assert set(verbose.stdout.decode().splitlines()) <= known
    notes = verbose.stderr.decode().splitlines()
    assert any(line.startswith("* querying 12D3") for line in notes), notes
    assert any(line == f"* closest peer {peer}" for line in notes), notes


def test_provide_from_arguments_and_stdin_then_findprovs(live: Node) -> None:
    stamp = time.time_ns()
    one, two, three = (cid_for(f"dhtctl-{stamp}-{i}") for i in range(3))
    line = ok(dhtctl("provide", one, addr=live.grpc_addr)).strip()
    assert re.fullmatch(rf"{one} announced to [1-9]\d* peers?", line), line
    lines = ok(dhtctl("provide", addr=live.grpc_addr,
                      stdin=f"{two}\n\n  {three}  \n".encode())).splitlines()
    assert [x.split()[0] for x in lines] == [two, three]
    assert all(" announced to " in x for x in lines)
    # '-' among the arguments reads stdin in its place.
    lines = ok(dhtctl("provide", one, "-", addr=live.grpc_addr, stdin=f"{two}\n".encode())
               ).splitlines()
    assert [x.split()[0] for x in lines] == [one, two]
    *events, held_one, held_three = json_lines(dhtctl("--json", "provide", addr=live.grpc_addr,
                                                      stdin=f"{one}\n{three}\n".encode()))
    for event in events:
        check_event(event, with_cid=True)
        assert event["cid"] in (one, three)
    assert {e["cid"] for e in events if e["type"] == "FINAL_PEER"} == {one, three}
    # Last, dhtd's holders per CID, in request order.
    for held, cid in ((held_one, one), (held_three, three)):
        finals = sum(e["type"] == "FINAL_PEER" and e["cid"] == cid for e in events)
        assert held == {"cid": cid, "holders": finals}

    assert ok(dhtctl("findprovs", "-n", "1", two, addr=live.grpc_addr)).split() == [
        live.peer_id]
    [provider] = json_lines(dhtctl("findprovs", three, "--json", addr=live.grpc_addr))
    assert set(provider) == {"id", "addrs"} and provider["id"] == live.peer_id
    assert provider["addrs"]


def test_put_from_stdin_then_get_gives_the_bytes_back(live: Node) -> None:
    key = f"/demo/dhtctl-{time.time_ns()}"
    value = b"\x00\xffbinary\nvalue without a final newline"
    *stored, held = ok(dhtctl("put", key, addr=live.grpc_addr, stdin=value)).splitlines()
    assert stored and set(stored) <= set(live.dev_peer_ids()) | {live.peer_id}
    assert held == f"stored on {len(stored)} peer{'s' if len(stored) > 1 else ''}"
    got = dhtctl("get", key, addr=live.grpc_addr)
    ok(got)
    assert got.stdout == value
    key_hex = key.encode().hex()
    assert dhtctl("get", "--key-hex", key_hex, addr=live.grpc_addr).stdout == value
    key_b64 = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
    assert dhtctl("get", "--key-base64", key_b64, addr=live.grpc_addr).stdout == value
    [record] = json_lines(dhtctl("--json", "get", key, addr=live.grpc_addr))
    assert set(record) == {"key_base64", "value_base64"}
    assert base64.b64decode(record["key_base64"]) == key.encode()
    assert base64.b64decode(record["value_base64"]) == value

    # A value given as an argument (its UTF-8 bytes), with NDJSON events.
    *events, held = json_lines(dhtctl("--json", "put", key, "héllo", addr=live.grpc_addr))
    for event in events:
        check_event(event)
    assert any(e["type"] == "FINAL_PEER" for e in events)
    assert held == {"holders": sum(e["type"] == "FINAL_PEER" for e in events)}
    assert dhtctl("get", key, addr=live.grpc_addr).stdout == "héllo".encode()
    ok(dhtctl("put", "--key-hex", key_hex, "-", addr=live.grpc_addr, stdin=b"third"))
    assert dhtctl("get", key, addr=live.grpc_addr).stdout == b"third"


def test_min_holders_20_waits_for_every_store(live: Node) -> None:
    key = f"/demo/dhtctl-holders-{time.time_ns()}"
    *events, held = json_lines(dhtctl("--json", "put", "--min-holders", "20", key, "v",
                                      addr=live.grpc_addr))
    for event in events:
        check_event(event)
    finals = sum(e["type"] == "FINAL_PEER" for e in events)
    assert held == {"holders": finals} and finals >= 1
    *ids, line = ok(dhtctl("put", key, "w", "--min-holders", "20", addr=live.grpc_addr)
                    ).splitlines()
    assert line == f"stored on {len(ids)} peer{'s' if len(ids) > 1 else ''}"
    cid = cid_for(f"dhtctl-holders-{time.time_ns()}")
    *events, held = json_lines(dhtctl("--json", "provide", "--min-holders", "20", cid,
                                      addr=live.grpc_addr))
    finals = sum(e["type"] == "FINAL_PEER" for e in events)
    assert held == {"cid": cid, "holders": finals} and finals >= 1
    line = ok(dhtctl("provide", "--min-holders", "20", cid, addr=live.grpc_addr)).strip()
    assert re.fullmatch(rf"{cid} announced to [1-9]\d* peers?", line), line
    usage = dhtctl("put", "--min-holders", "0", key, "v", addr=live.grpc_addr)
    assert usage.returncode == 2 and b"--min-holders" in usage.stderr


def test_progress_log_stays_empty_when_stderr_is_no_terminal(live: Node, tmp_path: Path
                                                              ) -> None:
    log = tmp_path / "frames"
    ok(dhtctl("--progress-log", str(log), "query", live.dev_peer_ids()[0],
              addr=live.grpc_addr))
    assert log.read_text() == ""


# -- errors ------------------------------------------------------------------------------


def test_each_error_class_has_its_exit_code(live: Node) -> None:
    addr = live.grpc_addr
    peer = live.dev_peer_ids()[0]
    fails(dhtctl("get", f"/demo/never-{time.time_ns()}", addr=addr),
          EXIT_CODES["NOT_FOUND"], "not found")
    fails(dhtctl("findpeer", "not-a-peer", addr=addr),
          EXIT_CODES["INVALID_ARGUMENT"], "invalid argument: peer_id:")
    fails(dhtctl("put", "/closed/x", "v", addr=addr), EXIT_CODES["INVALID_ARGUMENT"], "key:")
    fails(dhtctl("--timeout", "0.001", "query", peer, addr=addr),
          EXIT_CODES["DEADLINE_EXCEEDED"], "deadline exceeded")
    fails(dhtctl("info", addr=f"127.0.0.1:{free_port()}"),
          EXIT_CODES["UNAVAILABLE"], "cannot reach dhtd")
    fails(dhtctl("connect", f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/"
                 "12D3KooWEd8Jpk3nZQsM8L5ZbPmrdESLnnS1tQvJjKYkS6c9ZQgd", addr=addr),
          EXIT_CODES["UNAVAILABLE"], "could not connect")
    fails(dhtctl("provide", "--recursive", cid_for("recursive"), addr=addr),
          EXIT_CODES["FAILED_PRECONDITION"], "failed precondition")
    # Usage errors are found before anything is sent.
    fails(dhtctl("get", "--key-hex", "zz", addr=addr), 2, "KEY is not hex")
    fails(dhtctl("provide", addr=addr, stdin=b"\n\n"), 2, "no CID")
    bad = dhtctl("frobnicate", addr=addr)
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr
    assert b"Traceback" not in bad.stderr
    bad = dhtctl("--timeout", "0", "info", addr=addr)
    assert bad.returncode == 2 and b"--timeout" in bad.stderr


class _Stub(pb_grpc.DhtServiceServicer):
    """FindPeer answers with the status its peer_id names, or waits to be cancelled."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def FindPeer(self, request: pb.FindPeerRequest, context: grpc.ServicerContext
                 ) -> pb.FindPeerResponse:
        if request.peer_id in ("CANCELLED", "INTERNAL", "UNKNOWN"):
            context.abort(grpc.StatusCode[request.peer_id], "said the stub")
        self.started.set()
        deadline = time.monotonic() + 15
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not context.is_active():
            self.cancelled.set()
        return pb.FindPeerResponse()


@pytest.fixture
def stub() -> Iterator[tuple[str, _Stub]]:
    servicer = _Stub()
    with serve(servicer) as addr:
        yield addr, servicer


def test_cancelled_internal_and_ctrl_c(stub: tuple[str, _Stub]) -> None:
    addr, servicer = stub
    fails(dhtctl("findpeer", "CANCELLED", addr=addr), EXIT_CODES["CANCELLED"],
          "cancelled: said the stub")
    fails(dhtctl("findpeer", "INTERNAL", addr=addr), 1, "internal error in dhtd")
    fails(dhtctl("findpeer", "UNKNOWN", addr=addr), 1, "unknown: said the stub")

    # SIGINT as a terminal sends it, even if this test runs with SIGINT ignored (a
    # background job): reset it to the default, then exec dhtctl.
    reset_and_exec = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen(
        [sys.executable, "-c", reset_and_exec, str(DHTCTL), "--addr", addr, "findpeer", "slow"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert servicer.started.wait(15), "the call never reached the stub"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out == b"" and err.decode().splitlines() == [
        "dhtctl: interrupted; the call was cancelled"]
    assert servicer.cancelled.wait(5), "Ctrl-C did not cancel the call on the server"


# -- a real terminal -------------------------------------------------------------------


def test_progress_line_in_a_real_terminal(live: Node, tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (scripts/test-tools.d/40-tmux installs it)")
    cids = [cid_for(f"tty-{time.time_ns()}-{i}") for i in range(30)]
    (tmp_path / "cids").write_text("\n".join(cids) + "\n")
    key = f"/demo/tty-{time.time_ns()}"
    ok(dhtctl("put", key, "shown on the terminal", addr=live.grpc_addr))
    provide_log, get_log = tmp_path / "provide.frames", tmp_path / "get.frames"
    exe = f"{DHTCTL} --addr {live.grpc_addr}"
    script = (f"{exe} --progress-log {provide_log} provide < {tmp_path / 'cids'}; "
              "echo provide-exit=$?; "
              f"{exe} --progress-log {get_log} get {key}; echo get-exit=$?; exec sleep 60")
    sock = f"dhtctl-test-{os.getpid()}-{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DHTCTL_", "TMUX"))}
    env.setdefault("TERM", "xterm-256color")
    env["LC_ALL"] = "C.UTF-8"  # so that dhtctl draws its Unicode glyphs

    def tm(*args: str) -> str:
        return subprocess.run([tmux, "-L", sock, "-f", "/dev/null", *args], env=env,
                              capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        tm("new-session", "-d", "-x", "120", "-y", "50", "-s", "t", "/bin/sh", "-c", script)
        seen_progress = False
        screen = ""
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            screen = tm("capture-pane", "-p", "-t", "t")
            seen_progress = seen_progress or " queried · " in screen
            if "get-exit=" in screen:
                break
            time.sleep(0.03)
        else:
            raise AssertionError(f"dhtctl did not finish in the terminal:\n{screen}")
    finally:
        subprocess.run([tmux, "-L", sock, "kill-server"], env=env, capture_output=True,
                       timeout=10, check=False)

    # The progress line was drawn, in place, from the events of the lookup ...
    frames = provide_log.read_text().splitlines()
    assert frames and frames[-1] == "clear", frames[-3:]
    drawn = [f.removeprefix("frame ") for f in frames if f.startswith("frame ")]
    assert any(re.search(r"providing 30 CIDs… [1-9]\d* queried · \d+ responded · \d+ errors? · "
                         r"\d+ announced · \d+\.\d\ds$", f) for f in drawn), drawn
    assert all(len(f) < 120 for f in drawn)
    spinner = get_log.read_text().splitlines()
    assert spinner[0].startswith("frame ") and "getting…" in spinner[0]
    assert spinner[-1] == "clear"
    # ... and gone when the results are on the screen, each at the start of its line.
    lines = [line.rstrip() for line in screen.splitlines()]
    assert "provide-exit=0" in lines and "get-exit=0" in lines, screen
    for cid in cids:
        assert any(re.fullmatch(rf"{cid} announced to [1-9]\d* peers?", x) for x in lines), (
            cid, screen)
    assert "shown on the terminal" in lines, screen
    assert "queried" not in screen and "getting" not in screen, screen
    assert not re.search("[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]", screen), screen
    # seen_progress is not asserted: a fast lookup may finish between two captures.
    print("progress line seen by capture-pane:", seen_progress)
