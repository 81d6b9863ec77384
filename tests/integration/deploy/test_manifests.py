"""Deployment packaging: kustomize renders, objects validate against the Kubernetes schema
(built-in kinds only, unless a Prometheus Operator component is switched on), pods are hardened,
only the cluster watcher reads the API (read-only, plus get/update on its one ConfigMap) and
holds a token, every auditor mounts the ConfigMap it publishes, Traefik values use the right keys
per chart version, the auditor container is the same everywhere, YAML is lint-clean, and the
Dockerfile builds offline and runs non-root."""

from __future__ import annotations

import argparse
import copy
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.cli.discover import DEFAULT_CONFIGMAP
from pipeline.config import KEYS, RunConfig, load_config
from pipeline.kube.publish import OWNED_LABELS
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
TARGETS = ("base", "overlays/sidecar", "overlays/node-agent")
OVERLAYS = ("overlays/sidecar", "overlays/node-agent")
# Opt-in components for the Prometheus Operator; each overlay lists them commented out.
COMPONENTS = ("prometheus-operator", "kube-prometheus-stack")
SIDECAR_PATCH = KUSTOMIZE / "overlays" / "sidecar" / "traefik-daemonset-patch.yaml"
HELM_V41 = DEPLOY / "helm" / "traefik-values-v41.yaml"
HELM_V40 = DEPLOY / "helm" / "traefik-values-v40.yaml"
K3S = DEPLOY / "k3s" / "traefik-helmchartconfig.yaml"
K8S_VERSION = "1.31.0"
WATCHER = "ban-auditor-discovery"  # Deployment, ServiceAccount, Role, container
NETWORKS_DIR = "/etc/ban-auditor-networks"
CRD_KINDS = {"PrometheusRule", "ServiceMonitor"}
TIMEOUT = 120
UID = 65532
LOG_DIR = "/var/log/traefik"
# What the pod's environment supplies, with the downward-API references expanded.
POD_ENV = {
    "POD_IP": "10.42.0.5",
    "AUDITOR_METRICS_LISTEN": "10.42.0.5:9977",
    "AUDITOR_NODE_NAME": "n1",
}

Obj = dict[str, Any]


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(name="kubectl", scope="module")
def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not found: it renders the kustomize packaging")
    return path


def _kustomize(kubectl: str, directory: Path) -> list[Obj]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(name="rendered", scope="module")
def _rendered(kubectl: str) -> dict[str, list[Obj]]:
    return {target: _kustomize(kubectl, KUSTOMIZE / target) for target in TARGETS}


def _enable_component(overlay: Path, component: str) -> None:
    """Uncomment the overlay's `components:` line for ``component``, as its comment says."""
    path = overlay / "kustomization.yaml"
    text = path.read_text(encoding="utf-8")
    line = f"#   - ../../components/{component}"
    assert "\n# components:\n" in text, f"{path}: no commented components block"
    assert line in text, f"{path}: does not offer {component}"
    text = text.replace("\n# components:\n", "\ncomponents:\n", 1)
    path.write_text(text.replace(line, line.removeprefix("#").replace(" ", "", 1), 1))


@pytest.fixture(name="monitored", scope="module")
def _monitored(
    kubectl: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], list[Obj]]:
    """Each overlay with each monitoring component switched on in a copy of deploy/."""
    out: dict[tuple[str, str], list[Obj]] = {}
    for overlay in OVERLAYS:
        for component in COMPONENTS:
            copy_root = tmp_path_factory.mktemp("deploy") / "deploy"
            shutil.copytree(DEPLOY, copy_root)
            _enable_component(copy_root / "kustomize" / overlay, component)
            out[overlay, component] = _kustomize(kubectl, copy_root / "kustomize" / overlay)
    return out


def _one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _validate(obj: Obj) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(
            f"{obj['kind']}/{obj['metadata'].get('name')}: {exc.message} at {list(exc.path)}"
        )


def _auditor(pod_spec: Obj) -> Obj:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "ban-auditor"]
    return container


def _mounts(container: Obj) -> dict[str, Obj]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


# --- kustomize -------------------------------------------------------------------------------


def test_kubernetes_validate_knows_the_pinned_version() -> None:
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates(rendered: dict[str, list[Obj]], target: str) -> None:
    """Every object is a built-in kind valid for K8S_VERSION: a cluster without the
    Prometheus Operator's CRDs can apply it (no ServiceMonitor or PrometheusRule)."""
    objs = rendered[target]
    assert objs
    for obj in objs:
        assert obj["kind"] not in CRD_KINDS, f"{target} forces {obj['kind']} on every cluster"
        _validate(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("component", COMPONENTS)
def test_renders_with_a_monitoring_component(
    rendered: dict[str, list[Obj]],
    monitored: dict[tuple[str, str], list[Obj]],
    overlay: str,
    component: str,
) -> None:
    """The component adds exactly the two CRD objects, in the overlay's namespace and with its
    labels, and leaves everything else as the plain overlay renders it."""
    objs = monitored[overlay, component]
    crds = [o for o in objs if o["kind"] in CRD_KINDS]
    assert sorted(o["kind"] for o in crds) == sorted(CRD_KINDS)
    assert [o for o in objs if o["kind"] not in CRD_KINDS] == rendered[overlay]
    namespace = _one(rendered[overlay], "Service", "ban-auditor")["metadata"]["namespace"]
    for obj in crds:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert obj["metadata"]["namespace"] == namespace
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "ban-auditor"
        assert ("release" in labels) is (component == "kube-prometheus-stack")


def test_schema_validation_rejects_unknown_fields() -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "data": {},
        "surprise": 1,
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_common_objects(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    kinds = {o["kind"] for o in objs}
    assert {"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Service"} <= kinds
    dashboard = _one(objs, "ConfigMap", "ban-auditor-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    config = _config(objs)
    assert config.start_at == "end"
    # The cluster view comes from the watcher's file: no API access, no 52 MB client per pod.
    assert config.discovery is False
    assert config.networks_file == f"{NETWORKS_DIR}/networks.json"
    _one(objs, "Deployment", WATCHER)
    assert config.metrics_listen == POD_ENV["AUDITOR_METRICS_LISTEN"]
    assert config.lapi_url
    assert config.lapi_key_file == "/run/secrets/ban-auditor/api-key"


def _config(objs: list[Obj]) -> RunConfig:
    """The ConfigMap's config.toml as the auditor loads it in the pod (file < pod env)."""
    text = _one(objs, "ConfigMap", "ban-auditor-config")["data"]["config.toml"]
    tomllib.loads(text)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text, encoding="utf-8")
        return load_config(argparse.Namespace(config=str(path)), env=POD_ENV)


@pytest.mark.parametrize("target", TARGETS)
def test_namespaced_objects_share_one_namespace(
    rendered: dict[str, list[Obj]], target: str
) -> None:
    expected = "kube-system" if target.endswith("sidecar") else "ban-auditor"
    for obj in rendered[target]:
        if obj["kind"] in {"ClusterRole", "ClusterRoleBinding", "Namespace"}:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == expected, obj["kind"]


@pytest.mark.parametrize("target", TARGETS)
def test_rbac_is_read_only_discovery(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    role = _one(objs, "ClusterRole")
    granted: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        assert "resourceNames" not in rule
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource)
                granted.add((group, resource))
    assert granted == {
        ("", "nodes"),
        ("", "services"),
        ("", "pods"),
        ("", "namespaces"),  # MetalLB presence (metallb-system)
        ("apps", "daemonsets"),  # k3s svclb DaemonSets
        ("apps", "replicasets"),  # Traefik's owner chain: Deployment or DaemonSet
    }
    binding = _one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }


@pytest.mark.parametrize("target", TARGETS)
def test_the_watcher_writes_only_its_own_configmap(
    rendered: dict[str, list[Obj]], target: str
) -> None:
    """get and update on one ConfigMap, by name; never create (RBAC cannot name what is
    created), so the ConfigMap ships in the manifests, empty, with the labels the watcher checks
    before writing."""
    objs = rendered[target]
    (role,) = [o for o in objs if o["kind"] == "Role"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [DEFAULT_CONFIGMAP],
            "verbs": ["get", "update"],
        }
    ]
    (binding,) = [o for o in objs if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    cm = _one(objs, "ConfigMap", DEFAULT_CONFIGMAP)
    assert OWNED_LABELS.items() <= cm["metadata"]["labels"].items()
    # No data at all: `kubectl apply` then never resets what the watcher wrote.
    assert "data" not in cm and "binaryData" not in cm
    if target != "base":
        assert cm["metadata"]["namespace"] == binding["metadata"]["namespace"]


@pytest.mark.parametrize("target", OVERLAYS)
def test_rbac_subjects_are_the_watcher_only(rendered: dict[str, list[Obj]], target: str) -> None:
    """Only the watcher reads the API: the bindings name its ServiceAccount, in the overlay's
    namespace (kustomize does not move subjects), and never Traefik's."""
    objs = rendered[target]
    namespace = _one(objs, "Deployment", WATCHER)["metadata"]["namespace"]
    account = {"kind": "ServiceAccount", "name": WATCHER, "namespace": namespace}
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        (binding,) = [o for o in objs if o["kind"] == kind]
        assert binding["subjects"] == [account], kind
    assert _one(objs, "ServiceAccount", WATCHER)["metadata"]["namespace"] == namespace
    pod = _one(objs, "Deployment", WATCHER)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == WATCHER


def test_rbac_subjects(rendered: dict[str, list[Obj]]) -> None:
    _one(rendered["overlays/node-agent"], "ServiceAccount", "ban-auditor")
    # The sidecar runs under Traefik's ServiceAccount, and grants it nothing.
    accounts = [o for o in rendered["overlays/sidecar"] if o["kind"] == "ServiceAccount"]
    assert [a["metadata"]["name"] for a in accounts] == [WATCHER]
    for target in OVERLAYS:
        for obj in rendered[target]:
            for subject in obj.get("subjects", []):
                assert subject["name"] != "traefik", f"{target}: {obj['kind']} binds Traefik"


def test_sidecar_ships_no_networkpolicy_for_traefik(rendered: dict[str, list[Obj]]) -> None:
    """A policy selecting Traefik pods would cut off all its web traffic; only the watcher's."""
    objs = rendered["overlays/sidecar"]
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": WATCHER}
    service = _one(objs, "Service", "ban-auditor")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "traefik"}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_monitoring_wiring(monitored: dict[tuple[str, str], list[Obj]]) -> None:
    for objs in monitored.values():
        monitor = _one(objs, "ServiceMonitor")
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        # The auditors' Service and the watcher's: one monitor scrapes both.
        for name in ("ban-auditor", WATCHER):
            service = _one(objs, "Service", name)
            labels = service["metadata"]["labels"]
            assert _selects(monitor["spec"]["selector"]["matchLabels"], labels)
            ports = {p["name"]: p for p in service["spec"]["ports"]}
            assert ports[endpoint["port"]]["port"] == 9977
            assert ports[endpoint["port"]]["targetPort"] == "auditor-metrics"
            # Prometheus job = Service name; the alert rules match job=~"ban-auditor.*".
            assert service["metadata"]["name"].startswith("ban-auditor")
        rule = _one(objs, "PrometheusRule")
        assert rule["spec"]["groups"]


def test_node_agent_wiring(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["overlays/node-agent"]
    ds = _one(objs, "DaemonSet", "ban-auditor")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert _selects(ds["spec"]["selector"]["matchLabels"], pod_labels)
    assert _selects(_one(objs, "Service", "ban-auditor")["spec"]["selector"], pod_labels)
    policy = _one(objs, "NetworkPolicy", "ban-auditor-metrics")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9977}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    namespace = _one(objs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def _assert_hardened(container: Obj, pod_sc: Obj, *, non_root: bool) -> None:
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged", False)
    seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile")
    assert seccomp == {"type": "RuntimeDefault"}
    if non_root:
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == UID
    resources = container["resources"]
    assert resources["requests"] == {"cpu": "20m", "memory": "48Mi"}  # bench/RESULTS.md
    assert resources["limits"] == {"cpu": "500m", "memory": "96Mi"}
    assert _mounts(container)["/tmp"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["AUDITOR_METRICS_LISTEN"]["value"] == "$(POD_IP):9977"
    assert container["args"] == ["run", "--config", "/etc/ban-auditor/config.toml"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"auditor-metrics": 9977}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert env["AUDITOR_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for name in env:
        if name.startswith("AUDITOR_"):
            assert name.removeprefix("AUDITOR_").lower() in KEYS, f"{name} is no config key"
    assert set(env) == set(POD_ENV)


def test_node_agent_pod(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["overlays/node-agent"]
    spec = _one(objs, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "ban-auditor"
    assert not spec.get("hostNetwork")
    assert not spec.get("hostPID")
    container = _auditor(spec)
    # Root without capabilities, to read root-owned /var/log/pods files (see daemonset.yaml).
    _assert_hardened(container, spec["securityContext"], non_root=False)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = _mounts(container)
    host_paths = {name: v["hostPath"]["path"] for name, v in volumes.items() if "hostPath" in v}
    assert host_paths == {"varlog": "/var/log", "checkpoints": "/var/lib/ban-auditor"}
    assert mounts["/var/log"]["readOnly"] is True
    assert not mounts["/var/lib/ban-auditor"].get("readOnly", False)
    for path, mount in mounts.items():
        if path not in ("/var/lib/ban-auditor", "/tmp"):
            assert mount.get("readOnly") is True, path
    secret = volumes[mounts["/run/secrets/ban-auditor"]["name"]]["secret"]
    assert secret["secretName"] == "ban-auditor-lapi"
    assert secret["items"] == [{"key": "api-key", "path": "api-key"}]
    config = _config(objs)
    assert config.access_log == ("/var/log/containers/traefik-*_kube-system_traefik-*.log",)
    assert config.checkpoint_dir == "/var/lib/ban-auditor"
    assert config.envelope == "auto"
    # CrowdSec reads Traefik's own container log here: no echo, findings on stdout.
    assert config.echo_access_log is False
    _check_networks_volume(container, spec["volumes"], config)


def _check_networks_volume(container: Obj, volumes: list[Obj], config: RunConfig) -> None:
    """The watcher's ConfigMap, mounted whole (a subPath is never updated), read-only, optional
    (the pod starts before the watcher published), where networks_file points."""
    assert config.networks_file is not None
    mount = _mounts(container)[NETWORKS_DIR]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    assert str(Path(config.networks_file).parent) == NETWORKS_DIR
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["configMap"] == {"name": DEFAULT_CONFIGMAP, "optional": True}


@pytest.mark.parametrize("target", OVERLAYS)
def test_watcher_pod(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    deployment = _one(objs, "Deployment", WATCHER)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert _selects(_one(objs, "Service", WATCHER)["spec"]["selector"], pod["metadata"]["labels"])
    # Not selected by the auditors' Service or policy: scraped once, under its own job.
    assert not _selects(
        _one(objs, "Service", "ban-auditor")["spec"]["selector"], pod["metadata"]["labels"]
    )
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["name"] == WATCHER
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == UID and sc["runAsNonRoot"] is True
    # bench/discovery_rss.py: ~80 MB RSS (the Kubernetes client); see deploy/README.md.
    assert container["resources"]["limits"] == {"cpu": "200m", "memory": "128Mi"}
    assert container["resources"]["requests"] == {"cpu": "10m", "memory": "96Mi"}
    args = container["args"]
    assert args[0] == "discover"
    assert args[args.index("--configmap") + 1] == DEFAULT_CONFIGMAP
    assert args[args.index("--namespace") + 1] == "$(POD_NAMESPACE)"
    assert args[args.index("--metrics-listen") + 1] == "$(POD_IP):9977"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert _mounts(container).keys() == {"/tmp"}
    assert container["image"] == _auditor(_load(SIDECAR_PATCH)["spec"]["template"]["spec"])["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_component_from_a_kustomization_of_ones_own(
    kubectl: str, rendered: dict[str, list[Obj]], tmp_path: Path, overlay: str
) -> None:
    """The other way to opt in, without editing deploy/: a kustomization that takes the
    overlay as a resource and adds the component; it must set the overlay's namespace."""
    namespace = _one(rendered[overlay], "Service", "ban-auditor")["metadata"]["namespace"]
    rel = Path(os.path.relpath(KUSTOMIZE, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": namespace,
                "resources": [str(rel / overlay)],
                "components": [str(rel / "components" / "kube-prometheus-stack")],
            }
        ),
        encoding="utf-8",
    )
    objs = _kustomize(kubectl, tmp_path)
    assert [o for o in objs if o["kind"] not in CRD_KINDS] == rendered[overlay]
    for kind in CRD_KINDS:
        obj = _one(objs, kind)
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert obj["metadata"]["namespace"] == namespace


# --- least privilege: which logs are read, who holds an API token ------------------------------

CONTAINER_LOGS = "/var/log/containers"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
_CID = "3f1c9a7e" * 8  # a container id: 64 hex digits
# The kubelet's names, <pod>_<namespace>_<container>-<container id>.log.
TRAEFIK_LOGS = {
    f"traefik-m4q7z_kube-system_traefik-{_CID}.log",  # DaemonSet pod (deploy/k3s, deploy/helm)
    f"traefik-6f5c7d9b8-x2x9k_kube-system_traefik-{_CID}.log",  # k3s' default Deployment
}
NOT_TRAEFIK_LOGS = {
    # Tenants: any pod or container may be called "traefik", in any namespace they own.
    f"mytraefik-x_tenant_app-{_CID}.log",
    f"traefik-abc_tenant_traefik-{_CID}.log",
    f"traefik-7d4b9-q8w2e_tenant-traefik_traefik-{_CID}.log",
    f"web-0_shop_traefik-{_CID}.log",
    f"app-traefik-5x7k2_kube-systemx_traefik-{_CID}.log",
    # kube-system pods that are not Traefik's access log.
    f"svclb-traefik-4f6c2a1b-9kq2m_kube-system_lb-tcp-80-{_CID}.log",
    f"helm-install-traefik-6tqzl_kube-system_helm-{_CID}.log",
    f"helm-install-traefik-crd-8xk2p_kube-system_helm-{_CID}.log",
    f"traefik-m4q7z_kube-system_ban-auditor-{_CID}.log",  # a sidecar's own output
}


def _tailed(pattern: str, directory: Path) -> set[str]:
    """The file names the tailer would follow for ``pattern`` (pipeline/sources/tail.py: glob)."""
    for name in TRAEFIK_LOGS | NOT_TRAEFIK_LOGS:
        (directory / name).touch()
    moved = str(directory) + pattern.removeprefix(CONTAINER_LOGS)
    return {Path(p).name for p in glob.glob(moved)}


@pytest.mark.parametrize("target", TARGETS)
def test_only_traefiks_own_logs_are_read(
    rendered: dict[str, list[Obj]], target: str, tmp_path: Path
) -> None:
    for pattern in _config(rendered[target]).access_log:
        if not pattern.startswith(CONTAINER_LOGS + "/"):
            # A file only Traefik writes (the sidecar's shared emptyDir): no glob at all.
            assert not glob.has_magic(pattern), pattern
            continue
        assert _tailed(pattern, tmp_path) == TRAEFIK_LOGS, pattern


def test_node_agent_glob_names_traefiks_namespace(rendered: dict[str, list[Obj]]) -> None:
    """The namespace in the glob is the one the rest of deploy/ gives Traefik."""
    (pattern,) = _config(rendered["overlays/node-agent"]).access_log
    _, namespace, _ = Path(pattern).name.split("_")
    sidecar = _one(rendered["overlays/sidecar"], "Service", "ban-auditor")["metadata"]
    assert namespace == sidecar["namespace"] == _load(K3S)["metadata"]["namespace"]


def test_glob_check_catches_a_loose_glob(tmp_path: Path) -> None:
    tailed = _tailed(f"{CONTAINER_LOGS}/*traefik*.log", tmp_path)
    assert tailed >= TRAEFIK_LOGS
    assert tailed & NOT_TRAEFIK_LOGS  # the old glob: tenants' logs are read too


def _gets_token(pod_spec: Obj, container: Obj, service_accounts: dict[str, Obj]) -> bool:
    """Whether the ServiceAccount admission plugin mounts an API token into ``container``:
    the pod's automountServiceAccountToken, else its ServiceAccount's, else true; and never
    into a container that already mounts something at the token path."""
    automount = pod_spec.get("automountServiceAccountToken")
    if automount is None:
        account = service_accounts.get(pod_spec.get("serviceAccountName", "default"), {})
        automount = account.get("automountServiceAccountToken", True)
    return bool(automount) and TOKEN_PATH not in _mounts(container)


def _pod_specs(objs: list[Obj]) -> list[Obj]:
    return [o["spec"]["template"]["spec"] for o in objs if "template" in o.get("spec", {})]


@pytest.mark.parametrize("target", TARGETS)
def test_api_token_only_in_the_watcher(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    assert _config(objs).discovery is False
    accounts = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceAccount"}
    for account in accounts.values():
        # Explicit: never the API server's default (true); the one pod that needs it opts in.
        assert account["automountServiceAccountToken"] is False
    specs = _pod_specs(objs)
    assert specs
    for spec in specs:
        containers = {c["name"]: c for c in spec["containers"]}
        if WATCHER in containers:
            assert spec["automountServiceAccountToken"] is True
            assert _gets_token(spec, containers[WATCHER], accounts)
        else:
            assert spec["automountServiceAccountToken"] is False
            assert not _gets_token(spec, _auditor(spec), accounts)


def _sidecar_pods(kubectl: str, tmp_path: Path) -> dict[str, Obj]:
    """Traefik's pod spec with the auditor added by each of the four sidecar installs."""
    (tmp_path / "traefik.yaml").write_text(yaml.safe_dump(_traefik_stub()), encoding="utf-8")
    shutil.copy(SIDECAR_PATCH, tmp_path / "patch.yaml")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["traefik.yaml"], "patches": [{"path": "patch.yaml"}]}),
        encoding="utf-8",
    )
    (ds,) = _kustomize(kubectl, tmp_path)
    pods: dict[str, Obj] = {"patch": ds["spec"]["template"]["spec"]}
    for flavour, load in VALUES.items():
        deployment = load()["deployment"]
        traefik = {"name": "traefik", "image": "traefik:v3.3"}
        pods[flavour] = {
            "serviceAccountName": "traefik",
            "containers": [traefik, *deployment["additionalContainers"]],
            "volumes": deployment["additionalVolumes"],
        }
    return pods


def test_sidecar_keeps_traefiks_token_out_of_the_auditor(
    rendered: dict[str, list[Obj]], kubectl: str, tmp_path: Path
) -> None:
    """In Traefik's pod the token is Traefik's (it needs it, with far wider RBAC than ours): the
    pod keeps it, the auditor container never gets it (its cluster view is the watcher's file)."""
    assert _config(rendered["overlays/sidecar"]).discovery is False
    for flavour, spec in _sidecar_pods(kubectl, tmp_path).items():
        traefik = next(c for c in spec["containers"] if c["name"] == "traefik")
        assert _gets_token(spec, traefik, {}), flavour
        auditor = _auditor(spec)
        assert not _gets_token(spec, auditor, {}), flavour
        mount = _mounts(auditor)[TOKEN_PATH]
        assert mount["readOnly"] is True
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert set(volume) == {"name", "emptyDir"}, flavour


# --- the auditor container in Traefik ---------------------------------------------------------


def _traefik_stub() -> Obj:
    labels = {"app.kubernetes.io/name": "traefik"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "traefik", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "traefik",
                    "containers": [{"name": "traefik", "image": "traefik:v3.3"}],
                },
            },
        },
    }


def test_sidecar_patch_applies_to_a_traefik_daemonset(kubectl: str, tmp_path: Path) -> None:
    (tmp_path / "traefik.yaml").write_text(yaml.safe_dump(_traefik_stub()), encoding="utf-8")
    shutil.copy(SIDECAR_PATCH, tmp_path / "patch.yaml")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["traefik.yaml"], "patches": [{"path": "patch.yaml"}]}),
        encoding="utf-8",
    )
    (ds,) = _kustomize(kubectl, tmp_path)
    _validate(ds)
    spec = ds["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["traefik", "ban-auditor"]
    traefik = spec["containers"][0]
    assert traefik["image"] == "traefik:v3.3", "the patch must not replace Traefik's fields"
    assert _mounts(traefik)[LOG_DIR] == {"name": "traefik-logs", "mountPath": LOG_DIR}
    _check_sidecar_pod(spec["containers"][1], spec["volumes"])


def _check_sidecar_pod(container: Obj, volumes: list[Obj]) -> None:
    _assert_hardened(container, {}, non_root=True)
    assert "readinessProbe" not in container, "would take Traefik out of its Service"
    by_name = {v["name"]: v for v in volumes}
    mounts = _mounts(container)
    logs = mounts[LOG_DIR]
    assert logs["readOnly"] is True
    assert by_name[logs["name"]]["emptyDir"]["sizeLimit"] == "256Mi"
    key = by_name[mounts["/run/secrets/ban-auditor"]["name"]]["secret"]
    assert key["secretName"] == "ban-auditor-lapi"
    assert key["items"] == [{"key": "api-key", "path": "api-key"}]
    assert by_name[mounts["/etc/ban-auditor"]["name"]]["configMap"]["name"] == "ban-auditor-config"
    assert "emptyDir" in by_name[mounts["/var/lib/ban-auditor"]["name"]]
    assert "emptyDir" in by_name[mounts["/tmp"]["name"]]
    for volume in volumes:
        assert "hostPath" not in volume


def test_sidecar_config_matches_the_mounts(rendered: dict[str, list[Obj]]) -> None:
    config = _config(rendered["overlays/sidecar"])
    assert config.access_log == (f"{LOG_DIR}/access.log",)
    assert config.checkpoint_dir == "/var/lib/ban-auditor"
    patch = _load(SIDECAR_PATCH)["spec"]["template"]["spec"]
    _check_networks_volume(_auditor(patch), patch["volumes"], config)
    # CrowdSec cannot see the emptyDir: the sidecar re-emits the log on its stdout, which then
    # carries nothing else (findings = "-" goes to stderr with echo on).
    assert config.echo_access_log is True
    assert config.findings == "-"


def _k3s_values() -> Obj:
    doc = _load(K3S)
    assert doc["apiVersion"] == "helm.cattle.io/v1"
    assert doc["kind"] == "HelmChartConfig"
    assert doc["metadata"] == {"name": "traefik", "namespace": "kube-system"}
    values: Obj = yaml.safe_load(doc["spec"]["valuesContent"])
    return values


VALUES = {
    "v41": lambda: _load(HELM_V41),
    "v40": lambda: _load(HELM_V40),
    "k3s": _k3s_values,
}


@pytest.mark.parametrize("flavour", VALUES)
def test_traefik_values(flavour: str) -> None:
    _check_traefik_values(flavour, VALUES[flavour]())


def _check_traefik_values(flavour: str, values: Obj) -> None:
    if flavour == "v41":
        # Chart >= v41: accessLog.* / log.*, camelCase defaultMode.
        assert "logs" not in values
        access = values["accessLog"]
        headers = access["fields"]["headers"]
        assert headers["defaultMode"] == "drop"
        assert "defaultmode" not in headers
        assert "log" in values
    else:
        # Chart <= v40 and k3s' bundled chart: logs.access.* / logs.general.*, lowercase.
        assert "accessLog" not in values
        assert "log" not in values
        access = values["logs"]["access"]
        headers = access["fields"]["headers"]
        assert headers["defaultmode"] == "drop"
        assert "defaultMode" not in headers
        assert "general" in values["logs"]
    assert access["enabled"] is True
    assert access["format"] == "json"
    assert access["filePath"] == f"{LOG_DIR}/access.log"
    assert headers["names"] == {
        "X-Forwarded-For": "keep",
        "X-Real-Ip": "keep",
        "User-Agent": "keep",
    }
    assert values["deployment"]["kind"] == "DaemonSet"
    assert values["service"]["spec"]["externalTrafficPolicy"] == "Local"
    assert values["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    assert values["additionalVolumeMounts"] == [{"name": "traefik-logs", "mountPath": LOG_DIR}]


@pytest.mark.parametrize("flavour", VALUES)
def test_traefik_values_make_a_valid_pod(flavour: str) -> None:
    values = VALUES[flavour]()
    deployment = values["deployment"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "traefik"},
        "spec": {
            "containers": [
                {
                    "name": "traefik",
                    "image": "traefik:v3.3",
                    "volumeMounts": values["additionalVolumeMounts"],
                },
                *deployment["additionalContainers"],
            ],
            "volumes": deployment["additionalVolumes"],
        },
    }
    _validate(pod)
    _check_sidecar_pod(_auditor(pod["spec"]), deployment["additionalVolumes"])


def test_auditor_container_identical_everywhere() -> None:
    """One container definition, four copies: the patch and three values files."""
    patch_spec = _load(SIDECAR_PATCH)["spec"]["template"]["spec"]
    reference = (_auditor(patch_spec), patch_spec["volumes"])
    for flavour, load in VALUES.items():
        deployment = load()["deployment"]
        assert (deployment["additionalContainers"], deployment["additionalVolumes"]) == (
            [reference[0]],
            reference[1],
        ), flavour


def test_k3s_and_v40_values_agree() -> None:
    assert _k3s_values() == _load(HELM_V40)


def test_value_checks_catch_the_wrong_chart_keys() -> None:
    """Top-level keys of the wrong chart major also fail the chart's schema
    (test_traefik_schema.py), but the case of nested keys (defaultmode vs defaultMode) does
    not: the schema leaves that object open, and the chart would ignore the key."""
    renamed = copy.deepcopy(_load(HELM_V40))
    renamed["accessLog"] = renamed.pop("logs")["access"]
    with pytest.raises((AssertionError, KeyError)):
        _check_traefik_values("v40", renamed)
    lowercase = copy.deepcopy(_load(HELM_V41))
    headers = lowercase["accessLog"]["fields"]["headers"]
    headers["defaultmode"] = headers.pop("defaultMode")
    with pytest.raises((AssertionError, KeyError)):
        _check_traefik_values("v41", lowercase)


# --- lint and image ---------------------------------------------------------------------------


def _yamllint() -> list[str]:
    if importlib.util.find_spec("yamllint") is not None:
        return [sys.executable, "-m", "yamllint"]
    path = shutil.which("yamllint")
    if path is None:
        pytest.fail("yamllint not found: add it to the test extra or install the Debian package")
    return [path]


def test_yamllint_clean() -> None:
    result = subprocess.run(
        [*_yamllint(), "--strict", "-f", "parsable", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs with continuation lines joined and ARGs substituted."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        out.append((instruction, rest.strip()))
    return out


def test_dockerfile_stages_share_the_python_base_and_run_non_root() -> None:
    instructions = _dockerfile()
    bases = [rest.split()[0] for ins, rest in instructions if ins == "FROM"]
    assert len(bases) >= 2, "multi-stage build expected"
    assert len(set(bases)) == 1, f"build and runtime bases differ (ABI mismatch): {bases}"
    # Fully qualified: podman will not guess a registry for a short name without a TTY.
    assert bases[0].startswith("docker.io/library/python:3.")
    users = [rest for ins, rest in instructions if ins == "USER"]
    assert users, "no USER: the image would run as root"
    final_stage = instructions[max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM") :]
    final_users = [rest for ins, rest in final_stage if ins == "USER"]
    assert final_users
    assert final_users[-1].split(":")[0] == str(UID)
    assert ("ENTRYPOINT", '["auditor"]') in final_stage
    assert ("CMD", '["run", "--config", "/etc/ban-auditor/config.toml"]') in final_stage
    assert any(
        ins == "COPY" and "--from=build" in rest and "/opt/venv" in rest
        for ins, rest in final_stage
    )
    # Offline: only the wheels in the context (deploy/build_image.py), never an index.
    (install,) = [rest for ins, rest in instructions if ins == "RUN" and "pip" in rest]
    assert re.search(
        r"install --no-index --find-links /wheels '?ban-auditor(\[[\w,]+\])?'?", install
    )
    assert ("COPY", "wheels/ /wheels/") in instructions


def test_dockerignore_exists() -> None:
    ignore = DEPLOY / "Dockerfile.dockerignore"
    assert ignore.is_file()
    lines = ignore.read_text(encoding="utf-8").splitlines()
    assert "*" in lines, "deny by default: only the wheels go into the context"
    assert "!wheels/" in lines
