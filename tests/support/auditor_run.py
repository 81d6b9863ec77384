"""``auditor run`` as a real subprocess, for the live tests against a real CrowdSec: its findings
file, its metrics port, and waits that poll against a deadline (nothing sleeps a fixed time)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.crowdsec import free_port
from tests.support.paths import ROOT

DEADLINE = 30.0


def auditor_bin() -> str:
    path = ROOT / ".venv" / "bin" / "auditor"
    found = str(path) if path.exists() else shutil.which("auditor")
    if not found:
        pytest.fail("the auditor command is not installed (pip install -e . in the venv)")
    return found


def append(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(ln + "\n" for ln in lines))


def wait_for(
    pred: Callable[[], Any], what: str, diag: Callable[[], str], deadline: float = DEADLINE
) -> Any:
    """``pred()``'s first truthy value; a test failure with ``diag()`` after ``deadline`` s."""
    end = time.monotonic() + deadline
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}\n{diag()}")
        time.sleep(0.1)


class Auditor:
    """``auditor run`` reading ``log`` from its start, findings to ``tmp/findings.jsonl``,
    metrics on a free port, the LAPI polled every second; ``extra`` flags after those."""

    def __init__(self, tmp: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.findings = tmp / "findings.jsonl"
        self.stderr_path = tmp / "auditor.stderr"
        self.cmd = [
            auditor_bin(), "run",
            "--access-log", str(log),
            "--metrics-listen", f"127.0.0.1:{self.port}",
            "--findings", str(self.findings),
            "--checkpoint-dir", str(tmp / "checkpoints"),
            "--start-at", "beginning",
            "--lapi-poll-interval", "1",
            *extra,
        ]  # fmt: skip
        self._stderr = self.stderr_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITOR_")}
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=self._stderr, cwd=tmp, env=env
        )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Finding events written so far (of ``kind`` only, when given)."""
        if not self.findings.exists():
            return []
        lines = self.findings.read_text().splitlines()
        found = [json.loads(ln) for ln in lines if ln.strip()]
        return [e for e in found if kind is None or e.get("kind") == kind]

    def find(self, **want: Any) -> dict[str, Any] | None:
        for e in self.events():
            if all(e.get(k) == v for k, v in want.items()):
                return e
        return None

    def metrics(self) -> str:
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: bytes = resp.read()
                return body.decode()
        except (OSError, urllib.error.URLError):
            return ""

    def gauge(self, kind: str, severity: str, value: str = "1.0") -> bool:
        """``auditor_findings_active{kind, severity}`` reads ``value`` now."""
        want = f'auditor_findings_active{{kind="{kind}",severity="{severity}"}} {value}'
        return want in self.metrics()

    def diag(self) -> str:
        self.proc.poll()
        return (
            f"auditor exit code: {self.proc.returncode}\n--- stderr ---\n"
            + self.stderr_path.read_text(errors="replace")[-4000:]
            + "\n--- findings ---\n"
            + "\n".join(json.dumps(e)[:400] for e in self.events())
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=5)
        self._stderr.close()
        return code
