"""`auditor run` with a real CrowdSec LAPI: bans, metrics, restart, auth, stop, backpressure."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from pipeline.contracts import Plugin
from pipeline.core.findings import Kind
from pipeline.live.runner import Runner
from pipeline.sources.tail import TailBatch
from tests.support.crowdsec import CrowdSecInstance, free_port, traefik_json_line
from tests.support.crowdsec_fixtures import CrowdSecFactory
from tests.support.waiting import until as _wait

AUDITOR = str(Path(sys.executable).with_name("auditor"))


def _traffic(path: Path, n_hop: int = 90, n_public: int = 10) -> None:
    lines = [traefik_json_line("10.42.0.7", "/watch?v=abc", 200) for _ in range(n_hop)]
    lines += [traefik_json_line(f"198.51.100.{i}", "/feed/popular", 200) for i in range(n_public)]
    path.write_text("".join(line + "\n" for line in lines))


async def _until(cond: Callable[[], bool], what: str) -> None:
    await _wait(cond, what, timeout=30.0)


def _config(
    tmp_path: Path, lapi: CrowdSecInstance | None, key_file: Path | None, **extra: object
) -> RunConfig:
    return RunConfig(
        access_log=(str(tmp_path / "access.log"),),
        lapi_url=lapi.lapi_url if lapi else None,
        lapi_key_file=str(key_file) if key_file else None,
        lapi_poll_interval=0.3,
        metrics_listen="127.0.0.1:0",
        findings=str(tmp_path / "findings.jsonl"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        start_at="beginning",
        poll_interval=0.05,
        **extra,  # type: ignore[arg-type]
    )


def _internal_bans(runner: Runner) -> set[str]:
    return {f.target for f in runner.engine.findings.values() if f.kind is Kind.INTERNAL_BAN}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def _ascrape(port: int) -> str:
    """Scrape from inside the event loop that also serves the metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2].decode()


async def _until_metric(port: int, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in await _ascrape(port):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for metric {text}")
        await asyncio.sleep(0.1)


async def test_internal_bans_follow_lapi_through_a_restart(
    tmp_path: Path, crowdsec_factory: CrowdSecFactory
) -> None:
    lapi = crowdsec_factory()
    lapi.start_lapi()
    key = tmp_path / "lapi-key"
    key.write_text(lapi.add_bouncer("auditor-live") + "\n")
    _traffic(tmp_path / "access.log")
    runner = build_runner(_config(tmp_path, lapi, key), registry=CollectorRegistry())
    task = asyncio.create_task(runner.run())
    try:
        await _until(lambda: runner.engine.traffic.whole().total == 100, what="traffic")
        lapi.add_decision(ip="10.42.0.7", reason="probing through the servicelb hop")
        lapi.add_decision(range="10.42.0.0/24", reason="range")
        lapi.add_decision(ip="203.0.113.9", reason="a real attacker")
        await _until(
            lambda: _internal_bans(runner) == {"10.42.0.7", "10.42.0.0/24"},
            what="two internal bans",
        )
        assert len(runner.engine.decisions) == 3  # the external ban is tracked, not flagged
        ban = next(f for f in runner.engine.findings.values() if f.target == "10.42.0.7")
        assert ban.evidence["blast_radius"]["request_share"] == pytest.approx(0.9)
        assert runner.lifecycle is not None
        port = runner.lifecycle.port
        await _until_metric(port, 'auditor_internal_bans_active{target_class="pod"} 2.0')
        assert "auditor_lapi_up 1.0" in await _ascrape(port)

        lapi.stop()
        await _until(
            lambda: runner.lapi is not None and not runner.lapi.status.up, what="LAPI seen down"
        )
        await _until_metric(port, "auditor_lapi_up 0.0")
        # Changes made while the LAPI is down must not be lost: the resync brings them.
        lapi.start_lapi()
        lapi.delete_decision(range="10.42.0.0/24")
        lapi.add_decision(ip="10.42.0.8", reason="after restart")
        await _until(
            lambda: _internal_bans(runner) == {"10.42.0.7", "10.42.0.8"},
            what="resync after LAPI restart",
        )
        lapi.delete_decision(ip="10.42.0.7")
        lapi.delete_decision(ip="10.42.0.8")
        await _until(lambda: not _internal_bans(runner), what="bans cleared")
        await _until_metric(port, 'auditor_internal_bans_active{target_class="pod"} 0.0')
    finally:
        runner.stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    events = [json.loads(x) for x in (tmp_path / "findings.jsonl").read_text().splitlines()]
    bans = [(e["state"], e["target"]) for e in events if e["kind"] == "internal_ban"]
    assert ("raised", "10.42.0.7") in bans
    assert ("cleared", "10.42.0.7") in bans
    assert ("raised", "10.42.0.0/24") in bans
    assert ("cleared", "10.42.0.0/24") in bans
    assert ("raised", "10.42.0.8") in bans
    assert not any(t == "203.0.113.9" for _, t in bans)
    for e in events:
        assert {"kind", "severity", "target", "evidence", "fix", "state", "at"} <= set(e)


async def test_wrong_key_exits_2_naming_the_key_file(
    tmp_path: Path, crowdsec_lapi: CrowdSecInstance, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "wrong-key"
    key.write_text("not-a-real-key\n")
    _traffic(tmp_path / "access.log", 1, 1)
    runner = build_runner(_config(tmp_path, crowdsec_lapi, key), registry=CollectorRegistry())
    assert await asyncio.wait_for(runner.run(), 30) == 2
    assert str(key) in caplog.text
    assert "not-a-real-key" not in caplog.text


class _SlowPublisher:
    """Stands in for a sink that cannot keep up (a congested broker)."""

    def __init__(self) -> None:
        self.batches = 0

    async def publish(self, batch: TailBatch) -> None:
        await asyncio.sleep(0.05)
        self.batches += 1

    async def aclose(self) -> None:
        return None


async def test_slow_sink_pauses_reading(tmp_path: Path) -> None:
    line = traefik_json_line("198.51.100.1", "/videoplayback?id=x", 200) + "\n"
    n = 200_000
    (tmp_path / "access.log").write_text(line * n)
    slow = _SlowPublisher()
    runner = build_runner(
        _config(tmp_path, None, None), registry=CollectorRegistry(), extra=[Plugin(publisher=slow)]
    )
    task = asyncio.create_task(runner.run())
    try:
        await _until(lambda: slow.batches >= 10, what="some batches")
        read = runner.tailer.stats.lines
        done = runner.engine.traffic.whole().total
        # The queue holds a bounded number of batches: reading stays close behind processing.
        assert read - done <= 12 * 2048
        assert read < n
    finally:
        runner.stop.set()
        assert await asyncio.wait_for(task, 30) == 0


def test_sigterm_drains_checkpoints_and_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _traffic(log, 500, 500)
    port = free_port()
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [
            AUDITOR,
            "run",
            "--access-log",
            str(log),
            "--metrics-listen",
            f"127.0.0.1:{port}",
            "--findings",
            str(tmp_path / "f.jsonl"),
            "--checkpoint-dir",
            str(ckpt),
            "--start-at",
            "beginning",
            "--poll-interval",
            "0.05",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if 'auditor_lines_total{result="json",source="file"} 1000.0' in _scrape(port):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "auditor did not process the file"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = json.loads(next(ckpt.iterdir()).read_text())
    assert str(log.stat().st_size) in json.dumps(saved)
    # A restart reads nothing twice: the same 1000 lines are not counted again.
    proc = subprocess.Popen(
        [
            AUDITOR,
            "run",
            "--access-log",
            str(log),
            "--metrics-listen",
            f"127.0.0.1:{port}",
            "--findings",
            str(tmp_path / "f.jsonl"),
            "--checkpoint-dir",
            str(ckpt),
            "--start-at",
            "beginning",
            "--poll-interval",
            "0.05",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with log.open("a") as fh:
            fh.write(traefik_json_line("198.51.100.77", "/", 200) + "\n")
        deadline = time.monotonic() + 30
        while True:
            try:
                text = _scrape(port)
                if 'auditor_lines_total{result="json",source="file"} 1.0' in text:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "restarted auditor did not resume at the checkpoint"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


class _BrokenPublisher:
    """A sink that fails outright (a Kafka client bug, a refused write)."""

    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, batch: TailBatch) -> None:
        self.calls += 1
        raise RuntimeError("broker said no")

    async def aclose(self) -> None:
        return None


async def test_a_failing_sink_stops_with_exit_2_and_no_ack(tmp_path: Path) -> None:
    line = traefik_json_line("198.51.100.1", "/", 200) + "\n"
    (tmp_path / "access.log").write_text(line * 50_000)  # more than the queue holds
    broken = _BrokenPublisher()
    runner = build_runner(
        _config(tmp_path, None, None),
        registry=CollectorRegistry(),
        extra=[Plugin(publisher=broken)],
    )
    assert await asyncio.wait_for(runner.run(), 30) == 2
    assert broken.calls == 1
    saved = json.loads((tmp_path / "ckpt" / "tail.json").read_text())
    assert [f["offset"] for f in saved["files"]] == [0]  # nothing acked: all re-read on restart


async def test_findings_sink_full_disk_exits_2(tmp_path: Path) -> None:
    _traffic(tmp_path / "access.log", 90, 10)
    config = replace(_config(tmp_path, None, None, masked_min_requests=10), findings="/dev/full")
    runner = build_runner(config, registry=CollectorRegistry())
    assert await asyncio.wait_for(runner.run(), 30) == 2


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("metrics_listen", "127.0.0.1:99999", "metrics_listen"),
        ("findings", "/nonexistent/dir/f.jsonl", "findings"),
    ],
)
def test_unusable_outputs_exit_2_naming_the_key(
    tmp_path: Path, key: str, value: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli.main import main

    (tmp_path / "a.log").write_text("")
    rc = main(
        [
            "run",
            "--access-log",
            str(tmp_path / "a.log"),
            f"--{key.replace('_', '-')}",
            value,
            "--checkpoint-dir",
            str(tmp_path / "ck"),
        ]
    )
    assert rc == 2
    assert named in capsys.readouterr().err
