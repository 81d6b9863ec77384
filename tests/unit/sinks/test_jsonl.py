"""The findings file: appended to, created 0600, never written through a symbolic link."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.findings import Finding, FindingEvent, Kind, Severity, State
from pipeline.errors import EXIT_USAGE
from sinks.jsonl import JsonlFindings
from tests.support.paths import ROOT

VICTIM = b"precious: not a findings file\n"


def auditor_run(*argv: str) -> subprocess.CompletedProcess[str]:
    """``auditor run`` in its own process, bounded: the old code did not stop, it followed."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def event(at: float) -> FindingEvent:
    f = Finding(Kind.INTERNAL_BAN, Severity.CRITICAL, "10.42.0.12", "ban", {}, "fix", key="k1")
    return FindingEvent(State.RAISED, f, at)


def test_findings_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    link = tmp_path / "findings.jsonl"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link") as exc:
        JsonlFindings(str(link))
    assert exc.value.filename == str(link)
    assert victim.read_bytes() == VICTIM


def test_dangling_findings_symlink_creates_nothing(tmp_path: Path) -> None:
    link = tmp_path / "findings.jsonl"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="symbolic link"):
        JsonlFindings(str(link))
    assert not (tmp_path / "elsewhere").exists()


def test_run_with_a_findings_symlink_exits_2_naming_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    link = tmp_path / "findings.jsonl"
    link.symlink_to(victim)
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    proc = auditor_run(
        "--access-log",
        str(log),
        "--findings",
        str(link),
        "--metrics-listen",
        "127.0.0.1:0",
    )
    err = proc.stderr
    assert proc.returncode == EXIT_USAGE, err
    assert "'findings'" in err and str(link) in err and "symbolic link" in err
    assert "Traceback" not in err
    assert victim.read_bytes() == VICTIM


def test_new_findings_file_is_0600_and_restarts_append(tmp_path: Path) -> None:
    path = tmp_path / "findings.jsonl"
    old = os.umask(0o022)
    try:
        first = JsonlFindings(str(path))
        first.emit([event(1.0)])
        first.close()
        second = JsonlFindings(str(path))
        second.emit([event(2.0)])
        second.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [json.loads(line)["at"] for line in path.read_bytes().splitlines()] == [1.0, 2.0]


def test_existing_findings_file_keeps_its_mode(tmp_path: Path) -> None:
    """A file a log shipper was given read access to stays readable to it."""
    path = tmp_path / "findings.jsonl"
    path.write_bytes(b"")
    path.chmod(0o640)
    sink = JsonlFindings(str(path))
    sink.emit([event(1.0)])
    sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert json.loads(path.read_bytes())["state"] == "raised"
