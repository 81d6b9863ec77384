"""Before/after: this tree against another one, measured in one run, interleaved run by run.

    .venv/bin/python -m bench.compare --before /work/baseline [--lines 1000000] [--repeat 3]
        [--live-duration 60] [--json bench/out/compare.json] [--markdown OUT]

"after" is this tree; "before" is another checkout with its own ``.venv`` (project installed).
On ``make bench``'s generated input (bench/out), each run measures the floor and the hot path
(bench/inproc.py), ``auditor replay --format json`` with the default jobs, and the live path
(bench/live.py: ``auditor run`` at ``--live-rate`` lines/s), each step once per tree back to
back (A B A B ...), so machine noise hits both alike. A tree runs its own bench scripts and
``auditor`` with its own venv, in its own directory. Both trees must answer alike (lines,
internal lines, clients, findings), or the comparison is not of the same work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.run import (
    OUT,
    ROOT,
    TARGETS,
    ChildResult,
    code_fingerprint,
    ensure_data,
    machine,
    replay_answer,
    run_child,
)

Step = tuple[dict[str, float], dict[str, Any]]  # metrics, answer
Runs = dict[int, float]  # run number -> value


@dataclass(frozen=True)
class Tree:
    label: str  # before | after
    root: Path

    def run(self, tool: str, *args: str, ok: tuple[int, ...] = (0,)) -> ChildResult:
        """``tool`` from this tree's venv, in this tree (``env -C``: run_child starts in ROOT)."""
        r = run_child(["env", "-C", str(self.root), str(self.root / ".venv/bin" / tool), *args])
        if r.rc not in ok:
            last = (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"{tool} {' '.join(args[:2])}: exit {r.rc}: {last}")
        return r

    def describe(self) -> str:
        def out(*argv: str) -> str:
            r = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=self.root)
            return r.stdout.strip()

        code = "import platform, orjson; print(platform.python_version(), orjson.__version__)"
        py = out(str(self.root / ".venv/bin/python"), "-c", code).replace(" ", ", orjson ")
        dirty = len(out("git", "status", "--porcelain").splitlines())
        commit = out("git", "rev-parse", "--short", "HEAD") + (f" +{dirty} changed" * bool(dirty))
        return f"{self.label}: {self.root} ({commit}; Python {py})"


def inproc(tree: Tree, mode: str, log: Path, dec: Path) -> Step:
    r = tree.run("python", "-m", "bench.inproc", mode, str(log), "--decisions", str(dec))
    d = orjson.loads(r.stdout)
    metrics = {f"{mode}.lps": d["lines"] / d["wall_s"], f"{mode}.rss": d["peak_rss_kb"] / 1024}
    return metrics, {"lines": d["lines"], **d.get("answer", {}), "findings": d.get("findings")}


def replay(tree: Tree, log: Path, dec: Path) -> Step:
    argv = ["replay", str(log), "--decisions", str(dec), "--format", "json"]
    r = tree.run("auditor", *argv, ok=(0, 1))  # 1: it has findings
    report = orjson.loads(r.stdout)
    ans = replay_answer(report)
    ans["findings"] = sorted([f["kind"], f["target"]] for f in report["findings"])
    metrics = {
        "replay.lps": ans["lines"] / r.wall_s,
        "replay.wall": r.wall_s,
        "replay.cpu": r.cpu_s,
        "replay.rss": r.peak_rss_kb / 1024,
    }
    return metrics, {**ans, "exit": r.rc}


def live(tree: Tree, log: Path, rate: int, duration: float, burst: int) -> Step:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "live.json"
        argv = ["--source", str(log), "--rate", str(rate), "--duration", str(duration)]
        tree.run(
            "python", "-m", "bench.live", *argv, "--burst-lines", str(burst), "--json", str(out)
        )
        res = orjson.loads(out.read_bytes())
    s = res["steady"]
    metrics = {
        "live.cpu": s["cpu_pct"],
        "live.rss": s["rss_mb"],
        "live.peak": s["peak_rss_mb"],
        "live.burst": res["burst"]["lines_per_s"],
    }
    return metrics, {"steady lines all seen": s["lines_seen"] == s["lines_written"]}


ROWS = (  # key, label, format
    ("floor.lps", "floor lines/s", "{:,.0f}"),
    ("hot.lps", "hot path lines/s", "{:,.0f}"),
    ("hot.x_floor", "hot path x floor", "{:.3f}"),
    ("hot.rss", "hot path peak RSS MB", "{:.1f}"),
    ("replay.lps", "replay lines/s", "{:,.0f}"),
    ("replay.wall", "replay wall s", "{:.2f}"),
    ("replay.cpu", "replay CPU s", "{:.2f}"),
    ("replay.rss", "replay peak RSS MB", "{:.1f}"),
    ("live.cpu", "run: CPU % of a core", "{:.2f}"),
    ("live.rss", "run: RSS MB", "{:.1f}"),
    ("live.peak", "run: peak RSS MB", "{:.1f}"),
    ("live.burst", "run: burst lines/s", "{:,.0f}"),
)
GOALS = {"live.cpu": "live_cpu_pct", "live.peak": "live_rss_mb", "replay.rss": "replay_rss_mb"}


def stats(runs: Runs) -> dict[str, Any]:
    xs = list(runs.values())
    med = statistics.median(xs)
    return {"median": med, "spread_pct": 50 * (max(xs) - min(xs)) / med if med else 0.0, "runs": xs}


def summarize(samples: dict[str, dict[str, Runs]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for key, label, fmt in ROWS:
        b, a = samples["before"].get(key, {}), samples["after"].get(key, {})
        both = sorted(a.keys() & b.keys())  # a run that failed in one tree counts in neither
        b, a = {i: b[i] for i in both}, {i: a[i] for i in both}
        if both:
            pairs = [a[i] / b[i] for i in both if b[i]]
            med_b, med_a = statistics.median(b.values()), statistics.median(a.values())
            rows.append(
                {
                    "key": key,
                    "label": label,
                    "fmt": fmt,
                    "before": stats(b),
                    "after": stats(a),
                    "ratio": med_a / med_b if med_b else None,
                    "ratio_runs": pairs,
                }
            )
    return rows


def render(rows: list[dict[str, Any]], md: bool = False) -> str:
    def value(s: dict[str, Any], fmt: str) -> str:
        return fmt.format(s["median"]) + (f" ±{s['spread_pct']:.1f}%" * (len(s["runs"]) > 1))

    body: list[tuple[str, ...]] = [("measurement", "before", "after", "after/before")]
    for r in rows:
        ratio, p = "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["ratio_runs"]
        ratio += f" ({min(p):.2f}-{max(p):.2f})" * (len(p) > 1)
        body.append((r["label"], value(r["before"], r["fmt"]), value(r["after"], r["fmt"]), ratio))
    if md:
        return "\n".join("| " + " | ".join(c) + " |" for c in [body[0], ("---",) * 4, *body[1:]])
    widths = [max(len(c[i]) for c in body) for i in range(4)]
    text = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join([text[0], "-|-".join("-" * w for w in widths), *text[1:]])


def check(answers: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """Each tree answers the same every run, its steps agree, and both trees answer alike."""
    warnings = []
    for (step, label), seen in answers.items():
        if any(x != seen[0] for x in seen):
            warnings.append(f"{step}: {label} answered differently between runs")
        before = answers.get((step, "before"), seen)[0]
        if label == "after" and before != seen[0]:
            diff = {k: (before.get(k), v) for k, v in seen[0].items() if before.get(k) != v}
            warnings.append(f"{step}: before and after differ (before, after): {diff}")
    for label in ("before", "after"):
        got = {step: answers.get((step, label), [{}])[0] for step in ("floor", "hot", "replay")}
        lines = {step: a.get("lines") for step, a in got.items()}
        if len(set(lines.values())) > 1:
            warnings.append(f"{label}: the steps read different numbers of lines: {lines}")
        hot, rep = got["hot"], got["replay"]
        if (hot.get("internal"), len(hot.get("findings") or ())) != (
            rep.get("internal"),
            len(rep.get("findings") or ()),
        ):
            warnings.append(f"{label}: hot path and replay differ in internal lines or findings")
    return warnings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, required=True, help="the other tree (with a .venv)")
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs per tree")
    p.add_argument("--live-duration", type=float, default=60.0, help="steady seconds (0: skip)")
    p.add_argument("--live-rate", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--masked-share", type=float, default=0.1)
    p.add_argument("--data-dir", type=Path, default=OUT, help="where the generated input lives")
    p.add_argument("--json", type=Path, default=OUT / "compare.json")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.repeat = max(1, args.repeat)
    os.environ["GIT_OPTIONAL_LOCKS"] = "0"  # git status must not touch the index of a busy tree
    trees = (Tree("before", args.before.resolve()), Tree("after", ROOT))
    if missing := [str(t.root) for t in trees if not (t.root / ".venv/bin/auditor").exists()]:
        print(f"no .venv/bin/auditor in {', '.join(missing)}", file=sys.stderr)
        return 2
    log, dec = ensure_data(args)
    burst = min(300_000, args.lines)
    steps: dict[str, Callable[[Tree], Step]] = {
        "floor": lambda t: inproc(t, "floor", log, dec),
        "hot": lambda t: inproc(t, "hot", log, dec),
        "replay": lambda t: replay(t, log, dec),
    }
    if args.live_duration > 0:
        steps["live"] = lambda t: live(t, log, args.live_rate, args.live_duration, burst)
    info, started, load0, code0 = machine(), time.time(), os.getloadavg(), code_fingerprint()

    samples: dict[str, dict[str, Runs]] = {t.label: {} for t in trees}
    answers: dict[tuple[str, str], list[dict[str, Any]]] = {}
    warnings: list[str] = []
    for i in range(args.repeat):
        for step, measure in steps.items():
            for t in trees:
                print(f"run {i + 1}/{args.repeat}: {step}, {t.label}", file=sys.stderr)
                try:
                    metrics, ans = measure(t)
                except (RuntimeError, OSError, ValueError, KeyError) as exc:
                    warnings.append(f"run {i + 1}, {step}, {t.label}: {exc!r}")
                    continue
                for key, v in metrics.items():
                    samples[t.label].setdefault(key, {})[i] = v
                answers.setdefault((step, t.label), []).append(ans)
    for s in samples.values():
        hot, fl = s.get("hot.lps", {}), s.get("floor.lps", {})
        s["hot.x_floor"] = {i: hot[i] / fl[i] for i in hot if i in fl}
    rows = summarize(samples)
    warnings += check(answers)
    load1, code1 = os.getloadavg(), code_fingerprint()
    if code1 != code0:
        warnings.append(f"after's code changed during the run ({code0} -> {code1}): run again")

    size = log.stat().st_size
    shown = log.relative_to(ROOT) if log.is_relative_to(ROOT) else log
    print(f"\ninput: {shown} ({args.lines:,} lines, {size / 1e6:,.0f} MB)")
    print(f"machine: {info['cpu_model']}, {info['usable_cores']} cores, Python {info['python']}")
    print(*(t.describe() for t in trees), sep="\n")
    live_text = f"run: {args.live_rate:,} lines/s for {args.live_duration:g} s; " * (
        "live" in steps
    )
    print(
        f"runs a tree: {args.repeat}, interleaved; {live_text}load {load0[0]:.2f} -> {load1[0]:.2f}"
    )
    print(render(rows))
    print("median ±half the range over runs; after/before: ratio of the medians (range of")
    print("run-by-run ratios); replay: default jobs, peak RSS of the largest process")
    if ref := answers.get(("hot", "after"), [{}])[0]:
        who = "after" if warnings else "both trees"
        print(
            f"{who}: {ref['lines']:,} lines, {ref['internal']:,} internal, "
            f"{ref['distinct_clients']:,} clients, {len(ref['findings'])} findings"
        )
    for r in rows:
        if limit := TARGETS.get(GOALS.get(r["key"], "")):
            b, a = r["before"]["median"], r["after"]["median"]
            met = "met" if a <= limit else "NOT MET"
            print(f"target: {r['label']} <= {limit:g}: before {b:.2f}, after {a:.2f}: {met}")
    for w in warnings:
        print(textwrap.fill(f"WARNING: {w}", 80, subsequent_indent="  "))

    result = {
        "input": {"path": str(log), "decisions": str(dec), "lines": args.lines, "bytes": size},
        "machine": info,
        "trees": {t.label: t.describe() for t in trees},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "repeat": args.repeat,
        "live": {"rate": args.live_rate, "duration_s": args.live_duration, "burst_lines": burst},
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in load1],
        "code_fingerprint": code0,
        "rows": [{k: v for k, v in r.items() if k != "fmt"} for r in rows],
        "answers": {f"{step} {label}": a for (step, label), a in answers.items()},
        "warnings": warnings,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    if args.markdown:
        args.markdown.write_text(render(rows, md=True) + "\n")
    print(f"results: {args.json}")
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
