"""``make bench``: all measurements in one run, so ratios hold on a noisy box.

    .venv/bin/python -m bench.run [--lines 1000000] [--json bench/out/results.json]

1. rounds on two generated workloads alike but for the request rate, busy (50 requests/s, the
   main file) and quiet (5 requests/s), taken in turn (bench/cores.py): the floor (chunked
   reader + ``orjson.loads`` per line, bench/inproc.py), the one-process hot path
   (``pipeline.cli.replay.audit_path``; on busy also ``parse``, which splits it), and
   ``auditor replay FILE --decisions FILE --format json`` as a subprocess, start-up included,
   with ``--jobs 1``, ``--jobs 2`` and its default jobs; then ``--hot-rounds`` more rounds of
   the floor and the hot path alone, for the one-process targets, whose margins are smallest
2. the replay targets from those rounds, each a median of ratios paired within a round
3. ``auditor replay`` with the main file given 10 times (streaming: peak RSS must not grow)
4. peers answering the same question: naive Python, msgspec partial decode, jq, Miller
5. the live path (bench/live.py), when ``auditor run`` exists

In-process measurements run in fresh interpreters; every subprocess is reaped with
``os.wait4`` so its own peak RSS and CPU are known. The table of the main file keeps the best
of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.generate import GenConfig, write_decisions, write_log
from bench.peers.common import answer
from bench.peers.tools import jq_command, mlr_command, tool_answer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PY = sys.executable
LIVE_UNAVAILABLE = 3  # bench.live's exit code when ``auditor run`` does not exist

TARGETS = {  # the rest, per workload, in bench/cores.py GOALS
    "replay_rss_mb": 60.0,
    "live_cpu_pct": 2.0,
    "live_rss_mb": 40.0,
}


@dataclass
class Measure:
    name: str
    kind: str  # floor | inproc | e2e | peer | live
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_kb: int = 0
    lines: int = 0
    bytes: int = 0
    answer: dict[str, Any] | None = None
    runs: list[float] = field(default_factory=list)
    note: str = ""
    error: str = ""
    digest: str = ""  # sha256 of a replay's report (stdout)

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s if self.wall_s > 0 else 0.0

    def better(self, other: Measure) -> Measure:
        """Keep the fastest run; remember every run's wall time."""
        best = other if other.wall_s < self.wall_s or not self.wall_s else self
        best.runs = [*self.runs, *other.runs]
        best.peak_rss_kb = max(self.peak_rss_kb, other.peak_rss_kb)
        return best


# -- running things --------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildResult:
    rc: int
    wall_s: float
    cpu_s: float
    peak_rss_kb: int
    stdout: bytes
    stderr: bytes


TIME_BIN = Path("/usr/bin/time")


def run_child(argv: list[str], timeout: float = 3600.0) -> ChildResult:
    """Run to completion, measuring wall time, CPU and the child's own peak RSS.

    ``wait4``'s ``ru_maxrss`` is not usable here: with ``vfork`` the child's high-water mark
    starts at this harness's RSS. GNU time forks from a tiny process, so its ``%M`` is the
    child's own peak.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        full = (
            [str(TIME_BIN), "-q", "-f", "%M", "-o", rss.name, *argv] if TIME_BIN.exists() else argv
        )
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        peak = usage.ru_maxrss
        text = rss.read().split()
        if TIME_BIN.exists() and text and text[-1].isdigit():
            peak = int(text[-1])
        return ChildResult(
            proc.returncode, wall, usage.ru_utime + usage.ru_stime, peak, out.read(), err.read()
        )


def auditor_argv() -> list[str]:
    script = Path(PY).parent / "auditor"
    return [str(script)] if script.exists() else [PY, "-m", "pipeline.cli.main"]


def inproc(mode: str, path: Path, decisions: Path) -> Measure:
    r = run_child([PY, "-m", "bench.inproc", mode, str(path), "--decisions", str(decisions)])
    rc, out, err = r.rc, r.stdout, r.stderr
    m = Measure(
        {
            "floor": "floor: read + orjson.loads",
            "parse": "parse: + TraefikParser",
            "hot": "hot path: audit_path",
        }[mode],
        "floor" if mode == "floor" else "inproc",
    )
    if rc != 0:
        m.error = err.decode(errors="replace")[-500:]
        return m
    d = orjson.loads(out)
    m.wall_s, m.cpu_s, m.peak_rss_kb = d["wall_s"], d["cpu_s"], d["peak_rss_kb"]
    m.lines, m.bytes, m.answer = d["lines"], d["bytes"], d.get("answer")
    m.runs = [m.wall_s]
    if mode == "hot":
        m.note = f"finish {d['finish_s'] * 1000:.0f} ms; findings {len(d['findings'])}"
    return m


def replay_answer(report: dict[str, Any]) -> dict[str, Any]:
    """Lines and internal lines from replay's JSON report (it shows top clients only)."""
    summary = report["summary"]
    internal = sum(ep["internal_requests"] for ep in summary["entrypoints"])
    return {"lines": summary["lines"]["read"], "internal": internal}


def e2e(path: Path, decisions: Path, copies: int = 1, jobs: int = 0) -> Measure:
    argv = [
        *auditor_argv(),
        "replay",
        *[str(path)] * copies,
        "--decisions",
        str(decisions),
        "--format",
        "json",
        *(["--jobs", str(jobs)] if jobs else []),
    ]
    r = run_child(argv)
    rc, out, err = r.rc, r.stdout, r.stderr
    name = "auditor replay (end to end)" if copies == 1 else f"auditor replay, file x{copies}"
    if jobs:
        name = f"auditor replay --jobs {jobs}"
    m = Measure(name, "e2e", r.wall_s, r.cpu_s, r.peak_rss_kb, runs=[r.wall_s])
    m.bytes = path.stat().st_size * copies
    m.digest = hashlib.sha256(out).hexdigest()
    if rc not in (0, 1):
        m.error = f"exit {rc}: {err.decode(errors='replace')[-500:]}"
        return m
    report = orjson.loads(out)
    m.answer = replay_answer(report)
    m.lines = m.answer["lines"]
    m.note = f"exit {rc}; findings {report['summary']['findings']}"
    return m


PEERS: dict[str, str] = {
    "naive": "peer: naive Python (json + ipaddress)",
    "msgspec": "peer: msgspec partial decode",
    "jq": "peer: jq",
    "mlr": "peer: Miller (mlr)",
}


def peer(key: str, path: Path) -> Measure:
    if key == "naive":
        argv = [PY, "-m", "bench.peers.naive", str(path)]
    elif key == "msgspec":
        argv = [PY, "-m", "bench.peers.msgspec_partial", str(path)]
    elif key == "jq":
        argv = jq_command(str(path))
    else:
        argv = mlr_command(str(path))
    r = run_child(argv)
    rc, out, err = r.rc, r.stdout, r.stderr
    m = Measure(
        PEERS[key],
        "peer",
        r.wall_s,
        r.cpu_s,
        r.peak_rss_kb,
        bytes=path.stat().st_size,
        runs=[r.wall_s],
    )
    if rc != 0:
        m.error = f"exit {rc}: {err.decode(errors='replace')[-500:]}"
        return m
    m.answer = orjson.loads(out) if key in ("naive", "msgspec") else tool_answer(out)
    m.lines = m.answer["lines"]
    return m


def live(path: Path, rate: int, duration: float, burst: int, quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "live.json"
        argv = [
            PY,
            "-m",
            "bench.live",
            "--source",
            str(path),
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--burst-lines",
            str(burst),
            "--json",
            str(out),
        ]
        if quick:
            argv.append("--quick")
        r = run_child(argv, timeout=1800)
        rc, stdout, err = r.rc, r.stdout, r.stderr
        if rc == LIVE_UNAVAILABLE:
            return {"available": False, "reason": err.decode(errors="replace").strip()}
        if rc != 0 or not out.exists():
            return {"available": True, "error": f"exit {rc}: {err.decode(errors='replace')[-800:]}"}
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        result["available"] = True
        sys.stderr.write(stdout.decode(errors="replace"))
        return result


# -- data and machine ------------------------------------------------------------------------
def ensure_data(args: argparse.Namespace) -> tuple[Path, Path]:
    cfg = GenConfig(lines=args.lines, seed=args.seed, masked_share=args.masked_share)
    stem = f"access-{args.lines}-s{args.seed}-m{args.masked_share:g}"
    log = args.data_dir / f"{stem}.log"
    dec = args.data_dir / f"decisions-{args.lines}-s{args.seed}-m{args.masked_share:g}.json"
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
    return log, dec


def _version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"


_LOADED = (
    "import sys, pipeline.cli.main, pipeline.cli.replay, pipeline.sources.parallel\n"
    "import pipeline.live.runner\n"
    "files = [getattr(m, '__file__', None) or '' for m in list(sys.modules.values())]\n"
    "print('\\n'.join(sorted(files)))"
)


def code_fingerprint() -> str:
    """Hash of the auditor modules replay and run load, to notice code changing mid-run."""
    r = subprocess.run([PY, "-c", _LOADED], capture_output=True, text=True, check=False, cwd=ROOT)
    h = hashlib.sha256()
    for name in r.stdout.splitlines():
        f = Path(name)
        if f.suffix == ".py" and f.is_relative_to(ROOT) and ".venv" not in f.parts:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def machine() -> dict[str, Any]:
    import msgspec

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "orjson": orjson.__version__,
        "msgspec": msgspec.__version__,
        "jq": _version(["jq", "--version"]),
        "mlr": _version(["mlr", "--version"]),
        "commit": _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "uncommitted_files": len(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.splitlines()
        ),
    }


# -- report ----------------------------------------------------------------------------------
def check_answers(reference: dict[str, Any], rows: list[Measure]) -> list[str]:
    warnings = []
    for m in rows:
        if m.answer is None or m.error:
            continue
        keys = [
            k for k in ("lines", "internal", "distinct_clients", "clients_digest") if k in m.answer
        ]
        bad = [k for k in keys if m.answer[k] != reference[k]]
        m.note = (m.note + "; " if m.note else "") + ("counts agree" if not bad else "MISMATCH")
        if bad:
            got = {k: m.answer[k] for k in bad}
            want = {k: reference[k] for k in bad}
            warnings.append(f"{m.name}: answer differs from the hot path: {got} != {want}")
    return warnings


def targets(e2e10: Measure | None, live_res: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets not measured in the rounds: the live path (the 10x replay's RSS joins the
    rounds' peak RSS target in bench/cores.py)."""
    out = []

    def add(name: str, value: float | None, target: float, unit: str) -> None:
        met = None if value is None else value <= target
        val = None if value is None else round(value, 3)
        out.append({"target": name, "value": val, "limit": target, "met": met, "unit": unit})

    add(
        "auditor replay peak RSS on 10x input <= 60 MB",
        e2e10.peak_rss_kb / 1024 if e2e10 and e2e10.peak_rss_kb else None,
        TARGETS["replay_rss_mb"],
        "MB",
    )
    steady = live_res.get("steady") if live_res.get("available") else None
    add(
        "auditor run at 1,000 lines/s: CPU <= 2% of one core",
        steady["cpu_pct"] if steady else None,
        TARGETS["live_cpu_pct"],
        "% of a core",
    )
    add(
        "auditor run at 1,000 lines/s: RSS <= 40 MB",
        steady["peak_rss_mb"] if steady else None,
        TARGETS["live_rss_mb"],
        "MB",
    )
    return out


Cells = tuple[str, ...]


def cells(
    rows: list[Measure], floor: Measure, hot: Measure, e2e1: Measure
) -> tuple[Cells, list[Cells]]:
    head = (
        "measurement",
        "lines/s",
        "MB/s",
        "wall s",
        "CPU s",
        "peak RSS MB",
        "x floor",
        "x floor (CPU)",
        "hot path x",
        "replay x",
        "note",
    )
    floor_cpu = floor.cpu_s / floor.lines if floor.lines and floor.cpu_s else 0.0
    body = []
    for m in rows:
        if m.error:
            body.append((m.name, "ERROR", *[""] * 8, m.error.strip().splitlines()[-1][:60]))
            continue
        rate = m.lines_per_s
        body.append(
            (
                m.name,
                f"{rate:,.0f}",
                f"{m.mb_per_s:,.1f}",
                f"{m.wall_s:.2f}",
                f"{m.cpu_s:.2f}",
                f"{m.peak_rss_kb / 1024:.1f}" if m.peak_rss_kb else "-",
                f"{rate / floor.lines_per_s:.2f}" if floor.lines_per_s else "-",
                f"{floor_cpu / (m.cpu_s / m.lines):.2f}"
                if floor_cpu and m.cpu_s and m.lines
                else "-",
                f"{hot.lines_per_s / rate:.2f}" if m.kind == "peer" and rate else "",
                f"{e2e1.lines_per_s / rate:.2f}" if m.kind == "peer" and rate else "",
                m.note,
            )
        )
    return head, body


def table(rows: list[Measure], floor: Measure, hot: Measure, e2e1: Measure) -> str:
    head, body = cells(rows, floor, hot, e2e1)
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [
        " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body
    ]
    return "\n".join(lines)


def markdown(rows: list[Measure], floor: Measure, hot: Measure, e2e1: Measure) -> str:
    head, body = cells(rows, floor, hot, e2e1)

    def md(row: Cells) -> str:
        return "| " + " | ".join(row) + " |"

    return "\n".join([md(head), "|" + "---|" * len(head), *[md(b) for b in body]])


def live_text(res: dict[str, Any]) -> str:
    if not res:
        return "live path: skipped (--no-live)"
    if not res.get("available"):
        return f"live path: not measured: {res.get('reason', '')}"
    if res.get("error"):
        return f"live path: ERROR {res['error']}"
    s, b = res["steady"], res["burst"]
    return (
        f"live path (auditor run): steady {s['rate_target']} lines/s for {s['seconds']:.0f} s: "
        f"CPU {s['cpu_pct']:.2f}% of one core, RSS {s['rss_mb']:.1f} MB "
        f"(peak {s['peak_rss_mb']:.1f} MB), {s['lines_seen']} of {s['lines_written']} lines seen; "
        f"burst: {b['lines_per_s']:,.0f} lines/s ({b['mb_per_s']:.1f} MB/s) sustained over "
        f"{b['lines']} lines, CPU {b['cpu_pct']:.0f}% of one core "
        f"({b.get('lines_per_cpu_s') or 0:,.0f} lines per CPU second), "
        f"peak RSS {b['peak_rss_mb']:.1f} MB"
    )


# -- main ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--masked-share", type=float, default=0.1)
    p.add_argument("--data-dir", type=Path, default=OUT, help="where the generated input lives")
    p.add_argument("--repeat", type=int, default=3, help="runs of each fast measurement (best)")
    p.add_argument(
        "--hot-rounds",
        type=int,
        help="extra paired rounds of the floor and hot path only, for the one-process "
        "targets (default: bench/cores.py's HOT_ROUNDS; 0 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one run each, no 10x replay, short live phases (smoke test)",
    )
    p.add_argument("--no-live", action="store_true", help="skip bench.live")
    p.add_argument("--no-10x", action="store_true", help="skip replay of the file given 10 times")
    p.add_argument(
        "--peers",
        default="naive,msgspec,jq,mlr",
        help="comma-separated subset of naive,msgspec,jq,mlr",
    )
    p.add_argument("--live-rate", type=int, default=1000)
    p.add_argument("--live-duration", type=float, default=60.0)
    p.add_argument("--live-burst-lines", type=int, default=300_000)
    p.add_argument("--json", type=Path, default=OUT / "results.json")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    peers = [k for k in args.peers.split(",") if k]
    if unknown := [k for k in peers if k not in PEERS]:
        print(f"unknown peers: {unknown}", file=sys.stderr)
        return 2
    from bench import cores  # it imports this module

    repeat = 1 if args.quick else max(1, args.repeat)
    log, dec = ensure_data(args)
    workloads = cores.ensure_workloads(args.lines, args.seed, args.masked_share, args.data_dir)
    info = machine()
    started = time.time()
    load_before = os.getloadavg()
    code_before = code_fingerprint()

    best: dict[str, Measure] = {}
    rounds: list[cores.Round] = []
    for i in range(repeat):
        for w in cores.rounds_order(workloads, i):
            print(f"round {i + 1}/{repeat}: {w.name} ({w.rate:g} requests/s)", file=sys.stderr)
            r = cores.measure_round(w, i, parse=w.log == log)
            rounds.append(r)
            if w.log == log:  # the main file's table: best of the rounds
                for key, m in r.steps.items():
                    best[key] = m if key not in best else best[key].better(m)
    hot_rounds = args.hot_rounds
    if hot_rounds is None:
        hot_rounds = 0 if args.quick else cores.HOT_ROUNDS
    rounds += cores.inproc_rounds(workloads, repeat, max(0, hot_rounds))
    floor, parse_m, hot, e2e1 = best["floor"], best["parse"], best["hot"], best["default"]
    e2e_jobs = [best[f"jobs{j}"] for j in cores.JOBS]
    e2e10 = None
    if not (args.quick or args.no_10x):
        print("replay of the file given 10 times", file=sys.stderr)
        e2e10 = e2e(log, dec, copies=10)
    peer_rows = []
    for k in peers:
        print(f"peer {k}", file=sys.stderr)
        peer_rows.append(peer(k, log))
    live_res: dict[str, Any] = {}
    if not args.no_live:
        print("live path", file=sys.stderr)
        live_res = live(
            log,
            args.live_rate,
            5.0 if args.quick else args.live_duration,
            min(args.live_burst_lines, args.lines),
            args.quick,
        )

    extra = [m for m in (*e2e_jobs, e2e10) if m is not None]
    rows = [floor, parse_m, hot, e2e1, *extra, *peer_rows]
    reference = hot.answer or answer(0, 0, {})
    warnings = [
        f"{m.name}: {m.error.strip().splitlines()[-1] if m.error else ''}" for m in rows if m.error
    ]
    warnings += check_answers(reference, [e2e1, *e2e_jobs, *peer_rows])
    if e2e10 is not None:
        warnings += check_answers(
            {"lines": 10 * reference["lines"], "internal": 10 * reference["internal"]}, [e2e10]
        )
    if e2e10 and e2e10.answer and e2e10.answer["lines"] != 10 * reference["lines"]:
        warnings.append("replay x10 did not read 10x the lines")
    load_after = os.getloadavg()
    code_after = code_fingerprint()
    if code_after != code_before:
        warnings.append(
            f"the auditor's code changed during the run ({code_before} -> {code_after}): "
            "the figures mix versions; run again"
        )
    summary = cores.summarize(rounds)
    goals = [
        *cores.targets(summary, e2e10.peak_rss_kb / 1024 if e2e10 else None),
        *targets(e2e10, live_res),
    ]
    if not all(summary["reports_identical"].values()):
        warnings.append("auditor replay wrote different reports with different --jobs")

    print()
    print(
        f"input: {log} ({floor.lines:,} lines, {log.stat().st_size / 1e6:,.0f} MB, "
        f"{log.stat().st_size / max(floor.lines, 1):.0f} B/line)"
    )
    print(
        f"machine: {info['cpu_model']}, {info['usable_cores']} cores, Python {info['python']}, "
        f"orjson {info['orjson']}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    print(f"main file, best of {repeat} rounds:")
    print(table(rows, floor, hot, e2e1))
    print()
    print(
        "both cores, busy and quiet: "
        + ", ".join(f"{w.name} {w.rate:g} requests/s ({w.log.name})" for w in workloads)
    )
    print(cores.describe(summary))
    for warning in warnings:
        print(f"WARNING: {warning}")
    print(live_text(live_res))
    print("targets:")
    print("\n".join(cores.verdict_lines(goals)))

    result = {
        "input": {
            "path": str(log),
            "decisions": str(dec),
            "lines": floor.lines,
            "bytes": log.stat().st_size,
            "seed": args.seed,
            "masked_share": args.masked_share,
        },
        "machine": info,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "code_fingerprint": code_before,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "repeat": repeat,
        "reference_answer": reference,
        "measurements": [
            {
                "name": m.name,
                "kind": m.kind,
                "lines": m.lines,
                "bytes": m.bytes,
                "wall_s": round(m.wall_s, 4),
                "runs_s": [round(r, 4) for r in m.runs],
                "cpu_s": round(m.cpu_s, 4),
                "peak_rss_mb": round(m.peak_rss_kb / 1024, 1),
                "lines_per_s": round(m.lines_per_s, 1),
                "mb_per_s": round(m.mb_per_s, 2),
                "vs_floor": round(m.lines_per_s / floor.lines_per_s, 4)
                if floor.lines_per_s
                else None,
                "vs_floor_cpu": round((floor.cpu_s / floor.lines) / (m.cpu_s / m.lines), 4)
                if floor.lines and floor.cpu_s and m.lines and m.cpu_s
                else None,
                "answer": m.answer,
                "note": m.note,
                "error": m.error or None,
            }
            for m in rows
        ],
        "live": live_res or None,
        "cores": {
            "workloads": {w.name: {"log": str(w.log), "rate": w.rate} for w in workloads},
            "summary": summary,
            "rounds": [cores.round_json(r) for r in rounds],
        },
        "targets": goals,
        "warnings": warnings,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    if args.markdown:
        args.markdown.write_text(markdown(rows, floor, hot, e2e1) + "\n")
    print(f"results: {args.json}")
    return 1 if any(m.error for m in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
