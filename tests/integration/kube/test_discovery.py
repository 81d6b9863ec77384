"""Discovery against a fake API server: list, watch, live updates, 410 relist, drops, outages."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.addresses import AddrClass
from pipeline.errors import UsageError
from pipeline.kube.api import KubeApiError
from pipeline.kube.checks import check_cluster
from pipeline.kube.client import KubeClient, connect
from pipeline.kube.discovery import Discovery, DiscoveryOptions
from pipeline.kube.model import ClusterFacts
from pipeline.kube.networks import cluster_networks
from tests.support.kube_api import FakeKubeApi
from tests.support.kube_facts import facts_from_files
from tests.support.paths import ROOT
from tests.support.waiting import until as _wait

FAST = DiscoveryOptions(
    watch_timeout_s=30,
    request_timeout_s=5,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    debounce_s=0.02,
)
WAIT_S = 15.0


@pytest.fixture(name="fake")
def _fake() -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(name="kubeconfig")
def _kubeconfig(fake: FakeKubeApi, tmp_path: Path) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture(name="api")
async def _api(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    api = await connect(str(kubeconfig), environ={})
    try:
        yield api
    finally:
        await api.close()


class Running:
    """A discovery task plus every snapshot it published, for the duration of a test."""

    def __init__(self, disc: Discovery) -> None:
        self.disc = disc
        self.seen: list[ClusterFacts] = []
        self.task: asyncio.Task[None] | None = None

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        await _wait(predicate, what, timeout=WAIT_S, interval=0.01)

    async def snapshot(self, predicate: Callable[[ClusterFacts], bool], what: str) -> ClusterFacts:
        await self.until(lambda: self.disc.facts is not None and predicate(self.disc.facts), what)
        assert self.disc.facts is not None
        return self.disc.facts


@pytest.fixture(name="running")
async def _running(api: KubeClient) -> AsyncIterator[Callable[[], Any]]:
    runs: list[Running] = []

    async def start() -> Running:
        run: Running | None = None

        def on_change(facts: ClusterFacts) -> None:
            assert run is not None
            run.seen.append(facts)

        run = Running(Discovery(api, FAST, on_change=on_change))
        run.task = asyncio.create_task(run.disc.run())
        runs.append(run)
        return run

    yield start
    for r in runs:
        assert r.task is not None
        r.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await r.task


def _lists(fake: FakeKubeApi, path: str) -> int:
    return sum(1 for r in fake.request_log() if r.path == path and not r.watch)


def _new_node(fake: FakeKubeApi, name: str, cidr: str, external: str) -> dict[str, Any]:
    node = fake.get("Node", "k3s-a")
    node["metadata"] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    node["spec"] = {"podCIDR": cidr, "podCIDRs": [cidr], "providerID": f"k3s://{name}"}
    node["status"]["addresses"] = [
        {"address": "192.168.10.13", "type": "InternalIP"},
        {"address": external, "type": "ExternalIP"},
        {"address": name, "type": "Hostname"},
    ]
    return node


# -- one-shot -------------------------------------------------------------------------------------
async def test_sync_once_matches_the_fixture_reduction(fake: FakeKubeApi, api: KubeClient) -> None:
    for cluster in ("k3s-servicelb", "k3s-metallb"):
        for res in fake.objects.values():
            res.clear()
        fake.load_cluster(cluster)
        disc = Discovery(api, FAST)
        facts = await disc.sync_once()
        assert facts == facts_from_files(cluster)
        assert disc.status.up and disc.status.errors == 0 and disc.status.last_sync is not None
    # Only the objects discovery needs were asked for, by label where possible.
    queries = {(r.path, r.query.get("labelSelector", "")) for r in fake.request_log()}
    assert ("/api/v1/pods", "app.kubernetes.io/name=traefik") in queries
    assert ("/api/v1/namespaces/kube-system/pods", "svccontroller.k3s.cattle.io/svcname") in queries
    assert ("/apis/apps/v1/namespaces/kube-system/daemonsets", "") in queries
    assert ("/api/v1/pods", "") not in queries


async def test_sync_once_error_names_the_resource(fake: FakeKubeApi, api: KubeClient) -> None:
    fake.load_cluster("k3s-servicelb")
    fake.fail(500)
    with pytest.raises(KubeApiError) as err:
        await Discovery(api, FAST).sync_once()
    assert err.value.status == 500
    assert "cannot list" in str(err.value) and "injected failure" in str(err.value)


async def test_wrong_token_is_401(fake: FakeKubeApi, tmp_path: Path) -> None:
    fake.load_cluster("k3s-servicelb")
    kc = fake.write_kubeconfig(tmp_path / "kc", token="wrong")
    api = await connect(str(kc), environ={})
    try:
        with pytest.raises(KubeApiError) as err:
            await Discovery(api, FAST).sync_once()
    finally:
        await api.close()
    assert err.value.status == 401


# -- config loading -------------------------------------------------------------------------------
async def test_config_errors_name_the_file_or_flag(kubeconfig: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--kubeconfig .*missing: no such file"):
        await connect(str(tmp_path / "missing"), environ={})
    with pytest.raises(UsageError, match=r"KUBECONFIG=.*nope: no such file"):
        await connect(environ={"KUBECONFIG": str(tmp_path / "nope")})
    with pytest.raises(UsageError, match=r"--context other in kubeconfig"):
        await connect(str(kubeconfig), "other", environ={})
    bad = tmp_path / "bad"
    bad.write_text("clusters: [}")
    with pytest.raises(UsageError, match=r"kubeconfig .*bad"):
        await connect(str(bad), environ={})


async def test_kubeconfig_env_and_context(fake: FakeKubeApi, kubeconfig: Path) -> None:
    api = await connect(environ={"KUBECONFIG": str(kubeconfig)})
    try:
        assert str(kubeconfig) in api.description and fake.url in api.description
    finally:
        await api.close()
    api = await connect(str(kubeconfig), "fake", environ={})
    try:
        assert "context fake" in api.description
    finally:
        await api.close()


# -- watch ----------------------------------------------------------------------------------------
async def test_live_update_when_a_node_is_added(fake: FakeKubeApi, running: Any) -> None:
    fake.load_cluster("k3s-metallb")
    run = await running()
    first = await run.snapshot(lambda f: len(f.nodes) == 2, "initial sync")
    assert check_cluster(first) == []
    assert run.disc.status.up
    fake.apply(_new_node(fake, "k3s-c", "10.42.2.0/24", "198.51.100.13"))
    facts = await run.snapshot(lambda f: len(f.nodes) == 3, "node k3s-c seen")
    nets = {(n.cidr, n.cls): n.provenance for n in cluster_networks(facts)}
    assert nets[("10.42.2.0/24", AddrClass.POD)] == "node k3s-c spec.podCIDRs"
    assert nets[("198.51.100.13/32", AddrClass.NODE)] == "node k3s-c status.addresses ExternalIP"
    # No Traefik pod there yet: the audit notices.
    assert [(f.check, f.target) for f in check_cluster(facts)] == [
        ("node_without_traefik", "k3s-c")
    ]
    assert run.seen[-1] == facts and len(run.seen) == 2
    fake.delete("Node", "k3s-c")
    await run.snapshot(lambda f: len(f.nodes) == 2, "node k3s-c gone")


async def test_live_update_when_the_service_policy_changes(fake: FakeKubeApi, running: Any) -> None:
    fake.load_cluster("k3s-metallb")
    run = await running()
    await run.snapshot(lambda f: bool(f.traefik.services), "initial sync")
    svc = fake.get("Service", "traefik", "kube-system")
    svc["spec"]["externalTrafficPolicy"] = "Cluster"
    fake.apply(svc)
    facts = await run.snapshot(lambda f: f.traefik.services[0].etp == "Cluster", "ETP change")
    assert [f.check for f in check_cluster(facts)] == ["etp_cluster"]


async def test_snapshots_iterator_yields_changes(fake: FakeKubeApi, api: KubeClient) -> None:
    fake.load_cluster("k3s-metallb")
    disc = Discovery(api, FAST)
    task = asyncio.create_task(disc.run())
    try:
        async with asyncio.timeout(WAIT_S):
            it = disc.snapshots()
            first = await anext(it)
            assert len(first.nodes) == 2
            # An object change that touches no kept field publishes nothing.
            pod = fake.get("Pod", "traefik-8rj4n", "kube-system")
            pod["metadata"]["annotations"] = {"touched": "yes"}
            fake.apply(pod)
            fake.apply(_new_node(fake, "k3s-c", "10.42.2.0/24", "198.51.100.13"))
            second = await anext(it)
            assert len(second.nodes) == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_relist_on_410_gone_event(fake: FakeKubeApi, running: Any) -> None:
    fake.load_cluster("k3s-metallb")
    run = await running()
    await run.snapshot(lambda f: len(f.nodes) == 2, "initial sync")
    await run.until(lambda: fake.open_watches() == 8, "all watched")
    lists_before = _lists(fake, "/api/v1/nodes")
    assert fake.expire_watches() == 8
    fake.apply(_new_node(fake, "k3s-c", "10.42.2.0/24", "198.51.100.13"))
    await run.snapshot(lambda f: len(f.nodes) == 3, "change after the relist")
    await run.until(lambda: run.disc.status.relists == 8, "every resource relisted")
    assert _lists(fake, "/api/v1/nodes") == lists_before + 1
    assert run.disc.status.errors == 0 and run.disc.status.up


async def test_relist_on_http_410(fake: FakeKubeApi, running: Any) -> None:
    fake.load_cluster("k3s-metallb")
    run = await running()
    await run.snapshot(lambda f: len(f.nodes) == 2, "initial sync")
    await run.until(lambda: fake.open_watches("nodes") == 1, "nodes watched")
    fake.gone_as_http = True
    fake.compact()
    lists_before = _lists(fake, "/api/v1/nodes")
    fake.drop_watches()
    await run.until(lambda: _lists(fake, "/api/v1/nodes") > lists_before, "relisted")
    fake.apply(_new_node(fake, "k3s-c", "10.42.2.0/24", "198.51.100.13"))
    await run.snapshot(lambda f: len(f.nodes) == 3, "change after the relist")
    assert run.disc.status.up


async def test_recovery_after_a_dropped_watch(fake: FakeKubeApi, running: Any) -> None:
    fake.load_cluster("k3s-servicelb")
    run = await running()
    await run.snapshot(lambda f: len(f.nodes) == 3, "initial sync")
    await run.until(lambda: fake.open_watches() == 8, "all watched")
    lists_before = len([r for r in fake.request_log() if not r.watch])
    assert fake.drop_watches() == 8
    # Changed while nobody watched: the resumed watch replays it from its resourceVersion.
    svc = fake.get("Service", "traefik", "kube-system")
    svc["spec"]["externalTrafficPolicy"] = "Local"
    fake.apply(svc)
    facts = await run.snapshot(lambda f: f.services[0].etp == "Local", "missed change replayed")
    assert "etp_cluster" not in {f.check for f in check_cluster(facts)}
    await run.until(lambda: fake.open_watches() == 8, "all watched again")
    assert len([r for r in fake.request_log() if not r.watch]) == lists_before  # no relist
    status = run.disc.status
    assert status.up and status.errors == 0 and status.relists == 0


async def test_degraded_on_500_keeps_last_known_facts(fake: FakeKubeApi, running: Any) -> None:
    fake.load_cluster("k3s-servicelb")
    run = await running()
    known = await run.snapshot(lambda f: len(f.nodes) == 3, "initial sync")
    await run.until(lambda: fake.open_watches() == 8, "all watched")
    synced = run.disc.status.last_sync
    fake.fail(500)
    fake.drop_watches()
    await run.until(lambda: not run.disc.status.up and run.disc.status.errors >= 3, "down")
    status = run.disc.status
    assert "injected failure" in status.last_error
    assert run.disc.facts == known  # last known state kept
    assert status.last_sync == synced  # not advanced while down
    fake.fail(None)
    await run.until(lambda: run.disc.status.up, "recovered")
    assert run.disc.status.last_sync is not None and run.disc.status.last_sync >= (synced or 0)
    node = fake.get("Node", "k3s-agent-2")
    node["status"]["addresses"].append({"address": "203.0.113.12", "type": "ExternalIP"})
    fake.apply(node)
    await run.snapshot(lambda f: f.nodes[1].external_ips == ("203.0.113.12",), "update after")


async def test_api_down_from_the_start(fake: FakeKubeApi, running: Any) -> None:
    fake.load_cluster("k3s-metallb")
    fake.fail(503)
    run = await running()
    await run.until(lambda: run.disc.status.errors >= 8, "every resource failed once")
    assert not run.disc.status.up and run.disc.status.last_sync is None
    fake.fail(None)
    await run.until(lambda: run.disc.status.up, "recovered")
    facts = await run.snapshot(lambda f: f == facts_from_files("k3s-metallb"), "full state")
    assert facts.traefik.pods and facts.metallb.present


async def test_failing_callback_does_not_stop_discovery(fake: FakeKubeApi, api: KubeClient) -> None:
    fake.load_cluster("k3s-metallb")
    calls: list[int] = []

    def broken(facts: ClusterFacts) -> None:
        calls.append(len(facts.nodes))
        raise RuntimeError("consumer bug")

    disc = Discovery(api, FAST, on_change=broken)
    task = asyncio.create_task(disc.run())
    try:
        async with asyncio.timeout(WAIT_S):
            while not calls:
                await asyncio.sleep(0.01)
            fake.apply(_new_node(fake, "k3s-c", "10.42.2.0/24", "198.51.100.13"))
            while len(calls) < 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls == [2, 3]


async def test_garbage_objects_do_not_break_the_watch(fake: FakeKubeApi, running: Any) -> None:
    fake.load_cluster("k3s-metallb")
    run = await running()
    await run.snapshot(lambda f: len(f.nodes) == 2, "initial sync")
    weird = copy.deepcopy(fake.get("Node", "k3s-b"))
    weird["metadata"]["name"] = "weird"
    weird["spec"] = {"podCIDRs": ["garbage"]}
    weird["status"] = {"addresses": [{"type": "InternalIP", "address": "not-an-ip"}]}
    fake.apply(weird)
    facts = await run.snapshot(lambda f: len(f.nodes) == 3, "weird node kept as a name")
    assert facts.nodes[2].name == "weird" and facts.nodes[2].addresses == ()
    assert run.disc.status.up and run.disc.status.errors == 0


# -- footprint ------------------------------------------------------------------------------------
def test_cli_modules_do_not_import_kubernetes() -> None:
    code = (
        "import sys, pipeline.cli.check, pipeline.cli.allowlist, pipeline.kube.discovery, "
        "pipeline.kube.checks, pipeline.kube.networks\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in {'kubernetes_asyncio', 'aiohttp'})\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
