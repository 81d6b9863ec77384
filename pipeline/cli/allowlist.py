"""What to trust, rendered for CrowdSec and Traefik, and the ``auditor allowlist`` command.

Three artefacts from one list of internal networks:
(a) a CrowdSec s02-enrich whitelist parser (shape of the hub's crowdsecurity/whitelists) so
    events from internal addresses never feed a scenario;
(b) the maxlerebourg bouncer plugin's ``forwardedHeadersTrustedIPs`` (the forwarding hops) and
    ``clientTrustedIPs`` (never block these), as a Traefik Middleware;
(c) Traefik entry point ``forwardedHeaders.trustedIPs`` / ``proxyProtocol.trustedIPs`` flags.
Kubernetes is only imported when ``--kubeconfig``/``--context`` asks for discovery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.core.addresses import (
    INTERNAL_CLASSES,
    WELL_KNOWN,
    AddrClass,
    Network,
    k3s_defaults,
    make_network,
)
from pipeline.errors import UsageError

if TYPE_CHECKING:
    from pipeline.kube.model import ClusterFacts

WHITELIST_NAME = "ban-auditor/cluster-whitelist"
WHITELIST_PATH = "/etc/crowdsec/parsers/s02-enrich/ban-auditor-cluster-whitelist.yaml"
PLUGIN_NAME = "bouncer"  # the name under --experimental.plugins.<name> in Traefik's static config
DEFAULT_ENTRYPOINTS = ("web", "websecure")
HOP_CLASSES = frozenset({AddrClass.POD, AddrClass.NODE})
SECTIONS = ("whitelist", "middleware", "entrypoints")

_HOP_CAVEAT = (
    "Trust these hops only if every connection from them carries a header set by a proxy you "
    "control. k3s servicelb is an L4 hop that masquerades: behind it a client's own "
    "X-Forwarded-For would be trusted (spoofable), so fix the path first "
    "(externalTrafficPolicy: Local, see `auditor check`)."
)


def _host_route(net: Network) -> bool:
    return net.length == (32 if net.version == 4 else 128)


def _contains(outer: Network, inner: Network) -> bool:
    if outer.version != inner.version or outer.length > inner.length:
        return False
    bits = 32 if outer.version == 4 else 128
    shift = bits - outer.length
    return outer.prefix >> shift == inner.prefix >> shift


@dataclass(frozen=True, slots=True)
class Entry:
    """A network to list, with what it stands for and how many listed ones it swallowed."""

    network: Network
    covers: int = 0

    @property
    def value(self) -> str:
        n = self.network
        return n.cidr.partition("/")[0] if _host_route(n) else n.cidr

    @property
    def comment(self) -> str:
        n = self.network
        extra = f"; covers {self.covers} more" if self.covers else ""
        return f"{n.cls.value}: {n.provenance}{extra}"


def collapse(networks: Iterable[Network]) -> tuple[Entry, ...]:
    """Drop networks inside another listed one; IPv4 first, then by address."""
    ordered = sorted(networks, key=lambda n: (n.version, n.length, n.prefix))
    kept: list[Network] = []
    covers: dict[int, int] = {}
    for net in ordered:
        holder = next((i for i, k in enumerate(kept) if _contains(k, net)), None)
        if holder is None:
            kept.append(net)
        elif (kept[holder].prefix, kept[holder].length) != (net.prefix, net.length):
            covers[holder] = covers.get(holder, 0) + 1
    entries = [Entry(k, covers.get(i, 0)) for i, k in enumerate(kept)]
    return tuple(sorted(entries, key=lambda e: (e.network.version, e.network.prefix)))


@dataclass(frozen=True, slots=True)
class Allowlist:
    internal: tuple[Entry, ...]  # CrowdSec whitelist and the bouncer's clientTrustedIPs
    hops: tuple[Entry, ...]  # forwarding hops: forwardedHeaders / proxyProtocol trust
    entrypoints: tuple[str, ...]
    namespace: str  # where Traefik (and so its Middleware) lives
    source: str

    # -- (a) CrowdSec whitelist ---------------------------------------------------------------
    def whitelist_doc(self) -> dict[str, Any]:
        wl: dict[str, Any] = {"reason": "internal cluster address (ban-auditor)"}
        ips = [e.value for e in self.internal if _host_route(e.network)]
        cidrs = [e.value for e in self.internal if not _host_route(e.network)]
        if ips:
            wl["ip"] = ips
        if cidrs:
            wl["cidr"] = cidrs
        return {
            "name": WHITELIST_NAME,
            "description": "Whitelist events from the cluster's internal addresses "
            "(pods, services, nodes, load balancers, private ranges)",
            "whitelist": wl,
        }

    def whitelist_yaml(self) -> str:
        doc = self.whitelist_doc()
        lines = [
            f"# CrowdSec whitelist parser from ban-auditor {__version__} ({self.source}).",
            f"# Save as {WHITELIST_PATH} and reload CrowdSec.",
            "# It stops events from these sources reaching scenarios; it does not remove existing",
            "# decisions nor filter those from CAPI, blocklists or cscli.",
            f"name: {doc['name']}",
            f"description: {json.dumps(doc['description'])}",
            "whitelist:",
            f"  reason: {json.dumps(doc['whitelist']['reason'])}",
        ]
        for key, host in (("ip", True), ("cidr", False)):
            entries = [e for e in self.internal if _host_route(e.network) == host]
            if entries:
                lines.append(f"  {key}:")
                lines += [f'    - "{e.value}"  # {e.comment}' for e in entries]
        return "\n".join(lines) + "\n"

    # -- (b) bouncer plugin -------------------------------------------------------------------
    def bouncer_settings(self) -> dict[str, list[str]]:
        return {
            "forwardedHeadersTrustedIPs": [e.network.cidr for e in self.hops],
            "clientTrustedIPs": [e.network.cidr for e in self.internal],
        }

    def middleware_doc(self) -> dict[str, Any]:
        return {
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "Middleware",
            "metadata": {"name": "crowdsec-bouncer", "namespace": self.namespace},
            "spec": {"plugin": {PLUGIN_NAME: {"enabled": True, **self.bouncer_settings()}}},
        }

    def middleware_yaml(self) -> str:
        s = self.bouncer_settings()
        lines = [
            "# maxlerebourg/crowdsec-bouncer-traefik-plugin: merge these keys into your bouncer",
            "# Middleware (keep its crowdsecLapiKey/crowdsecMode...). The key under spec.plugin is",
            "# the name given by --experimental.plugins.<name>.modulename.",
            "# Traefik < 2.10 (k3s < 1.27): apiVersion traefik.containo.us/v1alpha1.",
            "apiVersion: traefik.io/v1alpha1",
            "kind: Middleware",
            "metadata:",
            "  name: crowdsec-bouncer",
            f"  namespace: {self.namespace}",
            "spec:",
            "  plugin:",
            f"    {PLUGIN_NAME}:",
            "      enabled: true",
            "      # The hops that forward requests (X-Forwarded-For is read right to left,",
            "      # skipping these).",
            *(f"      # {ln}" for ln in _wrap(_HOP_CAVEAT, 86)),
            "      forwardedHeadersTrustedIPs:",
            *(
                f'        - "{c}"  # {e.comment}'
                for c, e in zip(s["forwardedHeadersTrustedIPs"], self.hops, strict=True)
            ),
            "      # Never blocked: a ban on an internal hop cannot lock everyone out.",
            "      clientTrustedIPs:",
            *(
                f'        - "{c}"  # {e.comment}'
                for c, e in zip(s["clientTrustedIPs"], self.internal, strict=True)
            ),
        ]
        return "\n".join(lines) + "\n"

    # -- (c) Traefik entry points -------------------------------------------------------------
    def entrypoint_args(self) -> dict[str, list[str]]:
        hops = ",".join(e.network.cidr for e in self.hops)
        return {
            "forwardedHeaders": [
                f"--entryPoints.{ep}.forwardedHeaders.trustedIPs={hops}" for ep in self.entrypoints
            ],
            "proxyProtocol": [
                f"--entryPoints.{ep}.proxyProtocol.trustedIPs={hops}" for ep in self.entrypoints
            ],
        }

    def entrypoints_doc(self) -> dict[str, Any]:
        return {
            "entryPoints": list(self.entrypoints),
            "trustedIPs": [e.network.cidr for e in self.hops],
            "args": self.entrypoint_args(),
            "caveat": _HOP_CAVEAT,
        }

    def entrypoints_yaml(self) -> str:
        args = self.entrypoint_args()
        lines = [
            "# Traefik static configuration: entry points that accept forwarded client addresses.",
            *(f"# {ln}" for ln in _wrap(_HOP_CAVEAT, 94)),
            "# k3s: /var/lib/rancher/k3s/server/manifests/traefik-config.yaml (merge with an",
            "# existing HelmChartConfig); other installs: the chart's additionalArguments.",
            "apiVersion: helm.cattle.io/v1",
            "kind: HelmChartConfig",
            "metadata:",
            "  name: traefik",
            f"  namespace: {self.namespace}",
            "spec:",
            "  valuesContent: |-",
            "    additionalArguments:",
            *(f'      - "{a}"' for a in args["forwardedHeaders"]),
            "      # Only behind a load balancer that sends PROXY protocol (instead of the above):",
            *(f'      # - "{a}"' for a in args["proxyProtocol"]),
        ]
        return "\n".join(lines) + "\n"

    # -- output -------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "crowdsec_whitelist": self.whitelist_doc(),
            "bouncer_middleware": self.middleware_doc(),
            "traefik_entrypoints": self.entrypoints_doc(),
        }

    def to_yaml(self, only: str | None = None) -> str:
        parts = {
            "whitelist": self.whitelist_yaml,
            "middleware": self.middleware_yaml,
            "entrypoints": self.entrypoints_yaml,
        }
        if only is not None:
            return parts[only]()
        return "---\n".join(render() for render in parts.values())


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines


def build_allowlist(
    networks: Iterable[Network],
    *,
    defaults: bool = True,
    entrypoints: Sequence[str] = DEFAULT_ENTRYPOINTS,
    namespace: str = "kube-system",
    source: str = "",
) -> Allowlist:
    """``defaults`` adds the well-known internal ranges, and k3s' pod/service CIDRs for any of
    those classes that ``networks`` does not already provide."""
    given = [n for n in networks if n.cls in INTERNAL_CLASSES]
    internal = list(given)
    if defaults:
        classes = {n.cls for n in given}
        internal += [n for n in k3s_defaults() if n.cls not in classes]
        internal += [n for n in WELL_KNOWN if n.cls in INTERNAL_CLASSES]
    if not internal:
        msg = "no internal networks to allow: pass --internal-cidr or drop --no-defaults"
        raise UsageError(msg)
    hops = [n for n in internal if n.cls in HOP_CLASSES]
    return Allowlist(
        internal=collapse(internal),
        hops=collapse(hops),
        entrypoints=tuple(entrypoints) or DEFAULT_ENTRYPOINTS,
        namespace=namespace,
        source=source or ("k3s defaults" if defaults else "given networks"),
    )


def allowlist_from_facts(
    facts: ClusterFacts,
    networks: Iterable[Network],
    *,
    defaults: bool = True,
    source: str = "",
) -> Allowlist:
    """Entry point names and the namespace come from Traefik's pods when discovery saw them."""
    from pipeline.kube.traefik_args import traefik_flags  # lazy

    eps: set[str] = set()
    for tp in facts.traefik.pods:
        eps.update(traefik_flags(tp.pod).entrypoints())
    namespaces = [tp.pod.namespace for tp in facts.traefik.pods]
    namespaces += [s.namespace for s in facts.traefik.services]
    return build_allowlist(
        networks,
        defaults=defaults,
        entrypoints=sorted(eps) or DEFAULT_ENTRYPOINTS,
        namespace=namespaces[0] if namespaces else "kube-system",
        source=source,
    )


def parse_cidrs(values: Iterable[str], flag: str = "--internal-cidr") -> list[Network]:
    out = []
    for v in values:
        try:
            out.append(make_network(v, AddrClass.PRIVATE, f"{flag} {v}"))
        except ValueError:
            msg = f"{flag}: not a CIDR or IP address: {v!r}"
            raise UsageError(msg) from None
    return out


# -- command --------------------------------------------------------------------------------------
def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig file (default: KUBECONFIG, in-cluster, ~/.kube/config)",
    )
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context (default: current)")
    parser.add_argument(
        "--traefik-selector",
        default="app.kubernetes.io/name=traefik",
        metavar="SELECTOR",
        help="label selector of Traefik's pods (default: %(default)s)",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "allowlist",
        help="print a CrowdSec whitelist and Traefik/bouncer trusted-IP settings",
        description="Render the internal networks as a CrowdSec whitelist parser, the Traefik "
        "bouncer plugin's trusted IPs and Traefik entry point trust. With --kubeconfig or "
        "--context the networks are discovered from the cluster; otherwise k3s defaults plus "
        "--internal-cidr.",
    )
    add_cluster_args(p)
    p.add_argument(
        "--internal-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="another internal network (IPv4 or IPv6; repeatable)",
    )
    p.add_argument(
        "--no-defaults",
        action="store_true",
        help="leave out k3s defaults and the well-known private/loopback/CGNAT ranges",
    )
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    p.add_argument(
        "--only", choices=SECTIONS, help="print one artefact (a file you can apply as is)"
    )
    p.set_defaults(func=run_allowlist)


async def _discover(args: argparse.Namespace) -> tuple[ClusterFacts, list[Network], str]:
    # Lazy: Kubernetes costs ~60 MB and is only needed with --kubeconfig/--context.
    from pipeline.kube.discovery import discover_once
    from pipeline.kube.networks import cluster_networks

    facts, where = await discover_once(args.kubeconfig, args.context, args.traefik_selector)
    return facts, cluster_networks(facts), f"discovered from {where}"


def run_allowlist(args: argparse.Namespace) -> int:
    extra = parse_cidrs(args.internal_cidr)
    defaults = not args.no_defaults
    if args.kubeconfig or args.context:
        facts, nets, source = asyncio.run(_discover(args))
        allow = allowlist_from_facts(facts, [*nets, *extra], defaults=defaults, source=source)
    else:
        allow = build_allowlist(extra, defaults=defaults)
    if args.format == "json":
        doc = allow.as_dict()
        if args.only:
            doc = {
                "whitelist": doc["crowdsec_whitelist"],
                "middleware": doc["bouncer_middleware"],
                "entrypoints": doc["traefik_entrypoints"],
            }[args.only]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(allow.to_yaml(args.only))
    return 0
