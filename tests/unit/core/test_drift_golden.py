"""What the masking-after-upgrade and public-hop-after-upgrade goldens must say (checked on the
expected files, so a regeneration cannot bless a regression): the internal step at 08:20 and the
public hop's step at 08:30, with the shares before and after; no other golden case has a
masking_started finding (no false positive)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.sources import parallel
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.paths import GOLDEN

CASE = GOLDEN / "masking-after-upgrade"
HOP_CASE = GOLDEN / "public-hop-after-upgrade"


def _findings(case: str) -> list[dict[str, Any]]:
    report = json.loads((GOLDEN / case / "expected.json").read_text())
    found: list[dict[str, Any]] = report["findings"]
    return found


def test_golden_masking_after_upgrade_facts() -> None:
    (step,) = [f for f in _findings(CASE.name) if f["kind"] == "masking_started"]
    ev = step["evidence"]
    assert (step["target"], step["severity"]) == ("websecure", "high")
    assert ev["changed_at_utc"] == "2026-01-10T08:20:00Z"
    assert (ev["requests_before"], ev["internal_before"]) == (120, 4)
    assert (ev["requests_after"], ev["internal_after"]) == (120, 102)
    assert ev["returned_at"] is None
    assert "08:20:00Z" in (CASE / "expected.table.txt").read_text()
    assert (CASE / "exit_code.txt").read_text() == "1\n"


def test_golden_public_hop_after_upgrade_facts() -> None:
    """Node A's public address carries 4 requests in 10 from 08:30 (banned: critical hop); the
    crawler that starts at 08:35 on one site is neither a hop nor a step."""
    found = _findings(HOP_CASE.name)
    assert sorted((f["kind"], f["target"], f["severity"]) for f in found) == [
        ("masking_started", "203.0.113.21", "high"),
        ("suspected_hop", "203.0.113.21", "critical"),
    ]
    (step,) = [f for f in found if f["kind"] == "masking_started"]
    ev = step["evidence"]
    assert ev["share_of"] == "suspected_hop"
    assert (ev["entrypoint"], ev["entrypoints_known"]) == (None, False)
    assert ev["changed_at_utc"] == "2026-01-10T08:30:00Z"
    assert (ev["share_before"], ev["share_after"]) == (0.0, 0.4)
    assert (ev["requests_before"], ev["hop_requests_before"]) == (900, 0)
    assert (ev["requests_after"], ev["hop_requests_after"]) == (600, 240)
    assert ev["returned_at"] is None
    assert "08:30:00Z" in (HOP_CASE / "expected.table.txt").read_text()
    assert (HOP_CASE / "exit_code.txt").read_text() == "1\n"


def test_no_other_golden_case_reports_a_step() -> None:
    cases = [p.name for p in GOLDEN.iterdir() if (p / "expected.json").is_file()]
    assert len(cases) > 3
    for case in cases:
        if case not in (CASE.name, HOP_CASE.name):
            assert not [f for f in _findings(case) if f["kind"] == "masking_started"], case


@pytest.mark.parametrize("chunk", [100_000, 300_000])
def test_parallel_replay_reports_the_hop_step_as_one_job_does(
    auditor: Run, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers count each chunk's buckets (and their public clients) apart; the parent's engine
    must see the same closed buckets, so the step and its numbers are the same."""
    monkeypatch.setattr(parallel, "CHUNK", chunk)
    log, decisions = str(HOP_CASE / "input.log"), str(HOP_CASE / "decisions.json")
    reports = []
    for jobs in ("1", "3"):
        rc, out, err = auditor(
            "replay", log, "--decisions", decisions, "--format", "json", "--no-progress",
            "--jobs", jobs,
        )  # fmt: skip
        assert rc == 1, err
        reports.append(json.loads(out))
    assert (HOP_CASE / "input.log").stat().st_size > 3 * chunk
    assert reports[1] == reports[0]
    assert [f["kind"] for f in reports[0]["findings"]] == ["suspected_hop", "masking_started"]
