"""Internal networks from flags/config: what the user lists plus k3s defaults for the rest."""

from __future__ import annotations

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


def missing_k3s_defaults(networks: Iterable[Network]) -> list[Network]:
    """k3s' default pod/service CIDRs for each of those classes ``networks`` lacks.

    A pod or service range the user gave or discovery found replaces the guess for its class
    only; every command (flags, config, ``check``, ``allowlist``) fills the gaps this one way.
    """
    given = {n.cls for n in networks}
    return [n for n in k3s_defaults() if n.cls not in given]


def with_k3s_defaults(networks: Iterable[Network]) -> list[Network]:
    """``networks`` followed by the k3s defaults they lack."""
    out = list(networks)
    return out + missing_k3s_defaults(out)


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
    return with_k3s_defaults(out) if k3s else out
