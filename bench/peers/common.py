"""What every peer shares: the internal networks, the client rule and the answer's shape."""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import orjson

# The classifier's internal networks with its default configuration (k3s pod/service CIDRs plus
# pipeline.core.addresses.WELL_KNOWN internal classes). Peers that cannot parse addresses (jq,
# Miller) use INTERNAL_REGEX, which matches the same sets written in canonical form.
INTERNAL_CIDRS = (
    "10.42.0.0/16",
    "10.43.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "100.64.0.0/10",
    "172.17.0.0/16",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
INTERNAL_REGEX = (
    r"^(10\.|127\.|169\.254\.|192\.168\.|172\.(1[6-9]|2[0-9]|3[01])\."
    r"|100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\."
    r"|::1$|[fF][cCdD][0-9a-fA-F]{2}:|[fF][eE][89abAB][0-9a-fA-F]:)"
)


def client_of(client_host: str, client_addr: str) -> str:
    """CrowdSec's rule (hub traefik-logs parser): last element of ClientHost, else the peer."""
    if client_host:
        return client_host.rsplit(",", 1)[-1].strip()
    if client_addr.startswith("["):
        return client_addr[1 : client_addr.find("]")]
    if client_addr.count(":") == 1:
        return client_addr.partition(":")[0]
    return client_addr


def clients_digest(clients: dict[str, int]) -> str:
    """Order-free fingerprint of a per-client tally, so answers compare without shipping them."""
    h = hashlib.sha256()
    for addr, n in sorted(clients.items()):
        h.update(f"{addr} {n}\n".encode())
    return h.hexdigest()[:16]


def answer(lines: int, internal: int, clients: dict[str, int]) -> dict[str, Any]:
    return {
        "lines": lines,
        "internal": internal,
        "distinct_clients": len(clients),
        "clients_digest": clients_digest(clients),
    }


def emit(result: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
