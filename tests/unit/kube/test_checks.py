"""Cluster facts from real-shaped k3s objects, the networks they imply and the config audit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pipeline.core.addresses import AddrClass, Classifier
from pipeline.core.findings import Kind, Severity
from pipeline.kube import extract
from pipeline.kube.checks import CHECKS, check_cluster
from pipeline.kube.model import ClusterFacts, PodInfo
from pipeline.kube.networks import cluster_networks
from pipeline.kube.traefik_args import traefik_flags
from pipeline.kube.versions import FACT
from tests.support.kube_facts import (
    BAD,
    EXPECTED_BAD,
    EXPECTED_OLD_K3S,
    EXPECTED_TRAEFIK_V3,
    GOOD,
    OLD_K3S,
    TRAEFIK_V3,
    facts_from_files,
    items,
)


@pytest.fixture(name="bad", scope="module")
def _bad() -> ClusterFacts:
    return facts_from_files(BAD)


@pytest.fixture(name="good", scope="module")
def _good() -> ClusterFacts:
    return facts_from_files(GOOD)


def by_check(facts: ClusterFacts) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for f in check_cluster(facts):
        out.setdefault(f.check, []).append(f)
    return out


# -- facts ----------------------------------------------------------------------------------------
def test_bad_cluster_facts(bad: ClusterFacts) -> None:
    assert [n.name for n in bad.nodes] == ["k3s-agent-1", "k3s-agent-2", "k3s-server-1"]
    server = bad.nodes[2]
    assert server.pod_cidrs == ("10.42.0.0/24",)
    assert server.internal_ips == ("192.168.1.10",)
    assert server.external_ips == ("203.0.113.10",)
    assert [s.ref for s in bad.services] == ["kube-system/traefik"]  # the only exposed one
    (tp,) = bad.traefik.pods
    assert tp.pod.ref == "kube-system/traefik-f4564c4f4-q2wzx"
    assert (tp.workload.kind, tp.workload.ref) == ("Deployment", "kube-system/traefik")
    (lb,) = bad.servicelb
    assert lb.name.startswith("svclb-traefik-") and len(lb.name) == len("svclb-traefik-") + 8
    assert lb.svc_ref == "kube-system/traefik"
    assert sorted(ip for p in lb.pods for ip in p.ips) == ["10.42.0.7", "10.42.1.3", "10.42.2.4"]
    assert not bad.metallb.present


def test_good_cluster_facts(good: ClusterFacts) -> None:
    assert {w.kind for w in good.traefik.workloads} == {"DaemonSet"}
    assert good.traefik.services[0].etp == "Local"
    assert good.servicelb == ()
    assert good.metallb.present
    assert "namespace metallb-system" in good.metallb.evidence
    assert any(e.startswith("pod metallb-system/metallb-controller") for e in good.metallb.evidence)


def test_service_cidr_is_inferred_per_family(good: ClusterFacts) -> None:
    got = {f.cidr: f.provenance for f in good.service_cidrs}
    assert set(got) == {"10.43.0.0/16", "2001:cafe:43::/112"}
    assert "widened to /112" in got["2001:cafe:43::/112"]


def test_service_cidr_bounds(bad: ClusterFacts) -> None:
    svc = bad.services[0]
    wide = [replace(svc, cluster_ips=("10.43.0.1",)), replace(svc, cluster_ips=("10.200.0.1",))]
    assert extract.infer_service_cidrs(wide) == ()  # cover /8 is wider than Kubernetes allows
    few = [replace(svc, cluster_ips=("10.43.0.1",)), replace(svc, cluster_ips=("10.43.0.10",))]
    (only,) = extract.infer_service_cidrs(few)
    assert only.cidr == "10.43.0.0/16"
    configured = facts_from_files(BAD, extract.FactOptions(service_cidrs=("10.96.0.0/12",)))
    assert [c.cidr for c in configured.service_cidrs] == ["10.96.0.0/12"]


@pytest.mark.parametrize(
    ("ips", "provenance"),
    [
        (("10.43.0.1", "10.43.0.10"), "(cover 10.43.0.0/28, widened to /16)"),
        (("10.43.0.1",), "(cover 10.43.0.1/32, widened to /16)"),
        (("10.32.0.1", "10.47.255.1"), "(cover 10.32.0.0/12)"),  # the widest Kubernetes allows
        (("2001:cafe:43::1", "2001:cafe:43::ff"), "(cover 2001:cafe:43::/120, widened to /112)"),
    ],
)
def test_service_cidr_cover_is_the_shared_prefix(
    bad: ClusterFacts, ips: tuple[str, ...], provenance: str
) -> None:
    """The cover comes from addresses.same_prefix, not a shift of its own."""
    svc = bad.services[0]
    (only,) = extract.infer_service_cidrs([replace(svc, cluster_ips=(ip,)) for ip in ips])
    assert only.provenance.endswith(provenance)


def test_workload_without_visible_replicaset_is_still_a_deployment(bad: ClusterFacts) -> None:
    pods = [extract.pod_from_obj(o) for o in items(BAD, "pods")]
    facts = extract.build_facts(traefik_pods=pods, traefik_replicasets=[])
    assert [(w.kind, w.ref) for w in facts.traefik.workloads] == [
        ("Deployment", "kube-system/traefik")
    ]


def test_malformed_objects_are_reduced_not_fatal() -> None:
    node = extract.node_from_obj(
        {
            "metadata": {"name": "weird"},
            "spec": {"podCIDRs": ["not-a-cidr", 7, "10.42.9.0/24"]},
            "status": {"addresses": "garbage"},
        }
    )
    assert node.pod_cidrs == ("10.42.9.0/24",)
    assert node.addresses == ()
    svc = extract.service_from_obj({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}})
    assert svc.cluster_ips == () and svc.type == "ClusterIP"
    assert extract.pod_from_obj({"metadata": None, "spec": [], "status": 3}).ips == ()


def test_selector_matching() -> None:
    labels = {"app.kubernetes.io/name": "traefik", "tier": "edge"}
    assert extract.selector_matches("app.kubernetes.io/name=traefik", labels)
    assert extract.selector_matches("app.kubernetes.io/name==traefik,tier", labels)
    assert not extract.selector_matches("app.kubernetes.io/name=traefik,tier!=edge", labels)
    assert not extract.selector_matches("!tier", labels)
    assert extract.selector_matches("", labels)


# -- networks -------------------------------------------------------------------------------------
def test_cluster_networks_classes_and_provenance(bad: ClusterFacts) -> None:
    nets = {(n.cidr, n.cls): n.provenance for n in cluster_networks(bad)}
    assert nets[("10.42.0.0/24", AddrClass.POD)] == "node k3s-server-1 spec.podCIDRs"
    assert nets[("10.43.0.0/16", AddrClass.SERVICE)].startswith("service CIDR inferred from 4")
    assert nets[("192.168.1.11/32", AddrClass.NODE)] == (
        "node k3s-agent-1 status.addresses InternalIP"
    )
    assert nets[("203.0.113.10/32", AddrClass.NODE)] == (
        "node k3s-server-1 status.addresses ExternalIP"
    )
    assert nets[("203.0.113.11/32", AddrClass.LOADBALANCER)] == (
        "service kube-system/traefik status.loadBalancer.ingress"
    )
    svclb = [p for (c, cls), p in nets.items() if c == "10.42.1.3/32"]
    assert svclb == ["servicelb pod kube-system/svclb-traefik-fe02f068-m4t9d status.podIPs"]
    assert nets[("10.42.0.8/32", AddrClass.POD)].startswith("traefik pod kube-system/traefik-")


def test_cluster_networks_ipv6_and_host_network(good: ClusterFacts) -> None:
    nets = {(n.cidr, n.cls) for n in cluster_networks(good)}
    assert ("2001:cafe:42::/64", AddrClass.POD) in nets
    assert ("2001:db8:10::11/128", AddrClass.NODE) in nets
    assert ("2001:db8:100::20/128", AddrClass.LOADBALANCER) in nets
    assert ("2001:cafe:42:1::6/128", AddrClass.POD) in nets
    # MetalLB speakers run with hostNetwork: their "pod IP" is the node's, never a POD network.
    assert ("192.168.10.11/32", AddrClass.POD) not in nets


def test_classifier_uses_discovered_networks(good: ClusterFacts) -> None:
    clf = Classifier(cluster_networks(good))
    hit = clf.classify("2001:cafe:42:1::77")  # not private: only discovery knows it is a pod
    assert hit.cls is AddrClass.POD
    assert hit.network is not None and hit.network.provenance == "node k3s-b spec.podCIDRs"
    assert clf.classify("198.51.100.20").cls is AddrClass.LOADBALANCER
    assert clf.classify("198.51.100.99").cls is AddrClass.PUBLIC


# -- audit ----------------------------------------------------------------------------------------
def test_bad_cluster_has_every_finding(bad: ClusterFacts) -> None:
    found = by_check(bad)
    assert set(found) == set(EXPECTED_BAD)
    for check, (severity, target) in EXPECTED_BAD.items():
        (f,) = found[check]
        assert (f.kind, f.severity, f.target) == (Kind.CONFIG, severity, target), check
        assert f.summary and f.fix and f.evidence
        assert f.key == f"config:{check}:{target}"
        assert f.as_dict()["check"] == check
    ranks = [f.severity.rank for f in check_cluster(bad)]
    assert ranks == sorted(ranks, reverse=True)


def test_good_cluster_has_no_finding(good: ClusterFacts) -> None:
    assert check_cluster(good) == []


def test_finding_evidence_and_fixes(bad: ClusterFacts) -> None:
    found = {c: fs[0] for c, fs in by_check(bad).items()}
    etp = found["etp_cluster"]
    assert etp.evidence["externalTrafficPolicy"] == "Cluster"
    assert etp.evidence["loadBalancerIngress"] == ["203.0.113.10", "203.0.113.11"]
    assert "externalTrafficPolicy: Local" in etp.fix and "kind: HelmChartConfig" in etp.fix
    assert "kind: DaemonSet" in etp.fix
    assert "kubectl -n kube-system patch service traefik" in etp.fix
    lb = found["servicelb_masquerade"]
    assert "--disable servicelb" in lb.fix and "kind: IPAddressPool" in lb.fix
    assert '"203.0.113.10/32"' in lb.fix
    assert {p["ips"][0] for p in lb.evidence["svclbPods"]} == {
        "10.42.0.7",
        "10.42.1.3",
        "10.42.2.4",
    }
    trust = found["trusted_ips_too_broad"]
    assert {(p["entryPoint"], p["option"]) for p in trust.evidence["problems"]} == {
        ("web", "forwardedheaders.insecure"),
        ("websecure", "forwardedheaders.trustedIPs"),
    }
    log = found["accesslog_not_json"]
    assert log.evidence == {
        "workload": "kube-system/traefik",
        "accesslog": True,
        "accesslog.format": "common",
    }
    assert "format: json" in log.fix and "X-Forwarded-For: keep" in log.fix
    hdr = found["headers_dropped"]
    assert hdr.evidence["X-Forwarded-For"] == "drop"
    dep = found["traefik_deployment"]
    assert dep.evidence["nodesWithPod"] == ["k3s-server-1"]
    assert dep.evidence["ingressNodesWithoutPod"] == ["k3s-agent-1"]
    node = found["node_without_traefik"]
    assert node.evidence["externalIPs"] == ["203.0.113.11"]


def test_etp_local_with_deployment(bad: ClusterFacts) -> None:
    svc = replace(bad.services[0], external_traffic_policy="Local")
    facts = replace(bad, services=(svc,), traefik=replace(bad.traefik, services=(svc,)))
    found = by_check(facts)
    assert "etp_cluster" not in found
    (f,) = found["etp_local_deployment"]
    assert f.severity is Severity.MEDIUM and f.target == "kube-system/traefik"
    assert "k3s-agent-1" in f.summary
    # servicelb with Local still masquerades what reaches the svclb pod, but less of it.
    assert found["servicelb_masquerade"][0].severity is Severity.MEDIUM


def test_metallb_with_servicelb(bad: ClusterFacts, good: ClusterFacts) -> None:
    facts = replace(bad, metallb=good.metallb)
    (f,) = by_check(facts)["servicelb_with_metallb"]
    assert f.severity is Severity.MEDIUM
    assert f.evidence["servicelbDaemonSets"] == ["kube-system/svclb-traefik-fe02f068"]
    assert "disable:\n  - servicelb" in f.fix


def test_no_traefik_is_reported_as_info() -> None:
    facts = facts_from_files(BAD, extract.FactOptions(traefik_selector="app=nope"))
    checks = [f.check for f in check_cluster(facts)]
    assert checks == ["traefik_not_found"]
    assert check_cluster(facts)[0].severity is Severity.INFO


def test_checks_are_bounded(bad: ClusterFacts) -> None:
    assert {f.check for f in check_cluster(bad)} <= set(CHECKS)


# -- Traefik flags --------------------------------------------------------------------------------
def _pod(args: list[str], env: tuple[tuple[str, str], ...] = ()) -> PodInfo:
    return PodInfo("ns", "p", "n", (), False, "Running", (), (), tuple(args), env)


def test_traefik_flags_case_env_and_separate_values() -> None:
    flags = traefik_flags(
        _pod(
            [
                "traefik",
                "--accessLog",
                "--accessLog.format",
                "json",
                "--entryPoints.web.address=:80",
            ],
            (
                ("TRAEFIK_ACCESSLOG_FIELDS_HEADERS_DEFAULTMODE", "keep"),
                ("TRAEFIK_ACCESSLOG_FORMAT", "common"),
            ),
        )
    )
    assert flags.enabled("accesslog")
    assert flags.get("accesslog.format") == "json"  # flags win over env
    assert flags.get("accesslog.fields.headers.defaultmode") == "keep"
    assert flags.entrypoints() == ("web",)
    assert not traefik_flags(_pod(["--accesslog=false"])).enabled("accesslog")
    assert traefik_flags(_pod(["--accesslog.filepath=/x"])).enabled("accesslog")


def test_config_file_hides_access_log_settings(bad: ClusterFacts) -> None:
    tp = bad.traefik.pods[0]
    pod = replace(tp.pod, args=("--configFile=/etc/traefik/traefik.yaml",))
    facts = replace(bad, traefik=replace(bad.traefik, pods=(replace(tp, pod=pod),)))
    assert "accesslog_not_json" not in by_check(facts)


def test_legit_cdn_trust_is_not_too_broad(good: ClusterFacts) -> None:
    tp = good.traefik.pods[0]
    flags = traefik_flags(tp.pod)
    assert (
        flags.list_value("entrypoints.websecure.forwardedheaders.trustedips")[0]
        == "173.245.48.0/20"
    )
    assert "trusted_ips_too_broad" not in by_check(good)
    broad = replace(tp.pod, args=(*tp.pod.args, "--entrypoints.web.proxyprotocol.trustedips=::/0"))
    facts = replace(good, traefik=replace(good.traefik, pods=(replace(tp, pod=broad),)))
    (f,) = by_check(facts)["trusted_ips_too_broad"]
    assert f.evidence["problems"] == [
        {"entryPoint": "web", "option": "proxyprotocol.trustedIPs", "value": ["::/0"]}
    ]


# -- version-aware findings (facts in pipeline/kube/versions.py) ---------------------------------
@pytest.fixture(name="old_k3s", scope="module")
def _old_k3s() -> ClusterFacts:
    return facts_from_files(OLD_K3S)


@pytest.fixture(name="traefik_v3", scope="module")
def _traefik_v3() -> ClusterFacts:
    return facts_from_files(TRAEFIK_V3)


def with_versions(facts: ClusterFacts, **by_node: str) -> ClusterFacts:
    """The same cluster with these nodes' kubelet versions (others unchanged)."""
    nodes = tuple(
        replace(n, kubelet_version=by_node.get(n.name, n.kubelet_version)) for n in facts.nodes
    )
    return replace(facts, nodes=nodes)


def with_traefik(facts: ClusterFacts, image: str, *swap: tuple[str, str]) -> ClusterFacts:
    """Every Traefik pod with this image and the args in ``swap`` (old, new) replaced."""
    pods = []
    for tp in facts.traefik.pods:
        args = tuple(dict(swap).get(a, a) for a in tp.pod.args)
        pods.append(replace(tp, pod=replace(tp.pod, images=(image,), args=args)))
    return replace(facts, traefik=replace(facts.traefik, pods=tuple(pods)))


def test_version_fixtures_raise_exactly_their_findings(
    old_k3s: ClusterFacts, traefik_v3: ClusterFacts
) -> None:
    for facts, expected in ((old_k3s, EXPECTED_OLD_K3S), (traefik_v3, EXPECTED_TRAEFIK_V3)):
        found = by_check(facts)
        assert set(found) == set(expected)
        for check, (severity, target) in expected.items():
            (f,) = found[check]
            assert (f.kind, f.severity, f.target) == (Kind.CONFIG, severity, target), check
            assert f.key == f"config:{check}:{target}"
            assert ("Sources:\n  https://" in f.fix) is (check in FACT), check


def test_servicelb_ignoring_local_names_nodes_versions_and_the_fix(old_k3s: ClusterFacts) -> None:
    (f,) = by_check(old_k3s)["servicelb_etp_ignored"]
    assert f.evidence["nodes"] == [
        {"node": "k3s-a", "kubeletVersion": "v1.25.6+k3s1", "fixedIn": "v1.25.7+k3s1"}
    ]
    assert f.evidence["externalTrafficPolicy"] == "Local"
    assert "k3s-a v1.25.6+k3s1" in f.summary and "usual fix does nothing" in f.summary
    assert "v1.25.7+k3s1" in f.fix and "https://github.com/k3s-io/k3s/pull/6907" in f.fix
    (lb,) = by_check(old_k3s)["servicelb_masquerade"]
    assert lb.evidence["externalTrafficPolicy"].startswith("Local (ignored")


def test_servicelb_honours_local_from_the_fixed_patch(old_k3s: ClusterFacts) -> None:
    # The server decides (the servicelb controller runs there); an older agent does not matter.
    fixed = with_versions(old_k3s, **{"k3s-a": "v1.25.7+k3s1", "k3s-b": "v1.25.6+k3s1"})
    found = by_check(fixed)
    assert "servicelb_etp_ignored" not in found and "version_unknown" not in found
    assert found["servicelb_masquerade"][0].severity is Severity.MEDIUM  # as before this check
    for newer in ("v1.26.2+k3s1", "v1.29.5+k3s1", "v1.24.11+k3s1", "v1.23.17+k3s1"):
        assert "servicelb_etp_ignored" not in by_check(with_versions(old_k3s, **{"k3s-a": newer}))


def test_servicelb_without_role_labels_checks_every_node(old_k3s: ClusterFacts) -> None:
    nodes = tuple(replace(n, control_plane=False) for n in old_k3s.nodes)
    facts = with_versions(replace(old_k3s, nodes=nodes), **{"k3s-a": "v1.26.2+k3s1"})
    (f,) = by_check(facts)["servicelb_etp_ignored"]
    assert [n["node"] for n in f.evidence["nodes"]] == ["k3s-b"]


def test_servicelb_version_check_needs_local(bad: ClusterFacts) -> None:
    # Cluster policy on an old k3s: servicelb_masquerade already says it all.
    old = with_versions(bad, **{n.name: "v1.25.6+k3s1" for n in bad.nodes})
    assert set(by_check(old)) == set(EXPECTED_BAD)


@pytest.mark.parametrize("kubelet", ["", "v1.29.5", "garbage", "v1.25+k3s1", "v" + "9" * 200])
def test_unreadable_server_version_is_info_not_a_guess(old_k3s: ClusterFacts, kubelet: str) -> None:
    found = by_check(with_versions(old_k3s, **{"k3s-a": kubelet}))
    assert "servicelb_etp_ignored" not in found
    (f,) = found["version_unknown"]
    assert f.severity is Severity.INFO and f.target == "k3s-a"
    assert f.evidence == {
        "check": "servicelb_etp_ignored",
        "versions": {"k3s-a": kubelet or "(empty)"},
    }


def test_generic_clf_on_traefik_3_5_2_replaces_the_json_finding(traefik_v3: ClusterFacts) -> None:
    (f,) = by_check(traefik_v3)["accesslog_generic_clf"]
    assert f.evidence == {
        "workload": "kube-system/traefik",
        "image": "rancher/mirrored-library-traefik:3.5.3",
        "traefikVersion": "3.5.3",
        "accesslog.format": "genericCLF",
    }
    assert "format: json" in f.fix and "crowdsecurity/hub" in f.fix
    assert "accesslog_not_json" not in by_check(traefik_v3)
    exact = with_traefik(traefik_v3, "traefik:v3.5.2")
    assert by_check(exact)["accesslog_generic_clf"][0].severity is Severity.HIGH


def test_generic_clf_before_3_5_2_is_latent(traefik_v3: ClusterFacts) -> None:
    found = by_check(with_traefik(traefik_v3, "traefik:v3.5.1"))
    (f,) = found["accesslog_generic_clf"]
    assert f.severity is Severity.LOW and "from Traefik 3.5.2 on" in f.summary
    assert found["accesslog_not_json"][0].evidence["accesslog.format"] == "genericCLF"


@pytest.mark.parametrize(
    "image", ["traefik:latest", "traefik@sha256:abcd", "traefik:v3.5", "traefik"]
)
def test_generic_clf_with_an_unreadable_tag(traefik_v3: ClusterFacts, image: str) -> None:
    found = by_check(with_traefik(traefik_v3, image))
    assert "accesslog_generic_clf" not in found
    (f,) = found["version_unknown"]
    assert f.severity is Severity.INFO and f.evidence["check"] == "accesslog_generic_clf"
    assert "accesslog_not_json" in found  # still not JSON, whatever the version


def test_other_spellings_are_not_generic_clf(traefik_v3: ClusterFacts) -> None:
    # Traefik matches "genericCLF" exactly; anything else falls back to the common format.
    facts = with_traefik(
        traefik_v3,
        "traefik:v3.6.7",
        ("--accesslog.format=genericCLF", "--accesslog.format=genericclf"),
    )
    found = by_check(facts)
    assert "accesslog_generic_clf" not in found and "accesslog_not_json" in found
    json_log = with_traefik(
        traefik_v3, "traefik:v3.6.7", ("--accesslog.format=genericCLF", "--accesslog.format=json")
    )
    assert set(by_check(json_log)) == {"traefik_v3_api_group"}


def test_traefik_v3_on_k3s_1_32_2_and_later(traefik_v3: ClusterFacts) -> None:
    json_log = with_traefik(
        traefik_v3,
        "rancher/mirrored-library-traefik:3.3.2",
        ("--accesslog.format=genericCLF", "--accesslog.format=json"),
    )
    (f,) = by_check(with_versions(json_log, **{"k3s-a": "v1.32.2+k3s1", "k3s-b": "v1.32.2+k3s1"}))[
        "traefik_v3_api_group"
    ]
    assert f.evidence["traefikVersion"] == "3.3.2"
    assert "traefik.containo.us" in f.summary and "traefik.io/v1alpha1" in f.fix
    # v1.32.1 still shipped Traefik v2.11: a v3 there is the user's own, not the upgrade.
    older = with_versions(json_log, **{"k3s-a": "v1.32.1+k3s1", "k3s-b": "v1.32.1+k3s1"})
    assert by_check(older) == {}
    # Traefik pinned to v2 on a new k3s, or a version we cannot read: nothing to say.
    for image in ("rancher/mirrored-library-traefik:2.11.18", "traefik:latest"):
        assert by_check(with_traefik(json_log, image)) == {}


def test_version_checks_survive_hostile_objects() -> None:
    node = extract.node_from_obj(
        {
            "metadata": {"name": "n", "labels": {"node-role.kubernetes.io/master": "true"}},
            "status": {"nodeInfo": {"kubeletVersion": "v1.25.6+k3s1" + "x" * 100}},
        }
    )
    assert node.kubelet_version == "" and node.control_plane
    assert extract.node_from_obj({"status": {"nodeInfo": "v1.25.6+k3s1"}}).kubelet_version == ""
    assert (
        extract.node_from_obj({"status": {"nodeInfo": {"kubeletVersion": 7}}}).kubelet_version == ""
    )
    pod = extract.pod_from_obj(
        {"spec": {"containers": [{"image": 3}, {"image": "traefik:" + "9" * 300}, {}, "x"]}}
    )
    assert pod.images == ("", "", "", "")  # one per entry, none kept
