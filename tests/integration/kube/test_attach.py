"""``auditor run`` with discovery on: the classifier follows the cluster, config findings flow."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from pipeline.core.addresses import AddrClass
from pipeline.core.findings import Kind
from pipeline.kube.attach import DiscoveryService
from pipeline.live.runner import Runner
from tests.support.crowdsec import traefik_json_line
from tests.support.kube_api import FakeKubeApi
from tests.support.waiting import until as _wait


@pytest.fixture(name="fake")
def _fake() -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi().start().load_cluster("k3s-servicelb")
    try:
        yield fake
    finally:
        fake.stop()


async def _until(cond: Callable[[], bool], what: str) -> None:
    await _wait(cond, what, timeout=20.0, interval=0.02)


def _config(tmp_path: Path, kubeconfig: Path) -> RunConfig:
    log = tmp_path / "access.log"
    log.write_text(traefik_json_line("10.42.0.7", "/") + "\n")
    return RunConfig(
        access_log=(str(log),),
        metrics_listen="127.0.0.1:0",
        findings=str(tmp_path / "findings.jsonl"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        start_at="beginning",
        poll_interval=0.05,
        discovery=True,
        kubeconfig=str(kubeconfig),
    )


async def _scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2].decode()


def _config_findings(runner: Runner) -> dict[str, str]:
    return {f.check: f.target for k, f in runner.engine.findings.items() if f.kind is Kind.CONFIG}


async def test_run_follows_the_cluster(fake: FakeKubeApi, tmp_path: Path) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    runner = build_runner(_config(tmp_path, kubeconfig), registry=CollectorRegistry())
    clf = runner.engine.classifier
    assert clf.classify("203.0.113.10").cls is AddrClass.PUBLIC  # before discovery
    task = asyncio.create_task(runner.run())
    try:
        await _until(lambda: "etp_cluster" in _config_findings(runner), "config findings")
        status = runner.kube_status
        assert isinstance(status, DiscoveryService)
        assert status.up and status.last_sync is not None
        hit = runner.engine.classifier.classify("203.0.113.10")
        assert hit.cls is AddrClass.NODE
        assert hit.network is not None and "k3s-server-1" in hit.network.provenance
        assert _config_findings(runner)["servicelb_masquerade"].startswith(
            "kube-system/svclb-traefik-"
        )
        assert all(k.startswith("kube:config:") for k, f in runner.engine.findings.items()
                   if f.kind is Kind.CONFIG)  # fmt: skip
        assert runner.lifecycle is not None
        port = runner.lifecycle.port
        text = ""
        deadline = time.monotonic() + 20
        while "auditor_kubernetes_up 1.0" not in text and time.monotonic() < deadline:
            text = await _scrape(port)
            await asyncio.sleep(0.1)
        assert "auditor_kubernetes_up 1.0" in text
        assert "auditor_kubernetes_sync_timestamp_seconds " in text
        # The operator fixes the Service: the finding clears without a restart.
        svc = fake.get("Service", "traefik", "kube-system")
        svc["spec"]["externalTrafficPolicy"] = "Local"
        fake.apply(svc)
        await _until(lambda: "etp_cluster" not in _config_findings(runner), "finding cleared")
    finally:
        runner.stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    events = [json.loads(ln) for ln in (tmp_path / "findings.jsonl").read_text().splitlines()]
    etp = [(e["state"], e["target"]) for e in events if e.get("check") == "etp_cluster"]
    assert etp == [("raised", "kube-system/traefik"), ("cleared", "kube-system/traefik")]


async def test_bad_kubeconfig_stops_run_with_exit_2(tmp_path: Path) -> None:
    runner = build_runner(_config(tmp_path, tmp_path / "missing"), registry=CollectorRegistry())
    assert await asyncio.wait_for(runner.run(), 30) == 2
