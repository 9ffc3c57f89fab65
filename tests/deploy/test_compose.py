"""docker-compose.yml, its Prometheus config and its example client."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dhtd import config as dhtd_config
from dhtd.addrs import parse_dial_addr
from dhtd.ids import peer_id_to_str
from tests.deploy import (
    COMPOSE_FILE,
    DEV_KEY,
    EXAMPLE_CLIENT,
    NOT_INSTALLED,
    PROMETHEUS_YML,
    ROOT,
    compose_binary,
    compose_model,
    dev_key_peer_id,
    dhtd_nodes,
    env_of,
    environment,
    parse_dockerfile,
    services,
    stages,
)
from tests.swarm import swarm

BOOTSTRAP = "bootstrap"
NODES = ("node1", "node2", "node3")


def image_env() -> dict[str, str]:
    return env_of(stages(parse_dockerfile())[-1])


def service_config(name: str) -> dhtd_config.Config:
    """What dhtd would load in this service: the image's ENV, then the service's."""
    return dhtd_config.load([], {**image_env(), **environment(services()[name])})


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of each short-syntax volume."""
    result = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        result[target] = source
    return result


# -- validity -----------------------------------------------------------------------------


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    if binary is None:
        pytest.skip(f".venv-compose/bin/docker-compose {NOT_INSTALLED}")
    return subprocess.run(
        [str(binary), "-f", str(file), *args], cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COMPOSE_PROJECT_NAME": ""},
    )


def test_compose_file_is_valid() -> None:
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    # Proves the check can fail: an unknown key and a depends_on on a missing service.
    broken = tmp_path / "compose.yml"
    broken.write_text(
        "services:\n  a:\n    image: x\n    helthcheck: {}\n    depends_on: [nope]\n"
    )
    done = compose("config", "-q", file=broken)
    assert done.returncode != 0


def test_compose_resolves_to_what_the_tests_read() -> None:
    done = compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)["services"]
    assert set(resolved) == set(services())
    for name in (*NODES, "example-client"):
        depends = resolved[name].get("depends_on", {})
        assert depends.get(BOOTSTRAP, {}).get("condition") == "service_healthy", name
    client_deps = resolved["example-client"]["depends_on"]
    assert {n: d["condition"] for n, d in client_deps.items()} == {
        n: "service_healthy" for n in (BOOTSTRAP, *NODES)
    }
    for name in (BOOTSTRAP, *NODES):
        assert resolved[name]["healthcheck"]["test"][0] == "CMD", name


def test_no_version_key() -> None:
    assert "version" not in compose_model(), "the Compose spec has no version: key"


# -- the swarm ----------------------------------------------------------------------------


def test_services() -> None:
    assert set(dhtd_nodes()) == {BOOTSTRAP, *NODES}
    assert set(services()) == {BOOTSTRAP, *NODES, "prometheus", "example-client"}


def test_every_node_bootstraps_to_the_dev_key() -> None:
    peer_id = dev_key_peer_id()
    assert peer_id.startswith(("12D3", "Qm")), peer_id
    for name in NODES:
        cfg = service_config(name)
        wanted = f"/dns4/{BOOTSTRAP}/tcp/4001/p2p/{peer_id}"
        assert environment(services()[name])["DHTD_BOOTSTRAP"] == wanted, name
        assert cfg.bootstrap == (parse_dial_addr(wanted),), name
        assert peer_id_to_str(cfg.bootstrap[0][0]) == peer_id


def test_bootstrap_node_uses_the_dev_key() -> None:
    bootstrap = services()[BOOTSTRAP]
    assert "DHTD_BOOTSTRAP" not in environment(bootstrap)
    data_dir = service_config(BOOTSTRAP).data_dir
    source = mounts(bootstrap)[f"{data_dir}/identity.key"]
    assert (ROOT / source).resolve() == DEV_KEY.resolve()
    assert any(
        v.endswith(f"{data_dir}/identity.key:ro") for v in bootstrap["volumes"]
    ), "mounted read-only"
    # The image's user (not the key file's owner) must be able to read it.
    assert DEV_KEY.stat().st_mode & stat.S_IROTH, "chmod 0644 deploy/compose/bootstrap.identity.key"
    # The libp2p port the nodes dial is the one the bootstrap node listens on.
    assert service_config(BOOTSTRAP).listen == (
        dhtd_config.load([], {"DHTD_LISTEN": "/ip4/0.0.0.0/tcp/4001"}).listen
    )


def test_dev_key_is_documented_as_dev_only() -> None:
    readme = (DEV_KEY.parent / "README.md").read_text()
    assert "bootstrap.identity.key" in readme and "dev" in readme.lower()
    assert "DEV-ONLY" in COMPOSE_FILE.read_text()


def test_nodes_have_their_own_data_volumes_and_the_demo_namespace() -> None:
    named = compose_model().get("volumes", {})
    seen = set()
    for name in NODES:
        cfg = service_config(name)
        volume = mounts(services()[name])[str(cfg.data_dir)]
        assert volume in named, f"{name}: {volume} is not a named volume"
        seen.add(volume)
    assert len(seen) == len(NODES), "one data volume per node"
    for name in (BOOTSTRAP, *NODES):
        assert "demo" in service_config(name).namespaces, name


def test_healthchecks_and_start_order() -> None:
    for name in (BOOTSTRAP, *NODES):
        test = services()[name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"], test
        code = test[-1]
        port = service_config(name).metrics_addr
        assert port is not None and f"127.0.0.1:{port[1]}/" in code, code
        # The first node is alive before anyone joins it; the others are ready once joined.
        assert ("/healthz" if name == BOOTSTRAP else "/readyz") in code, (name, code)
    for name in NODES:
        assert services()[name]["depends_on"] == {BOOTSTRAP: {"condition": "service_healthy"}}


def test_example_client_service() -> None:
    client = services()["example-client"]
    assert client["image"] == services()[BOOTSTRAP]["image"]
    script = client["entrypoint"][-1]
    assert client["entrypoint"][0] == "python"
    assert (ROOT / mounts(client)[script]).resolve() == EXAMPLE_CLIENT.resolve()
    targets = environment(client)["DHTD_TARGETS"].split(",")
    assert targets == [f"{n}:{service_config(n).grpc_port}" for n in NODES]
    assert client["depends_on"] == {
        n: {"condition": "service_healthy"} for n in (BOOTSTRAP, *NODES)
    }
    assert client["healthcheck"] == {"disable": True}
    assert client["restart"] == "no"


# -- Prometheus ---------------------------------------------------------------------------


def test_prometheus_scrapes_every_node() -> None:
    prometheus = services()["prometheus"]
    image, _, tag = prometheus["image"].partition(":")
    assert image == "prom/prometheus" and tag.startswith("v") and tag != "latest", tag
    assert (ROOT / mounts(prometheus)["/etc/prometheus/prometheus.yml"]).resolve() == (
        PROMETHEUS_YML.resolve()
    )
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dhtd_job = jobs["dhtd"]
    assert dhtd_job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for group in dhtd_job["static_configs"] for t in group["targets"]}
    wanted = set()
    for name in dhtd_nodes():
        metrics = service_config(name).metrics_addr
        assert metrics is not None, name
        wanted.add(f"{name}:{metrics[1]}")
    assert targets == wanted


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip(f"promtool (Debian package prometheus) {NOT_INSTALLED}")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_promtool_accepts_the_prometheus_config() -> None:
    done = promtool("check", "config", str(PROMETHEUS_YML))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    scrape_intervall: 5s\n")
    assert promtool("check", "config", str(broken)).returncode != 0


# -- the example client, against a live swarm ---------------------------------------------


def run_example(args: list[str], env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DHTD_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLE_CLIENT), *args], env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=150, check=False,
    )


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_example_client_against_a_local_swarm(tmp_path: Path) -> None:
    extra = ["--namespace", "demo", "--metrics-addr", "127.0.0.1:0"]
    with swarm(tmp_path, 4, extra=extra) as nodes:
        node1, node2, node3 = nodes[1:]
        by_argv = run_example([node1.grpc_addr, node2.grpc_addr, node3.grpc_addr])
        assert by_argv.returncode == 0, by_argv.stdout + by_argv.stderr
        out = by_argv.stdout
        assert f"node1 {node1.grpc_addr}: peer {node1.peer_id}" in out, out
        assert f"provider {node1.peer_id} (node1)" in out, out
        assert "findprovs " in out and "on node3" in out, out
        assert "put /demo/example-" in out and "on node2: stored on" in out, out
        assert "on node3: 'hello from the example client" in out, out
        assert out.rstrip().endswith("example client: OK"), out

        targets = ",".join(n.grpc_addr for n in (node1, node2, node3))
        by_env = run_example([], {"DHTD_TARGETS": targets})
        assert by_env.returncode == 0, by_env.stdout + by_env.stderr
        assert by_env.stdout.rstrip().endswith("example client: OK")


@pytest.mark.integration
def test_example_client_fails_when_a_node_is_down(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    done = run_example([dead])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stderr, done.stderr


def test_example_client_needs_targets() -> None:
    done = run_example([])
    assert done.returncode != 0 and "usage" in done.stderr, done.stderr
