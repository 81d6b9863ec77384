"""Checkpoints in a directory someone else can write to: no name in it is ever followed.

A link planted at ``tail.json.tmp`` used to make the auditor truncate and overwrite its target
(``O_CREAT|O_TRUNC`` follows links); a link at ``tail.json`` is refused at startup (exit 2) and
at run time (a logged error, the tailer keeps going). New directories are 0700, files 0600.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import EXIT_USAGE, UsageError
from pipeline.sources.checkpoint import SCHEMA_VERSION, CheckpointStore, FileCheckpoint, digest
from tests.support.paths import ROOT
from tests.support.tail import TailRun, config

VICTIM = b"precious: not a checkpoint\n"


def auditor_run(*argv: str) -> subprocess.CompletedProcess[str]:
    """``auditor run`` in its own process, bounded: the old code did not stop, it followed."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def entry(offset: int = 10) -> FileCheckpoint:
    return FileCheckpoint(
        dev=1,
        ino=7,
        offset=offset,
        head_len=4,
        head_hash=digest(b"head"),
        marker_len=4,
        marker_hash=digest(b"mark"),
        key=None,
        path="/var/log/app.log",
    )


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    path.chmod(0o644)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_planted_temp_symlink_does_not_overwrite_its_target(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = victim(tmp_path)
    cpdir = tmp_path / "cp"
    cpdir.mkdir()
    (cpdir / "tail.json.tmp").symlink_to(target)
    store = CheckpointStore(str(cpdir))
    with caplog.at_level(logging.WARNING, logger="auditor.tail"):
        store.save([entry(offset=42)])
    assert target.read_bytes() == VICTIM
    assert mode(target) == 0o644
    saved = json.loads((cpdir / "tail.json").read_bytes())
    assert (saved["version"], saved["files"][0]["offset"]) == (SCHEMA_VERSION, 42)
    assert not (cpdir / "tail.json").is_symlink()
    assert sorted(os.listdir(cpdir)) == ["tail.json"]
    assert any("tail.json.tmp" in r.getMessage() for r in caplog.records)


def test_planted_temp_symlink_to_a_missing_file_creates_nothing_there(tmp_path: Path) -> None:
    """A dangling link: O_CREAT alone would create its target."""
    cpdir = tmp_path / "cp"
    cpdir.mkdir()
    (cpdir / "tail.json.tmp").symlink_to(tmp_path / "created-by-the-auditor")
    CheckpointStore(str(cpdir)).save([entry()])
    assert not (tmp_path / "created-by-the-auditor").exists()
    assert (cpdir / "tail.json").is_file()


def test_leftover_temp_symlink_is_not_read_and_is_removed_on_load(tmp_path: Path) -> None:
    cpdir = tmp_path / "cp"
    store = CheckpointStore(str(cpdir))
    store.save([entry(offset=5)])
    newer = tmp_path / "newer.json"
    newer.write_text(
        json.dumps({"version": SCHEMA_VERSION, "seq": 99, "files": [entry(offset=9).to_json()]})
    )
    (cpdir / "tail.json.tmp").symlink_to(newer)
    state = CheckpointStore(str(cpdir)).load()
    assert state is not None
    assert state.files[0].offset == 5  # not the newer document behind the link
    assert not os.path.lexists(cpdir / "tail.json.tmp")
    assert newer.exists()


def test_checkpoint_symlink_is_refused_at_startup(tmp_path: Path) -> None:
    cpdir = tmp_path / "cp"
    cpdir.mkdir()
    (cpdir / "tail.json").symlink_to(victim(tmp_path))
    with pytest.raises(UsageError, match=r"tail\.json is a symbolic link"):
        CheckpointStore(str(cpdir))


def test_run_with_a_checkpoint_symlink_exits_2_naming_it(tmp_path: Path) -> None:
    target = victim(tmp_path)
    cpdir = tmp_path / "cp"
    cpdir.mkdir()
    (cpdir / "tail.json").symlink_to(target)
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    proc = auditor_run(
        "--access-log",
        str(log),
        "--checkpoint-dir",
        str(cpdir),
        "--metrics-listen",
        "127.0.0.1:0",
    )
    err = proc.stderr
    assert proc.returncode == EXIT_USAGE, err
    assert str(cpdir / "tail.json") in err
    assert "symbolic link" in err
    assert "Traceback" not in err
    assert target.read_bytes() == VICTIM


def test_checkpoint_symlink_planted_at_run_time_is_refused_not_followed(tmp_path: Path) -> None:
    target = victim(tmp_path)
    cpdir = tmp_path / "cp"
    store = CheckpointStore(str(cpdir))
    store.save([entry(offset=1)])
    (cpdir / "tail.json").unlink()
    (cpdir / "tail.json").symlink_to(target)
    with pytest.raises(OSError, match="symbolic link") as exc:
        store.save([entry(offset=2)])
    assert exc.value.filename == str(cpdir / "tail.json")
    assert target.read_bytes() == VICTIM
    assert (cpdir / "tail.json").is_symlink()


async def test_tailer_keeps_tailing_when_its_checkpoint_becomes_a_symlink(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = victim(tmp_path)
    path = tmp_path / "app.log"
    path.write_bytes(b"a\n")
    cpdir = tmp_path / "cp"
    with caplog.at_level(logging.WARNING, logger="auditor.tail"):
        async with TailRun(config([path], cpdir)) as run:
            await run.wait_lines(1)
            (cpdir / "tail.json").unlink()
            (cpdir / "tail.json").symlink_to(target)
            with open(path, "ab") as fh:
                fh.write(b"b\n")
            await run.wait_lines(2)
            await run.wait_for(
                lambda: any("symbolic link" in r.getMessage() for r in caplog.records),
                "the refused checkpoint write to be logged",
            )
    assert run.lines == [b"a", b"b"]
    assert target.read_bytes() == VICTIM


def test_new_directory_is_0700_and_checkpoint_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cpdir = tmp_path / "state" / "cp"
        store = CheckpointStore(str(cpdir))
        store.save([entry()])
        store.save([entry(offset=11)])  # the replaced file too
    finally:
        os.umask(old)
    assert mode(cpdir) == 0o700
    assert mode(cpdir / "tail.json") == 0o600


def test_existing_directory_mode_is_left_alone(tmp_path: Path) -> None:
    """A mounted volume's mode belongs to whoever mounted it."""
    cpdir = tmp_path / "cp"
    cpdir.mkdir()
    cpdir.chmod(0o750)
    CheckpointStore(str(cpdir)).save([entry()])
    assert mode(cpdir) == 0o750
    assert mode(cpdir / "tail.json") == 0o600
