"""deploy/README.md's walk-through ("From nothing to a working sidecar with alerts"), step by step,
as far as a machine without a cluster can check it.

The shell block after the ``walkthrough`` marker is split into commands (continuation lines
joined, the heredoc kept with its command); every command must be one this test knows how to
check, so a step added to the README without a check fails here. What runs: the Secret of step
3 (``--dry-run=client``, the bouncer key replaced), the kustomization of step 4, written as the
README writes it next to a copy of ``deploy/`` and rendered with ``kubectl kustomize``. What is
cross-checked against the shipped files: the image reference (steps 1-2), the file step 5
copies, and the names step 6 uses. ``kubectl apply``, ``k3s ctr`` and the rollout need a
cluster and are not run.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import pipeline
from tests.support.paths import ROOT

README = ROOT / "deploy" / "README.md"
MARKER = "<!-- walkthrough: checked by tests/integration/deploy/test_walkthrough.py -->"
K3S = ROOT / "deploy" / "k3s" / "traefik-helmchartconfig.yaml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
IMAGE = f"ghcr.io/ban-auditor/ban-auditor:{pipeline.__version__}"
K8S_VERSION = "1.31.0"
K3S_MANIFESTS = "/var/lib/rancher/k3s/server/manifests/"

Obj = dict[str, Any]


def commands() -> list[str]:
    """The walk-through's commands: comments dropped, ``\\``-continued lines joined, a heredoc
    kept with the command that opens it."""
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, "deploy/README.md: the walk-through marker is gone"
    block = text.split(MARKER, 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    out: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cmd = line
        while cmd.endswith("\\"):
            cmd = cmd[:-1].rstrip() + " " + next(lines).strip()
        heredoc = re.search(r"<<'(\w+)'$", cmd)
        if heredoc:
            body = []
            for more in lines:
                if more == heredoc.group(1):
                    break
                body.append(more)
            cmd += "\n" + "\n".join(body) + "\n" + heredoc.group(1)
        out.append(cmd)
    return out


def _k3s_values() -> Obj:
    doc = yaml.safe_load(K3S.read_text(encoding="utf-8"))
    values: Obj = yaml.safe_load(doc["spec"]["valuesContent"])
    return values


def _sidecar() -> Obj:
    (container,) = [
        c for c in _k3s_values()["deployment"]["additionalContainers"] if c["name"] == "ban-auditor"
    ]
    return container


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: it renders the walk-through's kustomization")
    return found


# -- one check per kind of command ---------------------------------------------------------------
def check_make_image(cmd: str, tmp: Path) -> None:
    assert cmd == "make image"
    result = subprocess.run(
        ["make", "-n", "image"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "deploy/build_image.py" in result.stdout  # it prints IMAGE (test_image.py)


def check_podman_save(cmd: str, tmp: Path) -> None:
    argv = shlex.split(cmd)
    assert argv[:3] == ["podman", "save", "-o"]
    assert argv[3] == "ban-auditor.tar"
    assert argv[4] == IMAGE, f"step 2 saves {argv[4]}, make image builds {IMAGE}"
    assert _sidecar()["image"] == IMAGE
    assert _sidecar()["imagePullPolicy"] == "IfNotPresent"  # an imported image is used


def check_ctr_import(cmd: str, tmp: Path) -> None:
    assert shlex.split(cmd) == ["sudo", "k3s", "ctr", "images", "import", "ban-auditor.tar"]


def check_secret(cmd: str, tmp: Path) -> None:
    key = re.search(r'--from-literal=api-key="\$\((.*)\)"$', cmd)
    assert key, cmd
    assert "cscli bouncers add ban-auditor -o raw" in key.group(1)
    argv = [*shlex.split(cmd[: key.start()]), "--from-literal=api-key=test-key"]
    result = subprocess.run(
        [_kubectl(), *argv[1:], "--dry-run=client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(tmp / "none")},
    )
    assert result.returncode == 0, result.stderr
    secret = json.loads(result.stdout)
    volumes = {v["name"]: v for v in _k3s_values()["deployment"]["additionalVolumes"]}
    mounted = volumes["ban-auditor-lapi"]["secret"]
    assert secret["metadata"] == {
        "name": mounted["secretName"],
        "namespace": "kube-system",
        "creationTimestamp": None,
    }
    assert [item["key"] for item in mounted["items"]] == list(secret["data"])


def check_mkdir(cmd: str, tmp: Path) -> None:
    assert cmd == "mkdir -p my-ban-auditor"
    (tmp / "my-ban-auditor").mkdir(parents=True, exist_ok=True)


def check_kustomization(cmd: str, tmp: Path) -> None:
    first, _, rest = cmd.partition("\n")
    assert first == "cat > my-ban-auditor/kustomization.yaml <<'END'"
    (tmp / "my-ban-auditor" / "kustomization.yaml").write_text(
        rest.rsplit("\n", 1)[0] + "\n", encoding="utf-8"
    )


def check_apply(cmd: str, tmp: Path) -> None:
    assert cmd == "kubectl apply -k my-ban-auditor"
    result = subprocess.run(
        [_kubectl(), "kustomize", str(tmp / "my-ban-auditor")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objs: list[Obj] = [o for o in yaml.safe_load_all(result.stdout) if o]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for want in (
        ("Deployment", "ban-auditor-discovery"),
        ("ConfigMap", "ban-auditor-networks"),
        ("Service", "ban-auditor"),
        ("ServiceMonitor", "ban-auditor"),
    ):
        assert want in kinds, f"{want} missing from step 4: {sorted(kinds)}"
    assert all(o["metadata"].get("namespace", "kube-system") == "kube-system" for o in objs)
    for o in objs:
        if o["kind"] not in ("PrometheusRule", "ServiceMonitor"):
            try:
                kubernetes_validate.validate(o, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{o['kind']}/{o['metadata']['name']}: {exc.message}")
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    shipped = {
        r["alert"]
        for g in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
        for r in g["rules"]
    }
    rendered = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert rendered == shipped


def check_copy(cmd: str, tmp: Path) -> None:
    argv = shlex.split(cmd)
    assert argv[:2] == ["sudo", "cp"] and len(argv) == 4
    assert (ROOT / argv[2]) == K3S and K3S.is_file()
    assert argv[3].startswith(K3S_MANIFESTS) and argv[3].endswith(".yaml")
    doc = yaml.safe_load(K3S.read_text(encoding="utf-8"))
    assert (doc["kind"], doc["metadata"]["name"]) == ("HelmChartConfig", "traefik")
    values = _k3s_values()
    assert values["deployment"]["kind"] == "DaemonSet"
    assert values["logs"]["access"]["format"] == "json"
    assert values["service"]["spec"]["externalTrafficPolicy"] == "Local"


def check_rollout(cmd: str, tmp: Path) -> None:
    assert cmd == "kubectl -n kube-system rollout status daemonset/traefik"
    assert _k3s_values()["deployment"]["kind"] == "DaemonSet"  # named after the chart: traefik


def check_pod(cmd: str, tmp: Path) -> None:
    argv = shlex.split(cmd.removeprefix("POD=$(").removesuffix(")"))
    assert argv[:5] == ["kubectl", "-n", "kube-system", "get", "pods"]
    assert "app.kubernetes.io/name=traefik" in argv  # the Traefik chart's pod label
    overlay = (ROOT / "deploy/kustomize/overlays/sidecar/kustomization.yaml").read_text()
    assert "app.kubernetes.io/name: traefik" in overlay  # the metrics Service selects the same


def check_readyz(cmd: str, tmp: Path) -> None:
    argv = shlex.split(cmd)
    assert argv[:5] == ["kubectl", "-n", "kube-system", "get", "--raw"]
    path = argv[5]
    port = next(p["containerPort"] for p in _sidecar()["ports"] if p["name"] == "auditor-metrics")
    assert path == f"/api/v1/namespaces/kube-system/pods/$POD:{port}/proxy/readyz"
    env = {e["name"]: e.get("value") for e in _sidecar()["env"]}
    assert env["AUDITOR_METRICS_LISTEN"] == f"$(POD_IP):{port}"  # served on the pod's IP
    assert b"/readyz" in (ROOT / "sinks" / "http.py").read_bytes()


CHECKS: list[tuple[str, Callable[[str, Path], None]]] = [
    ("make image", check_make_image),
    ("podman save ", check_podman_save),
    ("sudo k3s ctr images import ", check_ctr_import),
    ("kubectl -n kube-system create secret generic ", check_secret),
    ("mkdir ", check_mkdir),
    ("cat > ", check_kustomization),
    ("kubectl apply -k ", check_apply),
    ("sudo cp ", check_copy),
    ("kubectl -n kube-system rollout status ", check_rollout),
    ("POD=$(kubectl ", check_pod),
    ("kubectl -n kube-system get --raw ", check_readyz),
]


def test_every_step_of_the_walkthrough_is_checked(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")  # step 4's ../deploy
    steps = commands()
    assert len(steps) == len(CHECKS), steps
    for cmd, (prefix, check) in zip(steps, CHECKS, strict=True):
        assert cmd.startswith(prefix), f"expected a step starting {prefix!r}, got {cmd!r}"
        check(cmd, tmp_path)


def test_the_splitter_joins_continuations_and_keeps_heredocs() -> None:
    steps = commands()
    secret = next(s for s in steps if "create secret" in s)
    assert "\\" not in secret and "cscli bouncers add" in secret
    kustomization = next(s for s in steps if s.startswith("cat > "))
    assert kustomization.endswith("\nEND") and "kind: Kustomization" in kustomization
