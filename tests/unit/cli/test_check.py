"""``auditor check`` judges the LAPI's decisions through the engine, like replay and run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parsers.crowdsec import Decision
from pipeline.cli.check import internal_bans
from pipeline.cli.main import main
from pipeline.core.addresses import AddrClass, k3s_defaults, make_network
from pipeline.core.findings import Finding, Kind, Severity

NODE = make_network("192.168.1.10", AddrClass.NODE, "node k3s-server-1 status.addresses")
NETWORKS = (*k3s_defaults(), NODE)


def decision(value: str, *, id: int = 1, **kw: Any) -> Decision:
    fields: dict[str, Any] = {
        "id": id,
        "origin": "crowdsec",
        "scenario": "crowdsecurity/http-probing",
        "scope": "Range" if "/" in value else "Ip",
        "value": value,
        "type": "ban",
        "duration_s": 14395.0,
    }
    fields.update(kw)
    return Decision(**fields)


def by_target(findings: list[Finding]) -> dict[str, Finding]:
    return {f.target: f for f in findings}


def test_severity_follows_the_target_class() -> None:
    got = by_target(
        internal_bans(
            [
                decision("10.42.0.7", id=1),
                decision("192.168.1.10", id=2),
                decision("10.43.0.10", id=3),
                decision("10.0.0.0/8", id=4),  # swallows the pod range
                decision("198.51.100.7", id=5),
            ],
            NETWORKS,
        )
    )
    assert {t: f.severity for t, f in got.items()} == {
        "10.42.0.7": Severity.CRITICAL,
        "192.168.1.10": Severity.CRITICAL,
        "10.43.0.10": Severity.HIGH,
        "10.0.0.0/8": Severity.CRITICAL,
    }
    assert all(f.kind is Kind.INTERNAL_BAN for f in got.values())
    assert got["10.42.0.7"].key == "internal_ban:id:1"


def test_only_ban_and_captcha_types_are_internal_bans() -> None:
    """Check used to flag any decision type; the engine's rule is ban and captcha only."""
    got = by_target(
        internal_bans(
            [
                decision("10.42.0.7", id=1, type="throttle"),
                decision("10.42.0.8", id=2, type="captcha"),
                decision("10.42.0.9", id=3, type="Ban"),
            ],
            NETWORKS,
        )
    )
    assert set(got) == {"10.42.0.8", "10.42.0.9"}


def test_simulated_decisions_are_medium() -> None:
    """Check used to rate a simulated ban like a real one; it blocks no one yet."""
    (f,) = internal_bans([decision("10.42.0.7", simulated=True)], NETWORKS)
    assert f.severity is Severity.MEDIUM


def test_non_address_scopes_and_expired_decisions_are_not_findings() -> None:
    assert (
        internal_bans(
            [
                decision("FR", id=1, scope="Country"),
                decision("AS64500", id=2, scope="AS"),
                decision("10.42.0.7", id=3, duration_s=-5.0),
            ],
            NETWORKS,
        )
        == []
    )


def test_evidence_is_what_replay_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One judge: the same decision gives the same finding in ``check`` and ``replay``."""
    d = decision("10.42.0.7", id=7, origin="cscli", simulated=False)
    body = [{**d.as_dict(), "duration": "3h59m55s"}]
    (tmp_path / "decisions.json").write_text(json.dumps(body))
    (tmp_path / "empty.log").write_bytes(b"")
    args = [str(tmp_path / "empty.log"), "--decisions", str(tmp_path / "decisions.json")]
    capsys.readouterr()
    assert main(["replay", *args, "--format", "json"]) == 1
    (replayed,) = json.loads(capsys.readouterr().out)["findings"]
    (checked,) = internal_bans([d], k3s_defaults())
    assert checked.as_dict() == replayed
