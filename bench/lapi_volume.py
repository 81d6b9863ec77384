"""A real CrowdSec LAPI holding a community-blocklist-sized set of decisions: what the startup
sync costs ``auditor run``, before and after, in one run.

    .venv/bin/python -m bench.lapi_volume [--decisions 100000] [--before DIR] [--repeat 3]
        [--json OUT] [--markdown OUT]

Starts CrowdSec 1.4.6's LAPI on loopback (tests/support/crowdsec.py), measures an idle sidecar,
then loads ``--decisions`` decisions with ``cscli decisions import`` (a CSV of IPv4 and IPv6
addresses and IPv4 /24 ranges, all public, plus ``--internal`` on k3s pod, service and private
addresses) and measures, for each tree (this one is "after"; ``--before`` is another checkout,
e.g. ``git worktree add /tmp/before HEAD``, run with its own ``.venv`` if it has one, else with
this interpreter from its directory), interleaved run by run:

- sync: a child process polls the stream once with ``startup=true`` and feeds every delta to an
  engine (as ``auditor run`` does): wall seconds from the request to the engine holding every
  decision, and its peak RSS; the LAPI's own time to send the whole answer is measured alone;
- sidecar: ``auditor run`` against the LAPI on an empty access log; its RSS once
  ``auditor_decisions_active`` shows every decision and a few seconds later, and its VmHWM.

Both trees must hold the same number of decisions and internal bans, or it is not the same work.
The load average is printed: on a shared machine, read the wall times with it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (
    "crowdsecurity/ssh-bf",
    "crowdsecurity/http-probing",
    "crowdsecurity/http-bad-user-agent",
    "crowdsecurity/http-crawl-non_statics",
    "crowdsecurity/CVE-2021-41773",
)
# Public address space the generator draws from (no RFC 1918, CGNAT, loopback, multicast...).
_V4_FIRST = [o for o in range(1, 224) if o not in (10, 100, 127, 169, 172, 192, 198, 203)]
_V6_PREFIXES = (0x2A01, 0x2A02, 0x2604, 0x2001_0470 >> 16, 0x2400, 0x2C0F)
INTERNAL_VALUES = (
    ("ip", "10.42.{a}.{b}"),  # k3s pods
    ("ip", "10.43.{a}.{b}"),  # k3s services
    ("ip", "192.168.{a}.{b}"),  # a node's LAN address
    ("range", "10.42.{c}.0/24"),  # a pod range
)
_ACTIVE = re.compile(r"^auditor_decisions_active\{[^}]*\}\s+(\S+)", re.MULTILINE)
_FINDINGS = re.compile(r'^auditor_findings_active\{kind="internal_ban"[^}]*\}\s+(\S+)', re.M)


@dataclass(frozen=True, slots=True)
class Row:
    duration: str
    reason: str
    scope: str  # ip | range
    type: str  # ban | captcha
    value: str


def volume_rows(n: int, *, internal: int = 20, seed: int = 1) -> list[Row]:
    """``n`` decisions on distinct values, ``internal`` of them on internal targets (the first
    ones: pods, services, a private address, a pod range), the rest public: 70% IPv4
    addresses, 20% IPv6 addresses, 10% IPv4 /24 ranges. Deterministic for a seed."""
    rng = random.Random(seed)
    rows: list[Row] = []
    seen: set[str] = set()

    def add(scope: str, value: str, dtype: str = "ban") -> None:
        if value not in seen:
            seen.add(value)
            hours = rng.choice((1, 4, 24, 48, 72, 168))
            rows.append(Row(f"{hours}h", rng.choice(SCENARIOS), scope, dtype, value))

    for i in range(min(internal, n)):
        scope, pattern = INTERNAL_VALUES[i % len(INTERNAL_VALUES)]
        add(scope, pattern.format(a=i // 250 + 1, b=i % 250 + 1, c=i % 256))
    while len(rows) < n:
        dtype = "captcha" if rng.random() < 0.05 else "ban"
        r = rng.random()
        if r < 0.7:
            first = rng.choice(_V4_FIRST)
            add("ip", f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        elif r < 0.9:
            value = (rng.choice(_V6_PREFIXES) << 112) | rng.getrandbits(96) << 16 | 1
            add("ip", str(ipaddress.IPv6Address(value)), dtype)
        else:
            add("range", f"{rng.choice(_V4_FIRST)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24")
    return rows


def write_csv(rows: list[Row], path: Path) -> None:
    """The CSV ``cscli decisions import -i`` reads (``reason`` becomes the scenario)."""
    with path.open("w") as out:
        out.write("duration,reason,scope,type,value\n")
        for r in rows:
            out.write(f"{r.duration},{r.reason},{r.scope},{r.type},{r.value}\n")


# -- measuring one tree -----------------------------------------------------------------------
SYNC = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from pipeline.core.addresses import Classifier, k3s_defaults
    from pipeline.core.engine import Engine, EngineConfig
    from pipeline.crowdsec.lapi import LapiConfig, LapiStream
    from pipeline.secrets import Secret
    import orjson

    def status():
        out = {}
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
        return out

    async def main():
        url, key = sys.argv[1], Path(sys.argv[2]).read_text().strip()
        # Built before the idle reading: whatever the client loads (aiohttp, in trees before
        # pipeline/crowdsec/http1.py) is not part of the sync.
        stream = LapiStream(LapiConfig(url=url, key=Secret(key), key_source="bench", timeout=120))
        engine = Engine(EngineConfig(), Classifier(k3s_defaults()), time.time)
        idle = status()
        started = time.perf_counter()
        async for delta in stream.deltas(asyncio.Event()):
            engine.apply(delta)
            if getattr(delta, "last", True):
                break
        wall = time.perf_counter() - started
        await stream.aclose()
        print(orjson.dumps({
            "wall_s": wall, "decisions": len(engine.decisions), "findings": len(engine.findings),
            "idle_mb": idle["VmRSS"], "rss_mb": status()["VmRSS"], "peak_mb": status()["VmHWM"],
        }).decode())

    asyncio.run(main())
    """
)


@dataclass(frozen=True)
class Tree:
    label: str
    root: Path

    @property
    def python(self) -> str:
        own = self.root / ".venv/bin/python"
        return str(own) if own.exists() else sys.executable

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.root)}

    def describe(self) -> str:
        def git(*argv: str) -> str:
            r = subprocess.run(
                ["git", *argv], capture_output=True, text=True, cwd=self.root, check=False
            )
            return r.stdout.strip()

        dirty = len(git("status", "--porcelain").splitlines())
        commit = git("rev-parse", "--short", "HEAD") + (f" +{dirty} changed" * bool(dirty))
        return f"{self.label}: {self.root} ({commit}; {self.python})"

    def sync(self, url: str, key_file: Path) -> dict[str, Any]:
        r = subprocess.run(
            [self.python, "-c", SYNC, url, str(key_file)],
            capture_output=True,
            cwd=self.root,
            env=self.env(),
            timeout=600,
            check=False,
        )
        if r.returncode:
            raise RuntimeError(f"{self.label} sync: {r.stderr.decode(errors='replace')[-800:]}")
        result: dict[str, Any] = orjson.loads(r.stdout.splitlines()[-1])
        return result

    def sidecar(self, url: str, key_file: Path, want: int, settle: float) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="auditor-volume-") as tmp:
            log = Path(tmp) / "access.log"
            log.write_bytes(b"")
            port = _free_port()
            argv = [
                self.python, "-m", "pipeline.cli.main", "run", "--access-log", str(log),
                "--lapi-url", url, "--lapi-key-file", str(key_file),
                "--metrics-listen", f"127.0.0.1:{port}", "--findings", "/dev/null",
                "--checkpoint-dir", str(Path(tmp) / "ck"), "--start-at", "end",
            ]  # fmt: skip
            started = time.monotonic()
            proc = subprocess.Popen(
                argv, cwd=self.root, env=self.env(), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                seen, bans = _wait_synced(proc, port, want, deadline=started + 300)
                synced = time.monotonic() - started
                at_sync = _proc_status(proc.pid)
                time.sleep(settle)
                later = _proc_status(proc.pid)
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return {
            "decisions": seen,
            "internal_bans": bans,
            "synced_s": synced,
            "rss_synced_mb": at_sync["VmRSS"],
            "rss_mb": later["VmRSS"],
            "peak_mb": later["VmHWM"],
        }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _proc_status(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024
    return out


def _wait_synced(
    proc: subprocess.Popen[bytes], port: int, want: int, deadline: float
) -> tuple[int, int]:
    """Poll the metrics until ``want`` decisions are active (or the deadline passes)."""
    seen = bans = -1
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"auditor run exited {proc.returncode}: {err[-800:]}")
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
            seen = round(sum(float(v) for v in _ACTIVE.findall(text)))
            bans = round(sum(float(v) for v in _FINDINGS.findall(text)))
            if seen >= want:
                return seen, bans
        time.sleep(0.05)
    return seen, bans


def lapi_alone(url: str, key: str) -> float:
    """Seconds for the LAPI to send the whole startup answer, read and dropped."""
    req = urllib.request.Request(
        f"{url}v1/decisions/stream?startup=true&scopes=ip,range", headers={"X-Api-Key": key}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        while resp.read(1 << 20):
            pass
    return time.perf_counter() - started


# -- the run ------------------------------------------------------------------------------------
@contextlib.contextmanager
def lapi(root: Path) -> Iterator[Any]:
    sys.path.insert(0, str(ROOT))
    from tests.support.crowdsec import CrowdSecInstance

    inst = CrowdSecInstance(root)
    inst.start_lapi()
    try:
        yield inst
    finally:
        inst.stop()


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import platform

    out = subprocess.run(
        ["/usr/bin/crowdsec", "-version"], capture_output=True, text=True, check=False
    )
    found = re.search(r"version: (\S+)", out.stdout + out.stderr)
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"orjson {orjson.__version__}, CrowdSec {found.group(1) if found else '?'}"
    )


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


ROWS = (  # key, label, format
    ("lapi_s", "LAPI alone: whole answer s", "{:.2f}"),
    ("sync.wall_s", "startup sync s (request -> engine)", "{:.2f}"),
    ("sync.peak_mb", "sync process peak RSS MB", "{:.1f}"),
    ("sync.rss_mb", "sync process RSS after MB", "{:.1f}"),
    ("idle.rss_mb", "sidecar RSS, LAPI with 0 decisions MB", "{:.1f}"),
    ("run.synced_s", "sidecar start -> all decisions s", "{:.2f}"),
    ("run.rss_synced_mb", "sidecar RSS at sync MB", "{:.1f}"),
    ("run.rss_mb", "sidecar RSS after settling MB", "{:.1f}"),
    ("run.peak_mb", "sidecar peak RSS (VmHWM) MB", "{:.1f}"),
)


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each figure over the runs."""
    return {k: statistics.median(r[k] for r in runs if k in r) for k in runs[0]}


def flatten(prefix: str, d: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}.{k}": float(v) for k, v in d.items()}


def table(header: list[str], trees: list[Tree], medians: dict[str, dict[str, float]]) -> str:
    lines = [*header, ""]
    width = max(len(label) for _, label, _ in ROWS)
    cols = [t.label for t in trees]
    lines.append(f"{'measurement':<{width}} | " + " | ".join(f"{c:>9}" for c in cols))
    lines.append("-" * width + "-|-" + "-|-".join("-" * 9 for _ in cols))
    for key, label, fmt in ROWS:
        cells = []
        for t in trees:
            v = medians[t.label].get(key)
            cells.append(f"{fmt.format(v) if v is not None else '-':>9}")
        lines.append(f"{label:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.lapi_volume", description=__doc__)
    p.add_argument("--decisions", type=int, default=100_000, help="decisions to load")
    p.add_argument("--internal", type=int, default=20, help="of them on internal targets")
    p.add_argument("--before", type=Path, help="another checkout to compare against")
    p.add_argument("--repeat", type=int, default=3, help="runs per tree, interleaved")
    p.add_argument("--settle", type=float, default=5.0, help="seconds between the two RSS reads")
    p.add_argument("--json", type=Path, help="write every run's figures here")
    p.add_argument("--markdown", type=Path, help="write the table here as a fenced block")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    trees = [Tree("before", args.before.resolve())] if args.before else []
    trees.append(Tree("after", ROOT))
    if shutil.which("cscli") is None:
        print("bench.lapi_volume: CrowdSec is not installed (make deps)", file=sys.stderr)
        return 2
    command = "python -m bench.lapi_volume " + " ".join(argv or sys.argv[1:])
    header = [
        f"command: {command.strip()}",
        f"machine: {machine()}",
        *(t.describe() for t in trees),
        f"decisions: {args.decisions:,} ({args.internal} internal); runs a tree: {args.repeat}",
        f"load average at start: {load()}",
    ]
    print("\n".join(header), flush=True)
    runs: dict[str, list[dict[str, float]]] = {t.label: [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="bench-lapi-") as tmp, lapi(Path(tmp) / "cs") as cs:
        key_file = Path(tmp) / "bouncer.key"
        key_file.write_text(cs.add_bouncer("bench-volume") + "\n")
        key_file.chmod(0o600)
        url = cs.lapi_url
        idle = {t.label: t.sidecar(url, key_file, 0, args.settle) for t in trees}
        rows = volume_rows(args.decisions, internal=args.internal)
        csv = Path(tmp) / "decisions.csv"
        write_csv(rows, csv)
        started = time.monotonic()
        cs.cscli("decisions", "import", "-i", str(csv), timeout=1800)
        print(f"cscli decisions import: {time.monotonic() - started:.1f} s", flush=True)
        key = key_file.read_text().strip()
        for n in range(args.repeat):
            for t in trees:
                run = {"lapi_s": lapi_alone(url, key)}
                run |= flatten("sync", t.sync(url, key_file))
                run |= flatten("run", t.sidecar(url, key_file, args.decisions, args.settle))
                run |= flatten("idle", {"rss_mb": idle[t.label]["rss_mb"]})
                runs[t.label].append(run)
                print(f"run {n + 1} {t.label}: " + orjson.dumps(run).decode(), flush=True)
    header.append(f"load average at end: {load()}")
    medians = {label: summarize(r) for label, r in runs.items()}
    for label, m in medians.items():
        if m["sync.decisions"] != args.decisions or m["run.decisions"] != args.decisions:
            print(f"warning: {label} did not hold every decision: {m}", file=sys.stderr)
    answers = {
        (m["sync.decisions"], m["sync.findings"], m["run.internal_bans"]) for m in medians.values()
    }
    if len(answers) > 1:
        print(
            f"warning: the trees disagree (decisions, findings, bans): {answers}", file=sys.stderr
        )
    text = table(header, trees, medians)
    print("\n" + text)
    if args.json:
        args.json.write_bytes(
            orjson.dumps({"header": header, "runs": runs}, option=orjson.OPT_INDENT_2)
        )
    if args.markdown:
        args.markdown.write_text("```text\n" + text + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
