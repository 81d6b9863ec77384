"""``auditor check`` end to end: fake Kubernetes API, a real CrowdSec LAPI, exit codes, formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.crowdsec import CrowdSecInstance, free_port
from tests.support.kube_api import FakeKubeApi
from tests.support.kube_facts import EXPECTED_BAD
from tests.support.schemas import validate_check


@pytest.fixture(name="bad_cluster", scope="module")
def _bad_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    fake = FakeKubeApi().start().load_cluster("k3s-servicelb")
    try:
        yield fake.write_kubeconfig(tmp_path_factory.mktemp("bad") / "kubeconfig")
    finally:
        fake.stop()


@pytest.fixture(name="good_cluster", scope="module")
def _good_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    fake = FakeKubeApi().start().load_cluster("k3s-metallb")
    try:
        yield fake.write_kubeconfig(tmp_path_factory.mktemp("good") / "kubeconfig")
    finally:
        fake.stop()


# Decisions as CrowdSec holds them after servicelb masked every client (see README).
DECISIONS = (
    ("10.42.0.7", None),  # svclb pod on k3s-server-1: critical
    ("192.168.1.11", None),  # node InternalIP: critical
    ("10.43.0.10", None),  # kube-dns ClusterIP: high
    (None, "10.42.1.0/24"),  # a node's pod range: critical
    ("198.51.100.7", None),  # a public client: not a finding
)


@pytest.fixture(name="lapi", scope="module")
def _lapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, CrowdSecInstance]]:
    root = tmp_path_factory.mktemp("crowdsec")
    cs = CrowdSecInstance(root)
    cs.start_lapi()
    try:
        key_file = root / "bouncer.key"
        key_file.write_text(cs.add_bouncer("ban-auditor-check") + "\n")
        for ip, rng in DECISIONS:
            if ip:
                cs.add_decision(ip=ip, reason="crowdsecurity/http-probing")
            else:
                cs.add_decision(range=rng, reason="crowdsecurity/http-probing")
        yield cs.lapi_url, key_file, cs
    finally:
        cs.stop()


# -- clusters -------------------------------------------------------------------------------------
def test_bad_cluster_json(auditor: Run, bad_cluster: Path) -> None:
    code, out, err = auditor("check", "--kubeconfig", str(bad_cluster), "--format", "json")
    assert code == 1, err
    doc = json.loads(out)
    validate_check(doc)
    assert set(doc) == {"schema_version", "networks", "findings", "allowlist"}
    assert all(set(n) == {"cidr", "class", "provenance"} for n in doc["networks"])
    nets = {(n["cidr"], n["class"]) for n in doc["networks"]}
    assert {
        ("10.42.0.0/24", "pod"),
        ("10.43.0.0/16", "service"),
        ("203.0.113.10/32", "loadbalancer"),
    } <= nets
    assert {f["check"] for f in doc["findings"]} == set(EXPECTED_BAD)
    for f in doc["findings"]:
        assert set(f) == {"kind", "severity", "target", "summary", "evidence", "fix", "check"}
        assert f["kind"] == "config"
        assert (f["severity"], f["target"]) == (
            EXPECTED_BAD[f["check"]][0].value,
            EXPECTED_BAD[f["check"]][1],
        )
    allow = doc["allowlist"]
    assert set(allow) == {
        "source",
        "crowdsec_whitelist",
        "crowdsec_allowlist",
        "bouncer_middleware",
        "traefik_entrypoints",
    }
    assert allow["crowdsec_whitelist"]["name"] == "ban-auditor/cluster-whitelist"
    wl = allow["crowdsec_whitelist"]["whitelist"]
    assert sorted(allow["crowdsec_allowlist"]["values"]) == sorted(
        wl.get("ip", []) + wl.get("cidr", [])
    )
    plugin = allow["bouncer_middleware"]["spec"]["plugin"]["bouncer"]
    assert "10.42.0.0/24" in plugin["forwardedHeadersTrustedIPs"]
    assert "10.0.0.0/8" in plugin["clientTrustedIPs"]
    assert allow["traefik_entrypoints"]["entryPoints"] == ["web", "websecure"]


def test_good_cluster_passes(auditor: Run, good_cluster: Path) -> None:
    code, out, err = auditor("check", "--kubeconfig", str(good_cluster))
    assert code == 0, err
    assert "FINDINGS (0: none)" in out
    assert "Traefik: DaemonSet kube-system/traefik (2 pods)" in out
    assert "load balancers: MetalLB" in out
    assert "2001:cafe:42::/64" in out  # IPv6 pod range, not private: only discovery knows it
    assert "CROWDSEC WHITELIST" in out and '- "2001:cafe:42::/64"' in out


def test_fail_on_threshold(auditor: Run, bad_cluster: Path, good_cluster: Path) -> None:
    assert auditor("check", "--kubeconfig", str(bad_cluster), "--fail-on", "critical")[0] == 0
    assert auditor("check", "--kubeconfig", str(bad_cluster), "--fail-on", "low")[0] == 1
    assert auditor("check", "--kubeconfig", str(good_cluster), "--fail-on", "info")[0] == 0
    # A selector that matches nothing: one info finding, which only --fail-on info counts.
    args = ("check", "--kubeconfig", str(good_cluster), "--traefik-selector", "app=none")
    code, out, _ = auditor(*args, "--fail-on", "info", "--format", "json")
    assert code == 1
    assert [f["check"] for f in json.loads(out)["findings"]] == ["traefik_not_found"]
    assert auditor(*args)[0] == 0


def test_table_and_markdown(auditor: Run, bad_cluster: Path) -> None:
    _, table, _ = auditor("check", "--kubeconfig", str(bad_cluster))
    assert "FINDINGS (7: 3 high, 3 medium, 1 low)" in table
    assert "[HIGH] etp_cluster  kube-system/traefik" in table
    assert "10.42.0.7/32     pod           servicelb pod kube-system/svclb-traefik-" in table
    _, md, _ = auditor("check", "--kubeconfig", str(bad_cluster), "--format", "markdown")
    assert md.startswith("# auditor check\n")
    assert "| `10.42.0.0/24` | pod | node k3s-server-1 spec.podCIDRs |" in md
    assert "### HIGH `servicelb_masquerade` — kube-system/svclb-traefik-" in md
    assert md.count("```yaml") == 3


# -- errors: exit 2 with a message naming the file or flag -----------------------------------------
def test_usage_errors(auditor: Run, bad_cluster: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    code, out, err = auditor("check", "--kubeconfig", str(missing))
    assert code == 2 and f"--kubeconfig {missing}: no such file" in err and out == ""
    code, _, err = auditor("check", "--kubeconfig", str(bad_cluster), "--context", "elsewhere")
    assert code == 2 and "--context elsewhere" in err
    code, _, err = auditor("check", "--kubeconfig", str(bad_cluster), "--lapi-url", "http://x")
    assert code == 2 and "--lapi-url and --lapi-key-file go together" in err
    code, _, err = auditor("check", "--kubeconfig", str(bad_cluster), "--fail-on", "severe")
    assert code == 2 and "--fail-on" in err
    args = ("check", "--kubeconfig", str(bad_cluster), "--lapi-url", "http://127.0.0.1:9")
    code, _, err = auditor(*args, "--lapi-key-file", str(tmp_path / "no.key"))
    assert code == 2 and "--lapi-key-file" in err and "does not exist" in err


def test_unreachable_api_server(auditor: Run, tmp_path: Path) -> None:
    fake = FakeKubeApi()
    fake.port = free_port()  # never started: connection refused
    kc = fake.write_kubeconfig(tmp_path / "kc")
    code, out, err = auditor("check", "--kubeconfig", str(kc))
    assert code == 2 and out == ""
    assert f"kubeconfig {kc}" in err and "cannot reach the API server" in err


def test_rejected_token(auditor: Run, tmp_path: Path) -> None:
    fake = FakeKubeApi().start().load_cluster("k3s-metallb")
    try:
        kc = fake.write_kubeconfig(tmp_path / "kc", token="stolen")
        code, _, err = auditor("check", "--kubeconfig", str(kc))
    finally:
        fake.stop()
    assert code == 2 and "HTTP 401" in err and str(kc) in err


# -- LAPI: internal bans ------------------------------------------------------------------------
def _bans(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["target"]: f for f in doc["findings"] if f["kind"] == "internal_ban"}


def test_internal_bans_from_a_real_lapi(
    auditor: Run, bad_cluster: Path, lapi: tuple[str, Path, CrowdSecInstance]
) -> None:
    url, key_file, _ = lapi
    args = (
        "check",
        "--kubeconfig",
        str(bad_cluster),
        "--lapi-url",
        url,
        "--lapi-key-file",
        str(key_file),
    )
    code, out, err = auditor(*args, "--format", "json")
    assert code == 1, err
    validate_check(json.loads(out))
    bans = _bans(json.loads(out))
    assert set(bans) == {"10.42.0.7", "192.168.1.11", "10.43.0.10", "10.42.1.0/24"}
    svclb = bans["10.42.0.7"]
    assert svclb["severity"] == "critical"
    ev = svclb["evidence"]
    # The engine's evidence, as replay and run write it (README "JSON output").
    assert set(ev) == {"decision", "class", "network", "provenance", "blast_radius"}
    d = ev["decision"]
    assert set(d) == {
        "id", "origin", "scenario", "scope", "value", "type", "duration_s", "simulated"
    }  # fmt: skip
    assert (d["origin"], d["scope"], d["type"], ev["class"]) == ("cscli", "Ip", "ban", "pod")
    assert d["scenario"] == "crowdsecurity/http-probing" and d["value"] == "10.42.0.7"
    assert ev["network"] == "10.42.0.7/32"
    assert ev["provenance"].startswith("servicelb pod kube-system/svclb-traefik-")
    assert isinstance(d["id"], int) and 3 * 3600 < d["duration_s"] <= 4 * 3600
    assert ev["blast_radius"]["requests"] == 0  # check reads no traffic
    assert svclb["summary"] == "CrowdSec bans 10.42.0.7, an internal pod address"
    assert "cscli decisions delete --ip 10.42.0.7" in svclb["fix"]
    assert bans["192.168.1.11"]["evidence"]["class"] == "node"
    assert bans["192.168.1.11"]["severity"] == "critical"
    assert (bans["10.43.0.10"]["severity"], bans["10.43.0.10"]["evidence"]["class"]) == (
        "high",
        "service",
    )
    rng = bans["10.42.1.0/24"]
    assert (rng["severity"], rng["evidence"]["decision"]["scope"]) == ("critical", "Range")
    assert "--range 10.42.1.0/24" in rng["fix"]
    # Critical bans sort first; even --fail-on critical fails now.
    assert json.loads(out)["findings"][0]["severity"] == "critical"
    assert auditor(*args, "--fail-on", "critical")[0] == 1
    _, table, _ = auditor(*args)
    assert "CrowdSec LAPI: 5 active decisions, 4 on internal addresses" in table
    assert "[CRITICAL] internal_ban  10.42.0.7" in table


def test_good_cluster_with_a_clean_lapi_view(
    auditor: Run, good_cluster: Path, lapi: tuple[str, Path, CrowdSecInstance]
) -> None:
    url, key_file, _ = lapi
    # 10.42.x and 192.168.x are private everywhere; in this cluster they are not nodes or pods.
    code, out, _ = auditor(
        "check", "--kubeconfig", str(good_cluster), "--lapi-url", url,
        "--lapi-key-file", str(key_file), "--format", "json",
    )  # fmt: skip
    bans = _bans(json.loads(out))
    assert code == 1
    assert {t: b["evidence"]["class"] for t, b in bans.items()} == {
        "10.42.0.7": "pod",  # inside k3s-a's podCIDR 10.42.0.0/24
        "10.42.1.0/24": "pod",
        "10.43.0.10": "service",
        "192.168.1.11": "private",
    }
    assert bans["192.168.1.11"]["severity"] == "high"


def test_lapi_errors(
    auditor: Run, bad_cluster: Path, lapi: tuple[str, Path, CrowdSecInstance], tmp_path: Path
) -> None:
    url, _, _ = lapi
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-a-bouncer-key\n")
    code, out, err = auditor(
        "check", "--kubeconfig", str(bad_cluster), "--lapi-url", url, "--lapi-key-file", str(wrong)
    )
    assert code == 2 and out == "" and "--lapi-key-file" in err and "403" in err
    down = f"http://127.0.0.1:{free_port()}"
    code, _, err = auditor(
        "check", "--kubeconfig", str(bad_cluster), "--lapi-url", down, "--lapi-key-file", str(wrong)
    )
    assert code == 2 and f"--lapi-url {down}" in err
    assert "not-a-bouncer-key" not in err  # the key never shows up in messages


def test_only_ban_and_captcha_decisions_are_judged(
    auditor: Run, bad_cluster: Path, crowdsec_lapi: CrowdSecInstance, tmp_path: Path
) -> None:
    """The engine's rule, not a second one: a decision of another type blocks no one."""
    cs = crowdsec_lapi
    key_file = tmp_path / "bouncer.key"
    key_file.write_text(cs.add_bouncer("ban-auditor-check-types") + "\n")
    cs.add_decision(ip="10.42.0.7", type="throttle")
    cs.add_decision(ip="10.43.0.10", type="captcha")
    code, out, err = auditor(
        "check", "--kubeconfig", str(bad_cluster), "--lapi-url", cs.lapi_url,
        "--lapi-key-file", str(key_file), "--format", "json",
    )  # fmt: skip
    assert code == 1, err
    bans = _bans(json.loads(out))
    assert set(bans) == {"10.43.0.10"}
    assert bans["10.43.0.10"]["evidence"]["decision"]["type"] == "captcha"
    assert bans["10.43.0.10"]["summary"].startswith("CrowdSec captchas 10.43.0.10")
