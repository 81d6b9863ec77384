"""A real Prometheus scrapes a real `auditor run` that follows a real CrowdSec LAPI, with the
shipped rules: an internal ban makes BanAuditorInternalIPBanned fire; deleting it resolves it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.crowdsec import CrowdSecInstance, free_port, traefik_json_line
from tests.support.paths import ROOT

RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
AUDITOR = str(Path(sys.executable).with_name("auditor"))
ALERT = "BanAuditorInternalIPBanned"

pytestmark = pytest.mark.slow


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(name="prometheus_bin")
def _prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)", pytrace=False)
    return path


@pytest.fixture(name="auditor")
def _auditor(tmp_path: Path, crowdsec_lapi: CrowdSecInstance) -> Iterator[tuple[int, Path]]:
    key = tmp_path / "lapi-key"
    key.write_text(crowdsec_lapi.add_bouncer(f"prom-e2e-{time.monotonic_ns()}") + "\n")
    log = tmp_path / "access.log"
    log.write_text("".join(traefik_json_line("10.42.0.7", "/", 200) + "\n" for _ in range(20)))
    port = free_port()
    proc = subprocess.Popen(
        [
            AUDITOR,
            "run",
            "--access-log",
            str(log),
            "--lapi-url",
            crowdsec_lapi.lapi_url,
            "--lapi-key-file",
            str(key),
            "--lapi-poll-interval",
            "0.5",
            "--metrics-listen",
            f"127.0.0.1:{port}",
            "--findings",
            str(tmp_path / "f.jsonl"),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--start-at",
            "beginning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, log
    finally:
        _stop(proc)


@pytest.fixture(name="prometheus")
def _prometheus(tmp_path: Path, prometheus_bin: str, auditor: tuple[int, Path]) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: ban-auditor\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{auditor[0]}']\n"
    )
    proc = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: _get(f"{url}/api/v1/status/buildinfo")["status"] == "success",
            30,
            "prometheus to start",
        )
        yield url
    finally:
        _stop(proc)


def _alert_state(url: str) -> str | None:
    alerts = _get(f"{url}/api/v1/alerts")["data"]["alerts"]
    states = [a["state"] for a in alerts if a["labels"]["alertname"] == ALERT]
    return states[0] if states else None


def test_internal_ban_alert_fires_and_resolves(
    prometheus: str, crowdsec_lapi: CrowdSecInstance
) -> None:
    # The scrape works and the auditor is up before anything is banned.
    _wait(lambda: _get(f"{prometheus}/api/v1/query?query=up")["data"]["result"], 30, "a scrape")
    assert _alert_state(prometheus) is None

    crowdsec_lapi.add_decision(ip="10.42.0.7", reason="e2e")
    assert _wait(lambda: _alert_state(prometheus) == "firing", 60, "the alert to fire")
    alert = next(
        a
        for a in _get(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
        if a["labels"]["alertname"] == ALERT
    )
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["target_class"] == "pod"
    assert "runbook_url" in alert["annotations"]

    crowdsec_lapi.delete_decision(ip="10.42.0.7")
    assert _wait(lambda: _alert_state(prometheus) is None, 60, "the alert to resolve")
