"""``auditor discover`` against the stand-in API server: it publishes the cluster's networks and
config findings into the shipped ConfigMap, follows watch events, refreshes ``synced_at`` only
while in sync, writes only what it read (409 on a race, then again), never a ConfigMap that is
not its own, and says why it cannot publish (404, 403) until it can."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core.addresses import AddrClass
from pipeline.core.networks_file import NetworksDoc, decode
from pipeline.errors import EXIT_USAGE
from pipeline.kube.api import KubeApiError
from pipeline.kube.checks import check_cluster
from pipeline.kube.client import KubeClient, connect
from pipeline.kube.discovery import Discovery, DiscoveryOptions
from pipeline.kube.networks import cluster_networks
from pipeline.kube.publish import ConfigMapTarget, FileTarget, NotOurs, Watcher, WatcherOptions
from tests.support.crowdsec import free_port
from tests.support.kube_api import FakeKubeApi
from tests.support.kube_facts import BAD, facts_from_files
from tests.support.paths import ROOT
from tests.support.waiting import until

NAMESPACE = "ban-auditor"
NAME = "ban-auditor-networks"
KEY = "networks.json"
SHIPPED = ROOT / "deploy" / "kustomize" / "base" / "networks-configmap.yaml"
WAIT_S = 20.0
FAST = DiscoveryOptions(
    watch_timeout_s=30,
    request_timeout_s=5,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    debounce_s=0.02,
)


def _shipped_configmap(namespace: str = NAMESPACE) -> dict[str, Any]:
    """The empty ConfigMap deploy/ ships, as `kubectl apply` would create it."""
    obj: dict[str, Any] = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    obj["metadata"]["namespace"] = namespace
    return obj


def _published(fake: FakeKubeApi) -> NetworksDoc | None:
    data = fake.get("ConfigMap", NAME, NAMESPACE).get("data") or {}
    return decode(data[KEY].encode()) if KEY in data else None


def _doc(fake: FakeKubeApi) -> NetworksDoc:
    doc = _published(fake)
    assert doc is not None
    return doc


@pytest.fixture(name="fake")
def _fake() -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi().start().load_cluster(BAD)
    try:
        yield fake
    finally:
        fake.stop()


# -- the command ----------------------------------------------------------------------------------
class Discover:
    """``auditor discover`` as a subprocess, with its stderr and metrics port."""

    def __init__(self, tmp: Path, kubeconfig: Path, *extra: str) -> None:
        self.port = free_port()
        self.stderr_path = tmp / "discover.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDITOR_", "KUBE"))}
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    str(ROOT / ".venv" / "bin" / "auditor"),
                    "discover",
                    "--kubeconfig",
                    str(kubeconfig),
                    "--metrics-listen",
                    f"127.0.0.1:{self.port}",
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def _wait(pred: Callable[[], Any], what: str, proc: Discover | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not pred():
        if time.monotonic() > deadline:
            tail = f"\n--- stderr ---\n{proc.stderr[-3000:]}" if proc else ""
            pytest.fail(f"timed out waiting for {what}{tail}")
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"auditor discover exited {proc.proc.returncode}\n{proc.stderr[-3000:]}")
        time.sleep(0.05)


def test_discover_publishes_the_cluster_and_follows_it(fake: FakeKubeApi, tmp_path: Path) -> None:
    fake.apply(_shipped_configmap())
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    started = time.time()
    watcher = Discover(tmp_path, kubeconfig, "--namespace", NAMESPACE)
    try:
        _wait(lambda: _published(fake) is not None, "the first publication", watcher)
        doc = _doc(fake)
        facts = facts_from_files(BAD)
        assert {(n.cidr, n.cls, n.provenance) for n in doc.networks} == {
            (n.cidr, n.cls, n.provenance) for n in cluster_networks(facts)
        }
        assert {f.check for f in doc.findings} == {f.check for f in check_cluster(facts)}
        assert doc.synced_at is not None and started <= doc.synced_at <= time.time()
        assert "kubeconfig" in doc.source and fake.url in doc.source
        cm = fake.get("ConfigMap", NAME, NAMESPACE)
        assert cm["metadata"]["labels"] == _shipped_configmap()["metadata"]["labels"]
        assert set(cm["data"]) == {KEY}

        # A watch event: a node gains a public address. Only a watch can have told it.
        lists = sum(1 for r in fake.request_log() if r.path == "/api/v1/nodes" and not r.watch)
        node = fake.get("Node", "k3s-agent-1")
        node["status"]["addresses"].append({"type": "ExternalIP", "address": "198.51.100.77"})
        fake.apply(node)
        _wait(
            lambda: "198.51.100.77/32" in {n.cidr for n in _doc(fake).networks},
            "the new node address in the ConfigMap",
            watcher,
        )
        hit = next(n for n in _doc(fake).networks if n.cidr == "198.51.100.77/32")
        assert hit.cls is AddrClass.NODE
        assert hit.provenance == "node k3s-agent-1 status.addresses ExternalIP"
        assert sum(1 for r in fake.request_log() if r.path == "/api/v1/nodes" and not r.watch) == (
            lists
        )

        status, body = watcher.get("/metrics")
        assert status == 200
        assert "auditor_kubernetes_up 1.0" in body
        assert "auditor_kubernetes_sync_timestamp_seconds" in body
        assert "auditor_lines_total" not in body  # a watcher reads no log
        assert watcher.get("/readyz")[0] == 200
        puts = [r for r in fake.request_log() if r.method == "PUT"]
        assert {r.path for r in puts} == {f"/api/v1/namespaces/{NAMESPACE}/configmaps/{NAME}"}
    finally:
        code = watcher.stop()
    assert code == 0, watcher.stderr


def test_discover_refuses_a_configmap_that_is_not_its_own(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    """A wrong --configmap must never overwrite someone else's ConfigMap: exit 2, untouched."""
    coredns = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "coredns", "namespace": "kube-system"},
        "data": {"Corefile": ".:53 { forward . /etc/resolv.conf }"},
    }
    fake.apply(coredns)
    before = fake.get("ConfigMap", "coredns", "kube-system")
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    watcher = Discover(tmp_path, kubeconfig, "--namespace", "kube-system", "--configmap", "coredns")
    code = watcher.proc.wait(timeout=30)
    assert code == EXIT_USAGE, watcher.stderr
    assert "ConfigMap kube-system/coredns" in watcher.stderr
    assert "app.kubernetes.io/component=networks" in watcher.stderr
    assert "Traceback" not in watcher.stderr
    assert fake.get("ConfigMap", "coredns", "kube-system") == before
    assert not [r for r in fake.request_log() if r.method == "PUT"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--refresh-interval", "1"], "--refresh-interval"),
        (["--refresh-interval", "nan"], "--refresh-interval"),
        (["--metrics-listen", "nowhere"], "--metrics-listen"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig /nonexistent/kubeconfig"),
        (["--output-file", "/nonexistent/dir/networks.json"], "--output-file"),
    ],
)
def test_usage_errors_name_the_flag(argv: list[str], named: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "auditor"), "discover", "--namespace", "x", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_USAGE
    assert named in result.stderr
    assert "Traceback" not in result.stderr


# -- the watcher in-process: faults and timing ----------------------------------------------------
@pytest.fixture(name="api")
async def _api(fake: FakeKubeApi, tmp_path: Path) -> AsyncIterator[KubeClient]:
    api = await connect(str(fake.write_kubeconfig(tmp_path / "kubeconfig")), environ={})
    try:
        yield api
    finally:
        await api.close()


@contextlib.asynccontextmanager
async def _running(
    api: Any, target: Any, *, refresh_s: float = 300.0
) -> AsyncIterator[tuple[Watcher, Discovery]]:
    options = WatcherOptions(refresh_s=refresh_s, check_s=0.05, retry_initial_s=0.05)
    discovery = Discovery(api, FAST)
    watcher = Watcher(discovery, target, "test", options)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(discovery.run()), asyncio.create_task(watcher.run(stop))]
    try:
        yield watcher, discovery
    finally:
        stop.set()
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until(pred: Callable[[], bool], what: str) -> None:
    await until(pred, what, timeout=WAIT_S, interval=0.02)


async def test_missing_configmap_is_reported_until_it_exists(
    fake: FakeKubeApi, api: KubeClient
) -> None:
    target = ConfigMapTarget(api, NAMESPACE, NAME, KEY)
    async with _running(api, target) as (watcher, _):
        await _until(lambda: watcher.failures > 0, "a failed publication")
        ready, why = watcher.ready()
        assert not ready
        assert "404" in why and "manifests ship an empty ConfigMap" in why
        fake.apply(_shipped_configmap())
        await _until(lambda: _published(fake) is not None, "the publication once it exists")
        await _until(lambda: watcher.ready()[0], "ready")


async def test_forbidden_update_names_the_rbac_it_needs(fake: FakeKubeApi, api: KubeClient) -> None:
    fake.apply(_shipped_configmap())
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{NAME}"
    fake.forbid("PUT", path)
    target = ConfigMapTarget(api, NAMESPACE, NAME, KEY)
    async with _running(api, target) as (watcher, _):
        await _until(lambda: watcher.failures > 1, "failed publications")
        assert "403" in watcher.last_error and "grant get and update" in watcher.last_error
        assert _published(fake) is None
        fake.forbid("PUT", path, allowed=True)
        await _until(lambda: _published(fake) is not None, "the publication once allowed")


class _Racing:
    """The API, with another writer changing the ConfigMap between our read and our write."""

    def __init__(self, api: KubeClient, fake: FakeKubeApi) -> None:
        self._api = api
        self._fake = fake
        self.raced = 0
        self.description = api.description

    async def get(self, path: str) -> dict[str, Any]:
        obj = await self._api.get(path)
        if not self.raced:
            self.raced += 1
            other = copy.deepcopy(obj)
            other["metadata"].setdefault("annotations", {})["touched-by"] = "someone else"
            await asyncio.to_thread(self._fake.apply, other)
        return obj

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._api.replace(path, body)


async def test_a_concurrent_change_is_read_again_not_overwritten(
    fake: FakeKubeApi, api: KubeClient
) -> None:
    fake.apply(_shipped_configmap())
    racing = _Racing(api, fake)
    target = ConfigMapTarget(racing, NAMESPACE, NAME, KEY)  # type: ignore[arg-type]
    async with _running(api, target) as (watcher, _):
        await _until(lambda: _published(fake) is not None, "the publication")
    assert racing.raced == 1
    assert watcher.failures == 0  # the 409 was retried inside one publication
    cm = fake.get("ConfigMap", NAME, NAMESPACE)
    assert cm["metadata"]["annotations"] == {"touched-by": "someone else"}  # kept, not clobbered


async def test_a_stale_write_is_refused_by_the_api(fake: FakeKubeApi, api: KubeClient) -> None:
    """The precondition the retry relies on: a PUT with an old resourceVersion gets 409."""
    fake.apply(_shipped_configmap())
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{NAME}"
    old = await api.get(path)
    fake.apply(_shipped_configmap())  # someone else writes first
    with pytest.raises(KubeApiError) as caught:
        await api.replace(path, {**old, "data": {KEY: "{}"}})
    assert caught.value.conflict


async def test_synced_at_is_refreshed_only_while_in_sync(
    fake: FakeKubeApi, api: KubeClient
) -> None:
    fake.apply(_shipped_configmap())
    target = ConfigMapTarget(api, NAMESPACE, NAME, KEY)
    async with _running(api, target, refresh_s=0.3) as (watcher, discovery):
        await _until(lambda: _published(fake) is not None, "the first publication")
        first = _doc(fake).synced_at
        assert first is not None
        await _until(
            lambda: (_doc(fake).synced_at or 0) > first, "a refresh without a cluster change"
        )
        fake.fail(500)
        fake.drop_watches()
        await _until(lambda: not discovery.status.up, "discovery down")
        frozen = _doc(fake).synced_at  # the API refuses even the ConfigMap now
        await asyncio.sleep(1.0)
        assert _doc(fake).synced_at == frozen
        assert not watcher.ready()[0]
        fake.fail(None)
        await _until(lambda: discovery.status.up, "discovery back")
        await _until(lambda: (_doc(fake).synced_at or 0) > (frozen or 0), "refreshes again")
        await _until(lambda: watcher.ready()[0], "ready again")


async def test_output_file_target(fake: FakeKubeApi, api: KubeClient, tmp_path: Path) -> None:
    out = tmp_path / "out" / "networks.json"
    out.parent.mkdir()
    async with _running(api, FileTarget(str(out))) as (watcher, _):
        await _until(out.exists, "the file")
        await _until(lambda: watcher.writes >= 1, "a write")
    doc = decode(out.read_bytes())
    assert "203.0.113.10/32" in {n.cidr for n in doc.networks}
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in out.parent.iterdir()] == ["networks.json"]  # no temp file left


async def test_a_configmap_with_other_keys_is_not_ours(fake: FakeKubeApi, api: KubeClient) -> None:
    cm = _shipped_configmap()
    cm["data"] = {"config.toml": "discovery = false"}
    fake.apply(cm)
    target = ConfigMapTarget(api, NAMESPACE, NAME, KEY)
    with pytest.raises(NotOurs, match="other keys"):
        await target.write(b"{}")
    assert fake.get("ConfigMap", NAME, NAMESPACE)["data"] == {"config.toml": "discovery = false"}
