"""The allowlist model and the one "k3s defaults unless that class was given" rule."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from pipeline.cli.args import add_network_args, networks_from_args
from pipeline.core.addresses import AddrClass, Network, k3s_defaults, make_network
from pipeline.core.allowlist import build_allowlist, collapse
from pipeline.core.networks import build_networks, with_k3s_defaults

POD = make_network("10.1.0.0/16", AddrClass.POD, "node a spec.podCIDRs")


def cidrs_by_class(nets: Iterable[Network]) -> list[tuple[str, AddrClass]]:
    return [(n.cidr, n.cls) for n in nets]


def test_collapse_uses_network_containment() -> None:
    nets = [
        make_network("10.0.0.0/8", AddrClass.PRIVATE, "rfc1918"),
        make_network("10.42.0.0/16", AddrClass.POD, "k3s"),
        # Same leading bits as 10.0.0.0/8 in another family: not inside it.
        make_network("a00::/8", AddrClass.PRIVATE, "v6"),
        make_network("a00::/16", AddrClass.POD, "v6 pods"),
        # A wider network listed later still swallows the narrower one.
        make_network("192.168.1.0/24", AddrClass.NODE, "nodes"),
        make_network("192.168.0.0/16", AddrClass.PRIVATE, "rfc1918"),
        # Neighbours are not inside each other.
        make_network("172.16.0.0/13", AddrClass.PRIVATE, "a"),
        make_network("172.24.0.0/13", AddrClass.PRIVATE, "b"),
    ]
    got = [(e.value, e.covers) for e in collapse(nets)]
    assert got == [
        ("10.0.0.0/8", 1),
        ("172.16.0.0/13", 0),
        ("172.24.0.0/13", 0),
        ("192.168.0.0/16", 1),
        ("a00::/8", 1),
    ]


def test_k3s_defaults_fill_only_the_classes_not_given() -> None:
    assert cidrs_by_class(with_k3s_defaults([POD])) == [
        ("10.1.0.0/16", AddrClass.POD),
        ("10.43.0.0/16", AddrClass.SERVICE),
    ]
    assert with_k3s_defaults([]) == list(k3s_defaults())
    # A private range given by the user does not stand in for the pod range.
    private = make_network("10.42.0.0/16", AddrClass.PRIVATE, "--internal-cidr")
    assert [n.cls for n in with_k3s_defaults([private])] == [
        AddrClass.PRIVATE,
        AddrClass.POD,
        AddrClass.SERVICE,
    ]


def test_flags_config_and_allowlist_share_the_rule() -> None:
    flags = build_networks({"pod_cidr": ["10.1.0.0/16"]})
    assert cidrs_by_class(flags) == cidrs_by_class(with_k3s_defaults([POD]))
    assert build_networks({"pod_cidr": ["10.1.0.0/16"]}, k3s=False)[0].cidr == "10.1.0.0/16"
    hops = build_allowlist([POD]).hops  # pod and node classes are the forwarding hops
    assert [e.network.cidr for e in hops] == ["10.1.0.0/16"]  # not k3s' 10.42.0.0/16 as well
    internal = {e.network.cidr for e in build_allowlist([POD]).internal}
    assert "10.42.0.0/16" not in internal  # no k3s pod guess; 10.0.0.0/8 covers it anyway
    assert {e.network.cidr for e in build_allowlist([POD], defaults=False).internal} == {
        "10.1.0.0/16"
    }


def test_network_flags_live_in_the_cli() -> None:
    parser = argparse.ArgumentParser()
    add_network_args(parser)
    args = parser.parse_args(["--service-cidr", "10.96.0.0/12", "--node-ip", "192.168.1.10"])
    assert cidrs_by_class(networks_from_args(args)) == [
        ("10.96.0.0/12", AddrClass.SERVICE),
        ("192.168.1.10/32", AddrClass.NODE),
        ("10.42.0.0/16", AddrClass.POD),
    ]
    args = parser.parse_args(["--no-k3s-defaults"])
    assert networks_from_args(args) == []
