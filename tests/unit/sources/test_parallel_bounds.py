"""``replay --jobs N`` reads a line no further than the serial reader does.

The chunk reader finished the last line of its chunk, and skipped the line in progress at its
start, with an unbounded ``readline``: one 200 MB line peaked at 430 MB RSS (27 MB with
``--jobs 1``). It now cuts a line at ``max_line_bytes + 1`` like the serial reader, and the
parser counts it too long, once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.records import ParseStats, SkipReason
from parsers.traefik import TraefikParser
from pipeline.core.traffic import count_runs
from pipeline.sources.parallel import Task, count_chunk, plan
from pipeline.sources.readfile import line_batches
from tests.support.crowdsec import traefik_json_line
from tests.support.paths import ROOT

GOOD = (traefik_json_line("198.51.100.1", "/", 200) + "\n").encode()
BUCKET_S = 60


def serial(path: str, max_line_bytes: int) -> tuple[ParseStats, Counter[object]]:
    """What ``--jobs 1`` reads: the reference the chunked reader must match."""
    parser = TraefikParser(max_line_bytes)
    stats = ParseStats()
    keys: Counter[object] = Counter()
    with open(path, "rb") as fh:
        for batch in line_batches(fh, max_line_bytes=max_line_bytes):
            for _, counts, _, _ in count_runs(parser.parse(batch, stats), BUCKET_S):
                keys.update(counts)
    return stats, keys


def chunked(path: str, chunk: int, max_line_bytes: int) -> tuple[ParseStats, Counter[object]]:
    stats = ParseStats()
    keys: Counter[object] = Counter()
    nbytes = 0
    for start, end in plan(path, chunk):
        task: Task = (path, start, end, BUCKET_S, max_line_bytes, None)
        tally, part, n = count_chunk(task)
        stats.merge(part)
        nbytes += n
        for _, counts, _ in tally.runs:
            keys.update(counts)
    assert nbytes == os.path.getsize(path)
    return stats, keys


def same(a: ParseStats, b: ParseStats) -> bool:
    return (a.lines, a.json, a.common, a.skipped) == (b.lines, b.json, b.common, b.skipped)


def test_line_spanning_many_chunks_is_one_too_long_skip(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(GOOD * 3 + b"{" + b"a" * 50_000 + b"}\n" + GOOD * 4 + b"b" * 9_000)
    stats, keys = chunked(str(path), 4096, 2048)
    assert (stats.lines, stats.json) == (9, 7)
    assert {r: n for r, n in stats.skipped.items() if n} == {SkipReason.TOO_LONG: 2}
    assert sum(keys.values()) == 7
    want, want_keys = serial(str(path), 2048)
    assert same(stats, want)
    assert keys == want_keys


LINE = st.one_of(
    st.just(GOOD[:-1]),
    st.integers(0, 6000).map(lambda n: b"{" + b"x" * n),  # long lines, some over the cap
    st.sampled_from([b"", b" ", b"\r", b"not a log line"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(LINE, max_size=25),
    final_newline=st.booleans(),
    chunk=st.integers(1, 9000),
    max_line_bytes=st.integers(1000, 3000),
)
def test_chunked_reader_counts_like_the_serial_reader(
    lines: list[bytes], final_newline: bool, chunk: int, max_line_bytes: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "access.log")
        with open(path, "wb") as fh:
            fh.write(data)
        got, got_keys = chunked(path, chunk, max_line_bytes)
        want, want_keys = serial(path, max_line_bytes)
    assert same(got, want)
    assert got_keys == want_keys


# Runs a command and prints its exit code and peak RSS (KiB, its reaped children included).
# A process of its own: a child exec'd straight from pytest would inherit pytest's high-water
# mark (the kernel keeps the larger of the old and new image's RSS across exec).
MEASURE = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as out:
    proc = subprocess.Popen(sys.argv[2:], stdout=out)
    _, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def test_one_huge_line_with_two_jobs_keeps_peak_rss_low(tmp_path: Path) -> None:
    """A 64 MiB line: the old reader held it about twice over (~150 MB); now ~35 MB."""
    path = tmp_path / "access.log"
    with path.open("wb") as fh:
        fh.write(GOOD * 50)
        fh.write(b'{"ClientHost":"' + b"1" * (64 << 20) + b'"}\n')
        fh.write(GOOD * 60)
    out = tmp_path / "report.json"
    argv = ["replay", str(path), "--jobs", "2", "--format", "json", "--no-progress"]
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, str(out), sys.executable, "-m", "pipeline.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    rc, peak_kib = map(int, measured.stdout.split())
    assert rc == 0, measured.stderr
    lines = json.loads(out.read_text())["summary"]["lines"]
    assert (lines["read"], lines["json"], lines["skipped"]) == (111, 110, {"too_long": 1})
    assert peak_kib < 96 * 1024, f"peak RSS {peak_kib >> 10} MiB"
