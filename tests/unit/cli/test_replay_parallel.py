"""``replay --jobs N`` writes the report ``--jobs 1`` writes, on busy and on quiet traffic.

Workers fold each time bucket of their chunk into a summary and the parent takes it over or
merges it, so any difference in how a bucket is cut, split over chunks or merged would show as
a different report. Quiet traffic (5 requests/s) opens a bucket every ~300 lines and crosses
several per batch; busy traffic (50 requests/s) fills one bucket over many batches and chunks.
Small chunks put many bucket edges on chunk edges. A worker that dies is an error, not a hang.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest

from bench.generate import GenConfig, write_decisions, write_log
from pipeline.core.traffic import Run as Bucket
from pipeline.core.traffic import Summary
from pipeline.sources import parallel
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.crowdsec import traefik_json_line
from tests.support.paths import ROOT

LINES = 24_000  # ~32 MB


class Workload(NamedTuple):
    name: str
    log: Path
    decisions: Path


@pytest.fixture(scope="module", params=[("busy", 50.0), ("quiet", 5.0)], ids=lambda p: p[0])
def workload(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Workload:
    name, rate = request.param
    # Masked traffic above the share that raises a finding, so evidence windows are compared.
    cfg = GenConfig(lines=LINES, seed=4, masked_share=0.7, masked_span=(0.1, 0.9), rate=rate)
    tmp = tmp_path_factory.mktemp(name)
    w = Workload(name, tmp / "access.log", tmp / "decisions.json")
    write_log(cfg, w.log)
    write_decisions(cfg, w.decisions)
    return w


def replay(auditor: Run, w: Workload, *extra: str) -> str:
    log, decisions = w.log, w.decisions
    argv = ["replay", str(log), "--decisions", str(decisions), "--format", "json", *extra]
    code, out, err = auditor(*argv, "--no-progress")
    assert code == 1, err  # the generated decisions ban internal addresses
    return out


@pytest.mark.parametrize("chunk", [parallel.CHUNK, 1 << 20, 300_000])
def test_reports_identical_to_one_job(
    auditor: Run, workload: Workload, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "CHUNK", chunk)
    one = replay(auditor, workload, "--jobs", "1")
    assert replay(auditor, workload, "--jobs", "2") == one
    assert replay(auditor, workload, "--jobs", "3") == one
    report = orjson.loads(one)
    assert report["summary"]["lines"]["read"] == LINES
    kinds = {f["kind"] for f in report["findings"]}
    assert {"internal_ban", "masked_client_ip"} <= kinds


def test_the_workloads_are_busy_and_quiet(workload: Workload) -> None:
    """Quiet crosses ~3 buckets per 1,024-line batch, busy fills one over ~3 batches."""
    lines = workload.log.read_bytes().splitlines()
    first, last = (_seconds(orjson.loads(line)["StartUTC"]) for line in (lines[0], lines[-1]))
    buckets_per_batch = (last - first) / 60 / (LINES / 1024)
    if workload.name == "quiet":
        assert buckets_per_batch > 2.5
    else:
        assert buckets_per_batch < 0.6


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text[:19] + "+00:00").timestamp()


SMALL_CHUNK = 1 << 20
# Each script cuts the log in 1 MiB chunks: the parent reads chunks too (not through ``work``),
# and with many chunks the worker is sure to take one past the first.
PREAMBLE = f"""
import os, signal, sys
from pipeline.cli import main as cli
from pipeline.sources import parallel

parallel.CHUNK = {SMALL_CHUNK}
"""

# A worker killed mid-replay (the OOM killer does this) left multiprocessing.Pool's imap waiting
# forever; the parent now sees the death and exits 2 naming the file and --jobs 1.
KILL_ONE = (
    PREAMBLE
    + """
real = parallel.work
def work(task):
    if task[1] > 0:  # every chunk but the first
        os.kill(os.getpid(), signal.SIGKILL)
    return real(task)
parallel.work = work
sys.exit(cli.main(sys.argv[1:]))
"""
)

FAIL_ONE = (
    PREAMBLE
    + """
real = parallel.work
def work(task):
    if task[1] > 0:
        raise OSError(5, "Input/output error", task[0])
    return real(task)
parallel.work = work
sys.exit(cli.main(sys.argv[1:]))
"""
)

# The parent reads chunks itself (``work_with``) whenever the next result is not ready; a
# worker's ``work`` calls it too, so only the parent's own call fails. After the error, no
# worker may be left running.
FAIL_IN_PARENT = (
    PREAMBLE
    + """
import multiprocessing
parent = os.getpid()
real = parallel.work_with
def work_with(task, *rest):
    if os.getpid() == parent:
        raise OSError(5, "Input/output error", task[0])
    return real(task, *rest)
parallel.work_with = work_with
try:
    code = cli.main(sys.argv[1:])
finally:
    print("children-left", len(multiprocessing.active_children()), file=sys.stderr)
sys.exit(code)
"""
)

# A worker that takes long over its first chunk: the parent may read ahead only as many chunks
# as the workers may hold, not the whole file into memory while it waits.
SLOW_WORKER = (
    PREAMBLE
    + """
import time
parent = os.getpid()
real_work, real_with = parallel.work, parallel.work_with
state = {"first": True}
def work(task):
    if state["first"]:
        state["first"] = False
        time.sleep(3)
    return real_work(task)
ahead = []
def work_with(task, *rest):
    if os.getpid() == parent:
        ahead.append(time.monotonic() - start)
    return real_with(task, *rest)
parallel.work, parallel.work_with = work, work_with
start = time.monotonic()
code = cli.main(sys.argv[1:])
print("parent-chunks-early", sum(t < 2.5 for t in ahead), file=sys.stderr)
sys.exit(code)
"""
)


@pytest.fixture(scope="module")
def two_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of many chunks of the 1 MiB the scripts below cut (``SMALL_CHUNK``)."""
    log = tmp_path_factory.mktemp("chunks") / "access.log"
    write_log(GenConfig(lines=14_000, seed=5), log)
    assert log.stat().st_size > 8 * SMALL_CHUNK
    return log


def _run(script: str, log: Path) -> subprocess.CompletedProcess[str]:
    argv = ["replay", str(log), "--jobs", "2", "--format", "json", "--no-progress"]
    return subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,  # the old Pool hung here for good
        check=False,
    )


def test_a_killed_worker_is_an_error_not_a_hang(two_chunks: Path) -> None:
    out = _run(KILL_ONE, two_chunks)
    assert out.returncode == 2, out.stderr
    assert "replay worker process died (signal 9" in out.stderr
    assert "--jobs 1" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("script", [FAIL_ONE, FAIL_IN_PARENT], ids=["worker", "parent"])
def test_an_error_reading_a_chunk_stops_the_replay(two_chunks: Path, script: str) -> None:
    """Raised in a worker, it reaches the parent; raised in the parent's own chunk, the
    workers are stopped. Either way the error names the file, exits 2 without a traceback,
    and no report is written."""
    out = _run(script, two_chunks)
    assert out.returncode == 2, out.stderr
    assert f"input file {two_chunks}: read error: Input/output error" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    if script is FAIL_IN_PARENT:
        assert "children-left 0" in out.stderr


def test_the_parent_reads_ahead_of_a_slow_worker_only_so_far(two_chunks: Path) -> None:
    """With one worker stuck on its first chunk, the parent reads at most ``2 * jobs`` chunks
    past it before it waits; the report still covers every line."""
    out = _run(SLOW_WORKER, two_chunks)
    assert out.returncode in (0, 1), out.stderr
    report = orjson.loads(out.stdout)
    assert report["summary"]["lines"]["read"] == 14_000
    chunks = len(parallel.plan(str(two_chunks), SMALL_CHUNK))
    early = int(out.stderr.rsplit("parent-chunks-early ", 1)[1].split()[0])
    assert chunks > 8
    # while the worker sleeps (3 s), the parent reads at most 4 chunks: 2 x 2 jobs
    assert 1 <= early <= 4


COUNT_READERS = (
    PREAMBLE
    + """
parent = os.getpid()
readers = []
real = parallel.count_chunk
def count_chunk(task, *rest):
    readers.append(os.getpid())
    if os.getpid() != parent:
        print("worker-read", file=sys.stderr, flush=True)
    return real(task, *rest)
parallel.count_chunk = count_chunk
code = cli.main(sys.argv[1:])
print("parent-read", readers.count(parent), file=sys.stderr)
sys.exit(code)
"""
)


def test_the_parent_reads_chunks_too(two_chunks: Path) -> None:
    """``--jobs 2`` is two processes: the parent and one worker, both reading chunks."""
    out = _run(COUNT_READERS, two_chunks)
    assert out.returncode in (0, 1), out.stderr
    parent_read = int(out.stderr.rsplit("parent-read ", 1)[1].split()[0])
    assert parent_read >= 1
    assert "worker-read" in out.stderr
    report = orjson.loads(out.stdout)
    assert report["summary"]["lines"]["read"] == 14_000


def _skewed_log(path: Path) -> None:
    """A first chunk (``SMALL_CHUNK``) of lines two hours older that ends with one line from a
    clock 8 minutes ahead, then a hop's traffic: 60 % of minute 1 on one site, and in minute 2 a few
    requests to five other sites with other User-Agents, light there. One replay process puts
    minutes 0-4 of the second chunk in the future line's bucket (a line older than the newest
    bucket joins it), where the hop's sites add up to a suspected hop; a worker reads minute 2
    as a bucket of its own, whole, where the hop is light."""
    import random

    rnd = random.Random(1)
    hosts = [f"{c}.example" for c in "abcdef"]
    hop = "198.51.100.7"

    def line(
        client: str, minute: int, sec: int, host: str, ua: str, pad: int = 0, hour: int = 8
    ) -> bytes:
        when = datetime(2025, 3, 14, hour, minute, sec, tzinfo=UTC)
        text = traefik_json_line(
            client, "/x" + "a" * pad, host=host, user_agent=ua, when=when, router=f"r-{host}"
        )
        return (text + "\n").encode()

    def other() -> str:
        return f"203.0.{rnd.randint(1, 250)}.{rnd.randint(1, 250)}"

    first = [
        line(other(), 0, 0, rnd.choice(hosts), f"Mozilla/5.0 o{i}", 9_000, hour=6)
        for i in range(110)
    ]
    head = b"".join(first)[: SMALL_CHUNK - 30_000]
    head = head[: head.rindex(b"\n") + 1]
    # the chunk's last line, from the clock ahead, padded (its User-Agent) to end the chunk
    short = line(other(), 9, 0, "a.example", "Mozilla/5.0 future")
    ua = "Mozilla/5.0 future" + "z" * (SMALL_CHUNK - len(head) - len(short))
    future = line(other(), 9, 0, "a.example", ua)
    assert len(head) + len(future) == SMALL_CHUNK
    assert len(future) < 40_000  # not a line too long
    second = [line(other(), 0, 59, "a.example", "Mozilla/5.0 straggler")]
    for i in range(250):
        if i % 5 < 3:
            second.append(line(hop, 1, min(59, i // 5), "a.example", "Mozilla/5.0 H1"))
        else:
            second.append(line(other(), 1, min(59, i // 5), rnd.choice(hosts), f"M p{i}"))
    for i in range(410):
        if i % 41 == 0:
            n = 1 + (i // 41) % 5
            second.append(line(hop, 2, 30, hosts[n], f"Mozilla/5.0 H{n + 1}"))
        else:
            second.append(line(other(), 2, 30, rnd.choice(hosts), f"M q{i}"))
    for minute in (3, 4):
        second += [line(other(), minute, i, rnd.choice(hosts), f"M r{i}") for i in range(10)]
    assert len(b"".join(second)) < SMALL_CHUNK  # one chunk: minute 2 is one of its inner runs
    path.write_bytes(head + future + b"".join(second))


REPORT = (
    PREAMBLE
    + """
code = cli.main(sys.argv[1:])
sys.exit(code)
"""
)


def test_a_chunk_that_joins_a_held_bucket_gives_one_process_report(tmp_path: Path) -> None:
    """A chunk whose buckets join the bucket the engine holds (a line from a clock ahead ended
    the chunk before) gives the report of a single process, a suspected hop included: the
    diversity masks of buckets a worker read as whole are merged, not lost. (A version that
    kept only each worker bucket's own heavy clients' masks lost the hop here.)"""
    log = tmp_path / "skewed.log"
    _skewed_log(log)
    reports = _reports(log, "json")
    assert reports[0] == reports[1]
    kinds = [f["kind"] for f in orjson.loads(reports[0])["findings"]]
    assert "suspected_hop" in kinds


def _both(script: str, log: Path, fmt: str = "json") -> list[subprocess.CompletedProcess[str]]:
    """``script`` run as ``replay --jobs 1`` and as ``--jobs 2``, the log cut in
    ``SMALL_CHUNK`` chunks; each must have written its report."""
    argv = ["replay", str(log), "--format", fmt, "--no-progress"]
    runs = []
    for jobs in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script, *argv, "--jobs", jobs],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert out.returncode in (0, 1), out.stderr
        runs.append(out)
    return runs


def _reports(log: Path, fmt: str) -> list[str]:
    """The report of ``--jobs 1`` and of ``--jobs 2``."""
    return [out.stdout for out in _both(REPORT, log, fmt)]


def test_the_html_report_files_late_lines_as_one_process_does(tmp_path: Path) -> None:
    """The HTML report's share history (``ShareHistory``) files a run no newer than the newest
    bucket under that bucket, as the timeline does: parallel chunks start with late lines
    (the skewed log's second chunk, and the log given twice), and filed under their own
    minutes they drew another curve than one process."""
    skewed, twice = tmp_path / "skewed.log", tmp_path / "twice.log"
    _skewed_log(skewed)
    one = tmp_path / "one.log"
    write_log(GenConfig(lines=6_000, seed=6, rate=5.0, masked_share=0.7), one)
    twice.write_bytes(one.read_bytes() * 2)
    for log in (skewed, twice):
        reports = _reports(log, "html")
        assert "<svg" in reports[0]
        assert reports[0] == reports[1]


# Counts the chunks the parent reads a second time with every diversity mask: those whose inner
# runs kept only their heavy clients' masks and join a bucket the engine holds.
READ_AGAIN = (
    PREAMBLE
    + """
real = parallel._joins_held
again = []
def joins_held(runs, newest):
    found = real(runs, newest)
    again.extend([1] if found else [])
    return found
parallel._joins_held = joins_held
code = cli.main(sys.argv[1:])
print("read-again", len(again), file=sys.stderr)
sys.exit(code)
"""
)


def test_a_log_given_twice_is_read_again_only_until_chunks_keep_every_mask(
    tmp_path: Path,
) -> None:
    """Every bucket of a log's second copy joins the newest bucket of the first, so its chunks
    must keep every diversity mask. The first chunk found so is read again and sets every
    later one to keep them: only the chunks taken before that (at most ``2 * jobs`` ahead)
    are read twice, not the whole second copy, and the report is one process's."""
    one = tmp_path / "one.log"
    write_log(GenConfig(lines=12_000, seed=6, rate=5.0), one)
    log = tmp_path / "twice.log"
    log.write_bytes(one.read_bytes() * 2)
    chunks = len(parallel.plan(str(log), SMALL_CHUNK))
    assert chunks >= 14
    one_job, two_jobs = _both(READ_AGAIN, log)
    assert two_jobs.stdout == one_job.stdout
    again = int(two_jobs.stderr.split("read-again")[-1].split()[0])
    # the chunk found, up to 2 x 2 jobs a worker holds, and up to 3 the parent read ahead
    assert 1 <= again <= 1 + 2 * 2 + 3


def test_only_an_inner_run_no_newer_than_the_held_bucket_is_read_again() -> None:
    """A chunk's first two runs and its last keep every mask; the first inner run tells."""

    def runs(*buckets: int) -> list[Bucket]:
        return [(b, Summary(), 0.0, 0.0) for b in buckets]

    assert not parallel._joins_held(runs(5, 6), 6)  # no inner run
    assert not parallel._joins_held(runs(5, 6, 7), 6)
    assert not parallel._joins_held(runs(5, 6, 7, 8), 6)  # a late first line, then on
    assert not parallel._joins_held(runs(1, 2, 3, 4), None)  # the first chunk
    assert parallel._joins_held(runs(1, 2, 3, 4), 6)  # the log again
    assert parallel._joins_held(runs(4, 5, 6, 7), 6)


def _late_start_log(path: Path) -> None:
    """A first chunk (``SMALL_CHUNK``) of minutes 0-2, then a chunk that begins with a late
    line of minute 1 (a slow request, logged when it ended) and goes on over minutes 2-6."""
    import random

    rnd = random.Random(2)
    hosts = [f"{c}.example" for c in "abcdef"]

    def line(minute: int, sec: int, pad: int = 0, client: str = "") -> bytes:
        when = datetime(2025, 3, 14, 8, minute, sec, tzinfo=UTC)
        client = client or f"203.0.{rnd.randint(1, 250)}.{rnd.randint(1, 250)}"
        ua = "Mozilla/5.0 " + "z" * pad
        text = traefik_json_line(client, "/x", host=rnd.choice(hosts), user_agent=ua, when=when)
        return (text + "\n").encode()

    first = b"".join(line(i // 60, i % 60, 9_000) for i in range(110))
    head = first[: SMALL_CHUNK - 30_000]
    head = head[: head.rindex(b"\n") + 1]
    short = line(2, 0, 0, "198.51.100.9")
    last = line(2, 0, SMALL_CHUNK - len(head) - len(short), "198.51.100.9")
    assert len(head) + len(last) == SMALL_CHUNK
    assert len(last) < 40_000  # not a line too long
    second = [line(1, 50)] + [line(m, s) for m in range(2, 7) for s in range(0, 60, 3)]
    path.write_bytes(head + last + b"".join(second))


def test_a_chunk_that_begins_with_a_late_line_is_not_read_again(tmp_path: Path) -> None:
    """Lines are logged in order of request end, so a chunk may begin with a line older than
    the bucket the chunk before ended in: its second run is that bucket, kept with every mask,
    and nothing is read twice (it was, and then every later chunk kept every mask)."""
    log = tmp_path / "late.log"
    _late_start_log(log)
    one_job, two_jobs = _both(READ_AGAIN, log)
    assert two_jobs.stdout == one_job.stdout
    assert "read-again 0" in two_jobs.stderr
