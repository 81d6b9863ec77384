"""IPv4-mapped IPv6 networks are read as CrowdSec (Go) reads them (issue 12, item 1).

``::ffff:10.0.0.0/8`` is the IPv6 range ``::/8`` to CrowdSec, not the IPv4 ``10.0.0.0/8``: taking
it for the pod network made remediation delete a range that holds NAT64 and IPv4-compatible
addresses. A mapped network is IPv4 only from /96 on, where it holds nothing but mapped
addresses.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.addresses import (
    Classifier,
    format_network,
    k3s_defaults,
    parse_network,
)
from pipeline.crowdsec.remediate import internal_network_of


@pytest.mark.parametrize(
    ("text", "cidr"),
    [
        ("::ffff:10.0.0.0/8", "::/8"),
        ("::ffff:10.0.0.0/32", "::/32"),
        ("::ffff:10.42.0.0/16", "::/16"),
        ("::ffff:10.42.0.0/95", "::fffe:0:0/95"),
        ("::ffff:10.42.0.0/96", "0.0.0.0/0"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:10.42.0.0/112", "10.42.0.0/16"),
        ("::ffff:10.42.0.7/128", "10.42.0.7/32"),
        ("::ffff:10.42.0.7", "10.42.0.7/32"),
    ],
)
def test_mapped_networks(text: str, cidr: str) -> None:
    parsed = parse_network(text)
    assert parsed is not None
    assert format_network(*parsed) == cidr


@pytest.mark.parametrize(
    "text", ["::ffff:10.0.0.0/129", "::ffff:10.0.0.0/0008", "::ffff:1.2.3.4/-1"]
)
def test_bad_mapped_lengths(text: str) -> None:
    assert parse_network(text) is None


@pytest.mark.parametrize(
    "text",
    ["::ffff:10.0.0.0/8", "::ffff:10.0.0.0/32", "::ffff:10.42.0.0/16", "::ffff:10.42.0.0/95"],
)
def test_short_mapped_ranges_are_never_deletable(text: str) -> None:
    """They mix internal and external space (``::/8`` holds ``::0.8.8.4`` and NAT64)."""
    assert internal_network_of(Classifier(k3s_defaults()), "Range", text) is None


def test_long_mapped_ranges_inside_the_pod_network_are_deletable() -> None:
    c = Classifier(k3s_defaults())
    assert internal_network_of(c, "Range", "::ffff:10.42.0.0/112") == "10.42.0.0/16"
    assert internal_network_of(c, "Ip", "::ffff:10.42.0.7") == "10.42.0.0/16"


@given(st.integers(0, 2**32 - 1), st.integers(0, 128))
def test_mapped_network_agrees_with_the_standard_library(v4: int, length: int) -> None:
    """Same range as ``ipaddress`` with the IPv6 reading, mapped back to IPv4 from /96 on."""
    text = f"::ffff:{ipaddress.IPv4Address(v4)}/{length}"
    parsed = parse_network(text)
    assert parsed is not None
    expected = ipaddress.IPv6Network(text, strict=False)
    if length >= 96:
        mapped = expected.network_address.ipv4_mapped
        assert mapped is not None
        assert parsed == (4, int(mapped), length - 96)
    else:
        assert parsed == (6, int(expected.network_address), length)
