"""Metrics, probes and shutdown, checked with real tools: promtool, a Prometheus
server scraping a live swarm, and gRPC health watched across a SIGTERM."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dht.v1 import dht_pb2 as pb
from tests.integration.test_swarm import Frozen, cid_for
from tests.swarm import Node, start_node, swarm, wait_until

pytestmark = pytest.mark.integration

METRICS = ["--metrics-addr", "127.0.0.1:0"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def metrics_url(node: Node, path: str = "/metrics") -> str:
    return f"http://{node.info['metrics_addr']}{path}"


def health(node: Node, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(node.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    with swarm(tmp_path_factory.mktemp("ops"), 3,
               extra=[*METRICS, "--namespace", "app"]) as nodes:
        yield nodes


def exercise(nodes: list[Node]) -> None:
    cid = cid_for(f"ops-{time.time_ns()}")
    list(nodes[0].dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=10))
    list(nodes[2].dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=10))
    list(nodes[0].dht.Query(pb.QueryRequest(peer_id=nodes[2].peer_id), timeout=10))
    list(nodes[1].dht.Put(pb.PutRequest(key=b"/app/ops", value=b"v"), timeout=10))
    nodes[2].dht.Get(pb.GetRequest(key=b"/app/ops"), timeout=10)
    with pytest.raises(grpc.RpcError):
        nodes[0].dht.FindPeer(pb.FindPeerRequest(peer_id="bad"), timeout=5)


def test_promtool_finds_nothing_wrong_with_a_live_metrics_page(three: list[Node]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/test-tools installs Debian's prometheus"
    exercise(three)
    status, page = http_get(metrics_url(three[0]))
    assert status == 200
    done = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr)
    # Every family the docs promise is on the page.
    for family in ("grpc_server_started_total", "grpc_server_handled_total",
                   "grpc_server_msg_received_total", "grpc_server_msg_sent_total",
                   "grpc_server_handling_seconds_bucket", "dht_routing_table_peers",
                   "dht_connected_peers", "dht_queries_in_flight",
                   "dht_query_duration_seconds_bucket", "dht_time_to_first_result_seconds_bucket",
                   "dht_outbound_requests_total", "dht_outbound_request_errors_total",
                   "dht_inbound_requests_total", "dht_query_events_total",
                   "dht_provider_records", "dht_value_records"):
        assert re.search(rf"^{family}[{{ ]", page, re.M), family
    # The failed FindPeer is counted with its code (the count lands just after the
    # caller sees the status, so wait for it).
    invalid = re.compile(r'^grpc_server_handled_total\{grpc_code="INVALID_ARGUMENT",'
                         r'grpc_method="FindPeer"', re.M)
    wait_until(lambda: bool(invalid.search(http_get(metrics_url(three[0]))[1])), 5,
               "the INVALID_ARGUMENT FindPeer to be counted")


def test_labels_never_carry_keys_cids_or_peer_ids(three: list[Node]) -> None:
    exercise(three)
    ids = {n.peer_id for n in three}
    for node in three:
        _, page = http_get(metrics_url(node))
        for line in page.splitlines():
            if line.startswith("#") or "{" not in line:
                continue
            labels = line[line.index("{"):line.rindex("}")]
            assert not any(i in labels for i in ids), line
            assert not re.search(r"(12D3Koo|Qm[1-9A-Za-z]{44}|bafk|/app/)", labels), line


def test_http_probes_agree_with_grpc_health(three: list[Node], tmp_path: Path) -> None:
    for node in three:
        assert health(node, "") == SERVING
        assert health(node, "dht.v1.DhtService") == SERVING
        assert http_get(metrics_url(node, "/readyz"))[0] == 200
        assert http_get(metrics_url(node, "/healthz"))[0] == 200
    # A private prefix keeps stray dials from other tests' nodes out of its table.
    lonely = start_node("lonely-ops", tmp_path / "lonely",
                        [*METRICS, "--protocol-prefix", "/lonely-test"])
    try:
        assert health(lonely, "") == NOT_SERVING
        assert health(lonely, "dht.v1.DhtService") == NOT_SERVING
        assert http_get(metrics_url(lonely, "/readyz"))[0] == 503
        assert http_get(metrics_url(lonely, "/healthz"))[0] == 200
        assert http_get(metrics_url(lonely, "/nope"))[0] == 404
    finally:
        lonely.stop()


def test_sigterm_turns_not_serving_at_once_then_drains_and_exits(tmp_path: Path) -> None:
    a = start_node("term-a", tmp_path / "a", [*METRICS, "--shutdown-grace", "3"])
    b = start_node("term-b", tmp_path / "b", ["--bootstrap", a.p2p_addr])
    try:
        wait_until(lambda: health(a, "dht.v1.DhtService") == SERVING, 10, "a to serve")
        statuses: list[tuple[float, int]] = []
        watch = health_pb2_grpc.HealthStub(a.channel).Watch(
            health_pb2.HealthCheckRequest(service="dht.v1.DhtService"), timeout=30)
        first = threading.Event()

        def follow() -> None:
            try:
                for update in watch:
                    statuses.append((time.monotonic(), update.status))
                    first.set()
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        assert first.wait(5) and statuses[0][1] == SERVING
        with Frozen(b):
            # An RPC in flight that cannot finish (its only peer is frozen).
            slow = a.dht.FindProvs(pb.FindProvsRequest(cid=cid_for("drain")), timeout=30)
            wait_until(lambda: a.node_info().queries_in_flight == 1, 5, "the slow RPC to start")
            sent_at = time.monotonic()
            a.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: any(s == NOT_SERVING for _, s in statuses), 3,
                       "NOT_SERVING on the Watch stream within the 3 s grace")
            # Readiness dropped while the in-flight RPC still had its grace.
            assert slow.is_active()
            assert http_get(metrics_url(a, "/readyz"))[0] == 503
            # The in-flight RPC gets the grace period, then is cancelled; then a exits 0.
            with pytest.raises(grpc.RpcError):
                list(slow)
            assert a.proc.wait(15) == 0
            assert time.monotonic() - sent_at >= 2.5
    finally:
        a.stop()
        b.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_prometheus_scrapes_the_swarm(three: list[Node], tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus missing: scripts/test-tools installs Debian's prometheus"
    targets = [str(n.info["metrics_addr"]) for n in three]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "dhtd", "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict[str, object]]:
        status, body = http_get(f"{api}/query?query={urllib.parse.quote(expr)}")
        if status != 200:
            return []
        return list(json.loads(body)["data"]["result"])

    def targets_up() -> bool:
        status, body = http_get(f"{api}/targets")
        if status != 200:
            return False
        active = json.loads(body)["data"]["activeTargets"]
        return len(active) == 3 and all(t["health"] == "up" for t in active)

    try:
        wait_until(targets_up, 30, "Prometheus to scrape all three nodes")
        exercise(three)
        wait_until(lambda: len(query(
            'grpc_server_handled_total{grpc_service="dht.v1.DhtService",grpc_method="Query"}'
        )) >= 1, 20, "Prometheus to see the Query RPCs")
        for method in ("Provide", "FindProvs", "Put", "Get"):
            wait_until(lambda m=method: len(query(
                f'grpc_server_handled_total{{grpc_method="{m}",grpc_code="OK"}}')) >= 1,
                20, f"{method} in Prometheus")
        tables = query("dht_routing_table_peers")
        assert len(tables) == 3 and all(float(t["value"][1]) >= 2 for t in tables)  # type: ignore[index]
        assert query('sum(dht_outbound_requests_total{message_type="FIND_NODE"}) > 0')
        assert query("sum(dht_query_events_total) > 0")
    finally:
        proc.terminate()
        proc.wait(10)


def outbound_add_provider(node: Node) -> float:
    _, page = http_get(metrics_url(node))
    match = re.search(r'^dht_outbound_requests_total\{message_type="ADD_PROVIDER"\} (\S+)$',
                      page, re.M)
    return float(match.group(1)) if match else 0.0


def test_provided_cids_are_announced_again(tmp_path: Path) -> None:
    a = start_node("reprov-a", tmp_path / "a", [*METRICS, "--reprovide-interval", "2"])
    b = start_node("reprov-b", tmp_path / "b", ["--bootstrap", a.p2p_addr])
    try:
        wait_until(lambda: a.node_info().routing_table_size == 1, 10, "a and b to meet")
        list(a.dht.Provide(pb.ProvideRequest(cids=[cid_for("reprovide-me")]), timeout=10))
        after_provide = outbound_add_provider(a)
        assert after_provide >= 1
        # No further calls: the count rises because a announces the CID again.
        wait_until(lambda: outbound_add_provider(a) > after_provide, 15,
                   "a to announce its CID again")
    finally:
        a.stop()
        b.stop()
