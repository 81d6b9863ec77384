"""``auditor allowlist``: the allowlist model (``pipeline.core.allowlist``) for this cluster.

Kubernetes is only imported when ``--kubeconfig``/``--context`` asks for discovery.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pipeline.cli.args import add_cluster_args, cluster_from_args
from pipeline.core.addresses import AddrClass, Network, make_network
from pipeline.core.allowlist import (
    DEFAULT_ENTRYPOINTS,
    SECTIONS,
    Allowlist,
    build_allowlist,
    check_expiration,
)
from pipeline.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from pipeline.kube.model import ClusterFacts


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
def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "allowlist",
        help="print a CrowdSec whitelist and Traefik/bouncer trusted-IP settings",
        description="Render the internal networks as a CrowdSec whitelist parser (and, for "
        "CrowdSec >= 1.6.6, the cscli allowlists commands of a centralized allowlist), the "
        "Traefik bouncer plugin's trusted IPs and Traefik entry point trust. With --kubeconfig "
        "or --context the networks are discovered from the cluster; otherwise k3s defaults plus "
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
    p.add_argument(
        "-o",
        "--format",
        choices=("yaml", "json"),
        default="yaml",
        help="output format (default: %(default)s)",
    )
    p.add_argument(
        "--only",
        choices=SECTIONS,
        help="print one artefact (a file you can apply as is; allowlists: a shell script of "
        "cscli commands)",
    )
    p.add_argument(
        "--expiration",
        metavar="DURATION",
        help="let the centralized allowlist's entries expire after DURATION, as cscli reads it "
        "(e.g. 30d, 12h, 1d12h; default: never)",
    )
    p.set_defaults(func=run_allowlist)


def run_allowlist(args: argparse.Namespace) -> int:
    extra = parse_cidrs(args.internal_cidr)
    expiration = ""
    if args.expiration is not None:
        try:
            expiration = check_expiration(args.expiration)
        except ValueError as exc:
            msg = f"--expiration: {exc}"
            raise UsageError(msg) from None
    defaults = not args.no_defaults
    if args.kubeconfig or args.context:
        facts, nets, where = asyncio.run(cluster_from_args(args))
        allow = allowlist_from_facts(
            facts, [*nets, *extra], defaults=defaults, source=f"discovered from {where}"
        )
    else:
        allow = build_allowlist(extra, defaults=defaults)
    allow = dataclasses.replace(allow, expiration=expiration)
    if args.format == "json":
        doc = allow.as_dict()
        if args.only:
            doc = {
                "whitelist": doc["crowdsec_whitelist"],
                "middleware": doc["bouncer_middleware"],
                "entrypoints": doc["traefik_entrypoints"],
                "allowlists": doc["crowdsec_allowlist"],
            }[args.only]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(allow.to_yaml(args.only))
    return EXIT_OK
