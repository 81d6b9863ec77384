"""Rotation-safe, checkpointed file tailer (stat polling, no inotify).

Design points (see the reliability notes for the shippers this copies):

* A file is followed by its open fd, not its name. When the name stops pointing at the fd
  (rename rotation, delete, symlink swap) the fd is kept and read to EOF until it has been
  quiet for ``rotate_wait``; whatever lands in it meanwhile is delivered.
* Identity is ``(st_dev, st_ino)``; the same inode seen under two names is one file. A file
  that shrinks below the read offset was truncated in place (copytruncate) and is re-read
  from 0 as a new *generation* with its own key.
* The checkpoint moves only through ``ack()``, per file, over the contiguous acked prefix,
  so at-least-once holds across crashes; on restart a checkpoint is applied only if the
  file's head and the bytes before the offset still hash the same.
* Reading is pull-driven: at most one batch per file is read ahead of the consumer. While
  the consumer is busy, a watcher task still notices rotations and opens new files (it
  never reads), so a file created and rotated away during a stall is not missed.
* With a valid checkpoint, a file it does not know appeared after our last start and is
  read from 0; ``start_at`` only applies when there is no usable checkpoint at all.

File I/O is done inline on the event loop: regular-file reads of ``READ_CHUNK`` bytes and
``stat`` calls do not block for meaningful time on local disks.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import stat as stat_mod
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from pipeline.sources.checkpoint import (
    HEAD_BYTES,
    CheckpointState,
    CheckpointStore,
    FileCheckpoint,
    digest,
    marker_at,
    pread_exact,
)
from pipeline.sources.framing import LineFramer

log = logging.getLogger("auditor.tail")

READ_CHUNK = 256 * 1024
# Reads per file per pass while no line comes out (e.g. inside a huge dropped line): keeps
# one file from starving the others.
_MAX_READS_PER_PASS = 8
_MAGIC = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class TailConfig:
    paths: tuple[str, ...]
    checkpoint_dir: str | None
    start_at: Literal["beginning", "end"] = "end"
    max_line_bytes: int = 65536
    batch_lines: int = 2048
    poll_interval: float = 0.25
    rotate_wait: float = 30.0
    glob_interval: float = 2.0
    checkpoint_interval: float = 5.0
    name: str = "tail"  # checkpoint file is <checkpoint_dir>/<name>.json


@dataclass(frozen=True, slots=True)
class TailBatch:
    lines: list[bytes]
    file_key: str
    path: str
    start_offset: int
    end_offset: int
    token: object
    line_ends: list[int] | None = None  # end offset of each line: stable ids for Kafka events


@dataclass(slots=True)
class TailStats:
    lines: int = 0
    bytes: int = 0
    too_long: int = 0
    rotations: int = 0
    truncations: int = 0
    files_opened: int = 0
    files_closed: int = 0
    lag_bytes: int = 0
    open_files: int = 0
    polls: int = 0  # idle passes; lets callers wait for quiescence without timing
    housekeeping: int = 0  # stat passes over paths and open files (also run while busy)


class _Stream:
    """One open fd and one generation of its content (a truncation starts a new one)."""

    __slots__ = (
        "ack_next",
        "acked",
        "closed",
        "committed",
        "committed_marker",
        "dead",
        "dev",
        "dropped_seen",
        "fd",
        "framer",
        "head_hash",
        "head_len",
        "ino",
        "key",
        "last_end",
        "last_growth",
        "nlink",
        "path",
        "paths",
        "pending",
        "persist",
        "pos",
        "real",
        "seq",
        "size",
    )

    def __init__(
        self,
        fd: int,
        dev: int,
        ino: int,
        path: str,
        real: str,
        offset: int,
        framer: LineFramer,
        now: float,
        *,
        persist: bool,
    ) -> None:
        self.fd = fd
        self.dev = dev
        self.ino = ino
        self.path = path
        self.real = real
        self.framer = framer
        self.pos = offset
        self.last_end = offset
        self.key: str | None = None
        self.head_len = 0
        self.head_hash = digest(b"")
        self.seq = 0
        self.pending: dict[int, tuple[int, int, str]] = {}
        self.acked: set[int] = set()
        self.ack_next = 0
        self.committed = offset
        self.committed_marker = (0, digest(b""))
        self.paths: set[str] = set()
        self.last_growth = now
        self.size = offset
        self.nlink = 1
        self.dead = False
        self.closed = False
        self.persist = persist
        self.dropped_seen = 0

    def set_head(self, head: bytes) -> None:
        self.head_len = len(head)
        self.head_hash = digest(head)
        self.key = f"{self.dev}:{self.ino}:{self.head_hash[:16]}"

    def checkpoint(self) -> FileCheckpoint:
        return FileCheckpoint(
            dev=self.dev,
            ino=self.ino,
            offset=self.committed,
            head_len=self.head_len,
            head_hash=self.head_hash,
            marker_len=self.committed_marker[0],
            marker_hash=self.committed_marker[1],
            key=self.key,
            path=self.real,
        )


class _Token:
    __slots__ = ("owner", "seq", "stream")

    def __init__(self, owner: FileTailer, stream: _Stream, seq: int) -> None:
        self.owner = owner
        self.stream = stream
        self.seq = seq


def _has_magic(pattern: str) -> bool:
    return not _MAGIC.isdisjoint(pattern)


class FileTailer:
    """Follows files matched by ``config.paths``; see the module docstring for guarantees."""

    def __init__(self, config: TailConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not config.paths:
            raise ValueError("TailConfig.paths is empty")
        if config.max_line_bytes < 1 or config.batch_lines < 1:
            raise ValueError("max_line_bytes and batch_lines must be positive")
        if config.start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be 'beginning' or 'end', not {config.start_at!r}")
        self._cfg = config
        self._clock = clock
        self.stats = TailStats()
        self._store = (
            CheckpointStore(config.checkpoint_dir, config.name)
            if config.checkpoint_dir is not None
            else None
        )
        self._literal = tuple(p for p in config.paths if not _has_magic(p))
        self._by_inode: dict[tuple[int, int], _Stream] = {}
        self._path_map: dict[str, _Stream] = {}
        self._closing: dict[int, _Stream] = {}  # closed fds whose batches are not all acked
        self._restored: dict[tuple[int, int], FileCheckpoint] = {}
        self._has_state = False
        self._warned: set[str] = set()
        self._started = False
        self._closed = False
        self._iterating = False
        self._consumer_busy = False
        self._flush_failing = False
        self._idle = True
        self._dirty = False
        self._next_glob = 0.0
        self._next_house = 0.0
        self._next_flush = 0.0

    # ----------------------------------------------------------------- public API

    async def batches(self, stop: asyncio.Event) -> AsyncGenerator[TailBatch, None]:
        """Follow the files until ``stop`` is set; flushes checkpoints and closes fds on exit.

        While the consumer holds a batch, a watcher task keeps noticing rotations and opening
        new files (opening is not reading), so a slow consumer cannot make us miss a file
        that is created and rotated away before it catches up.
        """
        self._claim()
        watcher = asyncio.create_task(self._watch(stop))
        try:
            while not stop.is_set():
                out = self.poll()
                for batch in out:
                    self._consumer_busy = True
                    yield batch
                    self._consumer_busy = False
                    if stop.is_set():
                        return
                if out:
                    await asyncio.sleep(0)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._cfg.poll_interval)
        finally:
            watcher.cancel()
            self._safe_flush()
            self.close()

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self._closed:
            await asyncio.sleep(self._cfg.poll_interval)
            if self._consumer_busy and self._started and not self._closed:
                try:
                    self._maintain(self._clock())
                except OSError as exc:
                    log.warning("tail housekeeping failed: %s", exc)

    async def read_to_end(self) -> AsyncGenerator[TailBatch, None]:
        """Replay: read every matched file from 0 to EOF once, no follow, no checkpoints.

        A finished file's unterminated last line is delivered too: it is all the data there is.
        """
        self._claim()
        now = self._clock()
        seen: set[tuple[int, int]] = set()
        stream: _Stream | None = None
        try:
            for path in self._expand():
                stream = self._open_plain(path, now)
                if stream is None:
                    continue
                if (stream.dev, stream.ino) not in seen:
                    seen.add((stream.dev, stream.ino))
                    while True:
                        batch, progressed = self._next_batch(stream, now)
                        if batch is not None:
                            yield batch
                            await asyncio.sleep(0)
                        elif not progressed:
                            break
                    lines, end = stream.framer.finish()
                    if lines:
                        yield self._make_batch(stream, lines, end)
                self._close_stream(stream)
        finally:
            if stream is not None:
                self._close_stream(stream)
            self.close()

    def poll(self) -> list[TailBatch]:
        """One non-blocking pass: housekeeping when due, then at most one batch per file.

        Returns [] when there was nothing to read. ``batches()`` is this plus waiting.
        """
        if self._closed:
            raise RuntimeError("tailer is closed")
        now = self._clock()
        if not self._started:
            self._start(now)
        self._maintain(now, force=self._idle)
        out: list[TailBatch] = []
        progressed = False
        for stream in list(self._by_inode.values()):
            batch, moved = self._next_batch(stream, now)
            if batch is not None:
                out.append(batch)
            progressed = progressed or moved
        self._idle = not progressed
        if self._idle:
            self.stats.polls += 1
        self.stats.lag_bytes = sum(max(0, s.size - s.pos) for s in self._by_inode.values())
        if self._dirty and now >= self._next_flush:
            self._safe_flush()
            self._next_flush = now + self._cfg.checkpoint_interval
        return out

    def _maintain(self, now: float, *, force: bool = False) -> None:
        if now >= self._next_glob:
            self._discover(now, initial=False)
            self._next_glob = now + self._cfg.glob_interval
        if force or now >= self._next_house:
            self._housekeep(now)
            self._next_house = now + self._cfg.poll_interval

    def ack(self, batch: TailBatch) -> None:
        """Mark a batch processed; the checkpoint advances over the contiguous acked prefix."""
        token = batch.token
        if not isinstance(token, _Token) or token.owner is not self:
            raise ValueError("batch was not produced by this tailer")
        stream = token.stream
        if not stream.persist or stream.dead or token.seq < stream.ack_next:
            return
        stream.acked.add(token.seq)
        advanced = False
        while stream.ack_next in stream.acked:
            stream.acked.discard(stream.ack_next)
            end, marker_len, marker_hash = stream.pending.pop(stream.ack_next)
            stream.committed = end
            stream.committed_marker = (marker_len, marker_hash)
            stream.ack_next += 1
            advanced = True
        if advanced:
            self._dirty = True
            if stream.closed and stream.ack_next == stream.seq:
                self._closing.pop(id(stream), None)

    def flush_checkpoints(self) -> None:
        """Write the acked positions now (atomically). Raises OSError if the write fails."""
        if self._store is None or not self._started:
            return
        for stream in self._by_inode.values():
            if not stream.closed:
                self._refresh_nlink(stream)
        entries = [
            s.checkpoint()
            for s in (*self._by_inode.values(), *self._closing.values())
            if s.persist and not s.dead and s.nlink > 0
        ]
        self._store.save(entries)
        self._dirty = False

    def close(self) -> None:
        """Release every fd. Acks and ``flush_checkpoints`` still work afterwards."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._by_inode.values()):
            if not stream.closed:
                self._refresh_nlink(stream)  # for flushes after close (see flush_checkpoints)
                os.close(stream.fd)
                stream.closed = True
                self.stats.files_closed += 1
        self.stats.open_files = 0

    @staticmethod
    def _refresh_nlink(stream: _Stream) -> None:
        """Re-read the link count of an open file right before it may be saved.

        ``nlink`` is otherwise only updated by housekeeping, so a file unlinked since the last
        pass would still be saved. Once we close the fd its inode is free, and a new file that
        gets the same inode number and starts with the same bytes (a run of empty lines, say)
        would pass ``FileCheckpoint.matches`` and be resumed at the dead file's offset, losing
        its first lines. One fstat per open file per flush; not on the read path.
        """
        try:
            stream.nlink = os.fstat(stream.fd).st_nlink
        except OSError as exc:
            log.debug("cannot fstat %s: %s", stream.path, exc)

    # ----------------------------------------------------------------- lifecycle

    def _claim(self) -> None:
        if self._iterating or self._closed:
            raise RuntimeError("a FileTailer can be iterated once")
        self._iterating = True

    def _start(self, now: float) -> None:
        self._started = True
        state: CheckpointState | None = None
        if self._store is not None:
            state = self._store.load()
        if state is not None:
            self._has_state = True
            self._restored = {(f.dev, f.ino): f for f in state.files}
        self._discover(now, initial=True)
        self._recover_orphans(now)
        self._restored.clear()
        self._next_glob = now + self._cfg.glob_interval
        self._next_house = now + self._cfg.poll_interval
        self._next_flush = now + self._cfg.checkpoint_interval
        # Persist the starting positions at once: a crash before the first ack must not turn
        # these files into "no checkpoint" files next time (start_at=end would skip their data).
        self._safe_flush()

    def _safe_flush(self) -> None:
        try:
            self.flush_checkpoints()
        except OSError as exc:
            if not self._flush_failing:
                log.warning("cannot write tail checkpoint: %s", exc)
            self._flush_failing = True
        else:
            if self._flush_failing:
                log.warning("tail checkpoint writes work again")
            self._flush_failing = False

    # ----------------------------------------------------------------- discovery

    def _expand(self) -> Iterator[str]:
        for pattern in self._cfg.paths:
            if _has_magic(pattern):
                yield from sorted(glob.glob(pattern))
            else:
                yield pattern

    def _discover(self, now: float, *, initial: bool) -> None:
        for path in self._expand():
            self._check_path(path, now, initial=initial)

    def _housekeep(self, now: float) -> None:
        self.stats.housekeeping += 1
        for path in (*self._literal, *self._path_map):
            self._check_path(path, now, initial=False)
        for stream in list(self._by_inode.values()):
            self._check_stream(stream, now)

    def _warn_once(self, path: str, what: str, exc: OSError) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("cannot %s %s: %s", what, path, exc)

    def _check_path(self, path: str, now: float, *, initial: bool) -> None:
        """Make ``path`` map to the stream of the file it names now."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._unmap(path, now)
            return
        except OSError as exc:
            self._warn_once(path, "stat", exc)
            return
        if not stat_mod.S_ISREG(st.st_mode):
            self._unmap(path, now)
            return
        ident = (st.st_dev, st.st_ino)
        current = self._path_map.get(path)
        if current is not None:
            if (current.dev, current.ino) == ident and not current.dead:
                return
            self._unmap(path, now)
        stream = self._by_inode.get(ident)
        if stream is None:
            stream = self._open(path, now, initial=initial)
            if stream is None:
                return
        stream.paths.add(path)
        self._path_map[path] = stream

    def _unmap(self, path: str, now: float) -> None:
        stream = self._path_map.pop(path, None)
        if stream is None:
            return
        stream.paths.discard(path)
        if not stream.paths and not stream.closed:
            stream.last_growth = now
            self.stats.rotations += 1
            log.info("%s no longer names the open file; reading it until quiet", path)

    def _open(self, path: str, now: float, *, initial: bool) -> _Stream | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_once(path, "open", exc)
            return None
        self._warned.discard(path)
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if not stat_mod.S_ISREG(st.st_mode) or ident in self._by_inode:
            os.close(fd)  # replaced between stat and open; the next pass sorts it out
            return self._by_inode.get(ident)
        real = os.path.realpath(path)
        entry = self._restored.pop(ident, None)
        if entry is not None:
            if entry.matches(fd, st.st_size):
                return self._adopt(fd, st, path, real, entry, now)
            self.stats.truncations += 1
            log.info(
                "%s changed while stopped (truncated, rewritten or inode reused); from 0", path
            )
            return self._register(fd, st, path, real, 0, now)
        if initial and not self._has_state and self._cfg.start_at == "end":
            offset, skip = self._end_offset(fd, st.st_size)
            return self._register(fd, st, path, real, offset, now, skip_first=skip)
        return self._register(fd, st, path, real, 0, now)

    def _end_offset(self, fd: int, size: int) -> tuple[int, bool]:
        """Start after the last complete line so a line being written is delivered whole."""
        span = min(size, self._cfg.max_line_bytes + 1)
        tail = pread_exact(fd, span, size - span)
        nl = tail.rfind(b"\n")
        if nl >= 0:
            return size - len(tail) + nl + 1, False
        if size <= self._cfg.max_line_bytes:
            return 0, False
        return size, True

    def _register(
        self,
        fd: int,
        st: os.stat_result,
        path: str,
        real: str,
        offset: int,
        now: float,
        *,
        skip_first: bool = False,
    ) -> _Stream:
        framer = LineFramer(self._cfg.max_line_bytes, offset, skip_first=skip_first)
        stream = _Stream(fd, st.st_dev, st.st_ino, path, real, offset, framer, now, persist=True)
        stream.size = st.st_size
        stream.nlink = st.st_nlink
        if st.st_size > 0:
            stream.set_head(pread_exact(fd, HEAD_BYTES, 0))
        stream.committed_marker = marker_at(fd, offset)
        self._track(stream)
        log.info("tailing %s from offset %d", path, offset)
        return stream

    def _adopt(
        self,
        fd: int,
        st: os.stat_result,
        path: str,
        real: str,
        entry: FileCheckpoint,
        now: float,
    ) -> _Stream:
        framer = LineFramer(self._cfg.max_line_bytes, entry.offset)
        stream = _Stream(
            fd, st.st_dev, st.st_ino, path, real, entry.offset, framer, now, persist=True
        )
        stream.size = st.st_size
        stream.nlink = st.st_nlink
        stream.key = entry.key
        stream.head_len = entry.head_len
        stream.head_hash = entry.head_hash
        stream.committed_marker = (entry.marker_len, entry.marker_hash)
        self._track(stream)
        log.info("resuming %s at offset %d", path, entry.offset)
        return stream

    def _track(self, stream: _Stream) -> None:
        self._by_inode[(stream.dev, stream.ino)] = stream
        self._dirty = True
        self.stats.files_opened += 1
        self.stats.open_files = len(self._by_inode)
        if self._started and stream.persist:
            # Record a newly opened file at once: if we die before the next periodic flush
            # and it is rotated away meanwhile, only its checkpoint lets a restart find it
            # by inode (a lagging reader under fast rotation lost a whole file without this).
            self._safe_flush()

    def _recover_orphans(self, now: float) -> None:
        """Finish files rotated while we were stopped: find them by inode in their old directory."""
        by_dir: dict[str, list[FileCheckpoint]] = {}
        for entry in self._restored.values():
            by_dir.setdefault(os.path.dirname(entry.path), []).append(entry)
        for directory, entries in by_dir.items():
            wanted = {e.ino: e for e in entries}
            try:
                with os.scandir(directory) as it:
                    found = [(d.path, wanted[d.inode()]) for d in it if d.inode() in wanted]
            except OSError as exc:
                log.info("cannot scan %s for rotated files: %s", directory, exc)
                continue
            for path, entry in found:
                self._open_orphan(path, entry, now)
        for entry in self._restored.values():
            if (entry.dev, entry.ino) not in self._by_inode:
                log.info("dropping checkpoint of %s: file is gone", entry.path)

    def _open_orphan(self, path: str, entry: FileCheckpoint, now: float) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if (
            ident != (entry.dev, entry.ino)
            or ident in self._by_inode
            or not stat_mod.S_ISREG(st.st_mode)
            or not entry.matches(fd, st.st_size)
        ):
            os.close(fd)
            return
        self._adopt(fd, st, path, path, entry, now)

    def _open_plain(self, path: str, now: float) -> _Stream | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._warn_once(path, "open", exc)
            return None
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        framer = LineFramer(self._cfg.max_line_bytes, 0)
        stream = _Stream(fd, st.st_dev, st.st_ino, path, path, 0, framer, now, persist=False)
        stream.size = st.st_size
        self.stats.files_opened += 1
        return stream

    # ----------------------------------------------------------------- per-file state

    def _check_stream(self, stream: _Stream, now: float) -> None:
        try:
            st = os.fstat(stream.fd)
        except OSError as exc:
            log.warning("lost %s: %s", stream.path, exc)
            self._close_stream(stream)
            return
        stream.nlink = st.st_nlink
        # Lines already read but not yet handed out are delivered first; the next pass
        # notices the truncation.
        if st.st_size < stream.pos and not stream.framer.has_lines:
            stream = self._new_generation(stream, now)
        stream.size = st.st_size
        if (
            not stream.paths
            and stream.size <= stream.pos
            and not stream.framer.has_lines
            and now - stream.last_growth >= self._cfg.rotate_wait
        ):
            self._close_stream(stream)

    def _new_generation(self, old: _Stream, now: float) -> _Stream:
        """Truncated in place: same fd, content starts over at 0 under a new key."""
        old.dead = True
        framer = LineFramer(self._cfg.max_line_bytes, 0)
        new = _Stream(old.fd, old.dev, old.ino, old.path, old.real, 0, framer, now, persist=True)
        new.paths = old.paths
        new.nlink = old.nlink
        for path in new.paths:
            self._path_map[path] = new
        self._by_inode[(new.dev, new.ino)] = new
        self._dirty = True
        self.stats.truncations += 1
        log.info("%s was truncated; reading it again from 0", old.path)
        return new

    def _close_stream(self, stream: _Stream) -> None:
        if stream.closed:
            return
        os.close(stream.fd)
        stream.closed = True
        if self._by_inode.get((stream.dev, stream.ino)) is stream:
            del self._by_inode[(stream.dev, stream.ino)]
        for path in stream.paths:
            self._path_map.pop(path, None)
        stream.paths = set()
        if stream.persist and not stream.dead:
            if stream.ack_next < stream.seq:
                self._closing[id(stream)] = stream
            self._dirty = True
        self.stats.files_closed += 1
        self.stats.open_files = len(self._by_inode)
        log.info("closed %s", stream.path)

    # ----------------------------------------------------------------- reading

    def _next_batch(self, stream: _Stream, now: float) -> tuple[TailBatch | None, bool]:
        """(batch, progressed): progressed is True if bytes were consumed or a batch made."""
        framer = stream.framer
        reads = 0
        while True:
            got = framer.take(self._cfg.batch_lines)
            if got is not None:
                lines, end = got
                self._count_dropped(stream)
                if lines:
                    return self._make_batch(stream, lines, end), True
                continue
            if reads >= _MAX_READS_PER_PASS:
                return None, True
            try:
                data = os.pread(stream.fd, READ_CHUNK, stream.pos)
            except OSError as exc:
                log.warning("read error on %s: %s", stream.path, exc)
                self._close_stream(stream)
                return None, False
            if not data:
                return None, reads > 0
            reads += 1
            stream.pos += len(data)
            stream.size = max(stream.size, stream.pos)
            stream.last_growth = now
            self.stats.bytes += len(data)
            framer.feed(data)
            self._count_dropped(stream)

    def _count_dropped(self, stream: _Stream) -> None:
        dropped = stream.framer.dropped
        if dropped != stream.dropped_seen:
            self.stats.too_long += dropped - stream.dropped_seen
            stream.dropped_seen = dropped

    def _make_batch(self, stream: _Stream, lines: list[bytes], end: int) -> TailBatch:
        if stream.key is None:
            stream.set_head(pread_exact(stream.fd, HEAD_BYTES, 0))
        seq = stream.seq
        stream.seq += 1
        if stream.persist:
            marker_len, marker_hash = marker_at(stream.fd, end)
            stream.pending[seq] = (end, marker_len, marker_hash)
        batch = TailBatch(
            lines=lines,
            file_key=stream.key or "",
            path=stream.path,
            start_offset=stream.last_end,
            end_offset=end,
            token=_Token(self, stream, seq),
            line_ends=stream.framer.last_ends,
        )
        stream.last_end = end
        self.stats.lines += len(lines)
        return batch
