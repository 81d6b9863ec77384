"""The networks file format: what the watcher writes is what a sidecar reads, and a sidecar
refuses anything else whole, naming what is wrong."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.addresses import AddrClass, make_network
from pipeline.core.findings import Finding, Kind, Severity
from pipeline.core.networks_file import (
    MAX_BYTES,
    NetworksFileError,
    decode,
    encode,
)
from pipeline.kube.checks import check_cluster
from pipeline.kube.networks import cluster_networks
from tests.support.kube_facts import BAD, EXPECTED_BAD, facts_from_files

SYNCED = 1_796_394_262.5


def _published() -> bytes:
    facts = facts_from_files(BAD)
    return encode(
        synced_at=SYNCED,
        source="kubeconfig k3s.yaml",
        networks=cluster_networks(facts),
        findings=check_cluster(facts),
    )


def _doc() -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(_published())
    return out


def test_round_trip_keeps_networks_provenance_and_findings() -> None:
    facts = facts_from_files(BAD)
    doc = decode(_published())
    assert doc.synced_at == SYNCED
    assert doc.source == "kubeconfig k3s.yaml"
    assert doc.findings_omitted == 0
    want = {(n.cidr, n.cls, n.provenance) for n in cluster_networks(facts)}
    assert {(n.cidr, n.cls, n.provenance) for n in doc.networks} == want
    node = {n.cidr: n for n in doc.networks if n.cls is AddrClass.NODE}
    assert "k3s-server-1" in node["203.0.113.10/32"].provenance
    assert {f.check: (f.severity, f.target) for f in doc.findings} == EXPECTED_BAD
    original = {f.key or f"config:{f.check}:{f.target}": f for f in check_cluster(facts)}
    for f in doc.findings:
        assert f.kind is Kind.CONFIG
        assert f.key in original
        assert (f.summary, f.fix, dict(f.evidence)) == (
            original[f.key].summary,
            original[f.key].fix,
            dict(original[f.key].evidence),
        )


def test_same_view_same_bytes() -> None:
    """The watcher compares bytes to decide whether the cluster view changed."""
    facts = facts_from_files(BAD)
    shuffled = list(reversed(cluster_networks(facts)))
    again = encode(
        synced_at=SYNCED,
        source="kubeconfig k3s.yaml",
        networks=shuffled,
        findings=list(reversed(check_cluster(facts))),
    )
    assert again == _published()


def test_never_synced_is_null() -> None:
    data = encode(synced_at=None, source="s", networks=[], findings=[])
    assert orjson.loads(data)["synced_at"] is None
    assert decode(data).synced_at is None


def _finding(i: int, fix: str) -> Finding:
    return Finding(
        kind=Kind.CONFIG,
        severity=Severity.LOW if i else Severity.HIGH,
        target=f"node-{i}",
        summary="s",
        evidence={"i": i},
        fix=fix,
        key=f"config:node_without_traefik:node-{i}",
        check="node_without_traefik",
    )


def test_findings_beyond_the_budget_are_counted_not_written() -> None:
    """A ConfigMap holds 1 MiB: networks always go in, then the worst findings first."""
    nets = [make_network(f"10.42.{i}.0/24", AddrClass.POD, f"node n{i}") for i in range(50)]
    findings = [_finding(i, "x" * 1000) for i in range(40)]
    data = encode(synced_at=SYNCED, source="s", networks=nets, findings=findings, budget=20_000)
    assert len(data) <= 20_000 + 10_000  # the budget is counted compact; indent adds a little
    doc = decode(data)
    assert len(doc.networks) == 50
    assert 0 < len(doc.findings) < 40
    assert doc.findings_omitted == 40 - len(doc.findings)
    assert doc.findings[0].severity is Severity.HIGH
    with pytest.raises(NetworksFileError, match="networks alone"):
        encode(synced_at=SYNCED, source="s", networks=nets, findings=[], budget=500)


def _mutated(change: Any) -> bytes:
    doc = _doc()
    change(doc)
    return orjson.dumps(doc)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        node: Any = doc
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"", "empty"),
        (b"\n  \n", "empty"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (_mutated(_set(("format",), "other")), "'format'"),
        (_mutated(_set(("version",), 2)), "version 2"),
        (_mutated(_set(("version",), True)), "version"),
        (_mutated(_set(("synced_at",), "yesterday")), "'synced_at'"),
        (_mutated(_set(("synced_at",), -5)), "'synced_at'"),
        (_mutated(_set(("synced_at",), 0)), "'synced_at'"),
        (_mutated(_set(("source",), 7)), "'source'"),
        (_mutated(_set(("networks",), {})), "'networks'"),
        (_mutated(_set(("networks", 0, "cidr"), "10.42.0.0/33")), "networks[0]: 'cidr'"),
        (_mutated(_set(("networks", 0, "cidr"), "node-1")), "networks[0]: 'cidr'"),
        (_mutated(_set(("networks", 0, "class"), "public")), "networks[0]: 'class'"),
        (_mutated(_set(("networks", 0, "provenance"), "p" * 600)), "networks[0]: 'provenance'"),
        (_mutated(_set(("networks", 1), "10.0.0.0/8")), "networks[1]: not an object"),
        (_mutated(_set(("findings", 0, "kind"), "internal_ban")), "findings[0]: 'kind'"),
        (_mutated(_set(("findings", 0, "severity"), "urgent")), "findings[0]: 'severity'"),
        (_mutated(_set(("findings", 0, "check"), "Bad Code")), "findings[0]: 'check'"),
        (_mutated(_set(("findings", 0, "evidence"), [])), "findings[0]: 'evidence'"),
        (_mutated(_set(("findings", 0, "fix"), None)), "findings[0]: 'fix'"),
        (_mutated(_set(("findings_omitted",), -1)), "'findings_omitted'"),
        (_mutated(_set(("networks",), [{"cidr": "10.0.0.1", "class": "pod"}] * 20_001)), "20001"),
        (b" " * (MAX_BYTES + 1), "bytes"),
    ],
)
def test_refused_whole_naming_what_is_wrong(data: bytes, named: str) -> None:
    with pytest.raises(NetworksFileError) as caught:
        decode(data)
    assert named in str(caught.value)


def test_nan_is_not_json() -> None:
    """orjson (and the watcher) never write NaN; a file that has it is refused."""
    with pytest.raises(NetworksFileError, match="not JSON"):
        decode(_published().replace(b'"synced_at": 1796394262.5', b'"synced_at": NaN'))
