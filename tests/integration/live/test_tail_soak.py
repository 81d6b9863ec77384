"""Soak: 200k Traefik-like lines, rename rotations, a consumer process SIGKILLed twice.

The consumer (``tests/support/tail.py consume``) records each line id, fsyncs, then acks and writes
the checkpoint; after a crash it skips ids it already recorded and logs them as redelivered.
Asserted: every written id processed exactly once, no id delivered twice within one process
lifetime, and redeliveries bounded by the one batch that can be in flight at each kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.tail import LogWriter, traefik_line

TOTAL = 200_000
BLOCK = 500
BATCH_LINES = 2048
TIMEOUT = 90.0


class Progress:
    """Incremental reader of the consumer's output file (complete records only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.processed: set[int] = set()
        self.max_id = -1

    def refresh(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for rec in data[:end].splitlines():
            if rec.startswith(b"P "):
                i = int(rec[2:])
                self.processed.add(i)
                self.max_id = max(self.max_id, i)


class Soak:
    def __init__(self, tmp_path: Path) -> None:
        self.logdir = tmp_path / "logs"
        self.logdir.mkdir()
        self.path = self.logdir / "access.log"
        self.out = tmp_path / "out.txt"
        self.cpdir = tmp_path / "cp"
        self.stderr = tmp_path / "consumer.stderr"
        self.progress = Progress(self.out)
        self.proc: subprocess.Popen[bytes] | None = None
        self.writer = LogWriter(self.path)
        self.next_id = 0
        self.file_first_id = 0
        self.rotations = 0

    def start(self) -> None:
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.tail",
                    "consume",
                    "--path",
                    str(self.path),
                    "--checkpoint-dir",
                    str(self.cpdir),
                    "--out",
                    str(self.out),
                    "--batch-lines",
                    str(BATCH_LINES),
                ],
                stderr=err,
                cwd=ROOT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=TIMEOUT) == -signal.SIGKILL

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            self.progress.refresh()
            if predicate():
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"consumer exited: {self.stderr.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}: {len(self.progress.processed)} processed, "
                    f"max id {self.progress.max_id}, written {self.next_id}"
                )
            time.sleep(0.01)

    def write_until(self, stop: int) -> None:
        while self.next_id < stop:
            n = min(BLOCK, stop - self.next_id)
            self.writer.lines(traefik_line(i) for i in range(self.next_id, self.next_id + n))
            self.next_id += n

    def rotate(self, *, consumer_up: bool) -> None:
        """Traefik rotation: rename, a few more lines into the renamed file, then USR1 reopen."""
        if consumer_up:  # real rotations are minutes apart: the reader has the file open
            first = self.file_first_id
            self.wait(lambda: self.progress.max_id >= first, "the live file to be opened")
        self.rotations += 1
        os.rename(self.path, f"{self.path}.{self.rotations}")
        self.write_until(self.next_id + 100)
        self.writer.reopen()
        self.file_first_id = self.next_id


@pytest.mark.slow
def test_soak_rotations_and_two_sigkills(tmp_path: Path) -> None:
    soak = Soak(tmp_path)
    soak.start()
    try:
        soak.write_until(40_000)
        soak.rotate(consumer_up=True)
        soak.write_until(60_000)
        # crash 1: mid-stream, acks pending, lines still unread in the live file
        soak.wait(lambda: soak.progress.max_id >= 50_000, "50k processed")
        soak.kill()
        soak.write_until(70_000)
        soak.start()
        soak.write_until(80_000)
        soak.rotate(consumer_up=True)
        soak.write_until(120_000)
        soak.rotate(consumer_up=True)
        soak.write_until(140_000)
        # crash 2, then a rotation while the consumer is down: the renamed file must be
        # finished from its checkpoint and the new file read from its first line
        soak.wait(lambda: soak.progress.max_id >= 125_000, "125k processed")
        soak.kill()
        soak.write_until(150_000)
        soak.rotate(consumer_up=False)
        soak.write_until(160_000)
        soak.start()
        soak.write_until(180_000)
        soak.rotate(consumer_up=True)
        soak.write_until(TOTAL)
        soak.wait(lambda: len(soak.progress.processed) >= TOTAL, "all lines processed")
        assert soak.proc is not None
        soak.proc.send_signal(signal.SIGTERM)
        assert soak.proc.wait(timeout=TIMEOUT) == 0
    finally:
        if soak.proc is not None and soak.proc.poll() is None:
            soak.proc.kill()
            soak.proc.wait()
        soak.writer.close()

    records = soak.out.read_bytes().splitlines()
    processed = [int(r[2:]) for r in records if r.startswith(b"P ")]
    redelivered = [int(r[2:]) for r in records if r.startswith(b"D ")]
    twice_in_one_run = [r for r in records if r.startswith(b"X ")]
    assert len(processed) == TOTAL == soak.next_id
    assert len(set(processed)) == TOTAL
    assert set(processed) == set(range(TOTAL))
    assert twice_in_one_run == []
    # at most the batch in flight at each of the two kills is delivered again
    assert len(redelivered) <= 2 * BATCH_LINES, len(redelivered)
    assert soak.rotations == 5
