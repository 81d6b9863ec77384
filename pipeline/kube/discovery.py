"""List+watch of the few resources the audit needs, with a status and change snapshots.

Used by ``pipeline.kube.attach`` (``auditor run``) and, once, by ``check``/``allowlist``::

    api = await connect(kubeconfig, context)
    disc = Discovery(api, DiscoveryOptions(), on_change=post_new_networks_to_the_engine)
    task = asyncio.create_task(disc.run())   # never raises; cancel it to stop
    ... disc.status.up / disc.status.last_sync -> auditor_kubernetes_up / _sync_timestamp_seconds

Each resource is listed, then watched from the list's resourceVersion; a dropped or timed-out
watch resumes from the last seen version, a 410 Gone (version compacted away) relists. Any
failure keeps the last known objects, marks the status down, counts an error and retries with
jittered exponential backoff. Snapshots are debounced and only published when they change.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.kube import extract
from pipeline.kube.api import KubeApi, KubeApiError
from pipeline.kube.model import (
    ClusterFacts,
    NamespaceInfo,
    NodeInfo,
    PodInfo,
    ServiceInfo,
    WorkloadInfo,
)

log = logging.getLogger("auditor.kube")

_R = TypeVar("_R")
_QUICK_END_S = 1.0  # a watch that ends this fast without events is treated as a failure to hold


@dataclass(frozen=True, slots=True)
class DiscoveryOptions:
    facts: extract.FactOptions = field(default_factory=extract.FactOptions)
    watch_timeout_s: float = 300.0  # server-side timeoutSeconds of each watch
    request_timeout_s: float = 30.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    debounce_s: float = 0.2  # coalesce bursts of events into one snapshot


@dataclass(frozen=True, slots=True)
class DiscoveryStatus:
    up: bool  # every resource listed and its watch healthy
    last_sync: float | None  # epoch seconds of the last successful API exchange while up
    errors: int  # failed API calls since start
    relists: int  # lists after the first (410 Gone, errors)
    last_error: str


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    key: str
    path: str
    convert: Callable[[Mapping[str, Any]], object]
    label_selector: str = ""
    field_selector: str = ""

    def params(self) -> dict[str, str]:
        out = {}
        if self.label_selector:
            out["labelSelector"] = self.label_selector
        if self.field_selector:
            out["fieldSelector"] = self.field_selector
        return out


def _replicaset(obj: Mapping[str, Any]) -> object:
    return extract.workload_from_obj(obj, "ReplicaSet")


def _daemonset(obj: Mapping[str, Any]) -> object:
    return extract.workload_from_obj(obj, "DaemonSet")


def resource_specs(opts: extract.FactOptions) -> tuple[ResourceSpec, ...]:
    """What is read (RBAC: get/list/watch on these): label-selected where possible."""
    ns = opts.servicelb_namespace
    return (
        ResourceSpec("nodes", "/api/v1/nodes", extract.node_from_obj),
        ResourceSpec("services", "/api/v1/services", extract.service_from_obj),
        ResourceSpec(
            "namespaces",
            "/api/v1/namespaces",
            extract.namespace_from_obj,
            field_selector=f"metadata.name={opts.metallb_namespace}",
        ),
        ResourceSpec("traefik_pods", "/api/v1/pods", extract.pod_from_obj, opts.traefik_selector),
        ResourceSpec(
            "traefik_replicasets", "/apis/apps/v1/replicasets", _replicaset, opts.traefik_selector
        ),
        ResourceSpec(
            "servicelb_daemonsets", f"/apis/apps/v1/namespaces/{ns}/daemonsets", _daemonset
        ),
        ResourceSpec(
            "servicelb_pods",
            f"/api/v1/namespaces/{ns}/pods",
            extract.pod_from_obj,
            extract.SVCLB_SVCNAME,
        ),
        ResourceSpec("metallb_pods", "/api/v1/pods", extract.pod_from_obj, opts.metallb_selector),
    )


class _Gone(Exception):
    """The watch's resourceVersion is too old: relist."""


@dataclass(slots=True)
class _Resource:
    spec: ResourceSpec
    store: dict[str, object] = field(default_factory=dict)
    rv: str | None = None
    healthy: bool = False
    attempted: bool = False
    lists: int = 0


OnChange = Callable[[ClusterFacts], object]


class Discovery:
    """See module docstring."""

    def __init__(
        self,
        api: KubeApi,
        options: DiscoveryOptions | None = None,
        *,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._opts = options or DiscoveryOptions()
        self._on_change = on_change
        self._clock = clock
        self._res = {s.key: _Resource(s) for s in resource_specs(self._opts.facts)}
        self._facts: ClusterFacts | None = None
        self._version = 0
        self._cond = asyncio.Condition()
        self._dirty = asyncio.Event()
        self._ready = asyncio.Event()
        self._errors = 0
        self._relists = 0
        self._last_sync: float | None = None
        self._last_error = ""

    # -- public state -------------------------------------------------------------------------
    @property
    def facts(self) -> ClusterFacts | None:
        return self._facts

    @property
    def status(self) -> DiscoveryStatus:
        return DiscoveryStatus(
            up=all(r.healthy for r in self._res.values()),
            last_sync=self._last_sync,
            errors=self._errors,
            relists=self._relists,
            last_error=self._last_error,
        )

    async def snapshots(self) -> AsyncIterator[ClusterFacts]:
        """The current snapshot (once there is one), then each new one; slow readers skip."""
        seen = 0
        while True:
            async with self._cond:
                await self._cond.wait_for(functools.partial(self._newer_than, seen))
                seen = self._version
                facts = self._facts
            if facts is not None:
                yield facts

    def _newer_than(self, version: int) -> bool:
        return self._version > version

    # -- one-shot ------------------------------------------------------------------------------
    async def sync_once(self) -> ClusterFacts:
        """List everything once (``auditor check``); raises ``KubeApiError`` naming the resource."""

        async def one(r: _Resource) -> None:
            try:
                await self._list(r)
            except KubeApiError as exc:
                msg = f"cannot list {r.spec.key.replace('_', ' ')} ({r.spec.path}): {exc}"
                raise KubeApiError(exc.status, msg) from None

        try:
            async with asyncio.TaskGroup() as tg:  # the first failure cancels the rest
                for r in self._res.values():
                    tg.create_task(one(r))
        except* KubeApiError as group:
            raise group.exceptions[0] from None
        await self._publish()
        assert self._facts is not None
        return self._facts

    # -- long-running --------------------------------------------------------------------------
    async def run(self) -> None:
        """List and watch until cancelled. Never raises anything but ``CancelledError``."""
        async with asyncio.TaskGroup() as tg:
            for r in self._res.values():
                tg.create_task(self._run_resource(r), name=f"kube-watch-{r.spec.key}")
            tg.create_task(self._publisher(), name="kube-publisher")

    async def _publisher(self) -> None:
        await self._ready.wait()
        while True:
            await self._publish()
            await self._dirty.wait()
            await asyncio.sleep(self._opts.debounce_s)
            self._dirty.clear()

    async def _publish(self) -> None:
        try:
            facts = self._build()
        except Exception as exc:  # noqa: BLE001 - a bad object must not stop discovery
            self._fail_note(f"building facts failed: {exc!r}")
            return
        if facts == self._facts:
            return
        self._facts = facts
        if self._on_change is not None:
            try:
                result = self._on_change(facts)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # the consumer's bug must not stop discovery
                log.exception("kubernetes discovery: on_change callback failed")
        async with self._cond:
            self._version += 1
            self._cond.notify_all()

    def _records(self, key: str, kind: type[_R]) -> list[_R]:
        return [v for v in self._res[key].store.values() if isinstance(v, kind)]

    def _build(self) -> ClusterFacts:
        return extract.build_facts(
            nodes=self._records("nodes", NodeInfo),
            services=self._records("services", ServiceInfo),
            namespaces=self._records("namespaces", NamespaceInfo),
            traefik_pods=self._records("traefik_pods", PodInfo),
            traefik_replicasets=self._records("traefik_replicasets", WorkloadInfo),
            servicelb_daemonsets=self._records("servicelb_daemonsets", WorkloadInfo),
            servicelb_pods=self._records("servicelb_pods", PodInfo),
            metallb_pods=self._records("metallb_pods", PodInfo),
            options=self._opts.facts,
        )

    # -- per resource --------------------------------------------------------------------------
    async def _list(self, r: _Resource) -> None:
        items, rv = await self._api.list(r.spec.path, r.spec.params())
        store = {extract.object_key(o): r.spec.convert(o) for o in items}
        if store != r.store:
            r.store = store
            self._dirty.set()
        r.rv = rv
        r.lists += 1
        if r.lists > 1:
            self._relists += 1
        self._ok(r)

    async def _run_resource(self, r: _Resource) -> None:
        opts = self._opts
        backoff = opts.backoff_initial_s
        loop = asyncio.get_running_loop()
        while True:
            try:
                if r.rv is None:
                    await self._list(r)
                    self._attempted(r)
                started = loop.time()
                events = 0
                async with self._api.watch(
                    r.spec.path, r.spec.params(), r.rv or "", opts.watch_timeout_s
                ) as stream:
                    self._ok(r)
                    async for event in stream:
                        events += 1
                        self._apply(r, event)
                        self._ok(r)
                backoff = opts.backoff_initial_s if events else backoff
                if not events and loop.time() - started < _QUICK_END_S:
                    # Ended at once without a word: do not spin on a flapping endpoint.
                    await asyncio.sleep(self._jitter(backoff))
                    backoff = min(backoff * 2, opts.backoff_max_s)
            except _Gone:
                log.info("kubernetes discovery: %s watch expired (410 Gone), relisting", r.spec.key)
                r.rv = None
            except KubeApiError as exc:
                if exc.gone and r.rv is not None:  # HTTP 410 on the watch request itself
                    r.rv = None
                    continue
                self._failed(r, str(exc))
                await asyncio.sleep(self._jitter(backoff))
                backoff = min(backoff * 2, opts.backoff_max_s)
            except Exception as exc:  # noqa: BLE001 - discovery must never take the auditor down
                self._failed(r, repr(exc))
                await asyncio.sleep(self._jitter(backoff))
                backoff = min(backoff * 2, opts.backoff_max_s)

    def _apply(self, r: _Resource, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            msg = f"{r.spec.key}: watch event without an object"
            raise KubeApiError(0, msg)
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone
            raise KubeApiError(code if isinstance(code, int) else 0, str(obj.get("message", "")))
        rv = extract.resource_version(obj)
        if kind == "BOOKMARK":
            r.rv = rv or r.rv
            return
        key = extract.object_key(obj)
        if kind in {"ADDED", "MODIFIED"}:
            record = r.spec.convert(obj)
            if r.store.get(key) != record:
                r.store[key] = record
                self._dirty.set()
        elif kind == "DELETED" and r.store.pop(key, None) is not None:
            self._dirty.set()
        r.rv = rv or r.rv

    # -- health bookkeeping --------------------------------------------------------------------
    def _ok(self, r: _Resource) -> None:
        if not r.healthy and r.attempted:
            log.info("kubernetes discovery: %s recovered", r.spec.key)
        r.healthy = True
        self._attempted(r)
        if all(x.healthy for x in self._res.values()):
            self._last_sync = self._clock()

    def _attempted(self, r: _Resource) -> None:
        r.attempted = True
        if not self._ready.is_set() and all(x.attempted for x in self._res.values()):
            self._ready.set()

    def _failed(self, r: _Resource, error: str) -> None:
        self._errors += 1
        self._last_error = f"{r.spec.key}: {error}"
        if r.healthy or not r.attempted:
            hint = " (RBAC: grant get/list/watch)" if "403" in error else ""
            log.warning(
                "kubernetes discovery: %s failed, keeping the last known state: %s%s",
                r.spec.key,
                error,
                hint,
            )
        r.healthy = False
        self._attempted(r)

    def _fail_note(self, error: str) -> None:
        self._errors += 1
        self._last_error = error
        log.warning("kubernetes discovery: %s", error)

    @staticmethod
    def _jitter(delay: float) -> float:
        return delay * (0.5 + random.random() / 2)


async def discover_once(
    kubeconfig: str | None, context: str | None, traefik_selector: str
) -> tuple[ClusterFacts, str]:
    """One list of the cluster for the one-shot commands (check, allowlist).

    Returns the facts and a description of the API server; an unreachable or refusing API
    becomes a ``UsageError`` naming it (exit 2).
    """
    from pipeline.errors import UsageError
    from pipeline.kube.client import connect

    api = await connect(kubeconfig, context)
    try:
        disc = Discovery(
            api, DiscoveryOptions(facts=extract.FactOptions(traefik_selector=traefik_selector))
        )
        return await disc.sync_once(), api.description
    except KubeApiError as exc:
        msg = f"{api.description}: {exc}"
        raise UsageError(msg) from None
    finally:
        await api.close()
