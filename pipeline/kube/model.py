"""Frozen facts about a cluster, as read from the API: only the fields the audit needs.

Records are built from raw API objects by ``extract`` and compared by value, so an unchanged
cluster yields an equal ``ClusterFacts`` and no new snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


def labels_dict(labels: Labels) -> dict[str, str]:
    return dict(labels)


@dataclass(frozen=True, slots=True)
class OwnerRef:
    kind: str
    name: str
    controller: bool = False


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    pod_cidrs: tuple[str, ...]
    internal_ips: tuple[str, ...]
    external_ips: tuple[str, ...]
    kubelet_version: str = ""  # status.nodeInfo.kubeletVersion, e.g. v1.29.5+k3s1 (k3s release)
    control_plane: bool = False  # labelled node-role.kubernetes.io/control-plane (or master)

    @property
    def addresses(self) -> tuple[str, ...]:
        return (*self.internal_ips, *self.external_ips)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    namespace: str
    name: str
    uid: str
    type: str  # ClusterIP, NodePort, LoadBalancer, ExternalName
    cluster_ips: tuple[str, ...]
    external_traffic_policy: str  # "" unless NodePort/LoadBalancer
    lb_ingress_ips: tuple[str, ...]
    selector: Labels
    labels: Labels
    ports: tuple[int, ...]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def etp(self) -> str:
        """The effective policy: the API defaults an empty one to Cluster."""
        return self.external_traffic_policy or "Cluster"

    @property
    def exposed(self) -> bool:
        return self.type in {"LoadBalancer", "NodePort"}


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    node_name: str
    ips: tuple[str, ...]
    host_network: bool
    phase: str
    labels: Labels
    owners: tuple[OwnerRef, ...]
    args: tuple[str, ...]  # command + args of every container, in order
    env: tuple[tuple[str, str], ...]  # literal TRAEFIK_* variables only
    images: tuple[str, ...] = ()  # image of every container, in order (versions come from tags)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def running(self) -> bool:
        return self.phase == "Running"

    @property
    def controller(self) -> OwnerRef | None:
        for o in self.owners:
            if o.controller:
                return o
        return self.owners[0] if self.owners else None


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """A DaemonSet, Deployment or ReplicaSet."""

    kind: str
    namespace: str
    name: str
    uid: str
    labels: Labels
    owners: tuple[OwnerRef, ...]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    name: str


@dataclass(frozen=True, slots=True)
class Workload:
    """What runs a set of pods, resolved through ReplicaSets."""

    kind: str  # DaemonSet, Deployment, StatefulSet, ReplicaSet, Pod...
    namespace: str
    name: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class CidrFact:
    cidr: str
    provenance: str


@dataclass(frozen=True, slots=True)
class TraefikPod:
    pod: PodInfo
    workload: Workload


@dataclass(frozen=True, slots=True)
class TraefikFacts:
    pods: tuple[TraefikPod, ...] = ()
    services: tuple[ServiceInfo, ...] = ()  # Services that select Traefik's pods

    @property
    def workloads(self) -> tuple[Workload, ...]:
        return tuple(sorted({p.workload for p in self.pods}, key=lambda w: (w.ref, w.kind)))

    @property
    def present(self) -> bool:
        return bool(self.pods or self.services)


@dataclass(frozen=True, slots=True)
class ServiceLBInfo:
    """One k3s servicelb (klipper-lb) DaemonSet and its pods."""

    namespace: str
    name: str
    svc_namespace: str
    svc_name: str
    pods: tuple[PodInfo, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def svc_ref(self) -> str:
        return f"{self.svc_namespace}/{self.svc_name}"


@dataclass(frozen=True, slots=True)
class MetalLBInfo:
    present: bool = False
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """One consistent snapshot of what discovery knows."""

    nodes: tuple[NodeInfo, ...] = ()
    services: tuple[ServiceInfo, ...] = ()  # exposed ones: LoadBalancer and NodePort
    service_cidrs: tuple[CidrFact, ...] = ()
    traefik: TraefikFacts = field(default_factory=TraefikFacts)
    servicelb: tuple[ServiceLBInfo, ...] = ()
    metallb: MetalLBInfo = field(default_factory=MetalLBInfo)
