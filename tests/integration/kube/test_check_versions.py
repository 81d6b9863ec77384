"""``auditor check`` reads versions off the stand-in API server: the nodes' kubelet versions
(k3s servicelb and externalTrafficPolicy Local) and the Traefik image tag (genericCLF, Traefik v3
on k3s >= 1.32.2). Positive and negative cases on the same cluster, changed through the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.kube_api import FakeKubeApi
from tests.support.kube_facts import EXPECTED_OLD_K3S, EXPECTED_TRAEFIK_V3, OLD_K3S, TRAEFIK_V3
from tests.support.schemas import validate_check


@pytest.fixture(name="cluster")
def _cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FakeKubeApi, Path]]:
    fake = FakeKubeApi().start().load_cluster(request.param)
    try:
        yield fake, fake.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        fake.stop()


def _check(auditor: Run, kubeconfig: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    code, out, err = auditor("check", "--kubeconfig", str(kubeconfig), "--format", "json")
    assert code in (0, 1), err
    doc = json.loads(out)
    validate_check(doc)
    return code, {f["check"]: f for f in doc["findings"]}


def _set_kubelet(fake: FakeKubeApi, node: str, version: str) -> None:
    obj = fake.get("Node", node)
    obj["status"]["nodeInfo"]["kubeletVersion"] = version
    obj["status"]["nodeInfo"]["kubeProxyVersion"] = version
    fake.apply(obj)


def _set_traefik(fake: FakeKubeApi, image: str, fmt: str) -> None:
    for key in [k for k in fake.objects["pods"] if "/traefik-" in k]:
        namespace, name = key.split("/")
        obj = fake.get("Pod", name, namespace)
        for c in obj["spec"]["containers"]:
            c["image"] = image
            c["args"] = [
                f"--accesslog.format={fmt}" if a.startswith("--accesslog.format=") else a
                for a in c["args"]
            ]
        fake.apply(obj)


@pytest.mark.parametrize("cluster", [OLD_K3S], indirect=True)
def test_servicelb_ignores_local_on_old_servers(
    auditor: Run, cluster: tuple[FakeKubeApi, Path]
) -> None:
    fake, kubeconfig = cluster
    code, found = _check(auditor, kubeconfig)
    assert code == 1  # high
    assert {c: (f["severity"], f["target"]) for c, f in found.items()} == {
        c: (s.value, t) for c, (s, t) in EXPECTED_OLD_K3S.items()
    }
    etp = found["servicelb_etp_ignored"]
    assert etp["evidence"]["nodes"] == [
        {"node": "k3s-a", "kubeletVersion": "v1.25.6+k3s1", "fixedIn": "v1.25.7+k3s1"}
    ]
    _, table, _ = auditor("check", "--kubeconfig", str(kubeconfig))
    assert "[HIGH] servicelb_etp_ignored  kube-system/traefik" in table
    assert "https://github.com/k3s-io/k3s/pull/6726" in table

    # The agent's version does not matter: the servicelb controller runs in the server.
    _set_kubelet(fake, "k3s-a", "v1.25.7+k3s1")
    code, found = _check(auditor, kubeconfig)
    assert code == 0
    assert set(found) == {"servicelb_masquerade"}
    assert found["servicelb_masquerade"]["severity"] == "medium"
    assert found["servicelb_masquerade"]["evidence"]["externalTrafficPolicy"] == "Local"

    # An unreadable server version: say so (info), do not guess either way.
    _set_kubelet(fake, "k3s-a", "v1.25-custom")
    code, found = _check(auditor, kubeconfig)
    assert code == 0
    assert found["version_unknown"]["evidence"] == {
        "check": "servicelb_etp_ignored",
        "versions": {"k3s-a": "v1.25-custom"},
    }
    assert "servicelb_etp_ignored" not in found


@pytest.mark.parametrize("cluster", [TRAEFIK_V3], indirect=True)
def test_traefik_versions_from_the_image_tag(
    auditor: Run, cluster: tuple[FakeKubeApi, Path]
) -> None:
    fake, kubeconfig = cluster
    code, found = _check(auditor, kubeconfig)
    assert code == 1
    assert {c: (f["severity"], f["target"]) for c, f in found.items()} == {
        c: (s.value, t) for c, (s, t) in EXPECTED_TRAEFIK_V3.items()
    }
    assert found["accesslog_generic_clf"]["evidence"]["traefikVersion"] == "3.5.3"
    assert found["traefik_v3_api_group"]["evidence"]["k3sNodes"] == {
        "k3s-a": "v1.33.5+k3s1",
        "k3s-b": "v1.33.5+k3s1",
    }

    # Before 3.5.2 Traefik falls back to the common format: latent, and still not JSON.
    _set_traefik(fake, "rancher/mirrored-library-traefik:3.5.1", "genericCLF")
    _, found = _check(auditor, kubeconfig)
    assert found["accesslog_generic_clf"]["severity"] == "low"
    assert found["accesslog_not_json"]["severity"] == "medium"

    # JSON on Traefik v3: only the API-group notice stays; on k3s v1.32.1 (Traefik v2.11
    # packaged) not even that.
    _set_traefik(fake, "rancher/mirrored-library-traefik:3.3.2", "json")
    code, found = _check(auditor, kubeconfig)
    assert code == 0 and set(found) == {"traefik_v3_api_group"}
    for node in ("k3s-a", "k3s-b"):
        _set_kubelet(fake, node, "v1.32.1+k3s1")
    code, found = _check(auditor, kubeconfig)
    assert code == 0 and found == {}
