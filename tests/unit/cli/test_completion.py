"""Shell completion (argcomplete): the scripts for bash, zsh and fish, real completions from the
installed command, and argcomplete kept out of every other command's imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.auditor_cli import Run, _auditor  # noqa: F401 (fixture)
from tests.support.paths import ROOT

AUDITOR = str(Path(sys.executable).with_name("auditor"))


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete "), ("zsh", "#compdef"), ("fish", "complete --command auditor")],
)
def test_script_per_shell(auditor: Run, shell: str, marker: str) -> None:
    code, out, err = auditor("completion", shell)
    assert (code, err) == (0, "")
    assert marker in out
    assert "auditor" in out


def complete(tmp_path: Path, line: str) -> list[str]:
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
    }
    proc = subprocess.run([AUDITOR], env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return out.read_text().split("\n")


def test_completes_choices_and_flags(tmp_path: Path) -> None:
    assert complete(tmp_path, "auditor run --envelope ") == ["auto", "raw", "cri", "docker"]
    assert [c.strip() for c in complete(tmp_path, "auditor replay --fail")] == ["--fail-on"]
    assert {"replay", "run", "aggregate"} <= set(complete(tmp_path, "auditor "))


def test_aggregate_does_not_complete_run_only_flags(tmp_path: Path) -> None:
    assert complete(tmp_path, "auditor aggregate --access") == [""]


def test_argcomplete_stays_out_of_other_commands() -> None:
    probe = (
        "import sys, pipeline.cli.main as m\n"
        "m.build_parser()\n"
        "import pipeline.cli.replay, pipeline.cli.run\n"
        "print('argcomplete' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert proc.stdout.strip() == "False"
