"""Model-based test of FileTailer: a Hypothesis state machine after Vector's file_watcher tests.

Actions: write a line (to the live file or, Traefik-style, to the last renamed one), write a
partial line, write an empty line, rotate by rename, copytruncate, delete, read (acking all,
none, in reverse, or with gaps), restart. The tailer is driven through ``poll()`` with a manual
clock, so every interleaving is reproducible. Invariants: within one run no line is delivered
twice; after a final drain the acked lines equal the written complete lines exactly, except
lines of files deleted before a restart that were not acked (those are legitimately gone).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from pipeline.sources.framing import LineFramer
from pipeline.sources.tail import FileTailer, TailBatch
from tests.support.tail import ManualClock, config

MAX_LINE = 40
payloads = st.binary(max_size=30).map(lambda b: b.translate(None, b"\n\r\x00"))


class ModelFile:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        st_ = os.fstat(self.fd)
        self.ident = (st_.st_dev, st_.st_ino)
        self.complete: list[bytes] = []
        self.partial = b""
        self.acked: Counter[bytes] = Counter()
        self.deleted = False
        self.finalized = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TailMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="tailmodel-")
        self.logdir = os.path.join(self.root, "logs")
        os.mkdir(self.logdir)
        self.path = os.path.join(self.logdir, "app.log")
        self.cpdir = os.path.join(self.root, "cp")
        self.clock = ManualClock()
        self.counter = 0
        self.rotations = 0
        self.files: list[ModelFile] = []
        self.current: ModelFile | None = None
        self.by_ident: dict[tuple[int, int], ModelFile] = {}
        self.acked: Counter[bytes] = Counter()
        self.lost: Counter[bytes] = Counter()
        self.tailer = self._new_tailer()
        self._new_run()

    # ------------------------------------------------------------------ plumbing

    def _new_tailer(self) -> FileTailer:
        cfg = config(
            [self.path],
            self.cpdir,
            max_line_bytes=MAX_LINE,
            batch_lines=3,
            poll_interval=1.0,
            glob_interval=1.0,
            rotate_wait=1e9,
            checkpoint_interval=1e9,
        )
        return FileTailer(cfg, clock=self.clock)

    def _new_run(self) -> None:
        self.unacked: list[tuple[TailBatch, ModelFile]] = []
        self.run_batches: list[tuple[TailBatch, ModelFile, list[bool]]] = []
        self.run_seen: Counter[bytes] = Counter()

    def _next_id(self) -> int:
        self.counter += 1
        return self.counter

    def _live(self) -> ModelFile:
        if self.current is None:
            self.current = ModelFile(self.path)
            self.files.append(self.current)
            self.by_ident[self.current.ident] = self.current
        return self.current

    def _deliver(self, batches: list[TailBatch]) -> None:
        for batch in batches:
            dev, ino = (int(x) for x in batch.file_key.split(":")[:2])
            f = self.by_ident[(dev, ino)]
            for line in batch.lines:
                if line:
                    assert self.run_seen[line] == 0, f"{line!r} delivered twice in one run"
                    self.run_seen[line] += 1
            flag = [False]
            self.run_batches.append((batch, f, flag))
            self.unacked.append((batch, f))

    def _ack(self, item: tuple[TailBatch, ModelFile]) -> None:
        batch, f = item
        self.tailer.ack(batch)
        self.acked.update(batch.lines)
        f.acked.update(batch.lines)
        for b, _, flag in self.run_batches:
            if b is batch:
                flag[0] = True

    def _poll(self) -> list[TailBatch]:
        self.clock.advance(5.0)  # every poll is due for discovery and housekeeping
        got = self.tailer.poll()
        self._deliver(got)
        return got

    def _sync(self) -> None:
        """One pass, so the tailer has the live file open before it is renamed or deleted."""
        self._poll()

    def _drain(self) -> None:
        idle = 0
        for _ in range(10_000):
            before = self.tailer.stats.polls
            got = self._poll()
            idle = idle + 1 if not got and self.tailer.stats.polls > before else 0
            if idle >= 2:
                return
        raise AssertionError("tailer never went idle")

    def _ack_all(self) -> None:
        for item in self.unacked:
            self._ack(item)
        self.unacked = []

    # ------------------------------------------------------------------ actions

    @rule(payload=payloads, to_rotated=st.booleans())
    def write_line(self, payload: bytes, to_rotated: bool) -> None:
        rotated = [f for f in self.files if f is not self.current and not f.deleted]
        target = rotated[-1] if to_rotated and rotated else self._live()
        data = b"L%d:" % self._next_id() + payload
        full = target.partial + data
        target.write(data + b"\n")
        target.partial = b""
        if len(full) <= MAX_LINE:
            target.complete.append(full)

    @rule()
    def write_empty_line(self) -> None:
        target = self._live()
        target.write(b"\n")
        if len(target.partial) <= MAX_LINE:
            target.complete.append(target.partial)
        target.partial = b""

    @rule(payload=payloads)
    def write_partial(self, payload: bytes) -> None:
        target = self._live()
        data = b"P%d:" % self._next_id() + payload
        target.write(data)
        target.partial += data

    @precondition(lambda self: self.current is not None)
    @rule()
    def rotate_by_rename(self) -> None:
        self._sync()
        self.rotations += 1
        os.rename(self.path, f"{self.path}.{self.rotations}")
        self.current = None  # the next write creates a new file (Traefik after USR1)

    @precondition(lambda self: self.current is not None)
    @rule()
    def copytruncate(self) -> None:
        assert self.current is not None
        self._ack_all()
        self._drain()
        self._ack_all()
        os.truncate(self.path, 0)
        self.current.partial = b""
        self._sync()  # a tailer polling faster than the file regrows

    @precondition(lambda self: self.current is not None)
    @rule()
    def delete(self) -> None:
        assert self.current is not None
        self._sync()
        os.unlink(self.path)
        self.current.deleted = True
        self.current.close()  # once the tailer lets go, the inode can be reused
        self.current = None

    @rule(mode=st.sampled_from(["all", "none", "reverse", "gaps"]))
    def read(self, mode: str) -> None:
        self._drain()
        if mode == "all":
            self._ack_all()
        elif mode == "reverse":
            for item in reversed(self.unacked):
                self._ack(item)
            self.unacked = []
        elif mode == "gaps":
            keep = []
            for i, item in enumerate(reversed(self.unacked)):
                if i % 2 == 0:
                    self._ack(item)
                else:
                    keep.append(item)
            self.unacked = keep[::-1]

    @rule()
    def restart(self) -> None:
        self.tailer.flush_checkpoints()
        self.tailer.close()
        # Acked batches after an unacked one in the same file are read (and acked) again.
        in_prefix: dict[str, bool] = {}
        for batch, f, flag in self.run_batches:
            if f.deleted:
                continue
            if not flag[0]:
                in_prefix[batch.file_key] = False
            elif not in_prefix.get(batch.file_key, True):
                self.acked.subtract(batch.lines)
                f.acked.subtract(batch.lines)
        for f in self.files:
            if f.deleted and not f.finalized:
                self.lost.update(Counter(f.complete) - f.acked)
                f.finalized = True
        self.tailer = self._new_tailer()
        self._new_run()

    @rule()
    def check_everything_acked_once(self) -> None:
        for _ in range(100):
            self._ack_all()
            self._drain()
            if not self.unacked:
                break
        self._ack_all()
        expected: Counter[bytes] = Counter()
        for f in self.files:
            expected.update(f.complete)
        expected.subtract(self.lost)
        got = +self.acked
        want = +expected
        assert got == want, f"missing={dict(want - got)} extra={dict(got - want)}"

    def teardown(self) -> None:
        try:
            self.check_everything_acked_once()
        finally:
            self.tailer.close()
            for f in self.files:
                f.close()
            shutil.rmtree(self.root, ignore_errors=True)


TailMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_tail_model = TailMachine.TestCase


# ---------------------------------------------------------------------- framing property

raw_lines = st.lists(st.sampled_from([b"a", b"b", b"\x00", b"\r"]), max_size=20).map(b"".join)


def reference_frame(data: bytes, max_line: int) -> tuple[list[bytes], int]:
    """What the framer must produce: complete lines, NUL prefix cut, cap, trailing CR cut."""
    out: list[bytes] = []
    dropped = 0
    *complete, partial = data.split(b"\n")
    for raw in complete:
        line = raw.lstrip(b"\x00") if raw[:1] == b"\x00" else raw
        if raw[:1] == b"\x00" and not line:
            continue
        if len(line) > max_line:
            dropped += 1
            continue
        out.append(line[:-1] if line[-1:] == b"\r" else line)
    if len(partial.lstrip(b"\x00")) > max_line:
        dropped += 1
    return out, dropped


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(raw_lines, max_size=12), tail=raw_lines, data=st.data())
def test_framer_output_does_not_depend_on_chunking(
    lines: list[bytes], tail: bytes, data: st.DataObject
) -> None:
    stream = b"".join(line + b"\n" for line in lines) + tail
    framer = LineFramer(8)
    got: list[bytes] = []
    ends: list[int] = []
    pos = 0
    while pos < len(stream):
        size = data.draw(st.integers(1, 10))
        framer.feed(stream[pos : pos + size])
        pos += size
        while (taken := framer.take(data.draw(st.integers(1, 4)))) is not None:
            got.extend(taken[0])
            ends.append(taken[1])
    want, dropped = reference_frame(stream, 8)
    assert got == want
    assert framer.dropped == dropped
    assert ends == sorted(set(ends))
    assert all(stream[e - 1 : e] == b"\n" for e in ends)
    _, final = framer.finish()
    assert final == len(stream)
