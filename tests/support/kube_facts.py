"""Cluster facts straight from the k3s fixture files (tests/data/kube), and what they hold.

The unit tests of the config audit, the discovery tests (which compare a live watch with these)
and the ``auditor check`` tests all read the same two clusters.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.core.findings import Severity
from pipeline.kube import extract
from pipeline.kube.model import ClusterFacts
from tests.support.paths import DATA

KUBE_DATA = DATA / "kube"
BAD = "k3s-servicelb"  # servicelb, a Traefik Deployment, externalTrafficPolicy Cluster
GOOD = "k3s-metallb"  # MetalLB, a Traefik DaemonSet, externalTrafficPolicy Local

# Derived from GOOD (tests/data/kube/README.md): k3s v1.25.6 servers with servicelb and
# externalTrafficPolicy Local (ignored before v1.25.7); k3s v1.33 with its Traefik v3 logging
# genericCLF.
OLD_K3S = "k3s-v1.25-servicelb-local"
TRAEFIK_V3 = "k3s-v1.33-traefik-v3"

# The config findings the bad cluster raises: check -> (severity, target).
EXPECTED_BAD = {
    "etp_cluster": (Severity.HIGH, "kube-system/traefik"),
    "servicelb_masquerade": (Severity.HIGH, "kube-system/svclb-traefik-fe02f068"),
    "trusted_ips_too_broad": (Severity.HIGH, "kube-system/traefik"),
    "traefik_deployment": (Severity.MEDIUM, "kube-system/traefik"),
    "node_without_traefik": (Severity.MEDIUM, "k3s-agent-1"),
    "accesslog_not_json": (Severity.MEDIUM, "kube-system/traefik"),
    "headers_dropped": (Severity.LOW, "kube-system/traefik"),
}

EXPECTED_OLD_K3S = {
    "servicelb_etp_ignored": (Severity.HIGH, "kube-system/traefik"),
    # servicelb ignores Local there, so it masquerades everything, as under Cluster.
    "servicelb_masquerade": (Severity.HIGH, "kube-system/svclb-traefik-fe02f068"),
}
EXPECTED_TRAEFIK_V3 = {
    "accesslog_generic_clf": (Severity.HIGH, "kube-system/traefik"),
    "traefik_v3_api_group": (Severity.INFO, "kube-system/traefik"),
}


def items(cluster: str, resource: str) -> list[dict[str, Any]]:
    doc = json.loads((KUBE_DATA / cluster / f"{resource}.json").read_text())
    out: list[dict[str, Any]] = doc["items"]
    return out


def facts_from_files(cluster: str, options: extract.FactOptions | None = None) -> ClusterFacts:
    """The same reduction discovery applies, straight from the fixture files."""
    pods = [extract.pod_from_obj(o) for o in items(cluster, "pods")]
    return extract.build_facts(
        nodes=[extract.node_from_obj(o) for o in items(cluster, "nodes")],
        services=[extract.service_from_obj(o) for o in items(cluster, "services")],
        namespaces=[extract.namespace_from_obj(o) for o in items(cluster, "namespaces")],
        traefik_pods=pods,
        traefik_replicasets=[extract.workload_from_obj(o) for o in items(cluster, "replicasets")],
        servicelb_daemonsets=[
            extract.workload_from_obj(o)
            for o in items(cluster, "daemonsets")
            if o["metadata"]["namespace"] == "kube-system"
        ],
        servicelb_pods=[
            p
            for p in pods
            if extract.SVCLB_SVCNAME in dict(p.labels) and p.namespace == "kube-system"
        ],
        metallb_pods=pods,
        options=options,
    )
