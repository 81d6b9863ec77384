"""Replay inputs that used to crash or grow memory (found in review)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parsers.envelope import Envelope, EnvelopeDecoder
from parsers.records import ParseStats, SkipReason
from parsers.traefik import TraefikParser
from pipeline.cli.main import main
from pipeline.sources.readfile import line_batches
from tests.support.crowdsec import traefik_json_line

AUDITOR = str(Path(sys.executable).with_name("auditor"))


def _log(n: int = 5) -> bytes:
    return "".join(traefik_json_line("198.51.100.1", "/", 200) + "\n" for _ in range(n)).encode()


def test_truncated_gzip_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "access.log.gz"
    path.write_bytes(gzip.compress(_log(200))[:-40])
    assert main(["replay", str(path), "--format", "json"]) == 2
    assert str(path) in capsys.readouterr().err


def test_a_read_error_mid_file_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing disk or network file system (EIO) mid-read: an error naming the file, not a
    traceback (parallel replay's workers and parent: tests/unit/cli/test_replay_parallel.py)."""
    import pipeline.cli.replay as replay

    def failing(*_args: object, **_kw: object) -> object:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(replay, "text_batches", failing)
    path = tmp_path / "access.log"
    path.write_bytes(_log(20))
    assert main(["replay", str(path), "--format", "json", "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"input file {path}: read error: Input/output error" in err


def test_gzip_on_stdin_is_decompressed(tmp_path: Path) -> None:
    out = subprocess.run(
        [AUDITOR, "replay", "-", "--format", "json"],
        input=gzip.compress(_log(7)),
        capture_output=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["summary"]["lines"]["json"] == 7


def test_a_pipe_is_accepted_as_input(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat > {fifo}"], stdin=subprocess.PIPE)
    reader = subprocess.Popen(
        [AUDITOR, "replay", str(fifo), "--format", "json", "--jobs", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdin is not None
    writer.stdin.write(_log(9))
    writer.stdin.close()
    writer.wait(10)
    stdout, stderr = reader.communicate(timeout=30)
    assert reader.returncode == 0, stderr
    assert json.loads(stdout)["summary"]["lines"]["json"] == 9


def test_a_line_without_newline_is_cut_and_skipped() -> None:
    data = b"x" * (5 << 20) + b"\n" + _log(3)  # 5 MiB with no newline, then good lines
    batches = list(line_batches(io.BytesIO(data), max_line_bytes=65536))
    lines = [line for batch in batches for line in batch]
    assert len(lines) == 4
    assert len(lines[0]) == 65537  # cut just past the cap, never held whole
    stats = ParseStats()
    records = TraefikParser(65536).parse(lines, stats)
    assert len(records) == 3
    assert stats.skipped[SkipReason.TOO_LONG] == 1


@pytest.mark.parametrize("when", ['"0001-01-01T00:00:00+14:00"', '"9999-12-31T23:59:59-14:00"'])
def test_timestamps_out_of_range_do_not_crash(when: str) -> None:
    line = traefik_json_line("198.51.100.1", "/", 200)
    obj = json.loads(line)
    obj.pop("StartUTC", None)
    obj["time"] = json.loads(when)
    stats = ParseStats()
    (rec,) = TraefikParser().parse([json.dumps(obj).encode()], stats)
    assert rec[0] == 0.0


def test_runaway_partials_are_bounded() -> None:
    decoder = EnvelopeDecoder(Envelope.CRI)
    stats = ParseStats()
    pieces = [b"2024-01-01T00:00:00Z stdout P " for _ in range(5000)]
    assert decoder.unwrap(pieces, stats) == []
    assert stats.skipped[SkipReason.PARTIAL_OVERFLOW] == 1
    out = decoder.unwrap(
        [b"2024-01-01T00:00:00Z stdout F end", b"2024-01-01T00:00:00Z stdout F ok"], stats
    )
    assert out == [b"ok"]  # the rest of the runaway line is dropped, the next one flows


def test_docker_streams_other_than_stdout_stderr_are_bad_envelopes() -> None:
    decoder = EnvelopeDecoder(Envelope.DOCKER)
    stats = ParseStats()
    lines = [json.dumps({"log": "x", "stream": f"s{i}", "time": "t"}).encode() for i in range(100)]
    assert decoder.unwrap(lines, stats) == []
    assert stats.skipped[SkipReason.BAD_ENVELOPE] == 100
