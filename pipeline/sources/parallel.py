"""``replay --jobs N``: N processes parse, count and fold; one of them also merges, in order.

A plain file is cut into byte chunks on line boundaries. A worker parses its chunk, counts each
time bucket's keys across its batches (``traffic.RunTally``) and folds each bucket into a
``Summary`` with the engine's networks, so both the per-line and the per-key work run in the
workers. The parent feeds the folded buckets to the one engine in file order: a bucket a chunk
opens is taken over as it is, one that spans two chunks is merged, and the engine closes and
judges buckets exactly as a single-process replay does, so the report is the same.

A bucket after a chunk's second and before its last is whole, so it works out the public
clients' diversity masks only for the clients the engine's hop tracker reads (``RunTally``'s
``heavy_share``), as the engine's own buckets do. When such a bucket would join one the engine
holds (the log given twice, a clock ahead), the chunk is read again with every mask, and so is
every later chunk: reports never depend on it, and only the chunks already taken are read twice.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from parsers.records import ParseStats
from parsers.traefik import MAX_LINE_BYTES, TraefikParser
from pipeline.core.addresses import Classifier, Network
from pipeline.core.bouncer import BouncerModel, BouncerSettings, MismatchTally, ModeCounts
from pipeline.core.engine import Engine
from pipeline.core.hops import heavy_share
from pipeline.core.traffic import KEEP_LEADING_RUNS, Classify, Run, RunTally
from pipeline.errors import UsageError
from pipeline.sources.readfile import text_batches

if TYPE_CHECKING:  # multiprocessing is imported when a replay runs in parallel, not before
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkContext, ForkServerContext
    from multiprocessing.process import BaseProcess
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Semaphore

# Bytes of the file per task. A time bucket that a chunk edge cuts is folded twice and merged:
# a busy minute is ~4 MB of log, so 8 MB chunks cut every other one (3 % more CPU with 2 jobs
# than 16 MB). Bigger chunks hold more per result and leave a process idle longer at the end.
CHUNK = 16 << 20

# path, start, end, bucket_s, max_line_bytes, heavy share (None: every diversity mask kept)
Task = tuple[str, int, int, int, int, float | None]
# folded runs (one per bucket), stats, bytes read, bouncer verdicts (None: not judged), and
# whether the inner runs kept only their heavy clients' diversity masks (``RunTally``)
Result = tuple[list[Run], ParseStats, int, ModeCounts | None, bool]


def plan(path: str, chunk: int | None = None) -> list[tuple[int, int]]:
    chunk = chunk or CHUNK
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


class _Chunk:
    """One chunk as a stream for ``text_batches``: the lines whose first byte lies in
    [start, end), read ``TEXT_BYTES`` at a time like the serial reader.

    Each read is parsed while it is in the CPU cache: reading the whole 8 MB chunk at
    once and splitting it first cost ~1 µs more per line. The last line is read on past ``end``
    only up to ``max_line_bytes + 1`` bytes, so ``text_batches`` cuts it where the serial reader
    does, and the parser counts it too long once.
    """

    __slots__ = ("_end", "_fh", "_max_line_bytes", "_pos")

    def __init__(self, fh: BinaryIO, start: int, end: int, max_line_bytes: int) -> None:
        if start > 0:
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                _skip_line(fh, end)  # the line in progress belongs to the previous chunk
        self._fh = fh
        self._pos = fh.tell()
        self._end = end
        self._max_line_bytes = max_line_bytes

    def read(self, size: int) -> bytes:
        if self._pos >= self._end:
            return b""
        data = self._fh.read(min(size, self._end - self._pos))
        self._pos += len(data)
        if self._pos >= self._end and data and not data.endswith(b"\n"):
            data += self._fh.readline(self._max_line_bytes + 1)
        elif not data:
            self._pos = self._end  # the file shrank under us: nothing more to read
        return data


def count_chunk(
    task: Task, mismatch: MismatchTally | None = None, classify: Classify | None = None
) -> tuple[RunTally, ParseStats, int]:
    """Parse one chunk and count its keys per time bucket (the per-line work), each bucket
    folded as the next opens when ``classify`` is given (inner buckets with their heavy
    clients' masks only when the task gives a share), and the bouncer's verdicts into
    ``mismatch`` when given (``replay --bouncer-*``)."""
    path, start, end, bucket_s, max_line_bytes, heavy_share = task
    stats = ParseStats()
    parser = TraefikParser(max_line_bytes)
    tally = RunTally(bucket_s, classify, heavy_share)
    with open(path, "rb") as fh:
        chunk = _Chunk(fh, start, end, max_line_bytes)
        for text in text_batches(chunk, max_line_bytes=max_line_bytes):
            records = parser.parse_text(text, stats)
            tally.add(records)
            if mismatch is not None:
                mismatch.add(records)
    return tally, stats, end - start


# The worker's classifier, set once per process by ``_start_worker``: its cache of client
# classes lives as long as the worker, like the engine's in a single-process replay.
_classify: Classify | None = None
_model: BouncerModel | None = None


def _start_worker(networks: tuple[Network, ...], bouncer: BouncerSettings | None = None) -> None:
    global _classify, _model  # noqa: PLW0603 - one per worker process, set before any task
    _classify = Classifier(networks).classify
    _model = BouncerModel(bouncer) if bouncer is not None else None


def work(task: Task) -> Result:
    """One chunk's buckets, each folded into a Summary (``Summary.add_counts``), in a worker."""
    if _classify is None:  # classes from the wrong networks would be a silently wrong report
        raise RuntimeError("parallel replay worker started without the engine's networks")
    return work_with(task, _classify, _model)


def work_with(task: Task, classify: Classify, model: BouncerModel | None) -> Result:
    """``work`` with the classifier and bouncer model given: what the parent runs itself."""
    mismatch = MismatchTally(model, task[3], None) if model is not None else None
    tally, stats, nbytes = count_chunk(task, mismatch, classify)
    span = mismatch.span if mismatch is not None else None
    return tally.fold(classify), stats, nbytes, span, task[5] is not None


def _context() -> ForkContext | ForkServerContext:
    import multiprocessing

    # fork is cheapest, and safe while the parent has a single thread; otherwise forkserver.
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver")


def parallel_tasks(
    path: str, bucket_s: int, heavy_share: float | None, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Task]:
    for start, end in plan(path):
        yield (path, start, end, bucket_s, max_line_bytes, heavy_share)


def _every_mask(task: Task) -> Task:
    return (*task[:5], None)


def _as_now(task: Task, eager: Synchronized[bool] | None) -> Task:
    """The task as it is to be read now: with every mask once ``eager`` is set."""
    return _every_mask(task) if eager is not None and eager.value else task


def _serve(
    tasks: Sequence[Task],
    taken: Synchronized[int],
    room: Semaphore,
    out: Connection,
    networks: tuple[Network, ...],
    bouncer: BouncerSettings | None = None,
    eager: Synchronized[bool] | None = None,
) -> None:
    """A worker process: take the next task, send back its index and result, until none is
    left. A permit of ``room`` is held from taking a task until the parent has used its result,
    so results waiting for an earlier, slower chunk stay few. Once ``eager`` is set, every
    chunk keeps every diversity mask (``audit_parallel``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the workers
    _start_worker(networks, bouncer)
    try:
        while True:
            room.acquire()
            i = _take(taken, len(tasks))
            if i is None:
                return
            out.send((i, work(_as_now(tasks[i], eager))))
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
        out.send((-1, exc))
    finally:
        out.close()


def audit_parallel(
    engine: Engine,
    path: str,
    jobs: int,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Replay one plain (uncompressed, unwrapped) file with ``jobs`` processes: this one and
    ``jobs - 1`` workers.

    The parent feeds results to the engine in file order and, whenever the next one is not
    ready, reads a chunk itself (``work_with``): with a parent that only merged, ``--jobs 2``
    ran three processes on two cores, and every chunk's buckets were pickled, sent and
    unpickled (a fifth of a core on quiet traffic); now a chunk the parent reads is never
    pickled, and the processes match the cores.

    Not ``multiprocessing.Pool``: its worker-handler thread waits on the result pipe too, and
    spun while every result was read (a fifth of the parent's CPU); its result thread competed
    with the engine for the GIL; and a worker killed mid-task (the OOM killer) left ``imap``
    waiting forever. Here the parent's one thread reads the results of whichever worker is
    ready, and notices a worker that dies.
    """
    share = heavy_share(engine.config.hop_share)
    tasks = list(parallel_tasks(path, engine.config.bucket_s, share))
    jobs = max(1, min(jobs, len(tasks)))
    ctx = _context()
    taken = ctx.Value("q", 0)
    eager = ctx.Value("b", False)  # set: chunks keep every diversity mask (``_joins_held``)
    room = ctx.Semaphore(2 * jobs)
    workers: list[BaseProcess] = []
    results: dict[Connection, BaseProcess] = {}
    done: dict[int, Result] = {}
    mine: set[int] = set()  # chunks this process read: they hold no permit of ``room``
    classify = engine.classifier.classify
    model = BouncerModel(engine.config.bouncer) if engine.config.bouncer is not None else None
    ahead = 2 * jobs  # as many results as the workers may hold (``room``)
    want = 0  # the next chunk in file order
    try:
        for _ in range(jobs - 1):
            reader, writer = ctx.Pipe(duplex=False)
            _widen(writer)
            networks, bouncer = engine.classifier.networks, engine.config.bouncer
            args = (tasks, taken, room, writer, networks, bouncer, eager)
            proc = ctx.Process(target=_serve, args=args, daemon=True)
            proc.start()
            writer.close()
            workers.append(proc)
            results[reader] = proc
        watched = {w.sentinel: w for w in workers}
        while want < len(tasks):
            result = done.pop(want, None)
            if result is None:
                # Read ahead at most ``ahead`` chunks past the one awaited: results wait in
                # ``done`` until that one comes, however slow or stopped its worker is.
                if not _ready(results, watched):
                    i = _take(taken, min(len(tasks), want + ahead))
                    if i is not None:
                        done[i] = work_with(_as_now(tasks[i], eager), classify, model)
                        mine.add(i)
                        continue
                _receive(results, watched, done, path)
                continue
            if result[4] and _joins_held(result[0], engine.traffic.newest_bucket):
                eager.value = True  # from now on every chunk keeps every mask
                result = work_with(_every_mask(tasks[want]), classify, model)  # read again
            runs, stats, nbytes, mismatch, _ = result
            engine.ingest_runs(runs, stats, path)
            if mismatch is not None:
                engine.ingest_mismatch(mismatch)
            if want in mine:
                mine.discard(want)
            else:
                room.release()
            want += 1
            if on_bytes is not None:
                on_bytes(nbytes)
    finally:
        for worker in workers:
            if want < len(tasks):  # an error or an interrupt: the rest is not wanted
                worker.terminate()
            worker.join()
        for reader in results:
            reader.close()


# Bytes a result pipe holds before a worker's ``send`` blocks: one chunk's folded buckets are
# ~100-200 KB, and the 64 KiB default left the worker waiting while the parent read a chunk of
# its own (a quarter of its time on quiet traffic). Linux's default most for a user: 1 MiB.
PIPE_BYTES = 1 << 20


def _widen(conn: Connection) -> None:
    """Grow the pipe behind ``conn`` to ``PIPE_BYTES`` where the system allows it."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):  # not Linux, or over the system's limit
        pass


def _joins_held(runs: Sequence[Run], newest: int | None) -> bool:
    """Whether an inner run (``RunTally``: after the first two, before the last) joins a
    bucket the engine holds already: the chunk's first three buckets are no newer than the
    engine's newest (the same log given twice; rarely, two late lines of rising minutes at
    the chunk's start), or the chunk before ended with a line from a clock ahead of the rest.
    Such a run was folded as a whole bucket with only its own heavy clients' diversity masks,
    but the bucket it joins is not whole, so the chunk is read again with every mask. A
    chunk's runs only grow, so its first inner run tells."""
    first = KEEP_LEADING_RUNS
    return newest is not None and len(runs) > first + 1 and runs[first][0] <= newest


def _take(taken: Synchronized[int], count: int) -> int | None:
    """The next chunk nobody has taken, if it is below ``count`` (else None)."""
    with taken.get_lock():
        i = taken.value
        if i >= count:
            return None
        taken.value = i + 1
    return i


def _ready(results: dict[Connection, BaseProcess], watched: dict[int, BaseProcess]) -> bool:
    """Whether a worker has sent something (or exited) that the parent can read now."""
    from multiprocessing.connection import wait

    return bool(wait([*results, *watched], timeout=0))


def _receive(
    results: dict[Connection, BaseProcess],
    watched: dict[int, BaseProcess],
    done: dict[int, Result],
    path: str,
) -> None:
    """Wait for any worker's next result (into ``done``); raise what a worker raised, or a
    ``UsageError`` when one died (its chunk would be missing from the report)."""
    from multiprocessing.connection import Connection, wait

    if not results and not watched:  # every worker is gone, and the chunk wanted never came
        raise UsageError(f"input file {path}: the replay workers stopped before the end")
    for ready in wait([*results, *watched]):
        if isinstance(ready, Connection):
            try:
                i, result = ready.recv()
            except EOFError:  # it sent all it had and exited
                del results[ready]
                continue
            if i < 0:
                raise result
            done[i] = result
            continue
        assert isinstance(ready, int)
        worker = watched.pop(ready)
        worker.join()
        if worker.exitcode:
            why = f"signal {-worker.exitcode}" if worker.exitcode < 0 else f"exit {worker.exitcode}"
            msg = (
                f"input file {path}: a replay worker process died ({why}; out of memory?): "
                "try --jobs 1"
            )
            raise UsageError(msg)
