"""``auditor check`` reads the bouncer plugin's Middleware off the stand-in API server.

Both API groups Traefik has served Middlewares under, a cluster without the CRD and RBAC that
hides them are covered; with the real CrowdSec LAPI, a ban on an address in the Middleware's
clientTrustedIPs is reported as one the bouncer never looks up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.crowdsec import CrowdSecInstance
from tests.support.kube_api import FakeKubeApi
from tests.support.schemas import validate_check


def middleware(
    api: str = "traefik.io/v1alpha1", name: str = "crowdsec", **options: Any
) -> dict[str, Any]:
    block = {"enabled": True, "crowdsecMode": "stream", "crowdsecLapiKey": "secret", **options}
    return {
        "apiVersion": api,
        "kind": "Middleware",
        "metadata": {"name": name, "namespace": "traefik"},
        "spec": {"plugin": {"crowdsec-bouncer-traefik-plugin": block}},
    }


@pytest.fixture(name="cluster")
def _cluster(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, Path]]:
    fake = FakeKubeApi().start().load_cluster("k3s-servicelb")
    try:
        yield fake, fake.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        fake.stop()


def check(auditor: Run, kubeconfig: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out, err = auditor("check", "--kubeconfig", str(kubeconfig), "--format", "json", *extra)
    assert code in (0, 1), err
    doc: dict[str, Any] = json.loads(out)
    validate_check(doc)
    return code, doc


def test_no_crd_is_a_note_and_changes_nothing_else(
    auditor: Run, cluster: tuple[FakeKubeApi, Path]
) -> None:
    fake, kubeconfig = cluster
    _, doc = check(auditor, kubeconfig)
    assert "bouncer" not in doc  # the JSON report a cluster without the plugin always had
    _, table, _ = auditor("check", "--kubeconfig", str(kubeconfig))
    assert "note: no Middleware configures the CrowdSec bouncer plugin" in table
    assert not [f for f in doc["findings"] if f["kind"] == "ban_mismatch"]
    # the rest of the report is what it was: the cluster's findings are still there
    assert {f["check"] for f in doc["findings"]} >= {"servicelb_masquerade"}
    listed = {r.path for r in fake.request_log()}
    assert {
        "/apis/traefik.io/v1alpha1/middlewares",
        "/apis/traefik.containo.us/v1alpha1/middlewares",
    } <= listed


@pytest.mark.parametrize("api", ["traefik.io/v1alpha1", "traefik.containo.us/v1alpha1"])
def test_the_middleware_settings_are_shown(
    auditor: Run, cluster: tuple[FakeKubeApi, Path], api: str, tmp_path: Path
) -> None:
    fake, kubeconfig = cluster
    fake.add_middleware(middleware(api, "other"))  # a second bouncer, the plugin's defaults
    fake.add_middleware(  # not the bouncer: skipped
        {
            "apiVersion": api,
            "kind": "Middleware",
            "metadata": {"name": "strip", "namespace": "default"},
            "spec": {"stripPrefix": {"prefixes": ["/api"]}},
        }
    )
    fake.add_middleware(
        middleware(
            api,
            forwardedHeadersTrustedIPs=["104.16.0.0/13"],
            clientTrustedIps=["192.168.0.0/16"],
        )
    )
    _, doc = check(auditor, kubeconfig)
    found = {m["middleware"]: m for m in doc["bouncer"]["middlewares"]}
    assert set(found) == {"traefik/crowdsec", "traefik/other"}
    assert found["traefik/crowdsec"]["api"] == api
    assert found["traefik/crowdsec"]["plugin"] == "crowdsec-bouncer-traefik-plugin"
    # two bouncer Middlewares with different settings: none is picked
    assert doc["bouncer"]["effective"] is None
    assert any("different settings" in n for n in doc["bouncer"]["notes"])

    saved = tmp_path / "mw.json"  # as `kubectl get middleware -o json` saves it
    saved.write_text(json.dumps(fake.crds[api]["traefik/crowdsec"]))
    _, table, _ = auditor("check", "--kubeconfig", str(kubeconfig), "--plugin-config", str(saved))
    assert "BOUNCER PLUGIN (the address it checks)" in table
    assert "Middleware traefik/crowdsec" in table
    assert "forwardedHeadersTrustedIPs: 104.16.0.0/13" in table
    assert "clientTrustedIPs: 192.168.0.0/16" in table


def test_one_middleware_is_in_effect(auditor: Run, cluster: tuple[FakeKubeApi, Path]) -> None:
    fake, kubeconfig = cluster
    fake.add_middleware(middleware(forwardedHeadersCustomName="CF-Connecting-IP"))
    _, doc = check(auditor, kubeconfig)
    effective = doc["bouncer"]["effective"]
    assert effective["forwardedHeadersCustomName"] == "CF-Connecting-IP"
    assert effective["source"] == "Middleware traefik/crowdsec"
    assert any("does not carry it" in n for n in doc["bouncer"]["notes"])


def test_bad_options_and_forbidden_lists_are_notes(
    auditor: Run, cluster: tuple[FakeKubeApi, Path]
) -> None:
    fake, kubeconfig = cluster
    fake.add_middleware(middleware(clientTrustedIPs=["not-a-cidr"]))
    fake.forbid("GET", "/apis/traefik.containo.us/v1alpha1/middlewares")
    fake.add_crd("traefik.containo.us/v1alpha1")
    _, doc = check(auditor, kubeconfig)
    notes = doc["bouncer"]["notes"]
    assert any("traefik/crowdsec" in n and "clientTrustedIPs" in n for n in notes)
    assert any("traefik.containo.us/v1alpha1 middlewares: not allowed" in n for n in notes)
    assert doc["bouncer"]["middlewares"] == []


def test_a_ban_the_bouncer_never_looks_up(
    auditor: Run,
    cluster: tuple[FakeKubeApi, Path],
    crowdsec_lapi: CrowdSecInstance,
    tmp_path: Path,
) -> None:
    fake, kubeconfig = cluster
    fake.add_middleware(middleware(clientTrustedIPs=["198.51.100.0/24"]))
    key = tmp_path / "key"
    key.write_text(crowdsec_lapi.add_bouncer("check-middleware") + "\n")
    lapi = ["--lapi-url", crowdsec_lapi.lapi_url, "--lapi-key-file", str(key)]
    crowdsec_lapi.add_decision(ip="203.0.113.77", reason="outside clientTrustedIPs")
    _, doc = check(auditor, kubeconfig, *lapi)
    assert not [f for f in doc["findings"] if f["kind"] == "ban_mismatch"]

    crowdsec_lapi.add_decision(ip="198.51.100.20", reason="the office, trusted by the bouncer")
    _, doc = check(auditor, kubeconfig, *lapi)
    found = [f for f in doc["findings"] if f["kind"] == "ban_mismatch"]
    assert [f["target"] for f in found] == ["decisions:exempt"]
    assert [d["value"] for d in found[0]["evidence"]["examples"]] == ["198.51.100.20"]
    assert found[0]["evidence"]["bouncer"]["clientTrustedIPs"] == ["198.51.100.0/24"]
