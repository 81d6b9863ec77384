"""Cluster facts to classified networks for the address classifier.

``auditor run`` hands ``static + cluster_networks(facts)`` to ``Engine.set_networks`` on each
snapshot. Every network says where it was learnt, so a finding can show why an address is internal.
"""

from __future__ import annotations

from pipeline.core.addresses import AddrClass, Network, make_network
from pipeline.kube.model import ClusterFacts, PodInfo


def _pod_networks(pod: PodInfo, what: str) -> list[Network]:
    # A hostNetwork pod has its node's address, which is a NODE network already.
    if pod.host_network:
        return []
    return [
        make_network(ip, AddrClass.POD, f"{what} pod {pod.ref} status.podIPs") for ip in pod.ips
    ]


def cluster_networks(facts: ClusterFacts) -> list[Network]:
    """Pod CIDRs and pod IPs (POD), service CIDRs (SERVICE), node addresses (NODE, host routes),
    load-balancer ingress IPs (LOADBALANCER). One entry per (CIDR, class); first provenance wins."""
    out: dict[tuple[int, int, int, AddrClass], Network] = {}

    def add(net: Network) -> None:
        out.setdefault((net.version, net.prefix, net.length, net.cls), net)

    for node in facts.nodes:
        for cidr in node.pod_cidrs:
            add(make_network(cidr, AddrClass.POD, f"node {node.name} spec.podCIDRs"))
    for fact in facts.service_cidrs:
        add(make_network(fact.cidr, AddrClass.SERVICE, f"service CIDR {fact.provenance}"))
    for node in facts.nodes:
        for ip in node.internal_ips:
            add(make_network(ip, AddrClass.NODE, f"node {node.name} status.addresses InternalIP"))
        for ip in node.external_ips:
            add(make_network(ip, AddrClass.NODE, f"node {node.name} status.addresses ExternalIP"))
    for svc in facts.services:
        for ip in svc.lb_ingress_ips:
            add(
                make_network(
                    ip,
                    AddrClass.LOADBALANCER,
                    f"service {svc.ref} status.loadBalancer.ingress",
                )
            )
    for lb in facts.servicelb:
        for pod in lb.pods:
            for net in _pod_networks(pod, "servicelb"):
                add(net)
    for tp in facts.traefik.pods:
        for net in _pod_networks(tp.pod, "traefik"):
            add(net)
    return list(out.values())
