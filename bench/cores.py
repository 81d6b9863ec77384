"""Both cores, on busy and on quiet traffic: the replay targets, measured side by side.

    .venv/bin/python -m bench.cores [--lines 1000000] [--repeat 3] [--hot-rounds 6]
        [--json bench/out/cores.json]

``make bench`` (bench/run.py) runs these rounds as its main measurements; this module alone
runs just them. Two workloads come from ``bench.generate`` alike but for the request rate:
busy (50 requests/s, ``make bench``'s main file) and quiet (5 requests/s, like most
self-hosted instances, where a 60 s bucket holds 300 lines instead of 3,000).

Every round measures, for each workload in turn (the order alternates between rounds): the
floor and the one-process hot path (bench/inproc.py), then ``auditor replay`` with
``--jobs 1``, ``--jobs 2`` and its default jobs. Each ratio is taken between runs of the same
round, moments apart (paired), and the verdict is the median of those ratios over the rounds;
their range is shown, so a noisy machine shows as a wide range rather than a wrong median.
Then ``--hot-rounds`` more paired rounds measure only the floor and the hot path: the
one-process targets have the smallest margins, and these rounds are cheap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.generate import GenConfig, write_decisions, write_log
from bench.run import OUT, TARGETS, Measure, e2e, inproc

BUSY_RATE = 50.0  # GenConfig's default: the main file of make bench
QUIET_RATE = 5.0
JOBS = (1, 2)
HOT_ROUNDS = 6  # extra rounds of the floor and hot path alone (inproc_rounds)

GOALS = {
    "default_x_floor": 1.0,  # auditor replay, default jobs, >= this x the one-process floor
    "speedup": 1.7,  # wall of --jobs 1 / wall of --jobs 2 >=
    "cpu_ratio": 1.10,  # CPU of --jobs 2 / CPU of --jobs 1 <=
    "hot_x_floor": 0.60,  # one-process hot path >=
    "quiet_vs_busy": 1.10,  # hot path time per line, quiet / busy <=
    "replay_rss_mb": TARGETS["replay_rss_mb"],  # any replay, any jobs, any input size <=
}


@dataclass(frozen=True)
class Workload:
    name: str  # busy | quiet
    rate: float
    log: Path
    decisions: Path


def ensure_workloads(lines: int, seed: int, masked_share: float, data_dir: Path) -> list[Workload]:
    """The two generated inputs (made when missing). Busy is the file ``bench.run`` names."""
    out = []
    for name, rate in (("busy", BUSY_RATE), ("quiet", QUIET_RATE)):
        cfg = GenConfig(lines=lines, seed=seed, masked_share=masked_share, rate=rate)
        tag = f"{lines}-s{seed}-m{masked_share:g}" + ("" if rate == BUSY_RATE else f"-r{rate:g}")
        log = data_dir / f"access-{tag}.log"
        dec = data_dir / f"decisions-{tag}.json"
        if not log.exists():
            t0 = time.perf_counter()
            st = write_log(cfg, log)
            print(
                f"generated {log} ({st.lines} lines, {st.bytes / 1e6:.0f} MB) in "
                f"{time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
            )
        if not dec.exists():
            write_decisions(cfg, dec)
        out.append(Workload(name, rate, log, dec))
    return out


@dataclass
class Round:
    """One workload's measurements in one round."""

    workload: str
    index: int
    steps: dict[str, Measure] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # replay step -> sha256 of its report
    load: float = 0.0


def measure_round(w: Workload, index: int, parse: bool = False, replays: bool = True) -> Round:
    """floor, (parse,) hot, then (with ``replays``) replay --jobs 1, --jobs 2 and default, one
    after the other."""
    r = Round(w.name, index, load=os.getloadavg()[0])
    r.steps["floor"] = inproc("floor", w.log, w.decisions)
    if parse:
        r.steps["parse"] = inproc("parse", w.log, w.decisions)
    r.steps["hot"] = inproc("hot", w.log, w.decisions)
    if replays:
        for jobs in JOBS:
            r.steps[f"jobs{jobs}"] = e2e(w.log, w.decisions, jobs=jobs)
        r.steps["default"] = e2e(w.log, w.decisions)
    r.digests = {k: m.digest for k, m in r.steps.items() if m.kind == "e2e"}
    return r


def inproc_rounds(workloads: list[Workload], first: int, n: int) -> list[Round]:
    """``n`` paired rounds of the floor and the hot path alone, numbered on from ``first``.

    The two one-process targets have the smallest margins (quiet/busy within a few hundredths
    of 1.10, the quiet hot path within one of 0.60 x floor) and this VM moves ±5 % between
    runs, so three rounds' median flipped between runs of the same code (bench/RESULTS.md).
    These rounds cost a fraction of a full one (no replay end to end) and narrow the median's
    spread."""
    out = []
    for i in range(first, first + n):
        for w in rounds_order(workloads, i):
            print(f"in-process round {i - first + 1}/{n}: {w.name}", file=sys.stderr)
            out.append(measure_round(w, i, replays=False))
    return out


def rounds_order(workloads: list[Workload], index: int) -> list[Workload]:
    """Alternate which workload goes first, so neither always runs on a warmer machine."""
    return workloads if index % 2 == 0 else workloads[::-1]


# -- analysis -----------------------------------------------------------------------------------
Metric = Callable[[Round], float | None]


def _rate(step: str) -> Metric:
    return lambda r: r.steps[step].lines_per_s if _ok(r, step) else None


def _ok(r: Round, *steps: str) -> bool:
    return all(s in r.steps and not r.steps[s].error and r.steps[s].wall_s > 0 for s in steps)


def _ratio(num: Metric, den: Metric) -> Metric:
    def f(r: Round) -> float | None:
        a, b = num(r), den(r)
        return a / b if a is not None and b else None

    return f


def _wall(step: str) -> Metric:
    return lambda r: r.steps[step].wall_s if _ok(r, step) else None


def _cpu(step: str) -> Metric:
    return lambda r: r.steps[step].cpu_s if _ok(r, step) and r.steps[step].cpu_s else None


def _per_line(step: str, cpu: bool = False) -> Metric:
    def f(r: Round) -> float | None:
        if not _ok(r, step) or not r.steps[step].lines:
            return None
        m = r.steps[step]
        return (m.cpu_s if cpu else m.wall_s) / m.lines * 1e6

    return f


ROWS: tuple[tuple[str, str, Metric, str], ...] = (  # key, label, metric, format
    ("floor_lps", "floor lines/s", _rate("floor"), "{:,.0f}"),
    ("hot_lps", "hot path lines/s (1 process)", _rate("hot"), "{:,.0f}"),
    ("hot_x_floor", "hot path x floor", _ratio(_rate("hot"), _rate("floor")), "{:.2f}"),
    ("hot_us", "hot path us/line", _per_line("hot"), "{:.2f}"),
    ("hot_cpu_us", "hot path CPU us/line", _per_line("hot", cpu=True), "{:.2f}"),
    ("jobs1_lps", "replay --jobs 1 lines/s", _rate("jobs1"), "{:,.0f}"),
    ("jobs2_lps", "replay --jobs 2 lines/s", _rate("jobs2"), "{:,.0f}"),
    ("default_lps", "replay (default jobs) lines/s", _rate("default"), "{:,.0f}"),
    ("jobs1_x_floor", "replay --jobs 1 x floor", _ratio(_rate("jobs1"), _rate("floor")), "{:.2f}"),
    (
        "default_x_floor",
        "replay (default jobs) x floor",
        _ratio(_rate("default"), _rate("floor")),
        "{:.2f}",
    ),
    ("speedup", "speed-up, 2 jobs over 1 (wall)", _ratio(_wall("jobs1"), _wall("jobs2")), "{:.2f}"),
    ("cpu_ratio", "CPU s, 2 jobs / 1 job", _ratio(_cpu("jobs2"), _cpu("jobs1")), "{:.3f}"),
    ("jobs1_cpu", "replay --jobs 1 CPU s", _cpu("jobs1"), "{:.2f}"),
    ("jobs2_cpu", "replay --jobs 2 CPU s", _cpu("jobs2"), "{:.2f}"),
)


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 4) for v in values],
    }


def summarize(rounds: list[Round]) -> dict[str, Any]:
    """Per workload, every row's median and range over rounds; the paired cross-workload ratio;
    the peak RSS of any replay; whether every replay wrote the same report."""
    names = list(dict.fromkeys(r.workload for r in rounds))
    rows: dict[str, dict[str, Any]] = {}
    for key, _, metric, _ in ROWS:
        rows[key] = {}
        for name in names:
            vals = [v for r in rounds if r.workload == name and (v := metric(r)) is not None]
            if vals:
                rows[key][name] = _stats(vals)
    by_index: dict[int, dict[str, Round]] = {}
    for r in rounds:
        by_index.setdefault(r.index, {})[r.workload] = r
    quiet_vs_busy: dict[str, list[float]] = {"wall": [], "cpu": []}
    for pair in by_index.values():
        if "busy" in pair and "quiet" in pair:
            for kind, cpu in (("wall", False), ("cpu", True)):
                q, b = _per_line("hot", cpu)(pair["quiet"]), _per_line("hot", cpu)(pair["busy"])
                if q is not None and b:
                    quiet_vs_busy[kind].append(q / b)
    rss = {
        name: max(
            (
                m.peak_rss_kb / 1024
                for r in rounds
                if r.workload == name
                for s, m in r.steps.items()
                if s in ("jobs1", "jobs2", "default") and m.peak_rss_kb
            ),
            default=0.0,
        )
        for name in names
    }
    replays = [r for r in rounds if r.digests]  # in-process rounds run no replay
    same = {
        name: all(len(set(r.digests.values())) == 1 for r in replays if r.workload == name)
        and len({d for r in replays if r.workload == name for d in r.digests.values()}) == 1
        for name in names
    }
    return {
        "workloads": names,
        "rounds": len(by_index),
        "replay_rounds": len({r.index for r in replays}),
        "rows": rows,
        "quiet_vs_busy": {k: _stats(v) for k, v in quiet_vs_busy.items() if v},
        "replay_peak_rss_mb": rss,
        "reports_identical": same,
        "loadavg": [round(r.load, 2) for r in rounds],
    }


def targets(summary: dict[str, Any], extra_rss_mb: float | None = None) -> list[dict[str, Any]]:
    """The issue's targets with their verdicts, one per workload where it applies."""
    out: list[dict[str, Any]] = []
    rows = summary["rows"]

    def add(name: str, value: float | None, limit: float, higher: bool, unit: str) -> None:
        met = None if value is None else (value >= limit if higher else value <= limit)
        val = None if value is None else round(value, 3)
        out.append({"target": name, "value": val, "limit": limit, "met": met, "unit": unit})

    def med(key: str, name: str) -> float | None:
        cell = rows.get(key, {}).get(name)
        return None if cell is None else float(cell["median"])

    for name in summary["workloads"]:
        add(
            f"auditor replay, default jobs, >= {GOALS['default_x_floor']:.1f} x floor ({name})",
            med("default_x_floor", name),
            GOALS["default_x_floor"],
            True,
            "x floor",
        )
    for name in summary["workloads"]:
        add(
            f"speed-up of 2 jobs over 1 >= {GOALS['speedup']} ({name})",
            med("speedup", name),
            GOALS["speedup"],
            True,
            "x",
        )
    for name in summary["workloads"]:
        add(
            f"CPU s with 2 jobs <= {GOALS['cpu_ratio']:.2f} x 1 job ({name})",
            med("cpu_ratio", name),
            GOALS["cpu_ratio"],
            False,
            "x",
        )
    for name in summary["workloads"]:
        add(
            f"hot path >= {GOALS['hot_x_floor']:.2f} x floor ({name})",
            med("hot_x_floor", name),
            GOALS["hot_x_floor"],
            True,
            "x floor",
        )
    qvb = summary["quiet_vs_busy"].get("wall")
    add(
        f"hot path time per line, quiet / busy <= {GOALS['quiet_vs_busy']:.2f}",
        None if qvb is None else qvb["median"],
        GOALS["quiet_vs_busy"],
        False,
        "x",
    )
    peaks = [v for v in summary["replay_peak_rss_mb"].values() if v]
    if extra_rss_mb:
        peaks.append(extra_rss_mb)
    add(
        f"auditor replay peak RSS <= {GOALS['replay_rss_mb']:g} MB, any jobs, any input size",
        max(peaks) if peaks else None,
        GOALS["replay_rss_mb"],
        False,
        "MB",
    )
    same = summary["reports_identical"]
    out.append(
        {
            "target": "replay reports identical with --jobs 1, --jobs 2 and default jobs",
            "value": same,
            "limit": True,
            "met": bool(same) and all(same.values()),
            "unit": "",
        }
    )
    return out


def render(summary: dict[str, Any], md: bool = False) -> str:
    """The rows as a table: median (min-max over rounds) per workload."""
    names = summary["workloads"]
    head = ("measurement", *names)
    body: list[tuple[str, ...]] = [head]
    for key, label, _, fmt in ROWS:
        cells = []
        for name in names:
            c = summary["rows"][key].get(name)
            if c is None:
                cells.append("-")
                continue
            shown = fmt.format(c["median"])
            if len(c["runs"]) > 1:
                shown += f" ({fmt.format(c['min'])}-{fmt.format(c['max'])})"
            cells.append(shown)
        body.append((label, *cells))
    body.append(
        (
            "replay peak RSS MB, any jobs",
            *(f"{summary['replay_peak_rss_mb'][n]:.1f}" for n in names),
        )
    )
    body.append(
        (
            "reports identical (1, 2, default jobs)",
            *("yes" if summary["reports_identical"][n] else "NO" for n in names),
        )
    )
    if md:
        rows = [body[0], tuple("---" for _ in head), *body[1:]]
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)
    widths = [max(len(r[i]) for r in body) for i in range(len(head))]
    text = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join([text[0], "-|-".join("-" * w for w in widths), *text[1:]])


def describe(summary: dict[str, Any]) -> str:
    lines = [render(summary)]
    for kind, label in (("wall", "time"), ("cpu", "CPU time")):
        q = summary["quiet_vs_busy"].get(kind)
        if q:
            lines.append(
                f"hot path {label} per line, quiet / busy (paired): {q['median']:.3f} "
                f"({q['min']:.3f}-{q['max']:.3f})"
            )
    rounds, replays = summary["rounds"], summary["replay_rounds"]
    extra = f" (replay rows: {replays})" if replays != rounds else ""
    lines.append(
        f"median (min-max) over {rounds} paired rounds{extra}; load average at each "
        f"workload's start: {summary['loadavg']}"
    )
    return "\n".join(lines)


def verdict_lines(goals: list[dict[str, Any]]) -> list[str]:
    out = []
    for g in goals:
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "NOT MET")
        val = g["value"]
        shown = "-" if val is None else (f"{val} {g['unit']}".strip())
        out.append(f"  {g['target']}: {shown} -> {state}")
    return out


def round_json(r: Round) -> dict[str, Any]:
    return {
        "workload": r.workload,
        "round": r.index,
        "load": round(r.load, 2),
        "digests": r.digests,
        "steps": {
            k: {
                "wall_s": round(m.wall_s, 4),
                "cpu_s": round(m.cpu_s, 4),
                "lines": m.lines,
                "peak_rss_mb": round(m.peak_rss_kb / 1024, 1),
                "error": m.error or None,
            }
            for k, m in r.steps.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cores", description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000, help="lines in each workload")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--masked-share", type=float, default=0.1)
    p.add_argument(
        "--repeat", type=int, default=3, help="paired rounds, replays end to end included"
    )
    p.add_argument(
        "--hot-rounds",
        type=int,
        default=HOT_ROUNDS,
        help="extra paired rounds of the floor and hot path only (default %(default)s)",
    )
    p.add_argument("--data-dir", type=Path, default=OUT)
    p.add_argument("--json", type=Path, default=OUT / "cores.json")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = p.parse_args(argv)
    ws = ensure_workloads(args.lines, args.seed, args.masked_share, args.data_dir)
    started, load0 = time.time(), os.getloadavg()
    rounds = []
    for i in range(max(1, args.repeat)):
        for w in rounds_order(ws, i):
            print(f"round {i + 1}/{args.repeat}: {w.name}", file=sys.stderr)
            rounds.append(measure_round(w, i))
    rounds += inproc_rounds(ws, max(1, args.repeat), max(0, args.hot_rounds))
    summary = summarize(rounds)
    goals = targets(summary)
    errors = [f"{r.workload} {k}: {m.error}" for r in rounds for k, m in r.steps.items() if m.error]
    print(f"workloads: {', '.join(f'{w.name} {w.log}' for w in ws)}")
    print(describe(summary))
    for e in errors:
        print(f"ERROR: {e}")
    print("targets:")
    print("\n".join(verdict_lines(goals)))
    result = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "workloads": {w.name: {"log": str(w.log), "rate": w.rate} for w in ws},
        "summary": summary,
        "targets": goals,
        "rounds": [round_json(r) for r in rounds],
        "errors": errors,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    if args.markdown:
        args.markdown.write_text(render(summary, md=True) + "\n")
    print(f"results: {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
