"""A file opened after a rotation is checkpointed at once, so a crash before the periodic flush
plus another rotation while stopped cannot lose it (found by the auditor soak test)."""

from __future__ import annotations

from pathlib import Path

from pipeline.sources.tail import FileTailer, TailConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cfg(tmp_path: Path) -> TailConfig:
    return TailConfig(
        paths=(str(tmp_path / "access.log"),),
        checkpoint_dir=str(tmp_path / "ckpt"),
        start_at="beginning",
        poll_interval=0.0,
        glob_interval=0.0,
        checkpoint_interval=3600.0,  # no periodic flush during the test: only event-driven ones
    )


def _lines(tag: str, n: int) -> bytes:
    return b"".join(f"{tag}-{i}\n".encode() for i in range(n))


def _drain(tailer: FileTailer, clock: Clock, *, ack: bool) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(20):
        clock.now += 1.0
        batches = tailer.poll()
        for b in batches:
            out += b.lines
            if ack:
                tailer.ack(b)
    return out


def test_file_opened_after_rotation_survives_crash_and_rotation_while_stopped(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(_lines("a", 10))
    clock = Clock()
    first = FileTailer(_cfg(tmp_path), clock=clock)
    assert _drain(first, clock, ack=True) == _lines("a", 10).splitlines()
    first.flush_checkpoints()

    # Rotation while running: the tailer opens the new file and reads it, but dies (no flush,
    # no ack) before those lines were processed.
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(_lines("b", 5))
    assert _drain(first, clock, ack=False) == _lines("b", 5).splitlines()
    first.close()

    # While stopped, that file is rotated away too, and a third one appears.
    log.rename(tmp_path / "access.log.2")
    log.write_bytes(_lines("c", 3))

    second = FileTailer(_cfg(tmp_path), clock=clock)
    got = _drain(second, clock, ack=True)
    second.close()
    assert sorted(got) == sorted(_lines("b", 5).splitlines() + _lines("c", 3).splitlines())
