"""bench.compare runs end to end: this tree as both before and after, on a tiny input.

No timing is asserted: only that every row was measured in both trees and the answers agree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.compare import ROWS
from tests.support.paths import ROOT


@pytest.mark.slow  # about 40 s, most of it bench.live's warm-ups
def test_compare_this_tree_with_itself(tmp_path: Path) -> None:
    # make test installs the venv first; without it this is a setup error, not a skip.
    assert (ROOT / ".venv" / "bin" / "auditor").exists(), "run `make install` first"
    out, md = tmp_path / "compare.json", tmp_path / "compare.md"
    # 3 s of the live phase: its CPU is read in 10 ms clock ticks, and at 1,000 lines/s
    # (~1 % of a core) one second can read 0 ticks, a run no ratio can be taken of.
    opts = ["--lines", "2000", "--repeat", "2", "--live-duration", "3", "--before", str(ROOT)]
    files = ["--data-dir", str(tmp_path), "--json", str(out), "--markdown", str(md)]
    argv = [sys.executable, "-m", "bench.compare", *opts, *files]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    res = orjson.loads(out.read_bytes())
    assert res["warnings"] == []
    rows = {row["key"]: row for row in res["rows"]}
    assert set(rows) == {key for key, _, _ in ROWS}
    for row in rows.values():
        for side in ("before", "after"):
            assert len(row[side]["runs"]) == 2, row["key"]
            assert row[side]["median"] > 0, row["key"]
        assert len(row["ratio_runs"]) == 2
    assert res["answers"]["hot before"] == res["answers"]["hot after"]
    assert res["answers"]["hot after"][0]["lines"] == 2000
    table = r.stdout[r.stdout.index("measurement") : r.stdout.index("median ±")]
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert md.read_text().startswith("| measurement | before | after | after/before |")
