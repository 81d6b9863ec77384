"""Soak: 200k Traefik lines through the real `auditor run`, SIGKILLed and restarted twice while the
log rotates several times; every line is counted exactly once.

`auditor run` keeps its own tallies in memory, so a killed sidecar forgets them; the count that
must come out exact is the one it delivers downstream. The sidecar publishes to Kafka (a real
Tansu broker) and an `auditor aggregate` counts, dropping the lines a restarted sidecar sends
again (same ids: node, file identity, line end offset). At-least-once delivery plus those ids
gives: lines counted == lines written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.kafka import (
    PARTITIONS,
    AggregatorProcess,
    TansuBroker,
    free_port,
    metric_sum,
    node_log_lines,
    scrape,
)
from tests.support.paths import ROOT

pytestmark = pytest.mark.slow

TOTAL = 200_000
ROTATE_EVERY = 40_000  # five files
KILL_AT = (60_000, 130_000)


def _wait(pred: object, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


class Sidecar:
    def __init__(self, broker: TansuBroker, root: Path) -> None:
        self.args = [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "run",
            "--access-log",
            str(root / "access.log"),
            "--start-at",
            "beginning",
            "--checkpoint-dir",
            str(root / "ckpt"),
            "--node-name",
            "node0",
            "--metrics-listen",
            f"127.0.0.1:{free_port()}",
            "--poll-interval",
            "0.05",
            "--rotate-wait",
            "60",
            "--kafka-bootstrap",
            broker.bootstrap,
            "--no-kafka-idempotence",
            "--kafka-partitions",
            str(PARTITIONS),
            "--kafka-group",
            "failover",
            "--kafka-timeout",
            "18",
        ]
        self.log = root / "sidecar.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until the file is open: lines rotated away before the first start
        are outside any tailer's view (the rotated name is not in --access-log)."""
        before = self._opened()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait(
            lambda: self._opened() > before,
            "the sidecar to open the log",
            timeout=60.0,
        )

    def _opened(self) -> int:
        if not self.log.exists():
            return 0
        text = self.log.read_text()
        return text.count("auditor.tail: tailing") + text.count("auditor.tail: resuming")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(60)


def test_sigkilled_twice_through_rotations_counts_every_line_once(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    lines = node_log_lines(TOTAL, seed=7, masked_share=0.3, rate=200.0)
    agg = AggregatorProcess(kafka_broker, tmp_path, "agg")
    sidecar = Sidecar(kafka_broker, tmp_path)
    try:
        _wait(lambda: agg.owned() == set(range(PARTITIONS)), "the aggregator to own the topic")
        log = tmp_path / "access.log"
        log.touch()
        sidecar.start()
        written = 0
        rotations = 0
        out = log.open("ab")
        try:
            for start in range(0, TOTAL, 10_000):
                out.write(b"".join(lines[start : start + 10_000]))
                out.flush()
                written = start + 10_000
                if written % ROTATE_EVERY == 0 and written < TOTAL:
                    out.close()  # Traefik's sequence: rename, then reopen the path (USR1)
                    rotations += 1
                    log.rename(tmp_path / f"access.log.{rotations}")
                    out = log.open("ab")
                if written in KILL_AT:
                    # Let it get some way into what is there, then kill it mid-stream.
                    _wait(
                        lambda w=written: metric_sum(agg.metrics(), "auditor_lines_total") > w / 2,
                        "progress before the kill",
                    )
                    sidecar.kill()
                    sidecar.start()
        finally:
            out.close()
        _wait(
            lambda: metric_sum(agg.metrics(), "auditor_lines_total", source="kafka") >= TOTAL,
            "every line to be counted",
            timeout=180.0,
        )
        assert sidecar.stop() == 0
        metrics = scrape(agg.metrics_url)
        assert metric_sum(metrics, "auditor_lines_total", source="kafka") == TOTAL
        assert metric_sum(metrics, "auditor_requests_total") == TOTAL
        assert rotations == TOTAL // ROTATE_EVERY - 1
        # Lines a killed sidecar had sent but not yet checkpointed are sent again after the
        # restart (how many depends on where the kill lands) and dropped as duplicates: the
        # exact totals above are the proof.
    finally:
        if sidecar.proc is not None and sidecar.proc.poll() is None:
            os.killpg(sidecar.proc.pid, signal.SIGKILL)
        agg.signal(signal.SIGKILL)
        agg.wait()
