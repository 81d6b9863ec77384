"""A file unlinked after the last housekeeping pass must not be saved in the checkpoint.

Found by the tail model (test_tail_model.py, ``missing={b'': 1}``): the live file held one empty
line, fully acked; it was deleted, and the tailer was stopped before its next stat pass, so the
final flush still believed the file was linked and saved ``offset=1`` for its inode. Once the
tailer had closed its fd the inode was free, the next ``app.log`` got the same inode number and
again began with an empty line, so head hash and offset marker both matched, and the restarted
tailer resumed at offset 1, skipping the new file's first line. Lines with unique content cannot
collide like that, which is why only empty lines went missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.sources.tail import FileTailer
from tests.support.tail import ManualClock, config


def _tailer(path: Path, cpdir: Path, clock: ManualClock) -> FileTailer:
    cfg = config(
        [path],
        cpdir,
        poll_interval=1.0,
        glob_interval=1.0,
        rotate_wait=1e9,
        checkpoint_interval=1e9,  # only explicit flushes
    )
    return FileTailer(cfg, clock=clock)


def _drain(tailer: FileTailer, clock: ManualClock) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(5):
        clock.advance(5.0)
        for batch in tailer.poll():
            out += batch.lines
            tailer.ack(batch)
    return out


@pytest.mark.parametrize("order", ["flush_then_close", "close_then_flush"])
def test_file_unlinked_since_last_stat_pass_is_not_checkpointed(tmp_path: Path, order: str) -> None:
    path = tmp_path / "app.log"
    cpdir = tmp_path / "cp"
    clock = ManualClock()
    path.write_bytes(b"\n")
    old = path.stat()

    first = _tailer(path, cpdir, clock)
    assert _drain(first, clock) == [b""]
    os.unlink(path)  # no poll after this: the tailer has not seen the unlink
    if order == "flush_then_close":  # what batches() and a restart do
        first.flush_checkpoints()
        first.close()
    else:  # "acks and flush_checkpoints still work" after close()
        first.close()
        first.flush_checkpoints()

    doc = json.loads((cpdir / "tail.json").read_text())
    stale = [f for f in doc["files"] if (f["dev"], f["ino"]) == (old.st_dev, old.st_ino)]

    # The freed inode is handed to the next app.log, which again starts with an empty line.
    # The kernel may or may not reuse it; make the reuse certain, as the model run hit it.
    path.write_bytes(b"\n")
    new = path.stat()
    for entry in stale:
        entry["dev"], entry["ino"] = new.st_dev, new.st_ino
    (cpdir / "tail.json").write_text(json.dumps(doc))

    second = _tailer(path, cpdir, clock)
    try:
        got = _drain(second, clock)
    finally:
        second.close()
    assert got == [b""], "the new file's empty line was skipped by a stale checkpoint"
    assert stale == [], f"checkpoint kept an entry for the unlinked file: {stale}"
