"""``replay --bouncer-*``: ban_mismatch in the report, with one job and many, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from pipeline.sources import parallel
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.paths import GOLDEN

CASE = GOLDEN / "cdn-bouncer-mismatch"
LOG, DECISIONS, MIDDLEWARE = (
    str(CASE / n) for n in ("input.log", "decisions.json", "bouncer.yaml")
)


def replay(auditor: Run, *extra: str, code: int = 1) -> dict[str, object]:
    rc, out, err = auditor(
        "replay", LOG, "--decisions", DECISIONS, "--format", "json", "--no-progress", *extra
    )
    assert rc == code, err
    report: dict[str, object] = orjson.loads(out)
    return report


def mismatches(report: dict[str, object]) -> dict[str, dict[str, object]]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return {f["target"]: f for f in findings if f["kind"] == "ban_mismatch"}


def test_golden_cdn_facts() -> None:
    """The expected file says: 225 of 300 requests judged on the client while CrowdSec bans
    the Cloudflare edge, and the ban on edge 104.16.3.7 never applies."""
    report = json.loads((CASE / "expected.json").read_text())
    found = mismatches(report)
    assert set(found) == {"forwarded", "decisions:unchecked"}
    ev = found["forwarded"]["evidence"]
    assert (ev["requests"], ev["judged_requests"], ev["share"]) == (225, 300, 0.75)
    assert found["forwarded"]["severity"] == "high"
    assert ev["bouncer"]["source"] == "bouncer.yaml (traefik/crowdsec)"
    assert ev["bouncer"]["forwardedHeadersTrustedIPs"] == [
        "104.16.0.0/13",
        "104.24.0.0/14",
        "172.64.0.0/13",
    ]
    unseen = found["decisions:unchecked"]["evidence"]
    assert [d["value"] for d in unseen["examples"]] == ["104.16.3.7"]  # not 81.2.69.160
    assert {f["kind"] for f in report["findings"]} == {"ban_mismatch"}  # no other finding


def test_no_bouncer_settings_no_finding(auditor: Run) -> None:
    assert mismatches(replay(auditor, code=0)) == {}


def test_flags_alone_and_flags_over_the_file(auditor: Run) -> None:
    found = mismatches(replay(auditor, "--plugin-forwarded-headers-trusted-ips", "104.16.0.0/12"))
    # only the 104.16-31.x edges are trusted; the bouncer checks the 172.64/13 edges, as CrowdSec
    assert found["forwarded"]["evidence"]["requests"] == 125
    assert set(found["forwarded"]["evidence"]["crowdsec_bans"]) == {
        "104.16.3.7",
        "104.16.9.21",
        "104.23.8.30",
    }
    # the flag replaces the file's list: no trusted proxies, both sides agree
    over = replay(
        auditor,
        "--plugin-config",
        MIDDLEWARE,
        "--plugin-forwarded-headers-trusted-ips",
        "10.0.0.0/8",
        code=0,
    )
    assert mismatches(over) == {}


@pytest.mark.parametrize("chunk", [20_000, 70_000])
def test_parallel_report_is_the_one_job_report(
    auditor: Run, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "CHUNK", chunk)
    one = replay(auditor, "--plugin-config", MIDDLEWARE, "--jobs", "1")
    many = replay(auditor, "--plugin-config", MIDDLEWARE, "--jobs", "3")
    assert Path(LOG).stat().st_size > 2 * chunk
    assert many == one
    assert set(mismatches(one)) == {"forwarded", "decisions:unchecked"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("clientTrustedIPs: [10.0.0.0/40]", ["bad.yaml", "clientTrustedIPs", "10.0.0.0/40"]),
        ("spec: {plugin: {a: {enabled: true}, b: {enabled: true}}}", ["bad.yaml", "spec.plugin"]),
        ("a: [", ["bad.yaml", "not YAML or JSON at line 1"]),
        ("forwardedHeadersCustomName: CF-Connecting-IP", ["bad.yaml", "CF-Connecting-IP"]),
    ],
)
def test_hostile_file_exits_2_naming_file_and_key(
    auditor: Run, tmp_path: Path, text: str, words: list[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    rc, out, err = auditor("replay", LOG, "--plugin-config", str(bad), "--no-progress")
    assert (rc, out) == (2, "")
    assert "Traceback" not in err
    assert "--plugin-config" in err
    for word in words:
        assert word in err


def test_bad_flags_exit_2_naming_the_flag(auditor: Run, tmp_path: Path) -> None:
    rc, _, err = auditor("replay", LOG, "--plugin-client-trusted-ips", "nope", "--no-progress")
    assert rc == 2
    assert "--plugin-client-trusted-ips" in err
    assert "nope" in err
    rc, _, err = auditor("replay", LOG, "--plugin-forwarded-headers-custom-name", "X-Client-IP")
    assert rc == 2
    assert "--plugin-forwarded-headers-custom-name" in err
    rc, _, err = auditor("replay", LOG, "--plugin-config", str(tmp_path / "missing.yaml"))
    assert rc == 2
    assert "missing.yaml" in err
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * ((1 << 20) + 1))
    rc, _, err = auditor("replay", LOG, "--plugin-config", str(big))
    assert rc == 2
    assert "larger than 1 MiB" in err
