"""Helpers for the tailer reliability tests (a module, not a pytest plugin).

Also runnable as a script: ``python tests/support/tail.py consume ...`` is the soak test's consumer
process (FileTailer + checkpoints; writes each line id, fsyncs, then acks and checkpoints).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.sources.tail import FileTailer, TailBatch, TailConfig


class ManualClock:
    """A monotonic clock the test moves by hand (for rotate_wait and glob scheduling)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(paths: Iterable[str | Path], checkpoint_dir: str | Path | None, **kw: Any) -> TailConfig:
    """A TailConfig with test-speed intervals; rotated files stay open unless rotate_wait is set."""
    base: dict[str, Any] = {
        "start_at": "beginning",
        "poll_interval": 0.005,
        "glob_interval": 0.01,
        "rotate_wait": 3600.0,
        "checkpoint_interval": 0.05,
    }
    base.update(kw)
    return TailConfig(
        paths=tuple(str(p) for p in paths),
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
        **base,
    )


class TailRun:
    """Runs ``FileTailer.batches`` in a task and records what it delivers.

    ``gate`` pauses the consumer (backpressure); ``auto_ack`` acks each batch once recorded;
    ``stop_after`` sets the stop event from inside the consumer once that many lines arrived.
    """

    def __init__(
        self,
        cfg: TailConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        auto_ack: bool = True,
        stop_after: int | None = None,
    ) -> None:
        self.stop_after = stop_after
        self.tailer = FileTailer(cfg, clock=clock)
        self.stop_event = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.auto_ack = auto_ack
        self.batches: list[TailBatch] = []
        self.lines: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TailRun:
        self._task = asyncio.create_task(self._consume())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _consume(self) -> None:
        async for batch in self.tailer.batches(self.stop_event):
            if not self.gate.is_set():
                await self.gate.wait()
            self.batches.append(batch)
            self.lines.extend(batch.lines)
            if self.auto_ack:
                self.tailer.ack(batch)
            if self.stop_after is not None and len(self.lines) >= self.stop_after:
                self.stop_event.set()  # shut down mid-stream, from inside the consumer

    def _check_task(self) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # re-raise a crash in the consumer
            raise AssertionError("tailer stopped unexpectedly")

    async def wait_for(
        self, predicate: Callable[[], bool], what: str, timeout: float = 15.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self._check_task()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; got {len(self.lines)} lines, "
                    f"stats={self.tailer.stats}"
                )
            await asyncio.sleep(0.002)

    async def wait_lines(self, count: int, timeout: float = 15.0) -> None:
        await self.wait_for(lambda: len(self.lines) >= count, f"{count} lines", timeout)

    async def settle(self, passes: int = 4) -> None:
        """Wait for several idle polling passes: anything still to come would have come."""
        start = self.tailer.stats.polls
        await self.wait_for(lambda: self.tailer.stats.polls >= start + passes, "idle passes")

    async def stop(self) -> None:
        self.stop_event.set()
        self.gate.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 15.0)


class LogWriter:
    """Appends to a log like a logging process: one O_APPEND fd, reopened on demand (USR1)."""

    def __init__(self, path: str | Path, *, append: bool = True) -> None:
        self.path = str(path)
        self._flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else 0)
        self.fd = os.open(self.path, self._flags, 0o644)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def lines(self, lines: Iterable[bytes]) -> None:
        self.write(b"".join(line + b"\n" for line in lines))

    def reopen(self) -> None:
        os.close(self.fd)
        self.fd = os.open(self.path, self._flags, 0o644)

    def close(self) -> None:
        os.close(self.fd)


def numbered(prefix: str, count: int, start: int = 0) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(start, start + count)]


def open_fds_to(path: str | Path) -> list[str]:
    """Entries of /proc/self/fd that point at ``path`` (deleted files show ' (deleted)')."""
    target = str(path)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link == target or link == f"{target} (deleted)":
            found.append(link)
    return found


def traefik_line(i: int) -> bytes:
    """A Traefik-like JSON access log line of about 300 bytes whose first field is the id."""
    return (
        b'{"id":%d,"ClientAddr":"10.42.0.%d:%d","ClientHost":"10.42.0.%d",'
        b'"DownstreamStatus":200,"Duration":%d,"RequestHost":"app.example.test",'
        b'"RequestMethod":"GET","RequestPath":"/api/v1/items/%d?page=%d",'
        b'"RequestProtocol":"HTTP/2.0","RouterName":"websecure-app@kubernetescrd",'
        b'"ServiceName":"default-app-80@kubernetescrd","entryPointName":"websecure",'
        b'"time":"2026-01-01T00:00:00Z"}'
    ) % (i, i % 250, 30000 + i % 30000, i % 250, 1000 + i, i, i % 7)


def line_id(line: bytes) -> int:
    return int(line[6 : line.index(b",", 6)])


# ---------------------------------------------------------------------- soak consumer process


def _load_prior(out_path: str) -> set[int]:
    """Ids processed by earlier runs; cuts a torn last record left by SIGKILL."""
    try:
        data = Path(out_path).read_bytes()
    except FileNotFoundError:
        return set()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        os.truncate(out_path, cut)
    prior: set[int] = set()
    for rec in data[:cut].splitlines():
        if rec.startswith(b"P "):
            prior.add(int(rec[2:]))
    return prior


async def _consume(args: argparse.Namespace) -> None:
    prior = _load_prior(args.out)
    this_run: set[int] = set()
    fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    cfg = TailConfig(
        paths=(args.path,),
        checkpoint_dir=args.checkpoint_dir,
        start_at="beginning",
        batch_lines=args.batch_lines,
        poll_interval=0.01,
        glob_interval=0.05,
        rotate_wait=1.0,
        checkpoint_interval=60.0,
    )
    tailer = FileTailer(cfg)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async for batch in tailer.batches(stop):
        records = []
        for line in batch.lines:
            i = line_id(line)
            if i in this_run:
                records.append(b"X %d\n" % i)  # delivered twice within one run: a bug
            elif i in prior:
                records.append(b"D %d\n" % i)  # redelivered after a crash, skipped
            else:
                records.append(b"P %d\n" % i)
            this_run.add(i)
        data = memoryview(b"".join(records))
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
        tailer.ack(batch)
        tailer.flush_checkpoints()
    os.close(fd)
    print(f"stats {tailer.stats}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tailkit")
    sub = parser.add_subparsers(dest="cmd", required=True)
    consume = sub.add_parser("consume")
    consume.add_argument("--path", required=True)
    consume.add_argument("--checkpoint-dir", required=True)
    consume.add_argument("--out", required=True)
    consume.add_argument("--batch-lines", type=int, default=2048)
    args = parser.parse_args(argv)
    asyncio.run(_consume(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
