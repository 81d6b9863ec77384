"""The address classifier: k3s defaults, v4/v6/mapped, zones, ports, garbage, user CIDRs, ranges."""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.core.addresses import (
    CRITICAL_CLASSES,
    INTERNAL_CLASSES,
    K3S_POD_CIDR,
    K3S_SERVICE_CIDR,
    AddrClass,
    Classifier,
    addresses_in,
    format_network,
    k3s_defaults,
    make_network,
    network_contains,
    parse_address,
    parse_network,
)
from pipeline.core.networks import build_networks
from pipeline.errors import ConfigError

A = AddrClass


@pytest.fixture(name="k3s")
def _k3s() -> Classifier:
    return Classifier(k3s_defaults())


K3S_CASES = [
    # k3s defaults
    ("10.42.0.1", A.POD),
    ("10.42.255.254", A.POD),
    ("10.43.0.1", A.SERVICE),
    ("10.43.0.10", A.SERVICE),
    ("10.44.0.1", A.PRIVATE),
    # well known
    ("127.0.0.1", A.LOOPBACK),
    ("127.255.255.254", A.LOOPBACK),
    ("::1", A.LOOPBACK),
    ("10.0.0.5", A.PRIVATE),
    ("172.16.5.4", A.PRIVATE),
    ("172.31.255.255", A.PRIVATE),
    ("172.32.0.1", A.PUBLIC),
    ("172.17.0.1", A.DOCKER),
    ("172.17.255.255", A.DOCKER),
    ("192.168.1.1", A.PRIVATE),
    ("100.64.0.1", A.CGNAT),
    ("100.100.100.100", A.CGNAT),  # tailscale MagicDNS
    ("100.127.255.255", A.CGNAT),
    ("100.128.0.1", A.PUBLIC),
    ("fd7a:115c:a1e0::1", A.CGNAT),  # tailscale IPv6
    ("fd7a:115c:a1e0:ab12:4843:cd96:626b:430b", A.CGNAT),
    ("fd00::1", A.PRIVATE),
    ("fd00:1234:5678::5a24", A.PRIVATE),
    ("169.254.169.254", A.LINK_LOCAL),
    ("fe80::1", A.LINK_LOCAL),
    ("0.0.0.0", A.RESERVED),
    ("224.0.0.1", A.RESERVED),
    ("239.255.255.250", A.RESERVED),
    ("255.255.255.255", A.RESERVED),
    ("::", A.RESERVED),
    ("ff02::1", A.RESERVED),
    ("1.1.1.1", A.PUBLIC),
    ("175.16.199.10", A.PUBLIC),
    ("172.71.122.85", A.PUBLIC),
    ("2606:4700:4700::1111", A.PUBLIC),
    ("2001:db8::1", A.PUBLIC),
    # IPv4-mapped IPv6 classifies as the IPv4 address
    ("::ffff:10.42.0.1", A.POD),
    ("::FFFF:10.42.0.1", A.POD),
    ("::ffff:0a2a:0001", A.POD),
    ("0:0:0:0:0:ffff:10.43.0.1", A.SERVICE),
    ("::ffff:127.0.0.1", A.LOOPBACK),
    ("::ffff:172.17.0.1", A.DOCKER),
    ("::ffff:1.2.3.4", A.PUBLIC),
    # zone ids, ports, brackets, whitespace
    ("fe80::1%eth0", A.LINK_LOCAL),
    ("fe80::1%25eth0", A.LINK_LOCAL),
    ("[fe80::1%eth0]:443", A.LINK_LOCAL),
    ("10.42.0.9:8080", A.POD),
    ("[::1]:56348", A.LOOPBACK),
    ("[::ffff:10.42.0.1]:443", A.POD),
    ("[2606:4700:4700::1111]", A.PUBLIC),
    (" 10.42.0.1 ", A.POD),
    ("10.42.0.1\n", A.POD),
]


@pytest.mark.parametrize(("text", "cls"), K3S_CASES)
def test_classify_k3s_defaults(k3s: Classifier, text: str, cls: AddrClass) -> None:
    got = k3s.classify(text)
    assert got.cls is cls
    assert got.internal is (cls in INTERNAL_CLASSES)


INVALID = [
    "",
    " ",
    "-",
    "garbage",
    "TestHost",
    "01.2.3.4",
    "1.02.3.4",
    "010.42.0.1",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "1.2.3.-4",
    "1.2.3.4.",
    "0x7f.0.0.1",
    "2130706433",
    "1.2.3.4, 10.0.0.1",
    "10.42.0.1/16",
    "::ffff:01.2.3.4",
    "::ffff:256.0.0.1",
    "::1]",
    ":::",
    "1::2::3",
    "12345::1",
    "g::1",
    "1.2.3.4\x00",
    "\ud800",
    "１.２.３.４",  # fullwidth digits
    "10.42.0.1:80:80",
    "None",
]


@pytest.mark.parametrize("text", INVALID)
def test_garbage_is_invalid_not_public(k3s: Classifier, text: str) -> None:
    got = k3s.classify(text)
    assert got.cls is A.INVALID
    assert not got.internal
    assert got.network is None
    assert parse_address(text) is None


def test_critical_classes() -> None:
    assert {A.LOOPBACK, A.NODE, A.LOADBALANCER, A.POD} == CRITICAL_CLASSES
    assert CRITICAL_CLASSES < INTERNAL_CLASSES
    assert A.PUBLIC not in INTERNAL_CLASSES
    assert A.RESERVED not in INTERNAL_CLASSES
    assert A.INVALID not in INTERNAL_CLASSES


def test_classification_as_dict_names_network_and_provenance(k3s: Classifier) -> None:
    assert k3s.classify("10.42.0.7").as_dict() == {
        "class": "pod",
        "network": "10.42.0.0/16",
        "provenance": "k3s default --cluster-cidr",
    }
    assert k3s.classify("8.8.8.8").as_dict() == {
        "class": "public",
        "network": None,
        "provenance": None,
    }
    assert k3s.classify("172.17.0.1").as_dict()["network"] == "172.17.0.0/16"


def test_k3s_constants() -> None:
    assert (K3S_POD_CIDR, K3S_SERVICE_CIDR) == ("10.42.0.0/16", "10.43.0.0/16")


def test_without_k3s_defaults_pod_range_is_just_private() -> None:
    c = Classifier()
    assert c.classify("10.42.0.1").cls is A.PRIVATE
    assert c.classify("10.43.0.1").cls is A.PRIVATE


# -- parse_address / parse_network ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.42.0.1", (4, int(ipaddress.IPv4Address("10.42.0.1")))),
        ("::ffff:10.42.0.1", (4, int(ipaddress.IPv4Address("10.42.0.1")))),
        ("::1", (6, 1)),
        ("[::1]:80", (6, 1)),
        ("fe80::1%eth0", (6, int(ipaddress.IPv6Address("fe80::1")))),
        (
            "::10.42.0.1",
            (6, int(ipaddress.IPv6Address("::10.42.0.1"))),
        ),  # IPv4-compatible: not mapped
    ],
)
def test_parse_address(text: str, expected: tuple[int, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.42.0.0/16", (4, int(ipaddress.IPv4Address("10.42.0.0")), 16)),
        ("10.42.7.9/16", (4, int(ipaddress.IPv4Address("10.42.0.0")), 16)),  # host bits cleared
        ("10.42.0.9", (4, int(ipaddress.IPv4Address("10.42.0.9")), 32)),
        ("0.0.0.0/0", (4, 0, 0)),
        ("::/0", (6, 0, 0)),
        ("::1", (6, 1, 128)),
        ("2001:cafe:42::/56", (6, int(ipaddress.IPv6Address("2001:cafe:42::")), 56)),
        ("::ffff:10.42.0.0/112", (4, int(ipaddress.IPv4Address("10.42.0.0")), 16)),
        ("::ffff:0:0/96", (4, 0, 0)),
        (" 10.0.0.0/8 ", (4, 10 << 24, 8)),
        ("1.2.3.4/33", None),
        ("1.2.3.4/-1", None),
        ("1.2.3.4/", None),
        ("1.2.3.4/8/8", None),
        ("1.2.3.4/ 8", None),
        ("1.2.3.4/0x8", None),
        ("2001:db8::/129", None),
        ("garbage/8", None),
        ("/8", None),
        ("", None),
    ],
)
def test_parse_network(text: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_network(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.0/²", "10.0.0.0/٣", "10.0.0.0/①"])
def test_parse_network_rejects_non_ascii_lengths(text: str) -> None:
    """str.isdigit() accepts '²' (int() then raises) and '٣'; a decision value must not crash."""
    assert parse_network(text) is None
    assert Classifier(k3s_defaults()).classify_range(text).cls is A.INVALID


@pytest.mark.parametrize("cidr", ["10.42.0.0/16", "0.0.0.0/0", "2001:cafe:42::/56", "::1/128"])
def test_format_network_round_trip(cidr: str) -> None:
    parsed = parse_network(cidr)
    assert parsed is not None
    assert format_network(*parsed) == cidr
    assert make_network(cidr, A.POD, "t").cidr == cidr


def test_make_network_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a CIDR"):
        make_network("10.42.0.0/33", A.POD, "t")


# -- user-added networks ------------------------------------------------------------------------


def test_ipv6_pod_cidr_replaces_k3s_pod_default() -> None:
    """rke2 dual-stack example (rancher/rke2-docs#415): --cluster-cidr 2001:cafe:42::/56."""
    c = Classifier(build_networks({"pod_cidr": ["2001:cafe:42::/56"]}))
    assert c.classify("2001:cafe:42::17").cls is A.POD
    assert c.classify("2001:cafe:42:ff::1").cls is A.POD
    assert c.classify("2001:cafe:42:100::1").cls is A.PUBLIC
    # The user's pod CIDR replaces the IPv4 guess for the pod class; the service guess stays.
    assert c.classify("10.42.0.1").cls is A.PRIVATE
    assert c.classify("10.43.0.1").cls is A.SERVICE
    assert c.classify("10.42.0.1").network is not None


def test_dual_stack_pod_cidrs() -> None:
    c = Classifier(build_networks({"pod_cidr": ["10.42.0.0/16", "2001:cafe:42::/56"]}))
    assert c.classify("10.42.3.4").cls is A.POD
    assert c.classify("2001:cafe:42::1").cls is A.POD
    assert c.classify("[2001:cafe:42::1]:443").cls is A.POD


def test_user_networks_extend_and_override() -> None:
    c = Classifier(
        build_networks(
            {
                "node_ip": ["192.168.1.10", "2001:db8::10"],
                "lb_ip": ["203.0.113.5"],
                "internal_cidr": ["198.51.100.0/24"],
                "service_cidr": ["10.96.0.0/12"],
            }
        )
    )
    assert c.classify("192.168.1.10").cls is A.NODE  # /32 beats 192.168/16 private
    assert c.classify("192.168.1.11").cls is A.PRIVATE
    assert c.classify("2001:db8::10").cls is A.NODE
    assert c.classify("203.0.113.5").cls is A.LOADBALANCER  # public made internal
    assert c.classify("203.0.113.6").cls is A.PUBLIC
    assert c.classify("198.51.100.77").cls is A.PRIVATE
    assert c.classify("10.96.0.1").cls is A.SERVICE
    assert c.classify("10.43.0.1").cls is A.PRIVATE  # k3s service guess replaced
    assert c.classify("10.42.0.1").cls is A.POD  # k3s pod guess kept
    prov = c.classify("203.0.113.5").as_dict()["provenance"]
    assert prov == "flag lb-ip"


def test_equal_prefix_tie_goes_to_more_harmful_class() -> None:
    c = Classifier([*k3s_defaults(), make_network("10.42.0.0/16", A.PRIVATE, "user internal-cidr")])
    assert c.classify("10.42.0.1").cls is A.POD


def test_more_specific_prefix_wins_over_rank() -> None:
    c = Classifier([*k3s_defaults(), make_network("10.42.5.0/24", A.PRIVATE, "user")])
    assert c.classify("10.42.5.1").cls is A.PRIVATE
    assert c.classify("10.42.6.1").cls is A.POD


def test_networks_sorted_most_specific_first(k3s: Classifier) -> None:
    lengths = [n.length for n in k3s.networks]
    assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize(
    ("key", "flag"),
    [("pod_cidr", "pod-cidr"), ("node_ip", "node-ip"), ("internal_cidr", "internal-cidr")],
)
def test_bad_user_cidr_names_its_key(key: str, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        build_networks({key: ["10.42.0.0/99"]})


def test_no_k3s_defaults_flag() -> None:
    nets = build_networks({}, k3s=False)
    assert nets == []
    assert Classifier(nets).classify("10.42.0.1").cls is A.PRIVATE


# -- ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "cls"),
    [
        ("10.0.0.0/8", A.POD),  # swallows the pod CIDR: the most harmful overlapped class
        ("0.0.0.0/0", A.LOOPBACK),
        ("::/0", A.LOOPBACK),
        ("10.42.0.0/24", A.POD),
        ("10.42.0.7/32", A.POD),
        ("10.43.0.0/16", A.SERVICE),
        ("10.40.0.0/14", A.POD),
        ("10.44.0.0/16", A.PRIVATE),
        ("172.16.0.0/12", A.DOCKER),
        ("100.64.0.0/10", A.CGNAT),
        ("fc00::/7", A.CGNAT),  # holds tailscale's fd7a:115c:a1e0::/48
        ("fd00::/8", A.CGNAT),  # also holds fd7a:115c:a1e0::/48
        ("fd00::/16", A.PRIVATE),
        ("fe80::/64", A.LINK_LOCAL),
        ("::ffff:10.42.0.0/104", A.POD),
        ("2.2.3.0/24", A.PUBLIC),
        ("91.241.19.122/32", A.PUBLIC),
        ("1.2.3.0/24", A.PUBLIC),
        ("2606:4700::/32", A.PUBLIC),
        ("224.0.0.0/4", A.RESERVED),
        ("garbage", A.INVALID),
        ("10.0.0.0/33", A.INVALID),
        ("", A.INVALID),
    ],
)
def test_classify_range(k3s: Classifier, cidr: str, cls: AddrClass) -> None:
    got = k3s.classify_range(cidr)
    assert got.cls is cls
    assert got.internal is (cls in INTERNAL_CLASSES)


def test_classify_range_reports_the_overlapped_network(k3s: Classifier) -> None:
    got = k3s.classify_range("10.0.0.0/8")
    assert got.network is not None
    assert got.network.cidr == "10.42.0.0/16"


def test_network_contains() -> None:
    assert network_contains("10.42.0.0/24", "10.42.0.7")
    assert network_contains("10.42.0.0/24", "::ffff:10.42.0.7")
    assert network_contains("10.42.0.0/24", "10.42.0.7:443")
    assert not network_contains("10.42.0.0/24", "10.42.1.7")
    assert not network_contains("10.42.0.0/24", "::1")
    assert not network_contains("garbage", "10.42.0.7")
    assert not network_contains("10.42.0.0/24", "garbage")
    assert network_contains("2001:cafe:42::/56", "2001:cafe:42:ab::1")


# -- cache ----------------------------------------------------------------------------------------


def test_replace_networks_drops_cache() -> None:
    c = Classifier(k3s_defaults())
    assert c.classify("10.42.0.1").cls is A.POD
    assert c.classify("203.0.113.5").cls is A.PUBLIC
    c.replace_networks([make_network("203.0.113.5", A.LOADBALANCER, "discovered")])
    assert c.classify("10.42.0.1").cls is A.PRIVATE
    assert c.classify("203.0.113.5").cls is A.LOADBALANCER
    c.replace_networks(k3s_defaults())
    assert c.classify("10.42.0.1").cls is A.POD
    assert c.classify("203.0.113.5").cls is A.PUBLIC


def test_a_classify_kept_before_replace_networks_sees_the_new_networks() -> None:
    """The timeline and parallel replay keep ``classifier.classify``; Kubernetes discovery
    swaps the networks under them."""
    c = Classifier(k3s_defaults())
    kept = c.classify
    assert kept("203.0.113.5").cls is A.PUBLIC
    c.replace_networks([make_network("203.0.113.5", A.LOADBALANCER, "discovered")])
    assert kept("203.0.113.5").cls is A.LOADBALANCER
    assert kept("10.42.0.1").cls is A.PRIVATE


def test_cache_is_bounded() -> None:
    c = Classifier(k3s_defaults())
    for i in range(70_000):
        c.classify(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
    assert len(c._cache) <= 65536
    assert c.classify("10.42.0.1").cls is A.POD


def test_network_contains_network() -> None:
    outer = make_network("10.42.0.0/16", AddrClass.POD, "t")
    assert outer.contains(make_network("10.42.3.0/24", AddrClass.POD, "t"))
    assert outer.contains(outer)
    assert not outer.contains(make_network("10.0.0.0/8", AddrClass.PRIVATE, "t"))
    assert not outer.contains(make_network("10.43.0.0/24", AddrClass.SERVICE, "t"))
    assert not outer.contains(make_network("2001:db8::/64", AddrClass.PRIVATE, "t"))


def test_addresses_in_parses_the_network_once_and_keeps_order() -> None:
    candidates = ["10.42.0.7", "::ffff:10.42.0.9", "10.43.0.1", "garbage", "10.42.0.1:443"]
    assert addresses_in("10.42.0.0/24", candidates) == [
        "10.42.0.7",
        "::ffff:10.42.0.9",
        "10.42.0.1:443",
    ]
    assert addresses_in("not a cidr", candidates) == []
    assert addresses_in("2001:db8::/32", ["2001:db8::1", "10.42.0.7"]) == ["2001:db8::1"]
