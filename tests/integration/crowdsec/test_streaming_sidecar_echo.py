"""``echo_access_log``: ``auditor run`` re-emits every access-log line it reads on stdout, byte
for byte, and nothing else (findings for ``-`` and logs go to stderr); a stdout nobody reads
never stops the tailing (lines are dropped and counted instead)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.live.echo import StdoutEcho
from tests.support.crowdsec import free_port, traefik_json_line
from tests.support.paths import ROOT

WAIT_S = 60.0
HOP = "10.42.0.7"


def _auditor(tmp: Path, log: Path, stdout: Any, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITOR_")}
    with (tmp / "stderr").open("wb") as stderr:
        proc = _popen(tmp, log, stdout, stderr, port, env, extra)
    return proc, port


def _popen(
    tmp: Path,
    log: Path,
    stdout: Any,
    stderr: Any,
    port: int,
    env: dict[str, str],
    extra: tuple[str, ...],
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "auditor"),
            "run",
            "--access-log",
            str(log),
            "--echo-access-log",
            "--findings",
            "-",
            "--metrics-listen",
            f"127.0.0.1:{port}",
            "--checkpoint-dir",
            str(tmp / "ckpt"),
            "--start-at",
            "beginning",
            "--poll-interval",
            "0.05",
            *extra,
        ],
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=tmp,
    )


def _metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(pred: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], tmp: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not pred():
        if proc.poll() is not None or time.monotonic() > deadline:
            err = (tmp / "stderr").read_text(errors="replace")[-3000:]
            pytest.fail(f"waiting for {what} (exit {proc.poll()})\n{err}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_stdout_is_exactly_the_access_log(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    # Masked traffic (raises masked_client_ip, a finding for "-"), a common-format line, a line
    # that is not an access log at all, non-ASCII bytes and a CR: all echoed as they are.
    lines = [traefik_json_line(HOP, f"/watch?v={i}").encode() for i in range(40)]
    lines += [
        b'203.0.113.9 - - [14/Mar/2025:08:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl" 1 '
        b'"r@f" "http://s" 1ms',
        b"time=2025-03-14T08:00:00Z level=info msg=traefik's own log line",
        '{"ClientHost": "198.51.100.1", "RequestPath": "/caf\u00e9"}'.encode(),
        b"\xff\xfe not utf-8 \r inside",
    ]
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        proc, port = _auditor(tmp_path, log, stdout, "--window", "60")
    _wait(lambda: _metric(port, "auditor_lines_total") >= len(lines), "the lines", proc, tmp_path)
    _wait(lambda: out.stat().st_size >= sum(len(x) + 1 for x in lines), "the echo", proc, tmp_path)
    # The framing the tailer applies (a CRLF ending is read as LF) is the only change.
    more = [traefik_json_line("198.51.100.2", "/later").encode()]
    with log.open("ab") as fh:
        fh.write(more[0] + b"\r\n")
    _wait(lambda: b"/later" in out.read_bytes(), "the appended line", proc, tmp_path)
    assert _stop(proc) == 0
    assert out.read_bytes() == b"".join(line + b"\n" for line in [*lines, *more])
    err = (tmp_path / "stderr").read_text(errors="replace")
    findings = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert any(f["kind"] == "masked_client_ip" and f["state"] == "raised" for f in findings)
    assert "auditor.run: listening on" in err  # logs: stderr, as always


def test_a_stdout_nobody_reads_never_stops_the_tailing(tmp_path: Path) -> None:
    """The container runtime stalls: the pipe fills, lines are dropped and counted, and every
    line is still read and audited."""
    log = tmp_path / "access.log"
    line = traefik_json_line("198.51.100.7", "/" + "x" * 400).encode() + b"\n"
    count = 40_000  # ~20 MB: far more than the pipe (64 KiB) and the echo buffer (4 MiB)
    log.write_bytes(line * count)
    read_end, write_end = os.pipe()
    try:
        proc, port = _auditor(tmp_path, log, write_end)
        os.close(write_end)
        write_end = -1
        _wait(lambda: _metric(port, "auditor_lines_total") >= count, "every line", proc, tmp_path)
        _wait(
            lambda: _metric(port, "auditor_echo_dropped_lines_total") > 0,
            "dropped lines counted",
            proc,
            tmp_path,
        )
        # Stdout drains again: later lines are echoed again.
        drained = bytearray()
        reader = threading.Thread(target=_drain, args=(read_end, drained), daemon=True)
        reader.start()
        with log.open("ab") as fh:
            fh.write(b'{"marker": "after the stall"}\n')
        _wait(lambda: b"after the stall" in drained, "echo after the stall", proc, tmp_path)
        assert _stop(proc) == 0
    finally:
        if write_end >= 0:
            os.close(write_end)
    err = (tmp_path / "stderr").read_text(errors="replace")
    assert "not echoed to stdout" in err
    assert "Traceback" not in err


def _drain(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 1 << 16):
        into += chunk


def test_echo_writer_is_bounded_and_ordered() -> None:
    read_end, write_end = os.pipe()
    echo = StdoutEcho(write_end, max_buffer=256 * 1024)
    try:
        batch = [b"y" * 1000] * 100  # ~100 KB a batch
        started = time.monotonic()
        for _ in range(50):
            echo.write(batch)  # nobody reads: must return at once all the same
        assert time.monotonic() - started < 2.0
        assert echo.dropped > 0
        kept = 50 * 100 - echo.dropped
        drained = bytearray()
        reader = threading.Thread(target=_drain, args=(read_end, drained), daemon=True)
        reader.start()
        echo.write([b"last"])
        echo.close(timeout=10)
        assert echo.lines_written == kept + 1
    finally:
        os.close(write_end)
    reader.join(10)
    # Whole lines only, in order: the batches that fitted, then the last one.
    assert bytes(drained).split(b"\n") == [b"y" * 1000] * kept + [b"last", b""]


def test_echo_stops_cleanly_when_stdout_is_gone() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # EPIPE on write
    echo = StdoutEcho(write_end)
    try:
        echo.write([b"a", b"b"])
        deadline = time.monotonic() + 10
        while echo.dropped < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        echo.write([b"c"])
        echo.close(timeout=5)
        assert echo.dropped == 3
        assert echo.lines_written == 0
    finally:
        os.close(write_end)
