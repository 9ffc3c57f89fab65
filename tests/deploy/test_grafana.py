"""deploy/grafana/dhtd.json: valid, names only metrics dhtd exports, and those
metrics really are on a running dhtd's /metrics page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.swarm import start_node

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dhtd.json"

# Every series dhtd exports for this dashboard: name -> Prometheus type.
EXPORTED = {
    "grpc_server_started_total": "counter",
    "grpc_server_handled_total": "counter",
    "grpc_server_msg_received_total": "counter",
    "grpc_server_msg_sent_total": "counter",
    "grpc_server_handling_seconds": "histogram",
    "dht_routing_table_peers": "gauge",
    "dht_connected_peers": "gauge",
    "dht_queries_in_flight": "gauge",
    "dht_query_duration_seconds": "histogram",
    "dht_time_to_first_result_seconds": "histogram",
    "dht_outbound_requests_total": "counter",
    "dht_outbound_request_errors_total": "counter",
    "dht_inbound_requests_total": "counter",
    "dht_query_events_total": "counter",
    "dht_provider_records": "gauge",
    "dht_value_records": "gauge",
}
# What the dashboard must show (the panels deploy/README.md describes).
REQUIRED = set(EXPORTED) - {"grpc_server_started_total", "grpc_server_msg_received_total",
                            "grpc_server_msg_sent_total"}
METRIC_RE = re.compile(r"\b(?:grpc_server|dht)_[a-z_]+")
HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return out


def exprs(dash: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in panels(dash) for t in p.get("targets", []) if "expr" in t]
    assert found, "the dashboard has no PromQL"
    return found


def metric_names(expr: str) -> set[str]:
    return {HISTOGRAM_SUFFIX.sub("", m) for m in METRIC_RE.findall(expr)}


def used_metrics() -> set[str]:
    return set().union(*(metric_names(e) for e in exprs(load())))


def test_dashboard_is_valid_json_with_a_prometheus_datasource() -> None:
    dash = load()
    assert dash["title"] and dash["uid"]
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_names_only_exported_metrics() -> None:
    for expr in exprs(load()):
        names = metric_names(expr)
        assert names, f"no dhtd metric in {expr!r}"
        unknown = names - set(EXPORTED)
        assert not unknown, f"{expr!r} names metrics dhtd does not export: {unknown}"


def test_dashboard_covers_every_promised_panel() -> None:
    assert used_metrics() >= REQUIRED
    text = "\n".join(exprs(load()))
    assert 'grpc_code!="OK"' in text.replace(" ", "")
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, grpc_method)" in text
    for expr in exprs(load()):
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and "le" in expr, expr
        for name in metric_names(expr):
            # Counters only make sense as rates; histograms only through their buckets.
            if EXPORTED.get(name) == "counter":
                assert f"rate({name}" in expr, expr
            if EXPORTED.get(name) == "histogram":
                assert f"{name}_bucket" in expr, expr


def test_every_expression_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}",
         "expr": e.replace("$job", ".*").replace("$instance", ".*")}
        for i, e in enumerate(exprs(load()))]}]}
    path = tmp_path / "rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
def test_every_dashboard_metric_is_on_a_live_metrics_page(tmp_path: Path) -> None:
    node = start_node("metrics", tmp_path / "n0", ["--metrics-addr", "127.0.0.1:0"])
    try:
        node.node_info()  # one finished RPC, so the grpc_server_* series have samples
        addr = str(node.info["metrics_addr"])
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
            assert resp.status == 200
            page = resp.read().decode()
    finally:
        node.stop()
    lines = page.splitlines()
    types = dict(line.split()[2:4] for line in lines if line.startswith("# TYPE "))
    samples = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines
               if line and not line.startswith("#")}
    for name in sorted(used_metrics()):
        kind = EXPORTED[name]
        # A counter's family may be written with or without its _total suffix
        # (the text format's generators differ); its samples always carry it.
        families = {name, name.removesuffix("_total")} if kind == "counter" else {name}
        assert any(types.get(f) == kind for f in families), f"{name} ({kind}) not on /metrics"
        if kind == "histogram":
            assert f"{name}_bucket" in samples, f"no {name}_bucket lines on /metrics"
    assert "grpc_server_handled_total" in samples
