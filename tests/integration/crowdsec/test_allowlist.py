"""``auditor allowlist`` and the rendered CrowdSec whitelist / bouncer / entry point settings.

The whitelist is checked against the hub's own whitelists parser and loaded by a real CrowdSec.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core.addresses import AddrClass, make_network
from pipeline.core.allowlist import build_allowlist, collapse
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.crowdsec import HUB_DIR, CrowdSecInstance, write_probing_burst
from tests.support.kube_api import FakeKubeApi

HUB_WHITELIST = HUB_DIR / "parsers" / "s02-enrich" / "crowdsecurity" / "whitelists.yaml"


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


@pytest.fixture(name="good_kubeconfig")
def _good_kubeconfig(tmp_path: Path) -> Iterator[Path]:
    fake = FakeKubeApi().start().load_cluster("k3s-metallb")
    try:
        yield fake.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        fake.stop()


def test_whitelist_has_the_hub_shape(auditor: Run) -> None:
    code, out, err = auditor("allowlist", "--only", "whitelist")
    assert code == 0, err
    (ours,) = docs(out)
    hub = yaml.safe_load(HUB_WHITELIST.read_text())
    assert set(ours) == set(hub) == {"name", "description", "whitelist"}
    assert set(ours["whitelist"]) <= {"reason", "ip", "cidr", "expression"}
    assert set(hub["whitelist"]) >= {"reason", "ip", "cidr"}
    for key in ("ip", "cidr"):
        assert all(isinstance(v, str) for v in ours["whitelist"][key])
    assert isinstance(ours["whitelist"]["reason"], str)
    # A superset of the hub's list: everything it allows, plus IPv6, CGNAT and link-local.
    cidrs, ips = set(ours["whitelist"]["cidr"]), set(ours["whitelist"]["ip"])
    assert set(hub["whitelist"]["cidr"]) <= cidrs
    assert "127.0.0.0/8" in cidrs and "::1" in ips
    assert {"100.64.0.0/10", "fc00::/7", "fe80::/10", "169.254.0.0/16"} <= cidrs
    assert "10.42.0.0/16" not in cidrs  # the k3s pod range is inside 10.0.0.0/8
    assert '- "10.0.0.0/8"  # private: RFC 1918 private; covers 2 more' in out


def test_default_output_has_three_documents(auditor: Run) -> None:
    code, out, _ = auditor("allowlist")
    assert code == 0
    whitelist, middleware, entrypoints = docs(out)
    assert whitelist["name"] == "ban-auditor/cluster-whitelist"
    assert middleware["apiVersion"] == "traefik.io/v1alpha1" and middleware["kind"] == "Middleware"
    plugin = middleware["spec"]["plugin"]["bouncer"]
    assert plugin["enabled"] is True
    assert plugin["forwardedHeadersTrustedIPs"] == ["10.42.0.0/16"]  # k3s pod range: the hops
    assert "10.0.0.0/8" in plugin["clientTrustedIPs"] and "::1/128" in plugin["clientTrustedIPs"]
    assert entrypoints["kind"] == "HelmChartConfig"
    values = yaml.safe_load(entrypoints["spec"]["valuesContent"])
    assert values["additionalArguments"] == [
        "--entryPoints.web.forwardedHeaders.trustedIPs=10.42.0.0/16",
        "--entryPoints.websecure.forwardedHeaders.trustedIPs=10.42.0.0/16",
    ]
    assert "proxyProtocol.trustedIPs=10.42.0.0/16" in entrypoints["spec"]["valuesContent"]


def test_internal_cidrs_and_no_defaults(auditor: Run) -> None:
    args = ("allowlist", "--internal-cidr", "2001:cafe:42::/56", "--internal-cidr", "100.70.0.0/16")
    _, out, _ = auditor(*args, "--only", "whitelist")
    cidrs = docs(out)[0]["whitelist"]["cidr"]
    assert "2001:cafe:42::/56" in cidrs  # not private: only listed because we were told
    assert "100.70.0.0/16" not in cidrs and "100.64.0.0/10" in cidrs  # inside CGNAT
    _, out, _ = auditor(*args, "--no-defaults", "--only", "whitelist")
    assert docs(out)[0]["whitelist"] == {
        "reason": "internal cluster address (ban-auditor)",
        "cidr": ["100.70.0.0/16", "2001:cafe:42::/56"],
    }
    code, out, err = auditor("allowlist", "--no-defaults")
    assert code == 2 and out == "" and "--internal-cidr" in err
    code, _, err = auditor("allowlist", "--internal-cidr", "10.42.0.0/33")
    assert code == 2 and "--internal-cidr: not a CIDR or IP address: '10.42.0.0/33'" in err


def test_json_format(auditor: Run) -> None:
    code, out, _ = auditor("allowlist", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {
        "source",
        "crowdsec_whitelist",
        "crowdsec_allowlist",
        "bouncer_middleware",
        "traefik_entrypoints",
    }
    assert doc["source"] == "k3s defaults"
    ep = doc["traefik_entrypoints"]
    assert ep["trustedIPs"] == ["10.42.0.0/16"] and ep["entryPoints"] == ["web", "websecure"]
    assert (
        ep["args"]["proxyProtocol"][0] == "--entryPoints.web.proxyProtocol.trustedIPs=10.42.0.0/16"
    )
    _, out, _ = auditor("allowlist", "--format", "json", "--only", "middleware")
    assert json.loads(out)["kind"] == "Middleware"


def test_discovered_networks(auditor: Run, good_kubeconfig: Path) -> None:
    code, out, err = auditor("allowlist", "--kubeconfig", str(good_kubeconfig), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"].startswith(f"discovered from kubeconfig {good_kubeconfig}")
    wl = doc["crowdsec_whitelist"]["whitelist"]
    # Non-private cluster ranges that the hub whitelist misses.
    assert {"2001:cafe:42::/64", "2001:cafe:42:1::/64", "2001:cafe:43::/112"} <= set(wl["cidr"])
    assert {"198.51.100.20", "198.51.100.11", "2001:db8:100::20"} <= set(wl["ip"])
    hops = doc["bouncer_middleware"]["spec"]["plugin"]["bouncer"]["forwardedHeadersTrustedIPs"]
    assert hops == [
        "10.42.0.0/24",
        "10.42.1.0/24",
        "192.168.10.11/32",
        "192.168.10.12/32",
        "198.51.100.11/32",
        "2001:db8:10::11/128",  # numeric order: 0x0db8 < 0xcafe
        "2001:db8:10::12/128",
        "2001:cafe:42::/64",
        "2001:cafe:42:1::/64",
    ]
    assert doc["bouncer_middleware"]["metadata"]["namespace"] == "kube-system"
    code, out, _ = auditor("allowlist", "--kubeconfig", str(good_kubeconfig), "--no-defaults")
    whitelist = docs(out)[0]["whitelist"]
    assert "10.0.0.0/8" not in whitelist["cidr"] and "10.42.0.0/24" in whitelist["cidr"]


def test_collapse_counts_and_order() -> None:
    nets = [
        make_network("10.42.0.0/24", AddrClass.POD, "node a"),
        make_network("10.0.0.0/8", AddrClass.PRIVATE, "rfc1918"),
        make_network("10.42.0.7/32", AddrClass.POD, "svclb"),
        make_network("fd00::/8", AddrClass.PRIVATE, "ula"),
        make_network("10.0.0.0/8", AddrClass.PRIVATE, "again"),
        make_network("192.0.2.1", AddrClass.NODE, "node b"),
    ]
    got = [(e.value, e.covers) for e in collapse(nets)]
    assert got == [("10.0.0.0/8", 2), ("192.0.2.1", 0), ("fd00::/8", 0)]
    allow = build_allowlist(nets, defaults=False)
    assert [e.network.cidr for e in allow.hops] == ["10.42.0.0/24", "192.0.2.1/32"]


# -- a real CrowdSec ------------------------------------------------------------------------------
def _install(cs: CrowdSecInstance, text: str) -> Path:
    path = cs.config_dir / "parsers" / "s02-enrich" / "ban-auditor-cluster-whitelist.yaml"
    path.write_text(text)
    return path


def test_crowdsec_loads_the_whitelist(tmp_path: Path) -> None:
    cs = CrowdSecInstance(tmp_path / "cs")
    cs.acquis_path.write_text(
        json.dumps({"filenames": [str(tmp_path / "access.log")], "labels": {"type": "traefik"}})
    )
    allow = build_allowlist([make_network("2001:cafe:42::/56", AddrClass.POD, "test")])

    def config_test() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cs.crowdsec_bin, "-c", str(cs.config_path), "-t"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    _install(cs, allow.whitelist_yaml())
    ok = config_test()
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "ban-auditor-cluster-whitelist.yaml" in ok.stdout + ok.stderr
    # The same check rejects a broken whitelist, so the pass above means something.
    _install(cs, allow.whitelist_yaml().replace('"2001:cafe:42::/56"', '"2001:cafe:42::/129"'))
    bad = config_test()
    assert bad.returncode != 0
    assert "2001:cafe:42::/129" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_crowdsec_does_not_ban_whitelisted_cluster_addresses(tmp_path: Path) -> None:
    """Probing from a non-private pod range and from a public client: only the client is banned."""
    cs = CrowdSecInstance(tmp_path / "cs")
    pod_range = make_network("2001:cafe:42::/56", AddrClass.POD, "node k3s-a spec.podCIDRs")
    _install(cs, build_allowlist([pod_range]).whitelist_yaml())
    log = tmp_path / "access.log"
    cs.start_agent([log])
    try:
        write_probing_burst(log, "2001:cafe:42::7")
        write_probing_burst(log, "10.42.0.7")
        write_probing_burst(log, "198.51.100.7")
        cs.wait_for_decision("198.51.100.7", timeout=60)
        banned = {d["value"] for d in cs.active_decisions()}
        assert banned == {"198.51.100.7"}
        assert "ban-auditor/cluster-whitelist" in cs.metrics_text()
    finally:
        cs.stop()


def _cscli_version(cs: CrowdSecInstance) -> tuple[int, ...]:
    done = cs.cscli("version")
    out = done.stdout + done.stderr
    found = re.search(r"version: v(\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    return tuple(int(g) for g in found.groups())


def test_cscli_allowlists_commands_on_the_real_cscli(auditor: Run, tmp_path: Path) -> None:
    """The emitted `cscli allowlists` commands, run by the installed cscli when it has them
    (>= 1.6.6: the allowlist then holds every value, with its expiration); an older cscli must
    not know the command, as the output's "CrowdSec >= 1.6.6" says."""
    cs = CrowdSecInstance(tmp_path / "cs")
    code, out, err = auditor(
        "allowlist", "-o", "json", "--only", "allowlists", "--expiration", "7d"
    )
    assert code == 0, err
    doc = json.loads(out)
    if _cscli_version(cs) < (1, 6, 6):
        old = cs.cscli("allowlists", "--help", check=False)
        assert old.returncode != 0
        assert "unknown command" in old.stdout + old.stderr and "allowlists" in old.stderr
        return
    cs.start_lapi()
    try:
        for command in doc["commands"]:
            argv = shlex.split(command)
            assert argv[0] == "cscli"
            cs.cscli(*argv[1:])
        listed = json.loads(cs.cscli("allowlists", "inspect", doc["name"], "-o", "json").stdout)
        items = listed.get("items") or []
        assert sorted(i["value"] for i in items) == sorted(doc["values"])
        assert all(i.get("expiration") for i in items)
    finally:
        cs.stop()
