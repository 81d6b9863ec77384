"""Raw API objects (decoded JSON dicts) to the records of ``model``, and records to facts.

Pure functions: discovery calls them on every list/watch event, tests on the JSON fixtures.
Objects are reduced to records on arrival so that the watch stores hold a few fields per
object instead of whole Node/Pod manifests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.addresses import (
    AddrClass,
    format_network,
    make_network,
    parse_address,
    parse_network,
    same_prefix,
)
from pipeline.kube.model import (
    CidrFact,
    ClusterFacts,
    Labels,
    MetalLBInfo,
    NamespaceInfo,
    NodeInfo,
    OwnerRef,
    PodInfo,
    ServiceInfo,
    ServiceLBInfo,
    TraefikFacts,
    TraefikPod,
    Workload,
    WorkloadInfo,
)

SVCLB_SVCNAME = "svccontroller.k3s.cattle.io/svcname"
SVCLB_SVCNAMESPACE = "svccontroller.k3s.cattle.io/svcnamespace"
POD_TEMPLATE_HASH = "pod-template-hash"

# Kubernetes refuses wider service ranges (kube-apiserver --service-cluster-ip-range checks):
# an IPv4 mask must be >= /12 and an IPv6 one >= /108. A wider cover means the guess is wrong.
_SERVICE_MAX = {4: 12, 6: 108}
# Cluster IPs are spread at random over the range, so a handful of them covers less than the
# range: widen the guess to at least a k3s-sized network.
_SERVICE_MIN = {4: 16, 6: 112}
_MAX_EVIDENCE = 5
# Versions and image references are short; anything longer is not one (and not kept).
_MAX_VERSION = 64
_MAX_IMAGE = 256
_CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


@dataclass(frozen=True, slots=True)
class FactOptions:
    """What to look for; the defaults fit k3s with its bundled Traefik."""

    traefik_selector: str = "app.kubernetes.io/name=traefik"
    servicelb_namespace: str = "kube-system"
    metallb_namespace: str = "metallb-system"
    metallb_selector: str = "app.kubernetes.io/name=metallb"
    service_cidrs: tuple[str, ...] = ()  # when set, used instead of the inferred range


# -- small accessors (API objects are untrusted JSON) -------------------------------------------
def _map(obj: Any, key: str) -> Mapping[str, Any]:
    v = obj.get(key) if isinstance(obj, Mapping) else None
    return v if isinstance(v, Mapping) else {}


def _list(obj: Any, key: str) -> list[Any]:
    v = obj.get(key) if isinstance(obj, Mapping) else None
    return v if isinstance(v, list) else []


def _str(obj: Any, key: str) -> str:
    v = obj.get(key) if isinstance(obj, Mapping) else None
    return v if isinstance(v, str) else ""


def _labels(meta: Mapping[str, Any], key: str = "labels") -> Labels:
    raw = _map(meta, key)
    return tuple(sorted((str(k), str(v)) for k, v in raw.items() if isinstance(v, str)))


def _owners(meta: Mapping[str, Any]) -> tuple[OwnerRef, ...]:
    out = []
    for ref in _list(meta, "ownerReferences"):
        if isinstance(ref, Mapping):
            out.append(
                OwnerRef(_str(ref, "kind"), _str(ref, "name"), ref.get("controller") is True)
            )
    return tuple(out)


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    """Keep the strings that are addresses, in order, without duplicates."""
    seen: dict[str, None] = {}
    for v in values:
        if isinstance(v, str) and parse_address(v) is not None:
            seen.setdefault(v.strip(), None)
    return tuple(seen)


def object_key(obj: Mapping[str, Any]) -> str:
    meta = _map(obj, "metadata")
    ns = _str(meta, "namespace")
    name = _str(meta, "name")
    return f"{ns}/{name}" if ns else name


def resource_version(obj: Mapping[str, Any]) -> str:
    return _str(_map(obj, "metadata"), "resourceVersion")


# -- objects to records --------------------------------------------------------------------------
def node_from_obj(obj: Mapping[str, Any]) -> NodeInfo:
    meta, spec, status = _map(obj, "metadata"), _map(obj, "spec"), _map(obj, "status")
    cidrs = [c for c in _list(spec, "podCIDRs") if isinstance(c, str)]
    if not cidrs and _str(spec, "podCIDR"):
        cidrs = [_str(spec, "podCIDR")]
    internal: list[str] = []
    external: list[str] = []
    for a in _list(status, "addresses"):
        kind = _str(a, "type")
        if kind == "InternalIP":
            internal.append(_str(a, "address"))
        elif kind == "ExternalIP":
            external.append(_str(a, "address"))
    kubelet = _str(_map(status, "nodeInfo"), "kubeletVersion")
    labels = _map(meta, "labels")
    return NodeInfo(
        name=_str(meta, "name"),
        pod_cidrs=tuple(c for c in cidrs if parse_network(c) is not None),
        internal_ips=_addresses(internal),
        external_ips=_addresses(external),
        kubelet_version=kubelet if len(kubelet) <= _MAX_VERSION else "",
        control_plane=any(k in labels for k in _CONTROL_PLANE_LABELS),
    )


def service_from_obj(obj: Mapping[str, Any]) -> ServiceInfo:
    meta, spec, status = _map(obj, "metadata"), _map(obj, "spec"), _map(obj, "status")
    svc_type = _str(spec, "type") or "ClusterIP"
    ips = [ip for ip in _list(spec, "clusterIPs") if isinstance(ip, str)]
    if not ips and _str(spec, "clusterIP"):
        ips = [_str(spec, "clusterIP")]
    ingress = [_str(i, "ip") for i in _list(_map(status, "loadBalancer"), "ingress")]
    ports = tuple(
        p["port"]
        for p in _list(spec, "ports")
        if isinstance(p, Mapping) and isinstance(p.get("port"), int)
    )
    exposed = svc_type in {"LoadBalancer", "NodePort"}
    return ServiceInfo(
        namespace=_str(meta, "namespace"),
        name=_str(meta, "name"),
        uid=_str(meta, "uid"),
        type=svc_type,
        cluster_ips=_addresses(ips),  # drops "None" (headless)
        external_traffic_policy=_str(spec, "externalTrafficPolicy") if exposed else "",
        lb_ingress_ips=_addresses(ingress),
        selector=_labels(spec, "selector"),
        labels=_labels(meta),
        ports=ports,
    )


def pod_from_obj(obj: Mapping[str, Any]) -> PodInfo:
    meta, spec, status = _map(obj, "metadata"), _map(obj, "spec"), _map(obj, "status")
    ips = [_str(p, "ip") for p in _list(status, "podIPs")]
    if not ips and _str(status, "podIP"):
        ips = [_str(status, "podIP")]
    args: list[str] = []
    env: list[tuple[str, str]] = []
    images: list[str] = []
    for c in _list(spec, "containers"):
        image = _str(c, "image")
        images.append(image if len(image) <= _MAX_IMAGE else "")
        args += [a for a in (*_list(c, "command"), *_list(c, "args")) if isinstance(a, str)]
        for e in _list(c, "env"):
            name = _str(e, "name")
            if name.upper().startswith("TRAEFIK_") and isinstance(e.get("value"), str):
                env.append((name, e["value"]))
    return PodInfo(
        namespace=_str(meta, "namespace"),
        name=_str(meta, "name"),
        node_name=_str(spec, "nodeName"),
        ips=_addresses(ips),
        host_network=spec.get("hostNetwork") is True,
        phase=_str(status, "phase"),
        labels=_labels(meta),
        owners=_owners(meta),
        args=tuple(args),
        env=tuple(env),
        images=tuple(images),
    )


def workload_from_obj(obj: Mapping[str, Any], kind: str = "") -> WorkloadInfo:
    """``kind`` fills in for list items, which (unlike watch objects) carry no ``kind``."""
    meta = _map(obj, "metadata")
    return WorkloadInfo(
        kind=_str(obj, "kind") or kind,
        namespace=_str(meta, "namespace"),
        name=_str(meta, "name"),
        uid=_str(meta, "uid"),
        labels=_labels(meta),
        owners=_owners(meta),
    )


def namespace_from_obj(obj: Mapping[str, Any]) -> NamespaceInfo:
    return NamespaceInfo(_str(_map(obj, "metadata"), "name"))


# -- label selectors -----------------------------------------------------------------------------
def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, comma = AND."""
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            k, _, v = term.partition("!=")
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, _, v = term.replace("==", "=").partition("=")
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def selector_labels(selector: str) -> dict[str, str]:
    """The ``a=b`` terms of a selector (what an object must carry to match)."""
    out = {}
    for raw in selector.split(","):
        term = raw.strip()
        if "=" in term and "!=" not in term:
            k, _, v = term.replace("==", "=").partition("=")
            out[k.strip()] = v.strip()
    return out


# -- records to facts ----------------------------------------------------------------------------
def _resolve_workload(pod: PodInfo, replicasets: Mapping[str, WorkloadInfo]) -> Workload:
    owner = pod.controller
    if owner is None:
        return Workload("Pod", pod.namespace, pod.name)
    if owner.kind != "ReplicaSet":
        return Workload(owner.kind, pod.namespace, owner.name)
    rs = replicasets.get(f"{pod.namespace}/{owner.name}")
    if rs is not None:
        rs_owner = next((o for o in rs.owners if o.controller), rs.owners[0] if rs.owners else None)
        if rs_owner is not None:
            return Workload(rs_owner.kind, pod.namespace, rs_owner.name)
        return Workload("ReplicaSet", pod.namespace, owner.name)
    # ReplicaSet not visible: a Deployment names its ReplicaSets <deployment>-<pod-template-hash>.
    tmpl = dict(pod.labels).get(POD_TEMPLATE_HASH)
    if tmpl and owner.name.endswith(f"-{tmpl}"):
        return Workload("Deployment", pod.namespace, owner.name[: -len(tmpl) - 1])
    return Workload("ReplicaSet", pod.namespace, owner.name)


def _is_traefik_service(svc: ServiceInfo, pods: Iterable[PodInfo], selector: str) -> bool:
    sel = dict(svc.selector)
    if sel:
        for p in pods:
            if p.namespace == svc.namespace and sel.items() <= dict(p.labels).items():
                return True
    wanted = selector_labels(selector)
    return bool(wanted) and wanted.items() <= dict(svc.labels).items() and svc.type != "ClusterIP"


def _network_of(version: int, value: int, length: int) -> str:
    """The ``length``-bit network holding ``value``; ``make_network`` clears the host bits."""
    return make_network(format_network(version, value, length), AddrClass.SERVICE, "").cidr


def infer_service_cidrs(services: Iterable[ServiceInfo]) -> tuple[CidrFact, ...]:
    """The smallest prefix covering all cluster IPs of a family, widened to /16 (/112 for IPv6),
    or nothing when that cover is wider than Kubernetes allows (/12, /108)."""
    by_family: dict[int, list[int]] = {4: [], 6: []}
    for svc in services:
        for ip in svc.cluster_ips:
            parsed = parse_address(ip)
            if parsed is not None:
                by_family[parsed[0]].append(parsed[1])
    out = []
    for version, values in by_family.items():
        if not values:
            continue
        lo, hi = min(values), max(values)
        # The longest prefix the two ends share; every address between them shares it too.
        bits = 32 if version == 4 else 128
        length = next(n for n in range(bits, -1, -1) if same_prefix(version, lo, version, hi, n))
        if length < _SERVICE_MAX[version]:
            continue
        cover = _network_of(version, lo, length)
        length = min(length, _SERVICE_MIN[version])
        cidr = _network_of(version, lo, length)
        why = f"inferred from {len(values)} Service clusterIPs (cover {cover}"
        why += ")" if cidr == cover else f", widened to /{length})"
        out.append(CidrFact(cidr, why))
    return tuple(out)


def build_facts(
    *,
    nodes: Iterable[NodeInfo] = (),
    services: Iterable[ServiceInfo] = (),
    namespaces: Iterable[NamespaceInfo] = (),
    traefik_pods: Iterable[PodInfo] = (),
    traefik_replicasets: Iterable[WorkloadInfo] = (),
    servicelb_daemonsets: Iterable[WorkloadInfo] = (),
    servicelb_pods: Iterable[PodInfo] = (),
    metallb_pods: Iterable[PodInfo] = (),
    options: FactOptions | None = None,
) -> ClusterFacts:
    """One snapshot from the current store contents. Deterministic: sorted everywhere."""
    opts = options or FactOptions()
    all_services = sorted(services, key=lambda s: s.ref)
    tpods = sorted(
        (p for p in traefik_pods if selector_matches(opts.traefik_selector, dict(p.labels))),
        key=lambda p: p.ref,
    )
    rs_by_ref = {rs.ref: rs for rs in traefik_replicasets}
    traefik = TraefikFacts(
        pods=tuple(TraefikPod(p, _resolve_workload(p, rs_by_ref)) for p in tpods),
        services=tuple(
            s for s in all_services if _is_traefik_service(s, tpods, opts.traefik_selector)
        ),
    )

    if opts.service_cidrs:
        service_cidrs = tuple(CidrFact(c, "configured service CIDR") for c in opts.service_cidrs)
    else:
        service_cidrs = infer_service_cidrs(all_services)

    pods_by_ds: dict[str, list[PodInfo]] = {}
    for p in servicelb_pods:
        o = p.controller
        if o is not None and o.kind == "DaemonSet":
            pods_by_ds.setdefault(f"{p.namespace}/{o.name}", []).append(p)
    svclb = []
    for ds in servicelb_daemonsets:
        lab = dict(ds.labels)
        if ds.kind not in {"DaemonSet", ""}:
            continue
        if SVCLB_SVCNAME not in lab and not ds.name.startswith("svclb-"):
            continue
        svc_name = lab.get(SVCLB_SVCNAME) or ds.name.removeprefix("svclb-").rsplit("-", 1)[0]
        svclb.append(
            ServiceLBInfo(
                namespace=ds.namespace,
                name=ds.name,
                svc_namespace=lab.get(SVCLB_SVCNAMESPACE, ds.namespace),
                svc_name=svc_name,
                pods=tuple(sorted(pods_by_ds.get(ds.ref, ()), key=lambda p: p.ref)),
            )
        )

    evidence = [f"namespace {n.name}" for n in namespaces if n.name == opts.metallb_namespace]
    evidence += [
        f"pod {p.ref}"
        for p in sorted(metallb_pods, key=lambda p: p.ref)
        if selector_matches(opts.metallb_selector, dict(p.labels))
    ]
    return ClusterFacts(
        nodes=tuple(sorted(nodes, key=lambda n: n.name)),
        services=tuple(s for s in all_services if s.exposed),
        service_cidrs=service_cidrs,
        traefik=traefik,
        servicelb=tuple(sorted(svclb, key=lambda s: s.ref)),
        metallb=MetalLBInfo(bool(evidence), tuple(evidence[:_MAX_EVIDENCE])),
    )
