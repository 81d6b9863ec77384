"""Every exit-code path of ``auditor replay``: a wrong input never gets a clean bill of health.

0 clean (or ``--fail-on never``), 1 findings at or above ``--fail-on``, 2 when the input is not
an access log at all (the message names the file and why), a directory, or empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 (fixture)
from tests.support.paths import CORPUS, ROOT

CLEAN = str(CORPUS / "traefik-json-v3.jsonl")
DEMO = str(ROOT / "examples" / "demo" / "access.log")
DEMO_DECISIONS = str(ROOT / "examples" / "demo" / "decisions.json")


def replay(auditor: Run, *args: str) -> tuple[int, str, str]:
    return auditor("replay", "--no-progress", *args)


def test_clean_input_exits_0(auditor: Run) -> None:
    rc, out, err = replay(auditor, CLEAN, "-o", "json")
    assert (rc, err) == (EXIT_OK, "")
    assert json.loads(out)["findings"] == []


def test_findings_exit_1(auditor: Run) -> None:
    rc, _, err = replay(auditor, DEMO, "--decisions", DEMO_DECISIONS, "-o", "json")
    assert (rc, err) == (EXIT_FINDINGS, "")


@pytest.mark.parametrize("never", ["never", "none"])
def test_fail_on_never_reports_and_exits_0(auditor: Run, never: str) -> None:
    rc, out, err = replay(auditor, DEMO, "--decisions", DEMO_DECISIONS, "--fail-on", never)
    assert (rc, err) == (EXIT_OK, "")
    assert json.loads(out)["summary"]["findings"]["critical"] == 2


def test_fail_on_critical_ignores_high(auditor: Run, tmp_path: Path) -> None:
    # The demo without decisions: only the (high) masking findings remain.
    rc, out, _ = replay(auditor, DEMO, "--fail-on", "critical", "-o", "json")
    assert rc == EXIT_OK
    assert {f["severity"] for f in json.loads(out)["findings"]} == {"high"}


def test_o_is_an_alias_of_format(auditor: Run) -> None:
    _, by_o, _ = replay(auditor, CLEAN, "-o", "markdown")
    _, by_format, _ = replay(auditor, CLEAN, "--format", "markdown")
    assert by_o == by_format
    assert by_o.startswith("# ban-auditor replay report")


def test_not_a_log_exits_2_naming_file_and_reason(auditor: Run, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/sh\n" * 13)
    rc, out, err = replay(auditor, str(passwd), "-o", "json")
    assert (rc, out) == (EXIT_USAGE, "")
    assert f"{passwd}: 0 of 26 lines are Traefik access log lines" in err
    assert "unrecognized: 26" in err
    assert "Traceback" not in err


def test_wrong_envelope_exits_2_naming_the_envelope(auditor: Run) -> None:
    rc, out, err = replay(auditor, DEMO, "--envelope", "cri", "-o", "json")
    assert (rc, out) == (EXIT_USAGE, "")
    assert DEMO in err
    assert "bad_envelope: 2800" in err
    assert "--envelope auto" in err
    assert "cri" in err


def test_almost_nothing_parsed_exits_2(auditor: Run, tmp_path: Path) -> None:
    """One access line among 100 lines of something else is the wrong file, not noise."""
    good = Path(CLEAN).read_text().splitlines()[0]
    path = tmp_path / "mostly-noise.log"
    path.write_text(good + "\n" + "hello world, not a log\n" * 99)
    rc, _, err = replay(auditor, str(path), "-o", "json")
    assert rc == EXIT_USAGE
    assert f"{path}: 1 of 100 lines" in err


def test_some_noise_is_still_a_report(auditor: Run, tmp_path: Path) -> None:
    lines = Path(CLEAN).read_text().splitlines()
    path = tmp_path / "noisy.log"
    path.write_text("\n".join([*lines, "a stray line", ""]) + "\n")
    rc, out, err = replay(auditor, str(path), "-o", "json")
    assert (rc, err) == (EXIT_OK, "")
    assert json.loads(out)["summary"]["lines"]["skipped"]["unrecognized"] == 1


def test_one_bad_input_among_good_ones_exits_2(auditor: Run, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("just some notes\n" * 10)
    rc, _, err = replay(auditor, CLEAN, str(bad), "-o", "json")
    assert rc == EXIT_USAGE
    assert str(bad) in err
    assert CLEAN not in err


def test_empty_input_exits_2(auditor: Run, tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("\n\n")
    rc, _, err = replay(auditor, str(empty), "-o", "json")
    assert rc == EXIT_USAGE
    assert f"{empty}: no lines to audit" in err


def test_empty_input_with_decisions_audits_the_decisions(auditor: Run, tmp_path: Path) -> None:
    rc, out, err = replay(auditor, "/dev/null", "--decisions", DEMO_DECISIONS, "-o", "json")
    assert rc == EXIT_FINDINGS
    assert "/dev/null is empty: only the decisions are audited" in err
    assert {f["kind"] for f in json.loads(out)["findings"]} == {"internal_ban"}


def test_directory_says_it_is_a_directory(auditor: Run, tmp_path: Path) -> None:
    rc, _, err = replay(auditor, str(tmp_path), "-o", "json")
    assert rc == EXIT_USAGE
    assert f"input {tmp_path} is a directory" in err


def test_missing_file_exits_2(auditor: Run, tmp_path: Path) -> None:
    rc, _, err = replay(auditor, str(tmp_path / "nope.log"))
    assert rc == EXIT_USAGE
    assert "input file not found" in err


def test_garbage_on_stdin_exits_2(auditor: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\x00\x01garbage\n" * 5)))
    rc, _, err = replay(auditor, "-", "-o", "json")
    assert rc == EXIT_USAGE
    assert "standard input: 0 of 5 lines" in err


def test_bad_fail_on_value_exits_2(auditor: Run) -> None:
    rc, _, err = replay(auditor, CLEAN, "--fail-on", "sometimes")
    assert rc == EXIT_USAGE
    assert "--fail-on" in err
