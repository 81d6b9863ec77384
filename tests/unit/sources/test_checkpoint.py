"""Tail checkpoints: atomic writes, strict schema, defined recovery from corrupt/leftover files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from pipeline.sources.checkpoint import (
    HEAD_BYTES,
    SCHEMA_VERSION,
    CheckpointError,
    CheckpointStore,
    FileCheckpoint,
    digest,
    marker_at,
    parse_state,
)
from pipeline.sources.tail import FileTailer
from tests.support.tail import TailRun, config, numbered


def entry(offset: int = 10, ino: int = 7, key: str | None = "1:7:abc") -> FileCheckpoint:
    return FileCheckpoint(
        dev=1,
        ino=ino,
        offset=offset,
        head_len=4,
        head_hash=digest(b"head"),
        marker_len=4,
        marker_hash=digest(b"mark"),
        key=key,
        path="/var/log/app.log",
    )


def doc(seq: int, *files: FileCheckpoint) -> bytes:
    return json.dumps(
        {"version": SCHEMA_VERSION, "seq": seq, "files": [f.to_json() for f in files]}
    ).encode()


def test_save_then_load_roundtrip(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "cp"), "traefik")
    files = (entry(), entry(offset=0, ino=8, key=None))
    store.save(files)
    raw = json.loads((tmp_path / "cp" / "traefik.json").read_text())
    assert raw["version"] == SCHEMA_VERSION == 1
    assert raw["seq"] == 1
    state = CheckpointStore(str(tmp_path / "cp"), "traefik").load()
    assert state is not None
    assert state.files == files
    assert state.seq == 1


def test_seq_grows_across_store_instances(tmp_path: Path) -> None:
    CheckpointStore(str(tmp_path)).save([entry()])
    second = CheckpointStore(str(tmp_path))
    second.load()
    second.save([entry(offset=20)])
    state = CheckpointStore(str(tmp_path)).load()
    assert state is not None
    assert (state.seq, state.files[0].offset) == (2, 20)


def test_save_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    store.save([entry(offset=1)])
    first_ino = os.stat(store.path).st_ino
    store.save([entry(offset=2)])
    assert os.stat(store.path).st_ino != first_ino  # a new file renamed over the old one
    assert not os.path.exists(store.tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["tail.json"]


def test_failed_replace_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between writing the temp file and the rename must leave a usable checkpoint."""
    store = CheckpointStore(str(tmp_path))
    store.save([entry(offset=1)])

    def crash(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        store.save([entry(offset=2)])
    monkeypatch.undo()
    main = parse_state(Path(store.path).read_bytes())
    assert main.files[0].offset == 1
    # the temp file is complete and newer: recovery picks it up
    state = CheckpointStore(str(tmp_path)).load()
    assert state is not None
    assert state.files[0].offset == 2
    assert not os.path.exists(store.tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"version": 1, "seq": 3, "files": [{"dev": 1',  # torn write
        b"[]",
        b'{"seq": 1, "files": []}',  # no version
        b'{"version": 99, "seq": 1, "files": []}',  # from a newer auditor
        b'{"version": true, "seq": 1, "files": []}',
        b'{"version": 1, "seq": -1, "files": []}',
        b'{"version": 1, "seq": 1, "files": {}}',
        b'{"version": 1, "seq": 1, "files": [{"dev": "1"}]}',
        b"[" * 100000 + b"]" * 100000,
    ],
)
def test_corrupt_checkpoint_is_ignored_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "tail.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="auditor.tail"):
        assert CheckpointStore(str(tmp_path)).load() is None
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_bad_entry_fields_are_rejected() -> None:
    good = entry().to_json()
    for field, bad in [("offset", -1), ("ino", "7"), ("head_hash", 5), ("key", 3), ("dev", True)]:
        broken = dict(good, **{field: bad})
        raw = json.dumps({"version": 1, "seq": 1, "files": [broken]}).encode()
        with pytest.raises(CheckpointError):
            parse_state(raw)


def test_missing_checkpoint_is_a_first_run(tmp_path: Path) -> None:
    assert CheckpointStore(str(tmp_path / "absent")).load() is None


def test_newer_valid_temp_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "tail.json").write_bytes(doc(4, entry(offset=40)))
    (tmp_path / "tail.json.tmp").write_bytes(doc(5, entry(offset=50)))
    state = CheckpointStore(str(tmp_path)).load()
    assert state is not None
    assert (state.seq, state.files[0].offset) == (5, 50)
    assert not (tmp_path / "tail.json.tmp").exists()


def test_older_temp_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "tail.json").write_bytes(doc(4, entry(offset=40)))
    (tmp_path / "tail.json.tmp").write_bytes(doc(3, entry(offset=30)))
    state = CheckpointStore(str(tmp_path)).load()
    assert state is not None
    assert state.files[0].offset == 40
    assert not (tmp_path / "tail.json.tmp").exists()


def test_torn_temp_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "tail.json").write_bytes(doc(4, entry(offset=40)))
    (tmp_path / "tail.json.tmp").write_bytes(doc(5, entry(offset=50))[:-7])
    state = CheckpointStore(str(tmp_path)).load()
    assert state is not None
    assert state.files[0].offset == 40


def test_corrupt_main_with_valid_temp_uses_temp(tmp_path: Path) -> None:
    (tmp_path / "tail.json").write_bytes(b"\x00\x00garbage")
    (tmp_path / "tail.json.tmp").write_bytes(doc(2, entry(offset=20)))
    state = CheckpointStore(str(tmp_path)).load()
    assert state is not None
    assert state.files[0].offset == 20


def test_identity_checks_head_marker_and_size(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    content = b"H" * 300 + b"\n" + b"line-1\nline-2\n"
    path.write_bytes(content)
    offset = len(content) - len(b"line-2\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        mlen, mhash = marker_at(fd, offset)
        good = FileCheckpoint(
            dev=0,
            ino=0,
            offset=offset,
            head_len=HEAD_BYTES,
            head_hash=digest(content[:HEAD_BYTES]),
            marker_len=mlen,
            marker_hash=mhash,
            key=None,
            path=str(path),
        )
        assert good.matches(fd, len(content))
        assert not good.matches(fd, offset - 1)  # file now shorter than the offset
        other_head = FileCheckpoint(**{**good.to_json(), "head_hash": digest(b"x")})
        assert not other_head.matches(fd, len(content))
        other_marker = FileCheckpoint(**{**good.to_json(), "marker_hash": digest(b"x")})
        assert not other_marker.matches(fd, len(content))
    finally:
        os.close(fd)


# ------------------------------------------------------------------ through the tailer


@pytest.mark.parametrize("start_at", ["beginning", "end"])
async def test_tailer_with_corrupt_checkpoint_starts_per_start_at(
    tmp_path: Path, start_at: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(line + b"\n" for line in numbered("old", 5)))
    cpdir = tmp_path / "cp"
    cpdir.mkdir()
    (cpdir / "tail.json").write_bytes(b'{"version": 1, "seq": 1, "fil')
    with caplog.at_level(logging.WARNING, logger="auditor.tail"):
        async with TailRun(config([path], cpdir, start_at=start_at)) as run:
            await run.wait_for(lambda: run.tailer.stats.files_opened == 1, "file opened")
            with open(path, "ab") as fh:
                fh.write(b"new\n")
            expected = [*numbered("old", 5), b"new"] if start_at == "beginning" else [b"new"]
            await run.wait_lines(len(expected))
            await run.settle()
    assert run.lines == expected
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert parse_state((cpdir / "tail.json").read_bytes()).files[0].offset == path.stat().st_size


async def test_checkpoint_moves_only_on_ack(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"a\nb\n")
    cpdir = tmp_path / "cp"
    async with TailRun(config([path], cpdir), auto_ack=False) as run:
        await run.wait_lines(2)
        run.tailer.flush_checkpoints()
        assert parse_state((cpdir / "tail.json").read_bytes()).files[0].offset == 0
        run.tailer.ack(run.batches[0])
        run.tailer.flush_checkpoints()
        assert parse_state((cpdir / "tail.json").read_bytes()).files[0].offset == 4
        key = run.batches[0].file_key
    # the file key survives a restart (usable as a dedupe key with the byte offset)
    path.write_bytes(b"a\nb\nc\n")
    async with TailRun(config([path], cpdir)) as run2:
        await run2.wait_lines(1)
    assert run2.batches[0].file_key == key
    assert run2.batches[0].start_offset == 4


def test_flush_before_start_does_not_clobber_state(tmp_path: Path) -> None:
    cpdir = tmp_path / "cp"
    store = CheckpointStore(str(cpdir))
    store.save([entry()])
    before = (cpdir / "tail.json").read_bytes()
    FileTailer(config([tmp_path / "x.log"], cpdir)).flush_checkpoints()
    assert (cpdir / "tail.json").read_bytes() == before


def test_ack_of_a_foreign_batch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"a\n")
    one = FileTailer(config([path], None))
    two = FileTailer(config([path], None))
    try:
        (batch,) = one.poll()
        with pytest.raises(ValueError, match="not produced by this tailer"):
            two.ack(batch)
    finally:
        one.close()
        two.close()
