"""The dhtd command line: bad settings fail fast, one line each."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dhtd", *args], capture_output=True, text=True,
                          timeout=30, check=False, env=env)


def test_bad_flags_fail_fast_with_one_line_each() -> None:
    done = run("--mode", "bogus", "--query-timeout", "-1", "--grpc-addr", "nowhere",
               "--bootstrap", "/ip4/127.0.0.1/tcp/4001", "--namespace", "pk")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 5, lines
    for flag in ("--mode", "--query-timeout", "--grpc-addr", "--bootstrap", "--namespace"):
        assert any(line.startswith(f"dhtd: {flag}:") for line in lines), (flag, lines)


def test_environment_variables_are_validated_too() -> None:
    done = run(env={"DHTD_MODE": "sideways", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr.strip() == "dhtd: --mode: 'sideways' is not server or client"


def test_help_lists_every_flag_with_its_variable() -> None:
    done = run("--help")
    assert done.returncode == 0
    for flag in ("--grpc-addr", "--listen", "--bootstrap", "--data-dir", "--mode",
                 "--protocol-prefix", "--namespace", "--query-timeout", "--log-level",
                 "--dev-peers"):
        assert flag in done.stdout
    assert "DHTD_" in done.stdout


def test_ports_in_use_fail_fast_with_one_line(tmp_path: object) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        common = ["--data-dir", str(tmp_path), "--log-level", "error"]
        listen = run(*common, "--listen", f"/ip4/127.0.0.1/tcp/{port}",
                     "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "off")
        assert listen.returncode == 1
        assert "dhtd: --listen: could not listen" in listen.stderr
        metrics = run(*common, "--listen", "/ip4/127.0.0.1/tcp/0", "--grpc-addr", "127.0.0.1:0",
                      "--metrics-addr", f"127.0.0.1:{port}")
        assert metrics.returncode == 1
        assert f"dhtd: --metrics-addr 127.0.0.1:{port}: cannot listen" in metrics.stderr
        grpc_busy = run(*common, "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics-addr", "off",
                        "--grpc-addr", f"127.0.0.1:{port}")
        assert grpc_busy.returncode == 1
        assert f"dhtd: --grpc-addr 127.0.0.1:{port}: cannot listen" in grpc_busy.stderr
