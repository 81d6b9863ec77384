"""Blank lines (empty or whitespace only) are counted in bulk, in every reader.

Each one used to cost a raised JSON decode error in the parser, and the serial reader moved its
pending list once per batch: a 65 KB gzip of 64 MiB of newlines took 2 min 44 s to replay. They
are still counted as before (a line read, skipped as ``empty``); the time limits below are hang
guards, not benchmarks (bench/ holds those).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.envelope import Envelope
from parsers.records import ParseStats, SkipReason
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.feed import SourceAuditor
from pipeline.sources.framing import LineFramer
from pipeline.sources.parallel import audit_parallel
from pipeline.sources.readfile import line_batches, open_input
from pipeline.sources.tail import FileTailer, TailConfig
from tests.support.crowdsec import traefik_json_line
from tests.support.paths import ROOT

JSON_LINE = traefik_json_line("198.51.100.1", "/", 200).encode()
CLF_LINE = (
    b'203.0.113.7 - - [18/Aug/2025:09:27:45 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8" 3 '
    b'"r@kubernetes" "http://10.42.0.141:8123" 4ms'
)
BLANKS = [b"", b" ", b"\t", b"\r", b"  \t\r", b"\x0b\x0c", b" " * 300]
HANG_GUARD_S = 20.0


def engine() -> Engine:
    config = EngineConfig(window_s=900, blast_scope="span", clear_recovered=False)
    return Engine(config, Classifier(k3s_defaults()), time.time)


def counts(stats: ParseStats) -> tuple[int, int, int, dict[str, int]]:
    skipped = {r.value: n for r, n in stats.skipped.items() if n}
    return stats.lines, stats.json, stats.common, skipped


def replay_cli(*argv: str) -> tuple[dict[str, object], float]:
    """``auditor replay`` in a subprocess (this tree's), killed at the hang guard."""
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "replay", *argv, "--format", "json"],
            capture_output=True,
            cwd=ROOT,
            timeout=HANG_GUARD_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"replay {argv} did not finish in {HANG_GUARD_S:.0f} s")
    assert out.returncode == 0, out.stderr.decode()
    lines: dict[str, object] = json.loads(out.stdout)["summary"]["lines"]
    return lines, time.monotonic() - t0


def test_gzip_of_64_mib_of_newlines_replays_in_seconds(tmp_path: Path) -> None:
    path = tmp_path / "newlines.log.gz"
    # One access line at the end: a file of nothing but blank lines is an input error (exit 2).
    path.write_bytes(gzip.compress(b"\n" * (64 << 20) + JSON_LINE + b"\n"))
    lines, took = replay_cli(str(path), "--no-progress")
    n = 64 << 20
    assert lines == {"read": n + 1, "parsed": 1, "json": 1, "common": 0, "skipped": {"empty": n}}
    assert took < HANG_GUARD_S


def test_64_mib_of_blank_lines_with_two_jobs_replays_in_seconds(tmp_path: Path) -> None:
    path = tmp_path / "blank.log"
    unit = b"\n" * 60 + b"\r\n" * 2 + b" \t\n"  # 63 lines in 67 bytes
    reps = (64 << 20) // len(unit)
    path.write_bytes(unit * reps + JSON_LINE + b"\n")
    lines, took = replay_cli(str(path), "--jobs", "2", "--no-progress")
    blank = 63 * reps
    assert lines["read"] == blank + 1
    assert (lines["json"], lines["skipped"]) == (1, {"empty": blank})
    assert took < HANG_GUARD_S


def test_live_tailer_path_counts_16_mib_of_newlines_in_seconds(tmp_path: Path) -> None:
    """``run``'s path: the tailer (with checkpoints) framing lines, then parser and engine."""
    path = tmp_path / "access.log"
    n = 16 << 20
    path.write_bytes(b"\n" * n + JSON_LINE + b"\n")
    tailer = FileTailer(
        TailConfig(paths=(str(path),), checkpoint_dir=str(tmp_path / "cp"), start_at="beginning")
    )
    eng = engine()
    source = SourceAuditor(eng, "tail", Envelope.AUTO)
    last_end = 0
    t0 = time.monotonic()
    try:
        while batches := tailer.poll():
            for batch in batches:
                assert batch.line_ends is not None
                assert len(batch.line_ends) == len(batch.lines)
                last_end = batch.line_ends[-1]
                source.feed(batch.lines)
                tailer.ack(batch)
            assert time.monotonic() - t0 < HANG_GUARD_S
    finally:
        tailer.close()
    assert counts(eng.stats["tail"]) == (n + 1, 1, 0, {"empty": n})
    assert last_end == n + len(JSON_LINE) + 1


# -- mixed blank and real lines: the same counts from every reader ------------------------------


def mixed_file(path: Path) -> tuple[int, int, int]:
    """Real lines between runs of every kind of blank line; (json, common, blank) counts."""
    parts: list[bytes] = []
    n_json = n_clf = n_blank = 0
    for i in range(400):
        run = BLANKS[i % len(BLANKS)]
        k = (1, 2, 5, 1500)[i % 4]
        parts += [run] * k
        n_blank += k
        if i % 3:
            parts.append(JSON_LINE)
            n_json += 1
        else:
            parts.append(CLF_LINE)
            n_clf += 1
    path.write_bytes(b"\n".join(parts) + b"\n")
    return n_json, n_clf, n_blank


def test_mixed_blank_lines_count_alike_in_every_reader(tmp_path: Path) -> None:
    path = tmp_path / "mixed.log"
    n_json, n_clf, n_blank = mixed_file(path)
    want = (n_json + n_clf + n_blank, n_json, n_clf, {"empty": n_blank})

    serial = engine()
    source = SourceAuditor(serial, "serial", Envelope.AUTO)
    with open_input(str(path)) as fh:
        for batch in line_batches(fh):
            source.feed(batch)
    assert counts(serial.stats["serial"]) == want

    parallel = engine()
    audit_parallel(parallel, str(path), 2)
    assert counts(parallel.stats[str(path)]) == want

    tailed = engine()
    tail_source = SourceAuditor(tailed, "tail", Envelope.AUTO)
    ends: list[int] = []
    tailer = FileTailer(
        TailConfig(paths=(str(path),), checkpoint_dir=None, start_at="beginning", batch_lines=700)
    )
    try:
        while batches := tailer.poll():
            for tail_batch in batches:
                assert tail_batch.line_ends is not None
                ends += tail_batch.line_ends
                tail_source.feed(tail_batch.lines)
    finally:
        tailer.close()
    assert counts(tailed.stats["tail"]) == want
    data = path.read_bytes()
    assert ends == [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]


def test_blank_raw_lines_between_cri_lines_are_counted_empty() -> None:
    cri = b"2024-04-16T06:21:39.0Z stdout F " + JSON_LINE
    lines = [b"", cri, b" ", b"\r", *([b""] * 5000), cri, b"\t\t"]
    for envelope in (Envelope.CRI, Envelope.AUTO):
        eng = engine()
        SourceAuditor(eng, "cri", envelope).feed(lines)
        assert counts(eng.stats["cri"]) == (len(lines), 2, 0, {"empty": len(lines) - 2})


def test_blank_lines_inside_docker_and_cri_content_reach_the_parser_as_empty() -> None:
    lines = [
        b"2024-04-16T06:21:39.0Z stdout F ",
        b"2024-04-16T06:21:39.0Z stdout F  \t",
        b"",
        b"2024-04-16T06:21:39.0Z stdout F " + JSON_LINE,
    ]
    eng = engine()
    SourceAuditor(eng, "cri", Envelope.CRI).feed(lines)
    stats = eng.stats["cri"]
    assert (stats.json, stats.skipped[SkipReason.EMPTY], stats.skipped_total) == (1, 3, 3)


# -- framing: line end offsets with runs of one repeated line -----------------------------------


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.sampled_from([b"", b"\r", b" ", b"a", b"ab\r", b"\x00"]), st.integers(1, 40)),
        max_size=8,
    ),
    data=st.data(),
)
def test_framer_line_ends_follow_every_newline(
    runs: list[tuple[bytes, int]], data: st.DataObject
) -> None:
    stream = b"".join((line + b"\n") * k for line, k in runs)
    framer = LineFramer(16)
    got: list[bytes] = []
    ends: list[int] = []
    pos = 0
    while pos < len(stream):
        size = data.draw(st.integers(1, 64))
        framer.feed(stream[pos : pos + size])
        pos += size
        while (taken := framer.take(data.draw(st.integers(1, 50)))) is not None:
            got += taken[0]
            ends += framer.last_ends
            assert len(framer.last_ends) == len(taken[0])
    want_lines: list[bytes] = []
    want_ends: list[int] = []
    offset = 0
    for line, k in runs:
        for _ in range(k):
            offset += len(line) + 1
            if line == b"\x00":  # a NUL-only line is a copytruncate hole, not a line
                continue
            want_lines.append(line.removesuffix(b"\r"))
            want_ends.append(offset)
    assert got == want_lines
    assert ends == want_ends
