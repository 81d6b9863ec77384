"""The ``simulated`` flag of a decision: booleans and "true"/"false", nothing guessed.

``"simulated": "false"`` in a decisions file was read as simulated (``bool("false")``), which
turned a real ban on an internal address into a medium finding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parsers.crowdsec import DecisionFormatError, decision_from_obj, parse_decisions
from pipeline.errors import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture

MISSING = object()


def decision(simulated: object = MISSING) -> dict[str, object]:
    d: dict[str, object] = {
        "id": 1,
        "duration": "4h",
        "origin": "crowdsec",
        "scenario": "crowdsecurity/http-probing",
        "scope": "Ip",
        "type": "ban",
        "value": "10.42.0.5",
    }
    if simulated is not MISSING:
        d["simulated"] = simulated
    return d


@pytest.mark.parametrize(
    ("raw", "simulated"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        (" false ", False),
        (None, False),  # null: Go's nil *bool
        (MISSING, False),
    ],
)
def test_simulated_accepts_booleans_and_their_names(raw: object, simulated: bool) -> None:
    assert decision_from_obj(decision(raw)).simulated is simulated


@pytest.mark.parametrize("raw", ["yes", "no", "", "0", "1", 0, 1, 1.0, [], {}, "x" * 1000])
def test_anything_else_is_a_malformed_decision(raw: object) -> None:
    with pytest.raises(DecisionFormatError, match="'simulated'"):
        decision_from_obj(decision(raw))
    with pytest.raises(DecisionFormatError, match="'simulated'"):
        parse_decisions(json.dumps({"new": [decision(raw)], "deleted": None}).encode())


def test_the_error_is_bounded() -> None:
    with pytest.raises(DecisionFormatError) as exc:
        decision_from_obj(decision("x" * 100_000))
    assert len(str(exc.value)) < 200


@pytest.mark.parametrize(
    ("raw", "code", "severity"),
    [
        ("false", EXIT_FINDINGS, "critical"),  # a real ban on a pod: --fail-on high trips
        (False, EXIT_FINDINGS, "critical"),
        ("true", EXIT_OK, "medium"),
    ],
)
def test_replay_judges_a_string_flag_like_the_boolean(
    auditor: Run, tmp_path: Path, raw: object, code: int, severity: str
) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps([decision(raw)]))
    rc, out, err = auditor(
        "replay", "--no-progress", "--format", "json", str(log), "--decisions", str(decisions)
    )
    assert rc == code, err
    bans = [f for f in json.loads(out)["findings"] if f["kind"] == "internal_ban"]
    assert [(b["target"], b["severity"]) for b in bans] == [("10.42.0.5", severity)]


def test_replay_refuses_a_decisions_file_with_an_unknown_flag(auditor: Run, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps([decision("maybe")]))
    rc, out, err = auditor("replay", "--no-progress", str(log), "--decisions", str(decisions))
    assert rc == EXIT_USAGE
    assert str(decisions) in err and "'simulated'" in err
    assert out == ""
