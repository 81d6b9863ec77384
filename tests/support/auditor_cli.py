"""``auditor`` in-process: run a command line, get (exit code, stdout, stderr).

A fixture rather than a subprocess, so a command's tests run in milliseconds and see the same
modules the test imported. Import ``Run`` and the ``_auditor`` fixture into a test module.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.cli import main as cli

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(name="auditor")
def _auditor(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
