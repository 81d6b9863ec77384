"""Static internal networks from flags/config: k3s defaults plus what the user adds."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from pipeline.core.addresses import AddrClass, Network, k3s_defaults, make_network
from pipeline.errors import ConfigError

# flag / config key -> class of the networks it lists
NETWORK_KEYS: dict[str, AddrClass] = {
    "pod_cidr": AddrClass.POD,
    "service_cidr": AddrClass.SERVICE,
    "node_ip": AddrClass.NODE,
    "lb_ip": AddrClass.LOADBALANCER,
    "internal_cidr": AddrClass.PRIVATE,
}


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


def build_networks(
    values: dict[str, Iterable[str]], *, k3s: bool = True, origin: str = "flag"
) -> list[Network]:
    """``values`` maps NETWORK_KEYS to CIDR strings; a bad one raises naming its key."""
    out: list[Network] = []
    for key, cls in NETWORK_KEYS.items():
        for cidr in values.get(key, ()):
            try:
                out.append(make_network(cidr, cls, f"{origin} {key.replace('_', '-')}"))
            except ValueError:
                msg = f"{key.replace('_', '-')}: not a CIDR or IP address: {cidr!r}"
                raise ConfigError(msg) from None
    # User-given pod/service CIDRs replace the k3s guesses for that class.
    if k3s:
        given = {n.cls for n in out}
        out += [n for n in k3s_defaults() if n.cls not in given]
    return out


def networks_from_args(args: argparse.Namespace) -> list[Network]:
    return build_networks(
        {key: getattr(args, key) for key in NETWORK_KEYS}, k3s=not args.no_k3s_defaults
    )
