"""Cluster configuration findings: why Traefik loses the client IP, and what to change.

Each check has a bounded code (``Finding.check``), a target ``namespace/name`` (or node name),
evidence with the object names and field values it read, and a fix with concrete YAML or flags.
Some fixes only work on some versions: those checks read the k3s version from the nodes'
kubelet version and Traefik's from its image tag, and take the facts (and the sources the fix
cites) from the table in ``versions.py``. A version that cannot be read never yields a guess:
the check is skipped, or, when the configuration is wrong on some versions, reported as an
info ``version_unknown`` finding naming what could not be read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.addresses import parse_network
from pipeline.core.findings import Finding, Kind, Severity
from pipeline.kube import versions
from pipeline.kube.model import ClusterFacts, NodeInfo, PodInfo, ServiceInfo, TraefikPod, Workload
from pipeline.kube.traefik_args import TraefikFlags, traefik_flags

CHECKS = (
    "etp_cluster",
    "servicelb_etp_ignored",
    "servicelb_masquerade",
    "traefik_deployment",
    "node_without_traefik",
    "etp_local_deployment",
    "accesslog_generic_clf",
    "accesslog_not_json",
    "headers_dropped",
    "trusted_ips_too_broad",
    "servicelb_with_metallb",
    "traefik_v3_api_group",
    "version_unknown",
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
    # Where servicelb ignores Local (servicelb_etp_ignored), it masquerades as under Cluster.
    ignored = bool(facts.servicelb) and bool(_servicelb_old_servers(facts)[0])
    for lb in facts.servicelb:
        svc = traefik.get(lb.svc_ref)
        if svc is None:
            continue
        local = svc.etp == "Local" and not ignored
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
                    "externalTrafficPolicy": svc.etp
                    + (
                        " (ignored: see servicelb_etp_ignored)"
                        if svc.etp == "Local" and ignored
                        else ""
                    ),
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


def _representative_pods(facts: ClusterFacts) -> list[tuple[Workload, PodInfo]]:
    """One running (else any) pod per workload: pods of a workload share their spec."""
    out = []
    for w, tps in _workload_pods(facts).items():
        out.append((w, next((tp.pod for tp in tps if tp.pod.running), tps[0].pod)))
    return out


def _representative_flags(facts: ClusterFacts) -> list[tuple[Workload, TraefikFlags]]:
    return [(w, traefik_flags(pod)) for w, pod in _representative_pods(facts)]


def _check_accesslog(facts: ClusterFacts) -> list[Finding]:
    out = []
    for w, pod in _representative_pods(facts):
        flags = traefik_flags(pod)
        if not flags.visible:
            continue
        enabled = flags.enabled("accesslog")
        if not enabled and flags.from_file:
            continue  # configured in a file we cannot see
        fmt = flags.get("accesslog.format", "common") if enabled else ""
        # On Traefik >= 3.5.2 accesslog_generic_clf says more, with the same fix.
        generic_clf = fmt == _GENERIC_CLF and _generic_clf_state(pod) is True
        if (not enabled or fmt.lower() != "json") and not generic_clf:
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


# -- version-aware checks (facts and sources in versions.py) ------------------------------------
# Traefik matches the format name exactly; any other spelling falls back to "common".
_GENERIC_CLF = "genericCLF"
_MAX_NAMED = 5


def _sources(check: str) -> str:
    return "Sources:\n" + "\n".join(f"  {u}" for u in versions.FACT[check].sources)


def _named(names: list[str]) -> str:
    """A bounded target naming nodes: a,b,c (+N more)."""
    shown = ",".join(names[:_MAX_NAMED])
    return shown + (f" (+{len(names) - _MAX_NAMED} more)" if len(names) > _MAX_NAMED else "")


def _k3s_servers(facts: ClusterFacts) -> list[NodeInfo]:
    """The servicelb controller runs in the k3s server: the control-plane nodes decide. Without
    role labels every node could be one."""
    return [n for n in facts.nodes if n.control_plane] or list(facts.nodes)


def _servicelb_old_servers(
    facts: ClusterFacts,
) -> tuple[list[tuple[NodeInfo, versions.Version]], dict[str, str]]:
    """k3s servers whose servicelb ignores externalTrafficPolicy Local, and the servers whose
    version cannot tell (name -> kubeletVersion as read)."""
    old: list[tuple[NodeInfo, versions.Version]] = []
    unread: dict[str, str] = {}
    for node in _k3s_servers(facts):
        v = versions.k3s_version(node.kubelet_version)
        state = None if v is None else versions.servicelb_ignores_etp_local(v)
        if v is not None and state is True:
            old.append((node, v))
        elif state is None:
            unread[node.name] = node.kubelet_version or "(empty)"
    return old, unread


def _version_unknown(target: str, what: str, read: dict[str, str], check: str) -> Finding:
    fact = versions.FACT[check]
    return _finding(
        "version_unknown",
        Severity.INFO,
        target,
        f"Could not read the version of {what}; it decides whether this applies: "
        f"{fact.component}, {fact.affected}: {fact.breaks}",
        {"check": check, "versions": read},
        f"Check the version by hand. If it is affected:\n{fact.fix}.\n" + _sources(check),
    )


def _check_servicelb_etp(facts: ClusterFacts) -> list[Finding]:
    traefik = {s.ref: s for s in facts.traefik.services}
    local = [
        (lb, traefik[lb.svc_ref])
        for lb in facts.servicelb
        if lb.svc_ref in traefik and traefik[lb.svc_ref].etp == "Local"
    ]
    if not local:
        return []
    old, unread = _servicelb_old_servers(facts)
    out = []
    for lb, svc in local:
        if not old:
            if unread:
                out.append(
                    _version_unknown(
                        _named(sorted(unread)),
                        f"the k3s server(s) running servicelb for {svc.ref}",
                        unread,
                        "servicelb_etp_ignored",
                    )
                )
            continue
        listed = ", ".join(f"{n.name} {v}" for n, v in old)
        fixed = sorted({versions.servicelb_fixed_in(v) for _, v in old})
        out.append(
            _finding(
                "servicelb_etp_ignored",
                Severity.HIGH,
                svc.ref,
                f"{svc.ref} has externalTrafficPolicy Local, but k3s servicelb ({lb.ref}) on "
                f"{listed} ignores it (honoured from {', '.join(fixed)}): every node keeps "
                "forwarding to all endpoints through the svclb pod, which masquerades the client "
                "address, so the usual fix does nothing here",
                {
                    "service": svc.ref,
                    "externalTrafficPolicy": svc.etp,
                    "servicelb": lb.ref,
                    "nodes": [
                        {
                            "node": n.name,
                            "kubeletVersion": n.kubelet_version,
                            "fixedIn": versions.servicelb_fixed_in(v),
                        }
                        for n, v in old
                    ],
                    **({"unreadVersions": unread} if unread else {}),
                },
                f"Upgrade the k3s servers to {' / '.join(fixed)} or later, servers first\n"
                "(the servicelb controller runs there), and keep externalTrafficPolicy: Local;\n"
                "or replace servicelb with MetalLB (see servicelb_masquerade).\n"
                + _sources("servicelb_etp_ignored"),
            )
        )
    return out


def _traefik_version(pod: PodInfo) -> versions.Version | None:
    return versions.traefik_image_version(pod.images)


def _generic_clf_state(pod: PodInfo) -> bool | None:
    """Whether this pod's Traefik writes genericCLF (>= 3.5.2), from its image tag."""
    v = _traefik_version(pod)
    return None if v is None else versions.generic_clf_active(v)


def _images(pod: PodInfo) -> dict[str, str]:
    return {"image": next((i for i in pod.images if "traefik" in versions.image_name(i)), "")}


def _check_generic_clf(facts: ClusterFacts) -> list[Finding]:
    out = []
    for w, pod in _representative_pods(facts):
        flags = traefik_flags(pod)
        if not flags.enabled("accesslog") or flags.get("accesslog.format") != _GENERIC_CLF:
            continue
        v = _traefik_version(pod)
        active = _generic_clf_state(pod)
        if v is None or active is None:
            out.append(
                _version_unknown(
                    w.ref, f"Traefik ({w.ref}, image tag)", _images(pod), "accesslog_generic_clf"
                )
            )
            continue
        evidence = {
            "workload": w.ref,
            "image": _images(pod)["image"],
            "traefikVersion": str(v),
            "accesslog.format": _GENERIC_CLF,
        }
        fix = _fix_accesslog(w.namespace) + "\n" + _sources("accesslog_generic_clf")
        if active:
            summary = (
                f"Traefik {v} ({w.ref}) writes its access log as genericCLF, which lacks the "
                "request count, router, server URL and duration that CrowdSec's traefik-logs "
                "parser requires: CrowdSec parses none of these lines and bans nobody"
            )
        else:
            summary = (
                f"Traefik {v} ({w.ref}) does not know --accesslog.format=genericCLF and writes "
                "the common format, which CrowdSec parses; from Traefik 3.5.2 on it writes "
                "genericCLF and CrowdSec's traefik-logs parser matches no line"
            )
        out.append(
            _finding(
                "accesslog_generic_clf",
                Severity.HIGH if active else Severity.LOW,
                w.ref,
                summary,
                evidence,
                fix,
            )
        )
    return out


def _check_traefik_v3(facts: ClusterFacts) -> list[Finding]:
    k3s = [
        (n, v)
        for n in facts.nodes
        if (v := versions.k3s_version(n.kubelet_version)) is not None
        and versions.k3s_bundles_traefik_v3(v) is True
    ]
    if not k3s:
        return []
    out = []
    for w, pod in _representative_pods(facts):
        v = _traefik_version(pod)
        if v is None or versions.traefik_v3(v) is not True:
            continue  # v2 (pinned), or unknown: nothing changed that we can name
        out.append(
            _finding(
                "traefik_v3_api_group",
                Severity.INFO,
                w.ref,
                f"Traefik {v} ({w.ref}) on k3s {k3s[0][1]}: since k3s v1.32.2 the packaged "
                "Traefik is v3, which ignores Middleware and IngressRoute objects of the v2 API "
                "group traefik.containo.us (a CrowdSec bouncer Middleware written for v2 is not "
                "applied, and routes that use it fail)",
                {
                    "workload": w.ref,
                    "image": _images(pod)["image"],
                    "traefikVersion": str(v),
                    "k3sNodes": {n.name: n.kubelet_version for n, _ in k3s[:_MAX_NAMED]},
                },
                "List what Traefik v3 no longer reads:\n"
                "  kubectl get -A \\\n"
                "    middlewares.traefik.containo.us,ingressroutes.traefik.containo.us\n"
                "and re-create each with apiVersion: traefik.io/v1alpha1 (same spec).\n"
                'If kubectl answers "doesn\'t have a resource type", the v2 CRDs (and every\n'
                "object in them) are gone: apply your manifests again with the new apiVersion.\n"
                + _sources("traefik_v3_api_group"),
            )
        )
    return out


def check_cluster(facts: ClusterFacts) -> list[Finding]:
    """Every config finding for one snapshot, most severe first."""
    findings = [
        *_check_etp(facts),
        *_check_servicelb_etp(facts),
        *_check_servicelb(facts),
        *_check_workloads(facts),
        *_check_generic_clf(facts),
        *_check_accesslog(facts),
        *_check_trust(facts),
        *_check_metallb(facts),
        *_check_traefik_v3(facts),
        *_check_found(facts),
    ]
    return sorted(findings, key=lambda f: (-f.severity.rank, CHECKS.index(f.check), f.target))
