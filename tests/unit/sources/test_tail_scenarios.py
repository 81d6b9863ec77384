"""FileTailer failure scenarios (reliability.md §2): each asserts the exact multiset delivered."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.sources.tail import READ_CHUNK, FileTailer
from tests.support.tail import LogWriter, ManualClock, TailRun, config, numbered, open_fds_to


@pytest.fixture(name="logdir")
def _logdir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture(name="cpdir")
def _cpdir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoints"


def nl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def assert_exactly(got: list[bytes], expected: list[bytes]) -> None:
    missing = Counter(expected) - Counter(got)
    extra = Counter(got) - Counter(expected)
    assert not missing and not extra, f"missing={dict(missing)} extra={dict(extra)}"


# ------------------------------------------------------------------ restart and checkpoints


async def test_restart_resumes_after_last_acked_line(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    w = LogWriter(path)
    w.lines(numbered("a", 10))
    async with TailRun(config([path], cpdir)) as run1:
        await run1.wait_lines(10)
        await run1.settle()
    w.lines(numbered("b", 5))
    async with TailRun(config([path], cpdir)) as run2:
        await run2.wait_lines(5)
        await run2.settle()
    assert run1.lines == numbered("a", 10)
    assert run2.lines == numbered("b", 5)


async def test_unacked_batches_are_reread_after_restart(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    path.write_bytes(nl(numbered("a", 10)))
    async with TailRun(config([path], cpdir, batch_lines=3), auto_ack=False) as run1:
        await run1.wait_lines(10)
        await run1.settle()
        run1.tailer.ack(run1.batches[0])
    assert [len(b.lines) for b in run1.batches] == [3, 3, 3, 1]
    async with TailRun(config([path], cpdir, batch_lines=3)) as run2:
        await run2.wait_lines(7)
        await run2.settle()
    assert run2.lines == numbered("a", 7, start=3)


async def test_out_of_order_acks_advance_only_the_contiguous_prefix(
    logdir: Path, cpdir: Path
) -> None:
    path = logdir / "app.log"
    path.write_bytes(nl(numbered("a", 8)))
    async with TailRun(config([path], cpdir, batch_lines=2), auto_ack=False) as run1:
        await run1.wait_lines(8)
        b0, b1, b2, b3 = run1.batches
        for b in (b3, b2, b0):  # b1 never acked
            run1.tailer.ack(b)
        run1.tailer.flush_checkpoints()
        saved = json.loads((cpdir / "tail.json").read_text())
        assert saved["files"][0]["offset"] == b0.end_offset == b1.start_offset
    async with TailRun(config([path], cpdir, batch_lines=2)) as run2:
        await run2.wait_lines(6)
        await run2.settle()
    assert run2.lines == numbered("a", 6, start=2)


async def test_shutdown_mid_stream_then_restart_delivers_each_line_once(
    logdir: Path, cpdir: Path
) -> None:
    path = logdir / "app.log"
    expected = numbered("line", 4000)
    path.write_bytes(nl(expected))
    async with TailRun(config([path], cpdir, batch_lines=100), stop_after=1000) as run1:
        await run1.wait_lines(1000)
    assert len(run1.lines) == 1000
    async with TailRun(config([path], cpdir, batch_lines=100)) as run2:
        await run2.wait_lines(4000 - len(run1.lines))
        await run2.settle()
    assert_exactly(run1.lines + run2.lines, expected)


async def test_partial_line_held_until_newline(logdir: Path) -> None:
    path = logdir / "app.log"
    w = LogWriter(path)
    w.write(b"par")
    async with TailRun(config([path], None)) as run:
        await run.settle()
        w.write(b"tial")
        await run.settle()
        assert run.lines == []
        w.write(b"\nnext\n")
        await run.wait_lines(2)
        await run.settle()
    assert run.lines == [b"partial", b"next"]


async def test_partial_line_across_restart_is_emitted_once(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    w = LogWriter(path)
    w.write(b"first\nhal")
    async with TailRun(config([path], cpdir)) as run1:
        await run1.wait_lines(1)
        await run1.settle()
    w.write(b"f\n")
    async with TailRun(config([path], cpdir)) as run2:
        await run2.wait_lines(1)
        await run2.settle()
    assert run1.lines == [b"first"]
    assert run2.lines == [b"half"]


# ------------------------------------------------------------------ rotation


async def test_rename_rotation_reads_old_fd_and_new_file(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    old = LogWriter(path)
    old.lines(numbered("a", 5))
    async with TailRun(config([path], cpdir)) as run:
        await run.wait_lines(5)
        ino = path.stat().st_ino
        os.rename(path, logdir / "app.log.1")
        new = LogWriter(path)
        assert path.stat().st_ino != ino
        old.lines(numbered("old", 3))
        new.lines(numbered("new", 3))
        old.lines(numbered("old", 3, start=3))
        new.lines(numbered("new", 3, start=3))
        await run.wait_lines(17)
        await run.settle()
    assert_exactly(run.lines, numbered("a", 5) + numbered("old", 6) + numbered("new", 6))
    assert run.tailer.stats.rotations == 1


async def test_traefik_rename_then_usr1_reopen(logdir: Path, cpdir: Path) -> None:
    """Rename; requests keep landing in the renamed file; USR1 reopens with O_APPEND|O_CREAT."""
    path = logdir / "access.log"
    w = LogWriter(path)
    w.lines(numbered("before", 4))
    async with TailRun(config([path], cpdir)) as run:
        await run.wait_lines(4)
        os.rename(path, logdir / "access.log.2026-01-01")
        await run.wait_for(lambda: run.tailer.stats.rotations == 1, "rotation noticed")
        w.lines(numbered("renamed", 50))  # still the old fd
        w.reopen()  # SIGUSR1
        w.lines(numbered("after", 20))
        await run.wait_lines(74)
        await run.settle()
    expected = numbered("before", 4) + numbered("renamed", 50) + numbered("after", 20)
    assert_exactly(run.lines, expected)


async def test_kubelet_rotation_gzip_and_remove_while_reader_lags(
    logdir: Path, cpdir: Path
) -> None:
    """0.log -> 0.log.<ts>, reopen; next cycle gzips and removes it while we still read it."""
    pod = logdir / "pods" / "ns_web-0_uid" / "web"
    pod.mkdir(parents=True)
    log0 = pod / "0.log"
    w = LogWriter(log0)
    w.lines(numbered("gen1", 10))
    cfg = config([log0], cpdir, batch_lines=50, rotate_wait=0.05)
    async with TailRun(cfg) as run:
        await run.wait_lines(10)
        run.gate.clear()  # the reader lags from here on
        w.lines(numbered("gen1", 3000, start=10))
        rotated1 = pod / "0.log.20260101-000000"
        os.rename(log0, rotated1)
        w.reopen()
        w.lines(numbered("gen2", 500))
        # kubelet rotates at most every 10 s: the tailer opens the new file meanwhile, even
        # though the consumer is still busy with the first one
        await run.wait_for(lambda: run.tailer.stats.files_opened == 2, "new 0.log opened")
        # next cycle: compress the previous rotated file and remove it, then rotate again
        with gzip.open(str(rotated1) + ".gz", "wb") as gz:
            gz.write(rotated1.read_bytes())
        os.unlink(rotated1)
        os.rename(log0, pod / "0.log.20260101-000100")
        w.reopen()
        w.lines(numbered("gen3", 200))
        assert not rotated1.exists()
        run.gate.set()
        await run.wait_lines(3710)
        await run.settle()
        await run.wait_for(lambda: not open_fds_to(rotated1), "fd of the removed file closed")
    expected = numbered("gen1", 3010) + numbered("gen2", 500) + numbered("gen3", 200)
    assert_exactly(run.lines, expected)


async def test_repeated_rotations(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    w = LogWriter(path)
    expected: list[bytes] = []
    async with TailRun(config([path], cpdir)) as run:
        for gen in range(6):
            lines = numbered(f"g{gen}", 40)
            w.lines(lines)
            expected += lines
            await run.wait_lines(len(expected))  # the reader has this generation open
            os.rename(path, logdir / f"app.log.{gen}")
            w.reopen()
        w.lines(numbered("last", 5))
        await run.wait_lines(len(expected) + 5)
        await run.settle()
    assert_exactly(run.lines, [*expected, *numbered("last", 5)])
    assert run.tailer.stats.rotations == 6


async def test_rapid_rotations_with_rotated_names_matched_are_read_once(
    logdir: Path, cpdir: Path
) -> None:
    """Rotations faster than polling: identity by inode keeps renamed files from re-reading."""
    path = logdir / "app.log"
    w = LogWriter(path)
    expected: list[bytes] = []
    async with TailRun(config([f"{logdir}/app.log*"], cpdir)) as run:
        for gen in range(8):
            lines = numbered(f"g{gen}", 25)
            w.lines(lines)
            expected += lines
            os.rename(path, logdir / f"app.log.{gen}")
            w.reopen()
        await run.wait_lines(len(expected))
        await run.settle()
    assert_exactly(run.lines, expected)


async def test_three_files_rotated_at_once(logdir: Path, cpdir: Path) -> None:
    names = ["a.log", "b.log", "c.log"]
    writers = {n: LogWriter(logdir / n) for n in names}
    for n, w in writers.items():
        w.lines(numbered(n, 20))
    async with TailRun(config([logdir / n for n in names], cpdir)) as run:
        await run.wait_lines(60)
        for n, w in writers.items():
            os.rename(logdir / n, logdir / f"{n}.1")
            w.lines(numbered(f"{n}-late", 5))
            w.reopen()
            w.lines(numbered(f"{n}-new", 7))
        await run.wait_lines(60 + 36)
        await run.settle()
    expected = [
        line
        for n in names
        for line in numbered(n, 20) + numbered(f"{n}-late", 5) + numbered(f"{n}-new", 7)
    ]
    assert_exactly(run.lines, expected)


async def test_symlink_target_swap(logdir: Path, cpdir: Path) -> None:
    """/var/log/containers/*.log are symlinks into /var/log/pods; the link gets repointed."""
    pods = logdir / "pods"
    containers = logdir / "containers"
    pods.mkdir()
    containers.mkdir()
    t0 = LogWriter(pods / "0.log")
    t0.lines(numbered("t0", 5))
    link = containers / "web_ns_app-abc.log"
    link.symlink_to(pods / "0.log")
    async with TailRun(config([f"{containers}/*.log"], cpdir)) as run:
        await run.wait_lines(5)
        t1 = LogWriter(pods / "1.log")
        t1.lines(numbered("t1", 4))
        tmp_link = containers / ".swap"
        tmp_link.symlink_to(pods / "1.log")
        os.replace(tmp_link, link)
        t0.lines(numbered("t0-late", 3))
        t1.lines(numbered("t1", 4, start=4))
        await run.wait_lines(5 + 3 + 8)
        await run.settle()
    assert_exactly(run.lines, numbered("t0", 5) + numbered("t0-late", 3) + numbered("t1", 8))
    saved = json.loads((cpdir / "tail.json").read_text())
    assert {Path(f["path"]).name for f in saved["files"]} <= {"0.log", "1.log"}


async def test_rotate_wait_reads_late_writes_then_closes(logdir: Path) -> None:
    path = logdir / "app.log"
    rotated = logdir / "app.log.1"
    clock = ManualClock()
    w = LogWriter(path)
    w.lines(numbered("a", 3))
    async with TailRun(config([path], None, rotate_wait=10.0), clock=clock) as run:
        await run.wait_lines(3)
        assert len(open_fds_to(path)) == 2  # the writer's and the tailer's
        os.rename(path, rotated)
        await run.wait_for(lambda: run.tailer.stats.rotations == 1, "rotation noticed")
        clock.advance(5.0)
        w.lines([b"late-inside-window"])
        await run.wait_lines(4)
        clock.advance(11.0)
        await run.wait_for(lambda: run.tailer.stats.files_closed == 1, "rotated file closed")
        assert len(open_fds_to(rotated)) == 1  # only the writer's is left
        w.lines([b"too-late"])
        await run.settle()
    assert run.lines == [*numbered("a", 3), b"late-inside-window"]


# ------------------------------------------------------------------ truncation


async def test_copytruncate_resets_offset_to_zero(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    w = LogWriter(path)
    w.lines(numbered("old", 20))
    async with TailRun(config([path], cpdir)) as run:
        await run.wait_lines(20)
        shutil.copyfile(path, logdir / "app.log.1")
        os.truncate(path, 0)
        w.lines(numbered("new", 3))  # shorter than the old offset
        await run.wait_lines(23)
        await run.settle()
    assert_exactly(run.lines, numbered("old", 20) + numbered("new", 3))
    assert run.tailer.stats.truncations == 1
    new_batches = [b for b in run.batches if b.lines and b.lines[0] == b"new-0"]
    assert new_batches[0].start_offset == 0
    assert new_batches[0].file_key != run.batches[0].file_key


async def test_truncate_while_consumer_blocked(logdir: Path, cpdir: Path) -> None:
    """Lines already read into the buffer before the truncation are still delivered."""
    path = logdir / "app.log"
    w = LogWriter(path)
    w.lines(numbered("old", 50))
    async with TailRun(config([path], cpdir, batch_lines=2)) as run:
        run.gate.clear()
        await run.wait_for(lambda: run.tailer.stats.lines == 2, "first batch read")
        os.truncate(path, 0)
        w.lines(numbered("new", 2))
        # the watcher keeps housekeeping while the consumer is busy
        done = run.tailer.stats.housekeeping + 2
        await run.wait_for(lambda: run.tailer.stats.housekeeping >= done, "housekeeping")
        run.gate.set()
        await run.wait_lines(52)
        await run.settle()
    assert_exactly(run.lines, numbered("old", 50) + numbered("new", 2))
    assert run.tailer.stats.truncations == 1


async def test_copytruncate_while_stopped_reads_new_content_only(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    path.write_bytes(nl(numbered("old", 10)))
    async with TailRun(config([path], cpdir)) as run1:
        await run1.wait_lines(10)
    shutil.copyfile(path, logdir / "app.log.1")
    os.truncate(path, 0)
    with open(path, "ab") as fh:
        fh.write(nl(numbered("new", 2)))
    async with TailRun(config([path], cpdir)) as run2:
        await run2.wait_lines(2)
        await run2.settle()
    assert run2.lines == numbered("new", 2)
    assert run2.tailer.stats.truncations == 1


async def test_truncate_and_regrow_past_offset_while_stopped_same_head(
    logdir: Path, cpdir: Path
) -> None:
    """Same header (longer than the head fingerprint): only the offset marker can tell."""
    path = logdir / "app.log"
    header = b"#" * 400
    path.write_bytes(nl([header, *numbered("old", 3)]))
    async with TailRun(config([path], cpdir)) as run1:
        await run1.wait_lines(4)
    old_size = path.stat().st_size
    os.truncate(path, 0)
    with open(path, "ab") as fh:
        fh.write(nl([header, *numbered("new-and-longer", 10)]))
    assert path.stat().st_size > old_size
    async with TailRun(config([path], cpdir)) as run2:
        await run2.wait_lines(11)
        await run2.settle()
    assert_exactly(run2.lines, [header, *numbered("new-and-longer", 10)])


async def test_copytruncate_with_stale_writer_nul_prefix(logdir: Path) -> None:
    """A writer without O_APPEND keeps its offset: the truncated file becomes a NUL hole + data."""
    path = logdir / "app.log"
    stale = LogWriter(path, append=False)
    stale.lines(numbered("old", 20))  # 20 lines of ~6 bytes: offset > max_line_bytes
    async with TailRun(config([path], None, max_line_bytes=32)) as run:
        await run.wait_lines(20)
        shutil.copyfile(path, logdir / "app.log.1")
        os.truncate(path, 0)
        await run.wait_for(lambda: run.tailer.stats.truncations == 1, "truncation noticed")
        stale.lines([b"after-truncate", b"second"])
        assert path.read_bytes().startswith(b"\x00" * 100)
        await run.wait_lines(22)
        await run.settle()
    assert_exactly(run.lines, [*numbered("old", 20), b"after-truncate", b"second"])
    assert not any(b"\x00" in line for line in run.lines)
    assert run.tailer.stats.too_long == 0


# ------------------------------------------------------------------ deletion


async def test_delete_while_open_delivers_rest_then_closes_fd(logdir: Path) -> None:
    path = logdir / "app.log"
    w = LogWriter(path)
    w.lines([b"first"])
    async with TailRun(config([path], None, batch_lines=100, rotate_wait=0.05)) as run:
        await run.wait_lines(1)
        run.gate.clear()
        w.lines(numbered("rest", 2000))
        os.unlink(path)
        w.close()
        run.gate.set()
        await run.wait_lines(2001)
        await run.wait_for(lambda: not open_fds_to(path), "fd of the deleted file closed")
        await run.settle()
    assert_exactly(run.lines, [b"first", *numbered("rest", 2000)])
    assert run.tailer.stats.files_closed == 1


async def test_delete_and_recreate_same_path_reads_new_file_from_zero(
    logdir: Path, cpdir: Path
) -> None:
    path = logdir / "app.log"
    path.write_bytes(nl(numbered("a", 30)))
    async with TailRun(config([path], cpdir)) as run:
        await run.wait_lines(30)
        os.unlink(path)
        path.write_bytes(nl(numbered("b", 3)))
        await run.wait_lines(33)
        await run.settle()
    assert_exactly(run.lines, numbered("a", 30) + numbered("b", 3))
    assert [b.start_offset for b in run.batches if b.lines[0] == b"b-0"] == [0]


# ------------------------------------------------------------------ framing


async def test_oversized_lines_are_dropped_whole_and_counted(logdir: Path) -> None:
    path = logdir / "app.log"
    w = LogWriter(path)
    exact = b"e" * 100
    w.write(
        nl(
            [
                b"short",
                b"x" * 101,  # just too long
                b"y" * (3 * READ_CHUNK + 17),  # far longer than the read buffer
                b"normal",
                exact,  # exactly at the cap: kept
                b"z" * 200,  # last line, too long
            ]
        )
    )
    async with TailRun(config([path], None, max_line_bytes=100)) as run:
        await run.wait_lines(3)
        await run.wait_for(lambda: run.tailer.stats.too_long == 3, "3 dropped lines")
        w.write(b"w" * 150)  # too long before its newline arrives
        await run.wait_for(lambda: run.tailer.stats.too_long == 4, "partial overflow dropped")
        w.write(b"w" * 150 + b"\nlater\n")
        await run.wait_lines(4)
        await run.settle()
    assert run.lines == [b"short", b"normal", exact, b"later"]
    assert run.tailer.stats.too_long == 4


async def test_crlf_line_endings(logdir: Path) -> None:
    path = logdir / "app.log"
    path.write_bytes(b"a\r\nb\r\n\r\nx\ry\r\nplain\n")
    async with TailRun(config([path], None)) as run:
        await run.wait_lines(5)
        await run.settle()
    assert run.lines == [b"a", b"b", b"", b"x\ry", b"plain"]


async def test_empty_lines_are_kept(logdir: Path) -> None:
    path = logdir / "app.log"
    path.write_bytes(b"\n\na\n\n")
    async with TailRun(config([path], None)) as run:
        await run.wait_lines(4)
        await run.settle()
    assert run.lines == [b"", b"", b"a", b""]


async def test_delimiter_split_across_read_buffer_boundaries(logdir: Path) -> None:
    path = logdir / "app.log"
    a = b"a" * (READ_CHUNK - 1)  # its \n is the last byte of the first read
    b = b"b" * (READ_CHUNK - 1)  # its \r ends the second read, \n starts the third
    c = b"c" * 10
    path.write_bytes(a + b"\n" + b + b"\r\n" + c + b"\n")
    assert path.read_bytes()[2 * READ_CHUNK - 1 : 2 * READ_CHUNK + 1] == b"\r\n"
    async with TailRun(config([path], None, max_line_bytes=2 * READ_CHUNK)) as run:
        await run.wait_lines(3)
        await run.settle()
    assert run.lines == [a, b, c]


# ------------------------------------------------------------------ identity and discovery


async def test_inode_reuse_stale_checkpoint_is_not_applied(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    path.write_bytes(nl(numbered("file-a", 50)))
    async with TailRun(config([path], cpdir)) as run1:
        await run1.wait_lines(50)
    os.unlink(path)
    path.write_bytes(nl(numbered("file-b", 80)))  # longer: a stale offset would skip lines
    st = path.stat()
    doc = json.loads((cpdir / "tail.json").read_text())
    (entry,) = doc["files"]
    # The kernel may or may not hand out the same inode; make the reuse certain.
    entry["dev"], entry["ino"] = st.st_dev, st.st_ino
    (cpdir / "tail.json").write_text(json.dumps(doc))
    async with TailRun(config([path], cpdir)) as run2:
        await run2.wait_lines(80)
        await run2.settle()
    assert_exactly(run2.lines, numbered("file-b", 80))


@pytest.mark.parametrize("start_at", ["beginning", "end"])
async def test_rotated_while_stopped_is_finished_from_checkpoint(
    logdir: Path, cpdir: Path, start_at: str
) -> None:
    """The renamed file is found by inode next to its old path; the new file is read from 0
    even with start_at=end, because a checkpoint exists (it appeared after our last start)."""
    path = logdir / "app.log"
    w = LogWriter(path)
    w.lines(numbered("a", 5))
    async with TailRun(config([path], cpdir, start_at=start_at)) as run1:
        await run1.wait_lines(5 if start_at == "beginning" else 0)
        await run1.settle()
    w.lines(numbered("unread", 3))
    os.rename(path, logdir / "app.log.1")
    w.reopen()
    w.lines(numbered("new", 2))
    async with TailRun(config([path], cpdir, start_at=start_at)) as run2:
        await run2.wait_lines(5)
        await run2.settle()
    assert_exactly(run2.lines, numbered("unread", 3) + numbered("new", 2))


async def test_renamed_while_stopped_is_not_reread_under_new_name(
    logdir: Path, cpdir: Path
) -> None:
    path = logdir / "app.log"
    path.write_bytes(nl(numbered("a", 5)))
    pattern = f"{logdir}/app*.log"
    async with TailRun(config([pattern], cpdir)) as run1:
        await run1.wait_lines(5)
    os.rename(path, logdir / "app-1.log")
    path.write_bytes(nl(numbered("b", 2)))
    async with TailRun(config([pattern], cpdir)) as run2:
        await run2.wait_lines(2)
        await run2.settle()
    assert_exactly(run2.lines, numbered("b", 2))


async def test_files_created_while_stopped_are_read_from_the_beginning(
    logdir: Path, cpdir: Path
) -> None:
    (logdir / "a.log").write_bytes(nl(numbered("a", 3)))
    pattern = f"{logdir}/*.log"
    async with TailRun(config([pattern], cpdir, start_at="end")) as run1:
        await run1.wait_for(lambda: run1.tailer.stats.files_opened == 1, "file opened")
        await run1.settle()
    (logdir / "b.log").write_bytes(nl(numbered("b", 4)))
    async with TailRun(config([pattern], cpdir, start_at="end")) as run2:
        await run2.wait_lines(4)
        await run2.settle()
    assert run1.lines == []
    assert run2.lines == numbered("b", 4)


async def test_glob_picks_up_files_created_after_start_from_the_beginning(
    logdir: Path, cpdir: Path
) -> None:
    old = logdir / "old.log"
    w_old = LogWriter(old)
    w_old.lines(numbered("existing", 10))
    async with TailRun(config([f"{logdir}/*.log"], cpdir, start_at="end")) as run:
        await run.wait_for(lambda: run.tailer.stats.files_opened == 1, "existing file opened")
        (logdir / "new.log").write_bytes(nl(numbered("new", 4)))
        w_old.lines(numbered("appended", 2))
        await run.wait_lines(6)
        await run.settle()
    assert_exactly(run.lines, numbered("new", 4) + numbered("appended", 2))


@pytest.mark.parametrize("start_at", ["beginning", "end"])
async def test_start_at_for_files_without_checkpoint(
    logdir: Path, cpdir: Path, start_at: str
) -> None:
    path = logdir / "app.log"
    w = LogWriter(path)
    w.write(nl(numbered("existing", 3)) + b"part")  # a line still being written at start
    async with TailRun(config([path], cpdir, start_at=start_at)) as run:
        await run.wait_for(lambda: run.tailer.stats.files_opened == 1, "file opened")
        w.write(b"ial\n" + nl([b"appended"]))
        expected = [b"partial", b"appended"]
        if start_at == "beginning":
            expected = numbered("existing", 3) + expected
        await run.wait_lines(len(expected))
        await run.settle()
    assert run.lines == expected


async def test_same_file_under_two_matched_names_is_read_once(logdir: Path) -> None:
    target = logdir / "0.log"
    target.write_bytes(nl(numbered("x", 5)))
    (logdir / "link.log").symlink_to(target)
    async with TailRun(config([f"{logdir}/*.log"], None)) as run:
        await run.wait_lines(5)
        await run.settle()
    assert run.lines == numbered("x", 5)


# ------------------------------------------------------------------ backpressure, replay, stats


async def test_slow_consumer_pauses_reading_and_checkpoint(logdir: Path, cpdir: Path) -> None:
    path = logdir / "app.log"
    expected = [b"%07d" % i + b"." * 290 for i in range(40_000)]  # ~12 MB
    path.write_bytes(nl(expected))
    async with TailRun(config([path], cpdir)) as run:
        run.gate.clear()
        await run.wait_for(lambda: run.tailer.stats.lines > 0, "first batch read")
        for _ in range(100):
            await asyncio.sleep(0)
        assert run.tailer.stats.bytes <= READ_CHUNK
        run.tailer.flush_checkpoints()
        saved = json.loads((cpdir / "tail.json").read_text())
        assert saved["files"][0]["offset"] == 0
        run.gate.set()
        await run.wait_lines(len(expected))
        await run.settle()
    assert_exactly(run.lines, expected)


async def test_read_to_end_replays_plain_files(logdir: Path) -> None:
    (logdir / "a.log").write_bytes(nl(numbered("a", 3)))
    (logdir / "b.log").write_bytes(nl(numbered("b", 2)) + b"unterminated")
    tailer = FileTailer(config([f"{logdir}/*.log"], None, start_at="end"))
    lines = [line async for batch in tailer.read_to_end() for line in batch.lines]
    assert lines == [*numbered("a", 3), *numbered("b", 2), b"unterminated"]
    assert open_fds_to(logdir / "a.log") == open_fds_to(logdir / "b.log") == []


def test_poll_reports_lag_bytes(logdir: Path) -> None:
    path = logdir / "app.log"
    path.write_bytes(b"y" * 99 + b"\n" + b"z" * (2 * READ_CHUNK) + b"\n")
    tailer = FileTailer(config([path], None, max_line_bytes=10 * READ_CHUNK))
    try:
        first = tailer.poll()
        assert [len(b.lines) for b in first] == [1]
        assert tailer.stats.lag_bytes == path.stat().st_size - READ_CHUNK
        while tailer.poll():
            pass
        assert tailer.stats.lag_bytes == 0
        assert tailer.stats.lines == 2
    finally:
        tailer.close()
    assert open_fds_to(path) == []


async def test_read_to_end_abandoned_midway_releases_fds(logdir: Path) -> None:
    path = logdir / "a.log"
    path.write_bytes(nl(numbered("a", 10)))
    tailer = FileTailer(config([path], None, batch_lines=2))
    replay = tailer.read_to_end()
    first = await anext(replay)
    assert first.lines == numbered("a", 2)
    assert len(open_fds_to(path)) == 1
    await replay.aclose()
    assert open_fds_to(path) == []
