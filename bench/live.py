"""The live path: what ``auditor run`` costs while a writer appends to the access log it tails.

    .venv/bin/python -m bench.live [--source FILE] [--rate 1000] [--duration 60] [--json OUT]
                                   [--variant plain,lapi,sidecar] [--repeat N] [--before DIR]

Starts ``auditor run --access-log PATH --metrics-listen 127.0.0.1:PORT --findings /dev/null
--checkpoint-dir DIR --start-at beginning`` on an empty file in a temporary directory, in one
of these variants (several: measured one after the other, ``--repeat`` times, in one run):

- ``plain`` (the default): no LAPI;
- ``lapi``: polling a real CrowdSec LAPI (tests/support/crowdsec.py; no decisions), as the
  sidecar was shipped before the cluster watcher;
- ``sidecar``: the shipped sidecar: the LAPI, the watcher's networks file (the test suite's k3s
  cluster, in a ConfigMap volume laid out as the kubelet does) and ``--echo-access-log``, its
  stdout a pipe drained as the container runtime drains it;

``--before DIR`` measures another checkout too (e.g. ``git worktree add /tmp/before HEAD``), and
``--after DIR`` replaces this one: each variant runs from both trees, interleaved, with
``python -m pipeline.cli.main`` from the tree's directory (its own ``.venv`` if it has one, else
this interpreter), so a change is measured against its base in one run on the same LAPI.

``--image REF`` runs the same command in the container image instead (``make image``; the
engine from ``--engine``, e.g. ``"podman --runtime runc"``): read-only root, a tmpfs at /tmp,
the temporary directories mounted at the same paths, the host's network (the LAPI), measured
through the container's main process.

then:

1. steady: appends ``--rate`` lines/s (in 50 ms slices) for ``--duration`` seconds after a
   warm-up; CPU from ``/proc/<pid>/stat`` utime+stime over the measured stretch, RSS from
   ``/proc/<pid>/status`` (VmRSS sampled every second, VmHWM at the end);
2. burst: appends ``--burst-lines`` lines as fast as the disk takes them and times how long
   ``auditor_lines_total`` (scraped from the metrics endpoint) takes to account for all of them.

Lines come from ``--source`` (a generated log; made if missing). Exits 3 with a message when
``auditor run`` does not exist yet.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

ROOT = Path(__file__).resolve().parent.parent
UNAVAILABLE = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
_LINES_RE = re.compile(r"^auditor_lines_total\{[^}]*\}\s+([0-9.eE+-]+)", re.MULTILINE)


class LiveError(RuntimeError):
    pass


def auditor_argv() -> list[str]:
    script = Path(sys.executable).parent / "auditor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli.main"]


@dataclass(frozen=True, slots=True)
class Tree:
    """A checkout whose ``auditor run`` is measured (``--before``/``--after``)."""

    label: str
    root: Path

    @property
    def python(self) -> str:
        own = self.root / ".venv/bin/python"
        return str(own) if own.exists() else sys.executable

    def argv(self) -> list[str]:
        return [self.python, "-m", "pipeline.cli.main"]

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


def run_available() -> str | None:
    """None when ``auditor run`` exists, else why not."""
    try:
        r = subprocess.run(
            [*auditor_argv(), "run", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
    except OSError as exc:
        return f"cannot start auditor: {exc}"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"`auditor run` is not available in this build ({last})"
    missing = [
        f
        for f in (
            "--access-log",
            "--metrics-listen",
            "--findings",
            "--checkpoint-dir",
            "--start-at",
        )
        if f not in r.stdout
    ]
    if missing:
        return f"`auditor run --help` does not list {', '.join(missing)}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_ticks(pid: int) -> int:
    """utime + stime of the process (clock ticks); field 2 may hold spaces, so split after ')'."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def lines_seen(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    values = _LINES_RE.findall(text)
    return int(sum(float(v) for v in values)) if values else 0


_GAUGES = ("auditor_lapi_up", "auditor_lapi_polls_total", "auditor_networks_file_age_seconds")


def gauges(port: int) -> dict[str, float]:
    """The LAPI and networks-file series (summed over labels): proof that a variant measured
    a sidecar that talks to its LAPI and reads its file, not one failing cheaply."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for name in _GAUGES:
        found = re.findall(rf"^{name}(?:{{[^}}]*}})?\s+([0-9.eE+-]+)", text, re.MULTILINE)
        if found:
            out[name] = sum(float(v) for v in found)
    return out


def source_lines(path: Path) -> Iterator[bytes]:
    """The source's lines, cycled (the live phases rarely need the whole file)."""
    while True:
        with path.open("rb") as fh:
            yield from fh


class Proc(Protocol):
    """What the phases look at: the measured process and whether it still runs."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | Any: ...

    def poll(self) -> int | None: ...


@dataclass
class Contained:
    """``podman run`` in the foreground; measured through the container's main process."""

    client: subprocess.Popen[bytes]
    pid: int

    @property
    def returncode(self) -> int | Any:
        return self.client.returncode

    def poll(self) -> int | None:
        return self.client.poll()


def wait_for(pred: Any, timeout: float, what: str, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LiveError(f"auditor run exited with {proc.returncode} while waiting for {what}")
        if pred():
            return
        time.sleep(0.05)
    raise LiveError(f"timed out after {timeout:.0f} s waiting for {what}")


def steady(
    proc: Proc,
    port: int,
    log: Path,
    lines: Iterator[bytes],
    rate: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    slice_s = 0.05
    written = 0
    rss_samples: list[int] = []
    with log.open("ab", buffering=0) as fh:
        t0 = time.monotonic()
        measure_from = t0 + warmup
        end = measure_from + duration
        ticks0: int | None = None
        written_at_start = 0
        t_measure = 0.0
        next_tick = t0
        next_sample = measure_from
        while True:
            now = time.monotonic()
            if ticks0 is None and now >= measure_from:
                ticks0, t_measure, written_at_start = cpu_ticks(proc.pid), now, written
            if now >= end:
                break
            n = int(rate * (now - t0)) - written  # by the clock, so a late wake-up catches up
            if n > 0:
                fh.write(b"".join(next(lines) for _ in range(n)))
                written += n
            if ticks0 is not None and now >= next_sample:
                rss_samples.append(status_kb(proc.pid, "VmRSS"))
                next_sample += 1.0
            next_tick += slice_s
            time.sleep(max(0.0, next_tick - time.monotonic()))
    ticks1, t_end = cpu_ticks(proc.pid), time.monotonic()
    assert ticks0 is not None
    wait_for(lambda: (lines_seen(port) or 0) >= written, 30, "the steady lines", proc)
    cpu_s = (ticks1 - ticks0) / CLK_TCK
    return {
        "rate_target": rate,
        "seconds": round(t_end - t_measure, 2),
        "lines_written": written,
        "lines_measured": written - written_at_start,
        "lines_seen": lines_seen(port),
        "cpu_s": round(cpu_s, 3),
        "cpu_pct": round(100 * cpu_s / (t_end - t_measure), 3),
        "rss_mb": round(max(rss_samples or [status_kb(proc.pid, "VmRSS")]) / 1024, 1),
        "rss_samples_mb": [round(x / 1024, 1) for x in rss_samples],
        "peak_rss_mb": round(status_kb(proc.pid, "VmHWM") / 1024, 1),
    }


def burst(
    proc: Proc,
    port: int,
    log: Path,
    lines: Iterator[bytes],
    count: int,
    timeout: float,
) -> dict[str, Any]:
    """Append ``count`` lines at memory speed, so the tailer, not the writer, sets the pace."""
    data = b"".join(next(lines) for _ in range(count))
    base = lines_seen(port) or 0
    ticks0 = cpu_ticks(proc.pid)
    t0 = time.monotonic()
    step = 4 << 20
    with log.open("ab", buffering=0) as fh:
        view = memoryview(data)
        for off in range(0, len(data), step):
            fh.write(view[off : off + step])
    t_written = time.monotonic()
    # auditor_lines_total is refreshed on the runner's tick, so it reports the end late; the
    # end of the work is the last sample in which the process was still busy on the CPU.
    samples: list[tuple[float, int]] = [(t0, ticks0)]

    def done() -> bool:
        samples.append((time.monotonic(), cpu_ticks(proc.pid)))
        return (lines_seen(port) or 0) >= base + count

    wait_for(done, timeout, "the burst lines", proc)
    t_seen = time.monotonic()
    busy = CLK_TCK * 0.02  # >= 40% of a core over a 50 ms sample
    t_end = max(
        (
            t
            for (t, c), (_, c_prev) in zip(samples[1:], samples, strict=False)
            if c - c_prev >= busy
        ),
        default=t_seen,
    )
    cpu_s = (cpu_ticks(proc.pid) - ticks0) / CLK_TCK
    wall = max(t_end, t_written) - t0
    return {
        "lines": count,
        "bytes": len(data),
        "writer_s": round(t_written - t0, 3),
        "seconds": round(wall, 3),
        "seconds_until_metric": round(t_seen - t0, 3),
        "lines_per_s": round(count / wall, 1),
        "mb_per_s": round(len(data) / 1e6 / wall, 2),
        "cpu_pct": round(100 * cpu_s / wall, 1),
        # The rate if the tailer never waited for anything: lines per CPU second.
        "lines_per_cpu_s": round(count / cpu_s, 1) if cpu_s else None,
        "peak_rss_mb": round(status_kb(proc.pid, "VmHWM") / 1024, 1),
    }


def ensure_source(path: Path, lines: int) -> Path:
    if not path.exists():
        from bench.generate import GenConfig, write_log

        write_log(GenConfig(lines=lines), path)
    return path


VARIANTS = ("plain", "lapi", "sidecar")


@dataclass(frozen=True, slots=True)
class Extras:
    """What a variant adds to the command line, and whether stdout carries the echo."""

    argv: tuple[str, ...] = ()
    echo: bool = False
    lapi: bool = False


def _drain(stream: Any) -> None:
    """The container runtime's end of the pipe: read and discard."""
    while stream.read(1 << 16):
        pass


@contextlib.contextmanager
def variants(names: list[str], tmp: Path) -> Iterator[dict[str, Extras]]:
    """The command-line extras of each variant; starts a CrowdSec LAPI when one needs it."""
    out: dict[str, Extras] = {"plain": Extras()}
    lapi = None
    try:
        if {"lapi", "sidecar"} & set(names):
            from tests.support.crowdsec import CrowdSecInstance

            lapi = CrowdSecInstance(tmp / "crowdsec")
            key = tmp / "lapi-key"
            key.write_text(lapi.add_bouncer("bench-live") + "\n")
            key.chmod(0o644)  # readable by the image's uid too (the auditor warns; fine here)
            lapi.start_lapi()
            lapi_argv = ("--lapi-url", lapi.lapi_url, "--lapi-key-file", str(key))
            out["lapi"] = Extras(lapi_argv, lapi=True)
            out["sidecar"] = Extras(
                (*lapi_argv, "--networks-file", str(networks_file(tmp)), "--echo-access-log"),
                echo=True,
                lapi=True,
            )
        yield out
    finally:
        if lapi is not None:
            lapi.stop()


def networks_file(tmp: Path) -> Path:
    """What the watcher publishes for the test suite's k3s cluster, as a pod's volume holds it."""
    from pipeline.core.networks_file import encode
    from pipeline.kube.checks import check_cluster
    from pipeline.kube.networks import cluster_networks
    from tests.support.kube_api import ConfigMapVolume
    from tests.support.kube_facts import BAD, facts_from_files

    facts = facts_from_files(BAD)
    volume = ConfigMapVolume(tmp / "networks")
    data = encode(
        synced_at=time.time(),
        source="bench",
        networks=cluster_networks(facts),
        findings=check_cluster(facts),
    )
    volume.publish({"networks.json": data})
    return volume.path("networks.json")


def _container(args: argparse.Namespace, tmp: str, name: str) -> list[str]:
    """``podman run`` of the image, every temporary directory at the same path."""
    Path(tmp).chmod(0o777)  # the image runs as uid 65532
    for sub in Path(tmp).iterdir():
        sub.chmod(0o777)
    mounts = [f"{tmp}:{tmp}"]
    shared = getattr(args, "variants_dir", None)  # the key and the networks file
    if shared is not None:
        for path in [Path(shared), *Path(shared).rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o755)
        mounts.append(f"{shared}:{shared}:ro")
    return [
        *shlex.split(args.engine), "run", "--rm", "--name", name, "--network", "host",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        "--read-only", "--tmpfs", "/tmp:size=16m",
        *(x for m in mounts for x in ("-v", m)),
        args.image,
    ]  # fmt: skip


def _container_pid(args: argparse.Namespace, name: str, client: subprocess.Popen[bytes]) -> int:
    engine = shlex.split(args.engine)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and client.poll() is None:
        out = subprocess.run(
            [*engine, "inspect", "--format", "{{.State.Pid}}", name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip() not in ("", "0"):
            return int(out.stdout.strip())
        time.sleep(0.2)
    raise LiveError(f"container {name} did not start (podman run exited {client.poll()})")


def measure(
    args: argparse.Namespace, extras: Extras = Extras(), tree: Tree | None = None
) -> dict[str, Any]:
    lines = source_lines(ensure_source(args.source, max(args.burst_lines, 100_000)))
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        log = Path(tmp) / "access.log"
        log.touch()
        ckpt = Path(tmp) / "checkpoints"
        ckpt.mkdir()
        port = free_port()
        name = f"bench-live-{os.getpid()}-{port}"
        argv = [
            *(
                _container(args, tmp, name)
                if args.image
                else tree.argv()
                if tree is not None
                else auditor_argv()
            ),
            "run",
            "--access-log",
            str(log),
            "--metrics-listen",
            f"127.0.0.1:{port}",
            "--findings",
            "/dev/null",
            "--checkpoint-dir",
            str(ckpt),
            "--start-at",
            "beginning",
            *extras.argv,
        ]
        errlog = Path(tmp) / "stderr.log"
        stdout = subprocess.PIPE if extras.echo else subprocess.DEVNULL
        with errlog.open("wb") as err:
            client = subprocess.Popen(
                argv,
                stdout=stdout,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=tree.root if tree is not None else ROOT,
                env=tree.env() if tree is not None else None,
            )
        if client.stdout is not None:
            threading.Thread(target=_drain, args=(client.stdout,), daemon=True).start()
        proc: Proc = client
        try:
            if args.image:
                proc = Contained(client, _container_pid(args, name, client))
            wait_for(lambda: lines_seen(port) is not None, 30, "the metrics endpoint", proc)
            idle_rss = status_kb(proc.pid, "VmRSS")
            st = steady(proc, port, log, lines, args.rate, args.warmup, args.duration)
            seen = gauges(port)
            if extras.lapi and seen.get("auditor_lapi_up") != 1:
                raise LiveError(f"the LAPI is not up after the steady phase: {seen}")
            bu = burst(proc, port, log, lines, args.burst_lines, args.burst_timeout)
        except LiveError as exc:
            tail = errlog.read_text(errors="replace")[-1500:]
            raise LiveError(f"{exc}\n--- auditor run stderr ---\n{tail}") from None
        finally:
            if client.poll() is None:
                client.send_signal(signal.SIGTERM)  # podman run passes it on (--sig-proxy)
                try:
                    client.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    client.kill()
                    client.wait()
            if client.stdout is not None:
                client.stdout.close()
        return {
            "command": " ".join(argv[1:]).replace(tmp, "$TMP"),
            "idle_rss_mb": round(idle_rss / 1024, 1),
            "gauges": seen,
            "steady": st,
            "burst": bu,
            "exit_code": client.returncode,
        }


def summary(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Medians over the rounds, one row a variant (and tree), as a Markdown table."""

    def med(results: list[dict[str, Any]], *path: str) -> float:
        values = []
        for res in results:
            value: Any = res
            for k in path:
                value = value[k]
            values.append(float(value))
        return statistics.median(values)

    rows = [
        "| | steady CPU | steady RSS | idle RSS | steady peak RSS | burst | burst peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, results in runs.items():
        rows.append(
            f"| `{name}` (median of {len(results)}) "
            f"| {med(results, 'steady', 'cpu_pct'):.2f} % "
            f"| {med(results, 'steady', 'rss_mb'):.1f} MB "
            f"| {med(results, 'idle_rss_mb'):.1f} MB "
            f"| {med(results, 'steady', 'peak_rss_mb'):.1f} MB "
            f"| {med(results, 'burst', 'lines_per_s') / 1000:.0f}k lines/s "
            f"| {med(results, 'burst', 'peak_rss_mb'):.1f} MB |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, default=ROOT / "bench" / "out" / "access-live.log")
    p.add_argument("--rate", type=int, default=1000, help="steady lines per second")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=60.0, help="measured steady seconds")
    p.add_argument("--burst-lines", type=int, default=300_000)
    p.add_argument("--burst-timeout", type=float, default=600.0)
    p.add_argument("--quick", action="store_true", help="1 s warm-up, 5 s steady, 5k burst")
    p.add_argument(
        "--variant",
        default="plain",
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: plain; see above)",
    )
    p.add_argument("--repeat", type=int, default=1, help="rounds over the variants (default 1)")
    p.add_argument("--image", help="run `auditor run` in this container image (see above)")
    p.add_argument(
        "--engine",
        default="podman --runtime runc",
        help="container engine command for --image (default: %(default)s)",
    )
    p.add_argument("--before", type=Path, help="also measure this checkout (see above)")
    p.add_argument(
        "--after", type=Path, help="with --before: the checkout to compare (default: this one)"
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.duration = 1.0, min(args.duration, 5.0)
        args.burst_lines = min(args.burst_lines, 5000)
    names = [v.strip() for v in args.variant.split(",") if v.strip()]
    if not names or set(names) - set(VARIANTS) or args.repeat < 1:
        p.error(f"--variant: one or more of {', '.join(VARIANTS)}; --repeat: 1 or more")
    if (args.before or args.after) and args.image:
        p.error("--before/--after measure checkouts on the host, not --image")
    if args.after and not args.before:
        p.error("--after needs --before")
    trees: list[Tree | None] = [None]
    if args.before:
        trees = [
            Tree("before", args.before.resolve()),
            Tree("after", (args.after or ROOT).resolve()),
        ]
        for t in trees:
            assert t is not None
            if not (t.root / "pipeline" / "cli" / "main.py").exists():
                p.error(f"--{t.label}: {t.root} is not a checkout of this project")
            print(t.describe(), flush=True)
    reason = run_available()
    if reason is not None:
        print(f"bench.live: {reason}; the live path was not measured", file=sys.stderr)
        return UNAVAILABLE

    def key(tree: Tree | None, name: str) -> str:
        return name if tree is None else f"{tree.label}:{name}"

    runs: dict[str, list[dict[str, Any]]] = {key(t, n): [] for n in names for t in trees}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-live-variants-") as tmp,
            variants(names, Path(tmp)) as extras,
        ):
            args.variants_dir = tmp
            for _ in range(args.repeat):
                for name in names:  # interleaved: drift on a shared machine hits all alike
                    for tree in trees:
                        runs[key(tree, name)].append(measure(args, extras[name], tree))
    except LiveError as exc:
        print(f"bench.live: {exc}", file=sys.stderr)
        return 1
    for name, results in runs.items():
        for res in results:
            s, b = res["steady"], res["burst"]
            label = f"{name}: " if list(runs) != ["plain"] else ""
            print(
                f"{label}steady {s['rate_target']} lines/s: CPU {s['cpu_pct']:.2f}% of one core, "
                f"RSS {s['rss_mb']} MB (peak {s['peak_rss_mb']} MB); burst "
                f"{b['lines_per_s']:,.0f} lines/s ({b['mb_per_s']} MB/s), "
                f"peak RSS {b['peak_rss_mb']} MB"
                + (f"; {res['gauges']}" if res.get("gauges") else "")
            )
    if len(runs) > 1 or args.repeat > 1:
        print("\n" + summary(runs))
    # One plain run keeps the shape bench/run.py and bench/compare.py read.
    result: dict[str, Any] = (
        runs["plain"][0] if list(runs) == ["plain"] and args.repeat == 1 else {"variants": runs}
    )
    if args.before:
        result["trees"] = [t.describe() for t in trees if t is not None]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
