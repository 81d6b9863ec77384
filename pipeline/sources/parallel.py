"""``replay --jobs N``: the per-line work (parse and count) in N processes, the engine in one.

A plain file is cut into byte chunks on line boundaries; workers return each chunk's counted
time-bucket runs (``traffic.count_runs``), which are far smaller than its lines, and the parent
feeds them to the one engine in file order. The engine therefore sees the same counts in the same
time order as a single-process replay, and the report is the same.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext
from typing import BinaryIO

from parsers.records import ParseStats
from parsers.traefik import MAX_LINE_BYTES, TraefikParser
from pipeline.core.engine import Engine
from pipeline.core.traffic import Run, count_runs
from pipeline.sources.readfile import BATCH_LINES, CHUNK_BYTES

CHUNK = 8 * CHUNK_BYTES

Task = tuple[str, int, int, int, int]  # path, start, end, bucket_s, max_line_bytes
Result = tuple[list[Run], ParseStats, int]  # runs, stats, bytes read


def plan(path: str, chunk: int = CHUNK) -> list[tuple[int, int]]:
    size = os.path.getsize(path)
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)] or [(0, 0)]


# Read step while skipping the end of a line that began in the previous chunk.
_SKIP_STEP = 64 * 1024


def _skip_line(fh: BinaryIO, end: int) -> None:
    """Move past the line in progress, reading ``_SKIP_STEP`` bytes at a time and stopping at
    ``end``: the rest of a 200 MB line is neither held (an unbounded ``readline`` peaked at
    430 MB) nor read again by every chunk it spans."""
    while True:
        piece = fh.readline(_SKIP_STEP)
        if not piece or piece.endswith(b"\n") or fh.tell() >= end:
            return


def _read_chunk(path: str, start: int, end: int, max_line_bytes: int) -> bytes:
    """The lines whose first byte lies in [start, end).

    The last one is read on past ``end`` only up to ``max_line_bytes + 1`` bytes: a longer
    line is cut there, as the serial reader cuts it, and the parser counts it too long.
    """
    with open(path, "rb") as fh:
        if start > 0:
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                _skip_line(fh, end)  # the line in progress belongs to the previous chunk
        pos = fh.tell()
        if pos >= end:
            return b""
        data = fh.read(end - pos)
        if data and not data.endswith(b"\n"):
            room = max_line_bytes + 1 - (len(data) - data.rfind(b"\n") - 1)
            if room > 0:
                data += fh.readline(room)
        return data


def work(task: Task) -> Result:
    path, start, end, bucket_s, max_line_bytes = task
    data = _read_chunk(path, start, end, max_line_bytes)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    stats = ParseStats()
    parser = TraefikParser(max_line_bytes)
    runs: list[Run] = []
    # Same batch size as the serial reader: ~1k records stay in cache (see bench/RESULTS.md).
    for i in range(0, len(lines), BATCH_LINES):
        runs += count_runs(parser.parse(lines[i : i + BATCH_LINES], stats), bucket_s)
    return runs, stats, end - start


def _context() -> BaseContext:
    # fork is cheapest, and safe while the parent has a single thread; otherwise forkserver.
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver")


def parallel_tasks(
    path: str, bucket_s: int, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Task]:
    for start, end in plan(path):
        yield (path, start, end, bucket_s, max_line_bytes)


def audit_parallel(
    engine: Engine,
    path: str,
    jobs: int,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Replay one plain (uncompressed, unwrapped) file with ``jobs`` worker processes."""
    tasks = list(parallel_tasks(path, engine.config.bucket_s))
    with _context().Pool(jobs) as pool:
        for runs, stats, nbytes in pool.imap(work, tasks, chunksize=1):
            engine.ingest_runs(runs, stats, path)
            if on_bytes is not None:
                on_bytes(nbytes)
