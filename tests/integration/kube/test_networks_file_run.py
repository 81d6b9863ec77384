"""The whole path of the cluster view without API access in the sidecar: the watcher publishes
to a ConfigMap on the stand-in API server, a stand-in kubelet projects the ConfigMap into a volume
(the ``..data`` link swap), and ``auditor run`` with ``networks_file`` classifies by it, raises the
config findings, follows updates, keeps its copy through a bad one and exports its age."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from pipeline.core.addresses import AddrClass
from pipeline.core.findings import Kind
from pipeline.kube.client import KubeClient, connect
from pipeline.kube.discovery import Discovery, DiscoveryOptions
from pipeline.kube.publish import ConfigMapTarget, Watcher, WatcherOptions
from pipeline.live.runner import Runner
from tests.support.crowdsec import traefik_json_line
from tests.support.kube_api import ConfigMapVolume, FakeKubeApi
from tests.support.kube_facts import BAD, EXPECTED_BAD
from tests.support.paths import ROOT
from tests.support.waiting import until

NAMESPACE = "ban-auditor"
NAME = "ban-auditor-networks"
KEY = "networks.json"
FAST = DiscoveryOptions(watch_timeout_s=30, backoff_initial_s=0.05, debounce_s=0.02)
LABELS = {"app.kubernetes.io/name": "ban-auditor", "app.kubernetes.io/component": "networks"}


@pytest.fixture(name="fake")
def _fake() -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi().start().load_cluster(BAD)
    fake.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": LABELS},
        }
    )
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(name="api")
async def _api(fake: FakeKubeApi, tmp_path: Path) -> AsyncIterator[KubeClient]:
    api = await connect(str(fake.write_kubeconfig(tmp_path / "kubeconfig")), environ={})
    try:
        yield api
    finally:
        await api.close()


async def _kubelet(fake: FakeKubeApi, volume: ConfigMapVolume, stop: asyncio.Event) -> None:
    """Projects the ConfigMap into ``volume`` whenever it changes (the kubelet's sync)."""
    seen = ""
    while not stop.is_set():
        cm = await asyncio.to_thread(fake.get, "ConfigMap", NAME, NAMESPACE)
        rv = cm["metadata"]["resourceVersion"]
        if rv != seen:
            seen = rv
            volume.publish({k: v.encode() for k, v in (cm.get("data") or {}).items()})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


@contextlib.asynccontextmanager
async def _cluster_side(
    api: KubeClient, fake: FakeKubeApi, volume: ConfigMapVolume
) -> AsyncIterator[None]:
    discovery = Discovery(api, FAST)
    watcher = Watcher(
        discovery,
        ConfigMapTarget(api, NAMESPACE, NAME, KEY),
        "test",
        WatcherOptions(refresh_s=300, check_s=0.05),
    )
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(discovery.run()),
        asyncio.create_task(watcher.run(stop)),
        asyncio.create_task(_kubelet(fake, volume, stop)),
    ]
    try:
        yield
    finally:
        stop.set()
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _config(tmp_path: Path, networks_file: Path) -> RunConfig:
    log = tmp_path / "access.log"
    log.write_text(traefik_json_line("10.42.0.7", "/") + "\n")
    return RunConfig(
        access_log=(str(log),),
        metrics_listen="127.0.0.1:0",
        findings=str(tmp_path / "findings.jsonl"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        start_at="beginning",
        poll_interval=0.05,
        networks_file=str(networks_file),
    )


async def _until(cond: Callable[[], bool], what: str) -> None:
    await until(cond, what, timeout=20.0, interval=0.02)


def _config_findings(runner: Runner) -> dict[str, str]:
    return {f.check: f.target for f in runner.engine.findings.values() if f.kind is Kind.CONFIG}


def _sample(runner: Runner, name: str) -> float | None:
    return runner.metrics.registry.get_sample_value(name)


async def test_the_sidecar_follows_what_the_watcher_publishes(
    fake: FakeKubeApi, api: KubeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.kube.from_file.POLL_S", 0.05)
    volume = ConfigMapVolume(tmp_path / "etc-ban-auditor-networks")
    runner = build_runner(_config(tmp_path, volume.path(KEY)), registry=CollectorRegistry())
    assert runner.engine.classifier.classify("203.0.113.10").cls is AddrClass.PUBLIC
    task = asyncio.create_task(runner.run())
    try:
        # Before the watcher publishes: no copy, an infinite age, static networks only.
        await _until(
            lambda: _sample(runner, "auditor_networks_file_age_seconds") == float("inf"),
            "the age of no copy",
        )
        async with _cluster_side(api, fake, volume):
            await _until(lambda: "etp_cluster" in _config_findings(runner), "config findings")
            assert set(_config_findings(runner)) == set(EXPECTED_BAD)
            hit = runner.engine.classifier.classify("203.0.113.10")
            assert hit.cls is AddrClass.NODE
            assert hit.network is not None
            assert hit.network.provenance == "node k3s-server-1 status.addresses ExternalIP"
            # The static networks stay: the k3s defaults classify what discovery does not name.
            assert runner.engine.classifier.classify("10.43.200.1").cls is AddrClass.SERVICE
            age = _sample(runner, "auditor_networks_file_age_seconds")
            assert age is not None and 0 <= age < 60
            assert _sample(runner, "auditor_kubernetes_up") is None  # the sidecar has no API

            node = fake.get("Node", "k3s-agent-1")
            node["status"]["addresses"].append({"type": "ExternalIP", "address": "198.51.100.77"})
            fake.apply(node)
            await _until(
                lambda: runner.engine.classifier.classify("198.51.100.77").cls is AddrClass.NODE,
                "the new node address in the sidecar",
            )

        # The watcher is gone; a broken copy arrives: the sidecar keeps its last good one.
        volume.publish({KEY: b'{"format": "ban-auditor-networks", "version": 99}'})
        await asyncio.sleep(0.5)
        assert runner.engine.classifier.classify("198.51.100.77").cls is AddrClass.NODE
        assert set(_config_findings(runner)) == set(EXPECTED_BAD)
    finally:
        runner.stop.set()
        assert await asyncio.wait_for(task, 20) == 0


def test_a_sidecar_with_a_networks_file_loads_no_kubernetes_client(tmp_path: Path) -> None:
    """The point of the watcher: the sidecar pays nothing for the cluster view."""
    probe = (
        "import sys\n"
        "from pipeline.config import RunConfig\n"
        "from pipeline.cli.run import build_runner\n"
        f"r = build_runner(RunConfig(access_log=('/dev/null',), networks_file={str(tmp_path)!r}))\n"
        "plugins = r._attach(r.config, r.context) if r._attach else []\n"
        "assert len(plugins) == 1, plugins\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'kubernetes_asyncio', 'aiohttp', 'aiokafka', 'maxminddb'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
