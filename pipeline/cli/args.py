"""Flag groups that more than one command takes, and the values they turn into.

Core takes plain values (``build_networks`` a mapping of CIDR lists); argparse stops here.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipeline.core.addresses import Network
from pipeline.core.bouncer import BouncerSettings
from pipeline.core.networks import NETWORK_KEYS, build_networks

if TYPE_CHECKING:
    from pipeline.kube.model import ClusterFacts


# -- static networks (replay) ---------------------------------------------------------------------
def add_network_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("internal networks (IPv4 or IPv6; repeatable)")
    g.add_argument(
        "--pod-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="pod network (default k3s 10.42.0.0/16)",
    )
    g.add_argument(
        "--service-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="service network (default k3s 10.43.0.0/16)",
    )
    g.add_argument("--node-ip", action="append", default=[], metavar="IP", help="a node address")
    g.add_argument(
        "--lb-ip", action="append", default=[], metavar="IP", help="a load-balancer address"
    )
    g.add_argument(
        "--internal-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="any other internal network",
    )
    g.add_argument(
        "--no-k3s-defaults",
        action="store_true",
        help="do not assume k3s' default pod/service CIDRs",
    )


def networks_from_args(args: argparse.Namespace) -> list[Network]:
    return build_networks(
        {key: getattr(args, key) for key in NETWORK_KEYS}, k3s=not args.no_k3s_defaults
    )


# -- one look at the cluster (check, allowlist) ---------------------------------------------------
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


async def cluster_from_args(args: argparse.Namespace) -> tuple[ClusterFacts, list[Network], str]:
    """The cluster the ``add_cluster_args`` flags name: its facts, the networks they imply (no
    defaults added: each command decides) and where it was read from."""
    # Lazy: Kubernetes costs ~60 MB; commands that never list a cluster must not load it.
    from pipeline.cli.extras import require

    require("kubernetes_asyncio", f"auditor {getattr(args, 'command', '')} (reads the cluster)")
    from pipeline.kube.discovery import discover_once
    from pipeline.kube.networks import cluster_networks

    facts, where = await discover_once(args.kubeconfig, args.context, args.traefik_selector)
    return facts, cluster_networks(facts), where


# -- the bouncer plugin's settings (replay; ``run`` has config keys) ------------------------------
BOUNCER_FLAGS = (
    "--plugin-config",
    "--plugin-forwarded-headers-trusted-ips",
    "--plugin-client-trusted-ips",
    "--plugin-forwarded-headers-custom-name",
)


def add_bouncer_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "Traefik bouncer plugin (ban_mismatch: does it check the address CrowdSec bans?)"
    )
    g.add_argument(
        "--plugin-config",
        metavar="FILE",
        help="the plugin's Middleware (YAML/JSON, spec.plugin.<name>, as `kubectl get "
        "middleware -o yaml` prints it) or its bare option block",
    )
    g.add_argument(
        "--plugin-forwarded-headers-trusted-ips",
        action="append",
        default=None,
        metavar="CIDR",
        help="forwardedHeadersTrustedIPs (repeatable; replaces the file's list)",
    )
    g.add_argument(
        "--plugin-client-trusted-ips",
        action="append",
        default=None,
        metavar="CIDR",
        help="clientTrustedIPs (repeatable; replaces the file's list)",
    )
    g.add_argument(
        "--plugin-forwarded-headers-custom-name",
        metavar="NAME",
        help="forwardedHeadersCustomName: X-Forwarded-For (the plugin's default) or X-Real-Ip",
    )


def bouncer_from_args(args: argparse.Namespace) -> BouncerSettings | None:
    """None when no bouncer flag is given (then nothing is judged, nothing is tallied)."""
    values = (
        args.plugin_config,
        args.plugin_forwarded_headers_trusted_ips,
        args.plugin_client_trusted_ips,
        args.plugin_forwarded_headers_custom_name,
    )
    if values == (None, None, None, None):
        return None
    from pipeline.live.wiring import bouncer_settings  # reads the file, exits 2 on bad input

    return bouncer_settings(*values, names=BOUNCER_FLAGS)
