"""The classifier's prefix-length index gives the answer of the plain rule: the first network,
most specific first then by harm, that shares the address's leading bits (``same_prefix``)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.addresses import (
    AddrClass,
    Classifier,
    Network,
    k3s_defaults,
    make_network,
    same_prefix,
)

CLASSES = [AddrClass.POD, AddrClass.SERVICE, AddrClass.NODE, AddrClass.LOADBALANCER]


def linear(c: Classifier, version: int, value: int) -> Network | None:
    for net in c.networks:
        if same_prefix(net.version, net.prefix, version, value, net.length):
            return net
    return None


@st.composite
def v4_networks(draw: st.DrawFn) -> list[Network]:
    nets = []
    for _ in range(draw(st.integers(0, 12))):
        length = draw(st.integers(0, 32))
        addr = ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1)))
        cidr = str(ipaddress.IPv4Network(f"{addr}/{length}", strict=False))
        nets.append(make_network(cidr, draw(st.sampled_from(CLASSES)), "test"))
    return nets


@given(v4_networks(), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20))
def test_index_agrees_with_the_linear_rule_v4(nets: list[Network], values: list[int]) -> None:
    c = Classifier([*k3s_defaults(), *nets])
    for value in values:
        want = linear(c, 4, value)
        got = c.classify(str(ipaddress.IPv4Address(value)))
        assert got.network == want
        assert got.cls is (want.cls if want else AddrClass.PUBLIC)


@given(st.integers(0, 2**128 - 1))
def test_index_agrees_with_the_linear_rule_v6(value: int) -> None:
    c = Classifier([*k3s_defaults(), make_network("2001:cafe:42::/56", AddrClass.POD, "test")])
    addr = ipaddress.IPv6Address(value)
    if addr.ipv4_mapped is not None:
        return  # classified as IPv4: covered above
    want = linear(c, 6, value)
    assert c.classify(str(addr)).network == want
