"""A flood of idle connections on the metrics port of a real ``auditor run`` (issue 12, item 7).

The process gets a small descriptor limit, as on a tight node, and a client holds hundreds of
idle connections open and keeps opening new ones. Before the connection cap, the server took a
descriptor per connection until none was left, the tail checkpoint could not be written and the
process exited 2 with a traceback per connection.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

from tests.support.crowdsec import free_port, traefik_json_line
from tests.support.paths import ROOT

FILE_LIMIT = 256
FLOOD = 600
TIMEOUT = 60.0
LINES = 'auditor_lines_total{result="json",source="file"}'


def _limit_files() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


def _enough_files_for_the_flood() -> None:
    """The test process itself holds the flood's client sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FLOOD + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def _append(log: Path, n: int, client: str) -> None:
    with log.open("a", encoding="utf-8") as fh:
        fh.writelines(traefik_json_line(client, "/", 200) + "\n" for _ in range(n))


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _lines_counted(port: int) -> float | None:
    try:
        text = _scrape(port)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(LINES + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _checkpointed(ckpt: Path) -> int:
    try:
        saved = json.loads((ckpt / "tail.json").read_text())
    except (OSError, ValueError):
        return -1
    return max((int(f["offset"]) for f in saved.get("files", [])), default=-1)


class Flood:
    """Keeps up to ``FLOOD`` idle connections open and opens new ones as fast as it can."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.held: deque[socket.socket] = deque()
        self.attempts = 0
        self.connected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        while self.held:
            self.held.popleft().close()

    def _run(self) -> None:
        while not self._stop.is_set():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(1.0)
            self.attempts += 1
            try:
                sock.connect(("127.0.0.1", self.port))
            except OSError:
                sock.close()
                continue
            self.connected += 1
            self.held.append(sock)  # idle: never sends a byte
            if len(self.held) > FLOOD:
                self.held.popleft().close()


def _wait(pred: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], err: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        assert proc.poll() is None, (
            f"auditor exited {proc.returncode} while waiting for {what}: "
            f"{err.read_text(errors='replace')[-2000:]}"
        )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_idle_connection_flood_does_not_stop_tailing_or_checkpointing(tmp_path: Path) -> None:
    _enough_files_for_the_flood()
    log = tmp_path / "access.log"
    _append(log, 10, "198.51.100.1")
    ckpt = tmp_path / "ckpt"
    err = tmp_path / "stderr"
    port = free_port()
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli.main",
                "run",
                "--access-log",
                str(log),
                "--metrics-listen",
                f"127.0.0.1:{port}",
                "--findings",
                str(tmp_path / "findings.jsonl"),
                "--checkpoint-dir",
                str(ckpt),
                "--start-at",
                "beginning",
                "--poll-interval",
                "0.05",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            preexec_fn=_limit_files,  # noqa: PLW1509 - single-threaded here, setrlimit only
        )
    try:
        _wait(lambda: _lines_counted(port) == 10.0, "the first 10 lines", proc, err)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert re.search(rf"Max open files\s+{FILE_LIMIT}\s", limits), limits
        with Flood(port) as flood:
            _wait(lambda: flood.attempts >= FLOOD, f"{FLOOD} connection attempts", proc, err)
            # Tailing and checkpointing go on under the flood.
            _append(log, 50, "198.51.100.2")
            size = log.stat().st_size
            _wait(lambda: _checkpointed(ckpt) == size, "the checkpoint of new lines", proc, err)
            _wait(lambda: flood.attempts >= 2 * FLOOD, "a second wave", proc, err)
            assert proc.poll() is None
        # Released: the port answers again, with every line counted.
        _wait(lambda: _lines_counted(port) == 60.0, "/metrics after the flood", proc, err)
        _append(log, 5, "198.51.100.3")
        _wait(lambda: _lines_counted(port) == 65.0, "lines after the flood", proc, err)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = err.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "Too many open files" not in text, text[-3000:]
    # One rate-limited warning for the whole flood, not one per connection.
    warnings = [line for line in text.splitlines() if "auditor.metrics" in line]
    assert 1 <= len(warnings) <= 2, warnings
    assert len(text) < 16_384, f"{len(text)} bytes of stderr"
