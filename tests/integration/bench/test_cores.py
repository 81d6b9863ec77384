"""bench.cores measures both workloads and states every replay target with a verdict.

No timing is asserted: only that each step ran on both workloads, the replays of each wrote the
same report whatever the jobs, and every target of the issue is there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.support.paths import ROOT

STEPS = {"floor", "hot", "jobs1", "jobs2", "default"}


def test_cores_quick_run_covers_busy_and_quiet(tmp_path: Path) -> None:
    out = tmp_path / "cores.json"
    argv = ["--lines", "2000", "--repeat", "2", "--hot-rounds", "2"]
    argv += ["--data-dir", str(tmp_path), "--json", str(out)]
    r = subprocess.run(
        [sys.executable, "-m", "bench.cores", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = orjson.loads(out.read_bytes())
    assert set(res["workloads"]) == {"busy", "quiet"}
    assert res["workloads"]["quiet"]["rate"] < res["workloads"]["busy"]["rate"]
    rounds = res["rounds"]
    assert sorted((x["workload"], x["round"]) for x in rounds) == [
        (w, i) for w in ("busy", "quiet") for i in range(4)
    ]
    for x in rounds:
        # Rounds 2 and 3 are the extra in-process ones: the floor and the hot path only.
        assert set(x["steps"]) == (STEPS if x["round"] < 2 else {"floor", "hot"})
        assert all(s["error"] is None and s["lines"] == 2000 for s in x["steps"].values())
    summary = res["summary"]
    assert (summary["rounds"], summary["replay_rounds"]) == (4, 2)
    assert summary["reports_identical"] == {"busy": True, "quiet": True}
    for w in ("busy", "quiet"):  # the hot path's rows take every round, the replays' their own
        assert len(summary["rows"]["hot_x_floor"][w]["runs"]) == 4
        assert len(summary["rows"]["speedup"][w]["runs"]) == 2
    assert len(summary["quiet_vs_busy"]["wall"]["runs"]) == 4
    assert "over 4 paired rounds (replay rows: 2)" in r.stdout
    names = {t["target"] for t in res["targets"]}
    for workload in ("busy", "quiet"):
        assert f"auditor replay, default jobs, >= 1.0 x floor ({workload})" in names
        assert f"speed-up of 2 jobs over 1 >= 1.7 ({workload})" in names
        assert f"CPU s with 2 jobs <= 1.10 x 1 job ({workload})" in names
        assert f"hot path >= 0.60 x floor ({workload})" in names
    assert "hot path time per line, quiet / busy <= 1.10" in names
    assert all(t["met"] is not None for t in res["targets"])
    row = next(x for x in r.stdout.splitlines() if x.startswith("reports identical"))
    assert [c.strip() for c in row.split("|")[1:]] == ["yes", "yes"]
