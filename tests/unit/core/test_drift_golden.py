"""What the masking-after-upgrade golden must say (checked on the expected files, so a
regeneration cannot bless a regression): the step at 08:20 with the shares before and after;
no other golden case has a masking_started finding (no false positive)."""

from __future__ import annotations

import json
from typing import Any

from tests.support.paths import GOLDEN

CASE = GOLDEN / "masking-after-upgrade"


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


def test_no_other_golden_case_reports_a_step() -> None:
    cases = [p.name for p in GOLDEN.iterdir() if (p / "expected.json").is_file()]
    assert len(cases) > 3
    for case in cases:
        if case != CASE.name:
            assert not [f for f in _findings(case) if f["kind"] == "masking_started"], case
