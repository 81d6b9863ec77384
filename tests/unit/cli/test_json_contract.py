"""The replay report's JSON contract: every golden and a fresh demo run validate against the
published schema (docs/schema/replay-report.schema.json), with ``schema_version`` and every
severity counted, zeros included."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pipeline.cli.main import main
from tests.support.paths import ROOT
from tests.support.schemas import validate_replay

GOLDENS = sorted((ROOT / "tests" / "golden").glob("*/expected.json"))


def test_there_are_goldens() -> None:
    assert len(GOLDENS) >= 5


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.parent.name)
def test_every_golden_follows_the_schema(path: Path) -> None:
    doc = json.loads(path.read_text())
    validate_replay(doc)
    assert doc["schema_version"] == 1


def test_a_fresh_report_counts_every_severity(capsys: pytest.CaptureFixture[str]) -> None:
    demo = ROOT / "examples" / "demo"
    code = main(
        ["replay", str(demo / "access.log"), "--decisions", str(demo / "decisions.json"),
         "-o", "json", "--fail-on", "never"]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    validate_replay(doc)
    counts = doc["summary"]["findings"]
    assert list(counts) == ["critical", "high", "medium", "low", "info"]
    assert sum(counts.values()) == len(doc["findings"])
    assert counts["medium"] == 0  # zero counts are listed, not left out


def test_the_schema_rejects_what_breaks_the_contract() -> None:
    doc = json.loads(GOLDENS[0].read_text())
    for broken in (
        {k: v for k, v in doc.items() if k != "schema_version"},
        {**doc, "schema_version": 2},
        {**doc, "findings": [{"kind": "internal_ban"}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_replay(broken)
