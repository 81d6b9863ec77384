"""The one place that parses and classifies IP addresses and networks.

Everything else hands strings to this module. Addresses become ``(version, int)`` pairs through
``socket.inet_pton`` (strict, C speed) and are matched against integer prefixes, so the hot path
never builds ``ipaddress`` objects; results are cached per address string.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_V4_MAPPED_INT = 0xFFFF << 32  # ::ffff:0.0.0.0 as an integer
_CACHE_LIMIT = 65536
_pton = socket.inet_pton
_AF_INET = socket.AF_INET


class AddrClass(StrEnum):
    """Where an address lives. Ordered roughly from most to least harmful to ban."""

    LOOPBACK = "loopback"
    NODE = "node"
    LOADBALANCER = "loadbalancer"
    POD = "pod"
    SERVICE = "service"
    CGNAT = "cgnat"
    DOCKER = "docker"
    LINK_LOCAL = "link_local"
    PRIVATE = "private"
    RESERVED = "reserved"
    PUBLIC = "public"
    INVALID = "invalid"


INTERNAL_CLASSES: frozenset[AddrClass] = frozenset(
    {
        AddrClass.LOOPBACK,
        AddrClass.NODE,
        AddrClass.LOADBALANCER,
        AddrClass.POD,
        AddrClass.SERVICE,
        AddrClass.CGNAT,
        AddrClass.DOCKER,
        AddrClass.LINK_LOCAL,
        AddrClass.PRIVATE,
    }
)
# A ban on these takes the whole ingress path down, not just one neighbour.
CRITICAL_CLASSES: frozenset[AddrClass] = frozenset(
    {AddrClass.LOOPBACK, AddrClass.NODE, AddrClass.LOADBALANCER, AddrClass.POD}
)
# When networks overlap, the most specific prefix wins; on equal prefixes this rank decides.
_RANK = {cls: i for i, cls in enumerate(AddrClass)}


@dataclass(frozen=True, slots=True)
class Network:
    """A CIDR with the class it stands for and where we learnt it."""

    version: int
    prefix: int  # network address as an int, host bits zero
    length: int
    cls: AddrClass
    provenance: str

    @property
    def cidr(self) -> str:
        return format_network(self.version, self.prefix, self.length)

    def contains(self, other: Network) -> bool:
        """``other`` lies wholly inside this network (same family, at least as long a prefix)."""
        return self.covers((other.version, other.prefix, other.length))

    def covers(self, parsed: tuple[int, int, int]) -> bool:
        """``contains`` for a ``parse_network`` result: ``(version, prefix, length)``."""
        version, prefix, length = parsed
        return length >= self.length and same_prefix(
            self.version, self.prefix, version, prefix, self.length
        )


@dataclass(frozen=True, slots=True)
class Classification:
    """The class of an address or range and the network that decided it."""

    cls: AddrClass
    network: Network | None

    @property
    def internal(self) -> bool:
        return self.cls in INTERNAL_CLASSES

    def as_dict(self) -> dict[str, str | None]:
        net = self.network
        return {
            "class": self.cls.value,
            "network": net.cidr if net else None,
            "provenance": net.provenance if net else None,
        }


# The answers without a network, shared (records are frozen): most of a blocklist is public.
_PUBLIC = Classification(AddrClass.PUBLIC, None)
_INVALID = Classification(AddrClass.INVALID, None)


def _strip(text: str) -> str:
    """Reduce ``[v6]:port``, ``v4:port``, ``v6%zone`` and whitespace to a bare address."""
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        s = s[1:end] if end > 0 else s[1:]
    elif s.count(":") == 1:  # IPv4 with a port; IPv6 has two colons or more
        s = s.partition(":")[0]
    zone = s.find("%")
    if zone >= 0:
        s = s[:zone]
    return s


def parse_address(text: str) -> tuple[int, int] | None:
    """Return ``(4|6, int)`` for an address string, or None when it is not one.

    IPv4-mapped IPv6 (``::ffff:10.42.0.1``) is returned as IPv4 so that it matches IPv4 networks.
    """
    if ":" not in text:  # the common case, a bare dotted quad: nothing to strip
        try:
            return 4, int.from_bytes(_pton(_AF_INET, text), "big")
        except (OSError, ValueError):
            pass  # with whitespace, a zone, or no address: the general way
    s = _strip(text)
    if not s:
        return None
    try:
        if ":" in s:
            raw = socket.inet_pton(socket.AF_INET6, s)
            if raw[:12] == _V4_MAPPED_PREFIX:
                return 4, int.from_bytes(raw[12:], "big")
            return 6, int.from_bytes(raw, "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, s), "big")
    except (OSError, ValueError):
        return None


def parse_network(text: str) -> tuple[int, int, int] | None:
    """Return ``(version, prefix, length)`` for a CIDR or a bare address; host bits are cleared."""
    addr_part, sep, len_part = text.strip().partition("/")
    parsed = parse_address(addr_part)
    if parsed is None:
        return None
    version, value = parsed
    bits = 32 if version == 4 else 128
    if sep:
        if not (len_part.isascii() and len_part.isdigit()):
            return None
        if len(len_part) > 3:
            return None
        length = int(len_part)
        if version == 4 and ":" in addr_part:
            # A mapped address (``::ffff:a.b.c.d``) with an IPv6 length. From /96 on the
            # network holds only mapped addresses, i.e. IPv4 ones; a shorter prefix is an
            # IPv6 range, as CrowdSec (Go) reads it: ``::ffff:10.0.0.0/8`` is ``::/8``, which
            # holds NAT64 and IPv4-compatible addresses, not the IPv4 ``10.0.0.0/8``.
            if length > 128:
                return None
            if length < 96:
                version, value, bits = 6, _V4_MAPPED_INT | value, 128
            else:
                length -= 96
        if not 0 <= length <= bits:
            return None
    else:
        length = bits
    mask = ((1 << length) - 1) << (bits - length) if length else 0
    return version, value & mask, length


def same_prefix(version: int, a: int, other_version: int, b: int, length: int) -> bool:
    """The one containment rule: two values of one family agree on their first ``length`` bits.

    Every "is this address in that network" and "do these ranges overlap" in the project comes
    here, so the IPv4/IPv6 rule lives in one place.
    """
    if version != other_version:
        return False
    shift = (32 if version == 4 else 128) - length
    return a >> shift == b >> shift


def network_contains(cidr: str, address: str) -> bool:
    """``address`` (any form ``parse_address`` takes) lies inside ``cidr``."""
    return bool(addresses_in(cidr, (address,)))


def addresses_in(cidr: str, addresses: Iterable[str]) -> list[str]:
    """Those of ``addresses`` inside ``cidr``, parsing the network once (a range decision is
    judged against every internal client of the window on every tick)."""
    net = parse_network(cidr)
    if net is None:
        return []
    version, prefix, length = net
    out = []
    for address in addresses:
        parsed = parse_address(address)
        if parsed is not None and same_prefix(version, prefix, parsed[0], parsed[1], length):
            out.append(address)
    return out


def format_network(version: int, prefix: int, length: int) -> str:
    if version == 4:
        addr = socket.inet_ntop(socket.AF_INET, prefix.to_bytes(4, "big"))
    else:
        addr = socket.inet_ntop(socket.AF_INET6, prefix.to_bytes(16, "big"))
    return f"{addr}/{length}"


def make_network(cidr: str, cls: AddrClass, provenance: str) -> Network:
    parsed = parse_network(cidr)
    if parsed is None:
        msg = f"not a CIDR or IP address: {cidr!r}"
        raise ValueError(msg)
    return Network(parsed[0], parsed[1], parsed[2], cls, provenance)


def _builtin(cidr: str, cls: AddrClass, why: str) -> Network:
    return make_network(cidr, cls, why)


# Well-known ranges. Cluster-specific ones (pod, service, node, LB) come from config/discovery.
WELL_KNOWN: tuple[Network, ...] = (
    _builtin("127.0.0.0/8", AddrClass.LOOPBACK, "RFC 1122 loopback"),
    _builtin("::1/128", AddrClass.LOOPBACK, "RFC 4291 loopback"),
    _builtin("169.254.0.0/16", AddrClass.LINK_LOCAL, "RFC 3927 link-local"),
    _builtin("fe80::/10", AddrClass.LINK_LOCAL, "RFC 4291 link-local"),
    _builtin("100.64.0.0/10", AddrClass.CGNAT, "RFC 6598 CGNAT (tailscale)"),
    _builtin("fd7a:115c:a1e0::/48", AddrClass.CGNAT, "tailscale IPv6 ULA"),
    _builtin("172.17.0.0/16", AddrClass.DOCKER, "docker0 default bridge"),
    _builtin("10.0.0.0/8", AddrClass.PRIVATE, "RFC 1918 private"),
    _builtin("172.16.0.0/12", AddrClass.PRIVATE, "RFC 1918 private"),
    _builtin("192.168.0.0/16", AddrClass.PRIVATE, "RFC 1918 private"),
    _builtin("fc00::/7", AddrClass.PRIVATE, "RFC 4193 unique local"),
    _builtin("0.0.0.0/8", AddrClass.RESERVED, "RFC 1122 this network"),
    _builtin("224.0.0.0/4", AddrClass.RESERVED, "multicast"),
    _builtin("240.0.0.0/4", AddrClass.RESERVED, "reserved"),
    _builtin("::/128", AddrClass.RESERVED, "unspecified"),
    _builtin("ff00::/8", AddrClass.RESERVED, "multicast"),
)

K3S_POD_CIDR = "10.42.0.0/16"
K3S_SERVICE_CIDR = "10.43.0.0/16"


def k3s_defaults() -> tuple[Network, ...]:
    return (
        make_network(K3S_POD_CIDR, AddrClass.POD, "k3s default --cluster-cidr"),
        make_network(K3S_SERVICE_CIDR, AddrClass.SERVICE, "k3s default --service-cidr"),
    )


class ClassifierView(Protocol):
    """What readers of the engine's classifier may do: ask, never swap networks."""

    @property
    def networks(self) -> tuple[Network, ...]: ...

    def classify(self, text: str) -> Classification: ...

    def classify_range(self, text: str) -> Classification: ...


class _Classes(dict[str, Classification]):
    """The per-address cache, answering a miss itself (``__missing__``), so that a hit is one
    C-level ``dict.__getitem__`` call: the tally classifies every distinct key's client, and a
    Python method call per key cost more than the lookup."""

    __slots__ = ("_work_out",)

    def __init__(self, work_out: Callable[[str], Classification]) -> None:
        super().__init__()
        self._work_out = work_out

    def __missing__(self, text: str) -> Classification:
        result = self._work_out(text)
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        self[text] = result
        return result


class Classifier:
    """Classifies addresses and ranges against a set of networks, with a per-address cache.

    ``replace_networks`` swaps the cluster-specific set atomically (used by Kubernetes discovery)
    and drops the cache. ``classify`` is bound once, to the cache, so a caller that kept it sees
    the new networks too.
    """

    __slots__ = ("_cache", "_index", "_lead", "_networks", "classify")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self._networks: tuple[Network, ...] = ()
        self._index: dict[int, tuple[tuple[int, dict[int, Network]], ...]] = {}
        self._cache = _Classes(self._classify_uncached)
        # An address's class (cached): the cache's own C-level lookup.
        self.classify: Callable[[str], Classification] = self._cache.__getitem__
        self.replace_networks(networks)

    def replace_networks(self, networks: Iterable[Network]) -> None:
        merged = {(n.version, n.prefix, n.length, n.cls): n for n in (*networks, *WELL_KNOWN)}
        # Most specific first, then by harm rank, so the first match is the answer.
        self._networks = tuple(sorted(merged.values(), key=lambda n: (-n.length, _RANK[n.cls])))
        # The same answer by lookup: per family, one dict per prefix length (longest first) of
        # the first network in that order, keyed by the prefix's leading bits. A miss (most
        # addresses in a CrowdSec blocklist) costs a few dict lookups, not a test per network.
        index: dict[int, dict[int, dict[int, Network]]] = {4: {}, 6: {}}
        for net in self._networks:
            bits = 32 if net.version == 4 else 128
            by_prefix = index[net.version].setdefault(net.length, {})
            by_prefix.setdefault(net.prefix >> (bits - net.length), net)
        self._index = {
            version: tuple(sorted(lengths.items(), key=lambda t: -t[0]))
            for version, lengths in index.items()
        }
        # Per family, which leading bytes any network reaches: most public addresses are
        # answered by one look here instead of a lookup per prefix length.
        lead = {4: bytearray(256), 6: bytearray(256)}
        for net in self._networks:
            bits = 32 if net.version == 4 else 128
            keep = min(net.length, 8)
            first = net.prefix >> (bits - keep) << (8 - keep)
            span = 1 << (8 - keep)
            lead[net.version][first : first + span] = b"\x01" * span
        self._lead = {version: bytes(flags) for version, flags in lead.items()}
        self._cache.clear()

    @property
    def networks(self) -> tuple[Network, ...]:
        return self._networks

    def _classify_uncached(self, text: str) -> Classification:
        parsed = parse_address(text)
        if parsed is None:
            return _INVALID
        version, value = parsed
        bits = 32 if version == 4 else 128
        if not self._lead[version][value >> (bits - 8)]:
            return _PUBLIC
        for length, by_prefix in self._index[version]:
            net = by_prefix.get(value >> (bits - length))
            if net is not None:
                return Classification(net.cls, net)
        return _PUBLIC

    def classify_range(self, text: str) -> Classification:
        """Classify a CIDR: internal when it overlaps any internal network.

        A /8 that swallows the pod CIDR is internal even though most of it is not; the most
        harmful overlapped class wins.
        """
        parsed = parse_network(text)
        if parsed is None:
            return Classification(AddrClass.INVALID, None)
        version, prefix, length = parsed
        if length >= 8 and not self._lead[version][prefix >> ((32 if version == 4 else 128) - 8)]:
            return _PUBLIC  # no network near it: no overlap, and its first address is public
        best: Network | None = None
        for net in self._networks:
            if net.cls not in INTERNAL_CLASSES:
                continue
            # Two ranges overlap when they agree on the shorter of their prefixes.
            overlap = same_prefix(net.version, net.prefix, version, prefix, min(length, net.length))
            if overlap and (best is None or _RANK[net.cls] < _RANK[best.cls]):
                best = net
        if best is not None:
            return Classification(best.cls, best)
        # No internal overlap: the range is as public as its first address.
        return self.classify(format_network(version, prefix, length).partition("/")[0])
