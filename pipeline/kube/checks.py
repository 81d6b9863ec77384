"""Cluster configuration findings: why Traefik loses the client IP, and what to change.

Each check has a bounded code (``Finding.check``), a target ``namespace/name`` (or node name),
evidence with the object names and field values it read, and a fix with concrete YAML or flags.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.addresses import parse_network
from pipeline.core.findings import Finding, Kind, Severity
from pipeline.kube.model import ClusterFacts, NodeInfo, ServiceInfo, TraefikPod, Workload
from pipeline.kube.traefik_args import TraefikFlags, traefik_flags

CHECKS = (
    "etp_cluster",
    "servicelb_masquerade",
    "traefik_deployment",
    "node_without_traefik",
    "etp_local_deployment",
    "accesslog_not_json",
    "headers_dropped",
    "trusted_ips_too_broad",
    "servicelb_with_metallb",
    "traefik_not_found",
)
# Trusting more than this lets any client on the internet set its own address.
_BROAD = {4: 8, 6: 16}
_KEEP = "keep"


def _finding(
    check: str,
    severity: Severity,
    target: str,
    summary: str,
    evidence: dict[str, Any],
    fix: str,
) -> Finding:
    return Finding(
        kind=Kind.CONFIG,
        severity=severity,
        target=target,
        summary=summary,
        evidence=evidence,
        fix=fix,
        key=f"config:{check}:{target}",
        check=check,
    )


# -- fix texts ------------------------------------------------------------------------------------
def _helm_values(namespace: str, values: str) -> str:
    indented = "\n".join(f"    {ln}" for ln in values.strip("\n").splitlines())
    return (
        "On k3s, put this in /var/lib/rancher/k3s/server/manifests/traefik-config.yaml on a "
        "server\n(other installs: the same values in the Traefik Helm release):\n"
        "apiVersion: helm.cattle.io/v1\n"
        "kind: HelmChartConfig\n"
        "metadata:\n"
        "  name: traefik\n"
        f"  namespace: {namespace}\n"
        "spec:\n"
        "  valuesContent: |-\n"
        f"{indented}"
    )


_DAEMONSET_LOCAL_VALUES = """
deployment:
  kind: DaemonSet
service:
  spec:
    externalTrafficPolicy: Local
"""

_ACCESSLOG_VALUES = """
logs:            # Traefik chart <= v40 (k3s); chart >= v41 renamed it to accessLog:
  access:
    enabled: true
    format: json
    fields:
      headers:
        defaultmode: drop
        names:
          X-Forwarded-For: keep
          X-Real-Ip: keep
"""

_ACCESSLOG_FLAGS = (
    "--accesslog=true --accesslog.format=json "
    "--accesslog.fields.headers.names.X-Forwarded-For=keep "
    "--accesslog.fields.headers.names.X-Real-Ip=keep"
)


def _fix_etp_local(svc: ServiceInfo) -> str:
    return (
        f"Set externalTrafficPolicy: Local on {svc.ref} so nodes deliver connections without "
        "SNAT,\nand run Traefik on every node that receives traffic (a DaemonSet).\n"
        + _helm_values(svc.namespace, _DAEMONSET_LOCAL_VALUES)
        + "\nOne-off (the chart reverts it on its next upgrade):\n"
        f"kubectl -n {svc.namespace} patch service {svc.name} "
        '-p \'{"spec":{"externalTrafficPolicy":"Local"}}\''
    )


def _fix_servicelb(svc_ref: str, namespace: str, pool: Iterable[str]) -> str:
    addresses = ", ".join(f'"{a}/32"' for a in pool) or '"<external IP>/32"'
    return (
        "Either (a) replace servicelb with MetalLB: on every k3s server add to "
        "/etc/rancher/k3s/config.yaml\n"
        "disable:\n"
        "  - servicelb\n"
        "(or start k3s with --disable servicelb), restart k3s, install MetalLB and give it the "
        "external addresses:\n"
        "apiVersion: metallb.io/v1beta1\n"
        "kind: IPAddressPool\n"
        "metadata:\n"
        "  name: ingress\n"
        "  namespace: metallb-system\n"
        "spec:\n"
        f"  addresses: [{addresses}]\n"
        "---\n"
        "apiVersion: metallb.io/v1beta1\n"
        "kind: L2Advertisement\n"
        "metadata:\n"
        "  name: ingress\n"
        "  namespace: metallb-system\n"
        "spec:\n"
        "  ipAddressPools: [ingress]\n"
        f"and keep externalTrafficPolicy: Local on {svc_ref};\n"
        f"or (b) keep servicelb but set externalTrafficPolicy: Local on {svc_ref} with Traefik "
        "as a DaemonSet on the nodes that hold the external IPs (traffic addressed to the node "
        "IP is then handled by kube-proxy and keeps the client address):\n"
        + _helm_values(namespace, _DAEMONSET_LOCAL_VALUES)
        + "\nand limit servicelb to those nodes: "
        "kubectl label node <node> svccontroller.k3s.cattle.io/enablelb=true"
    )


def _fix_accesslog(namespace: str) -> str:
    return _helm_values(namespace, _ACCESSLOG_VALUES) + f"\nPlain Traefik flags: {_ACCESSLOG_FLAGS}"


# -- checks --------------------------------------------------------------------------------------
def _exposed_traefik_services(facts: ClusterFacts) -> list[ServiceInfo]:
    return [s for s in facts.traefik.services if s.exposed]


def _workload_pods(facts: ClusterFacts) -> dict[Workload, list[TraefikPod]]:
    out: dict[Workload, list[TraefikPod]] = {}
    for tp in facts.traefik.pods:
        out.setdefault(tp.workload, []).append(tp)
    return out


def _nodes_with_traefik(facts: ClusterFacts) -> set[str]:
    return {tp.pod.node_name for tp in facts.traefik.pods if tp.pod.running and tp.pod.node_name}


def _ingress_nodes(facts: ClusterFacts) -> list[NodeInfo]:
    """Nodes that receive outside traffic: an ExternalIP, or an address in a Traefik LB ingress."""
    ingress = {ip for s in _exposed_traefik_services(facts) for ip in s.lb_ingress_ips}
    return [n for n in facts.nodes if n.external_ips or ingress.intersection(n.addresses)]


def _check_etp(facts: ClusterFacts) -> list[Finding]:
    out = []
    for svc in _exposed_traefik_services(facts):
        if svc.etp != "Cluster":
            continue
        lbs = [lb.ref for lb in facts.servicelb if lb.svc_ref == svc.ref]
        out.append(
            _finding(
                "etp_cluster",
                Severity.HIGH,
                svc.ref,
                f"Traefik's Service {svc.ref} is type {svc.type} with externalTrafficPolicy "
                "Cluster: nodes SNAT incoming connections, so Traefik logs a node or pod address "
                "as the client and CrowdSec bans that internal hop for everyone",
                {
                    "service": svc.ref,
                    "type": svc.type,
                    "externalTrafficPolicy": svc.external_traffic_policy or "(unset: Cluster)",
                    "loadBalancerIngress": list(svc.lb_ingress_ips),
                    "ports": list(svc.ports),
                    "servicelb": lbs,
                    "traefikWorkloads": [f"{w.kind} {w.ref}" for w in facts.traefik.workloads],
                },
                _fix_etp_local(svc),
            )
        )
    return out


def _check_servicelb(facts: ClusterFacts) -> list[Finding]:
    out = []
    traefik = {s.ref: s for s in facts.traefik.services}
    for lb in facts.servicelb:
        svc = traefik.get(lb.svc_ref)
        if svc is None:
            continue
        local = svc.etp == "Local"
        pods = [{"pod": p.ref, "node": p.node_name, "ips": list(p.ips)} for p in lb.pods]
        ips = ", ".join(ip for p in lb.pods for ip in p.ips) or "its pod addresses"
        if local:
            summary = (
                f"k3s servicelb ({lb.ref}) serves Traefik's Service {svc.ref}; with "
                "externalTrafficPolicy Local, connections to a node's own address keep the client "
                "IP, but any that reach the svclb pod (NAT in front, hairpin) are masqueraded to "
                f"its address ({ips})"
            )
        else:
            summary = (
                f"k3s servicelb ({lb.ref}) serves Traefik's Service {svc.ref}: klipper-lb "
                "DNATs to the ClusterIP and MASQUERADEs every connection, so Traefik sees the "
                f"svclb pod address ({ips}) as the client and CrowdSec bans it"
            )
        out.append(
            _finding(
                "servicelb_masquerade",
                Severity.MEDIUM if local else Severity.HIGH,
                lb.ref,
                summary,
                {
                    "daemonset": lb.ref,
                    "service": svc.ref,
                    "externalTrafficPolicy": svc.etp,
                    "svclbPods": pods,
                    "loadBalancerIngress": list(svc.lb_ingress_ips),
                },
                _fix_servicelb(svc.ref, svc.namespace, svc.lb_ingress_ips),
            )
        )
    return out


def _check_workloads(facts: ClusterFacts) -> list[Finding]:
    out = []
    with_pod = _nodes_with_traefik(facts)
    ingress_nodes = _ingress_nodes(facts)
    local_svcs = [s for s in _exposed_traefik_services(facts) if s.etp == "Local"]
    for w, tps in _workload_pods(facts).items():
        if w.kind != "Deployment":
            continue
        nodes = sorted({tp.pod.node_name for tp in tps if tp.pod.node_name})
        missing = [n.name for n in ingress_nodes if n.name not in with_pod]
        evidence = {
            "workload": w.ref,
            "kind": w.kind,
            "pods": [tp.pod.ref for tp in tps],
            "nodesWithPod": nodes,
            "nodes": len(facts.nodes),
            "ingressNodesWithoutPod": missing,
        }
        out.append(
            _finding(
                "traefik_deployment",
                Severity.MEDIUM,
                w.ref,
                f"Traefik runs as a Deployment ({w.ref}, {len(tps)} pod(s) on "
                f"{len(nodes)} of {len(facts.nodes)} nodes): connections to other nodes are "
                "forwarded with SNAT (externalTrafficPolicy Cluster) or dropped (Local)",
                evidence,
                "Run Traefik as a DaemonSet:\n"
                + _helm_values(w.namespace, _DAEMONSET_LOCAL_VALUES),
            )
        )
        for svc in local_svcs:
            out.append(
                _finding(
                    "etp_local_deployment",
                    Severity.MEDIUM if missing else Severity.LOW,
                    svc.ref,
                    f"{svc.ref} has externalTrafficPolicy Local but Traefik is a Deployment "
                    f"({w.ref}): nodes without a Traefik pod drop the traffic they receive"
                    + (f" ({', '.join(missing)} now)" if missing else ", after any reschedule"),
                    {**evidence, "service": svc.ref, "externalTrafficPolicy": svc.etp},
                    "Run Traefik as a DaemonSet (or pin a pod to every node in the load "
                    "balancer):\n" + _helm_values(svc.namespace, _DAEMONSET_LOCAL_VALUES),
                )
            )
    if not facts.traefik.pods:
        return out
    for node in ingress_nodes:
        if node.name in with_pod:
            continue
        out.append(
            _finding(
                "node_without_traefik",
                Severity.MEDIUM,
                node.name,
                f"Node {node.name} receives outside traffic "
                f"({', '.join(node.external_ips or node.internal_ips)}) but runs no Traefik pod: "
                "kube-proxy forwards it to another node with SNAT, or drops it with "
                "externalTrafficPolicy Local",
                {
                    "node": node.name,
                    "externalIPs": list(node.external_ips),
                    "internalIPs": list(node.internal_ips),
                    "nodesWithTraefik": sorted(with_pod),
                },
                "Run Traefik on this node (DaemonSet, see traefik_deployment), or stop sending "
                "it traffic: on k3s servicelb, label only the nodes that run Traefik with "
                "`kubectl label node <node> svccontroller.k3s.cattle.io/enablelb=true`; "
                "with MetalLB, restrict the L2Advertisement's nodeSelectors.",
            )
        )
    return out


def _representative_flags(facts: ClusterFacts) -> list[tuple[Workload, TraefikFlags]]:
    """One running (else any) pod per workload: pods of a workload share their spec."""
    out = []
    for w, tps in _workload_pods(facts).items():
        pod = next((tp.pod for tp in tps if tp.pod.running), tps[0].pod)
        out.append((w, traefik_flags(pod)))
    return out


def _check_accesslog(facts: ClusterFacts) -> list[Finding]:
    out = []
    for w, flags in _representative_flags(facts):
        if not flags.visible:
            continue
        enabled = flags.enabled("accesslog")
        if not enabled and flags.from_file:
            continue  # configured in a file we cannot see
        fmt = flags.get("accesslog.format", "common") if enabled else ""
        if not enabled or fmt.lower() != "json":
            out.append(
                _finding(
                    "accesslog_not_json",
                    Severity.MEDIUM,
                    w.ref,
                    (
                        f"Traefik ({w.ref}) writes its access log in {fmt} format, not JSON: "
                        "header fields cannot be logged and JSON-based parsers see nothing"
                        if enabled
                        else f"Traefik ({w.ref}) has no access log: CrowdSec and this auditor "
                        "cannot see its traffic"
                    ),
                    {
                        "workload": w.ref,
                        "accesslog": enabled,
                        "accesslog.format": fmt or None,
                    },
                    _fix_accesslog(w.namespace),
                )
            )
        if not enabled:
            continue
        default = flags.get("accesslog.fields.headers.defaultmode", "drop").lower()
        xff = flags.get("accesslog.fields.headers.names.x-forwarded-for", default).lower()
        xri = flags.get("accesslog.fields.headers.names.x-real-ip", default).lower()
        if xff != _KEEP:
            out.append(
                _finding(
                    "headers_dropped",
                    Severity.LOW,
                    w.ref,
                    f"Traefik ({w.ref}) drops the X-Forwarded-For header from its access log "
                    f"(mode {xff}): a forwarded client address cannot be told from the hop",
                    {
                        "workload": w.ref,
                        "accesslog.fields.headers.defaultmode": default,
                        "X-Forwarded-For": xff,
                        "X-Real-Ip": xri,
                    },
                    _fix_accesslog(w.namespace),
                )
            )
    return out


def _broad(cidr: str) -> bool:
    parsed = parse_network(cidr)
    return parsed is not None and parsed[2] < _BROAD[parsed[0]]


def _check_trust(facts: ClusterFacts) -> list[Finding]:
    out = []
    for w, flags in _representative_flags(facts):
        problems: list[dict[str, Any]] = []
        for key, value in sorted(flags.values.items()):
            parts = key.split(".")
            if len(parts) != 4 or parts[0] != "entrypoints":
                continue
            ep, section, option = parts[1], parts[2], parts[3]
            if section not in {"forwardedheaders", "proxyprotocol"}:
                continue
            if option == "insecure" and value.lower() != "false":
                problems.append({"entryPoint": ep, "option": f"{section}.insecure", "value": value})
            elif option == "trustedips":
                broad = [c for c in flags.list_value(key) if _broad(c)]
                if broad:
                    problems.append(
                        {"entryPoint": ep, "option": f"{section}.trustedIPs", "value": broad}
                    )
        if not problems:
            continue
        eps = sorted({str(p["entryPoint"]) for p in problems})
        out.append(
            _finding(
                "trusted_ips_too_broad",
                Severity.HIGH,
                w.ref,
                f"Traefik ({w.ref}) trusts X-Forwarded-For / PROXY headers from anyone on "
                f"entry point(s) {', '.join(eps)}: a client can claim any address, evade its ban "
                "or get an internal address (10.42.0.1) banned",
                {"workload": w.ref, "problems": problems},
                "Trust exactly the hops that set the header, e.g. for a CDN or external load "
                "balancer in front:\n"
                + "\n".join(
                    f"--entryPoints.{ep}.forwardedHeaders.trustedIPs=<proxy CIDRs> "
                    f"(and drop --entryPoints.{ep}.forwardedHeaders.insecure)"
                    for ep in eps
                )
                + "\nWith externalTrafficPolicy: Local and no proxy in front, trust nothing: "
                "the peer address is the client. `auditor allowlist` prints the cluster's hop "
                "ranges.",
            )
        )
    return out


def _check_metallb(facts: ClusterFacts) -> list[Finding]:
    if not (facts.metallb.present and facts.servicelb):
        return []
    namespace = facts.servicelb[0].namespace
    return [
        _finding(
            "servicelb_with_metallb",
            Severity.MEDIUM,
            f"{namespace}/servicelb",
            "MetalLB is installed but k3s servicelb is still enabled: both act on LoadBalancer "
            "Services (svclb pods bind the host ports and masquerade, MetalLB announces the IPs)",
            {
                "metallb": list(facts.metallb.evidence),
                "servicelbDaemonSets": [lb.ref for lb in facts.servicelb],
            },
            "Disable servicelb on every k3s server: add to /etc/rancher/k3s/config.yaml\n"
            "disable:\n"
            "  - servicelb\n"
            "(or --disable servicelb) and restart k3s; k3s then deletes the svclb DaemonSets.",
        )
    ]


def _check_found(facts: ClusterFacts) -> list[Finding]:
    if facts.traefik.present:
        return []
    return [
        _finding(
            "traefik_not_found",
            Severity.INFO,
            "traefik",
            "No Traefik pod or Service found: the Traefik checks were skipped",
            {"pods": 0, "services": 0},
            "Point discovery at Traefik's pods with the traefik label selector option "
            "(default app.kubernetes.io/name=traefik).",
        )
    ]


def check_cluster(facts: ClusterFacts) -> list[Finding]:
    """Every config finding for one snapshot, most severe first."""
    findings = [
        *_check_etp(facts),
        *_check_servicelb(facts),
        *_check_workloads(facts),
        *_check_accesslog(facts),
        *_check_trust(facts),
        *_check_metallb(facts),
        *_check_found(facts),
    ]
    return sorted(findings, key=lambda f: (-f.severity.rank, CHECKS.index(f.check), f.target))
