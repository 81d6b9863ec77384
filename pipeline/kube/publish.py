"""``auditor discover``: one watcher per cluster publishes the networks file for everyone else.

The watcher is the only process that talks to the Kubernetes API. It runs ``Discovery`` (list +
watch), and whenever the cluster view changes it writes the networks file
(``pipeline.core.networks_file``: the discovered networks with their provenance and the config
findings) to its target, normally one ConfigMap that the sidecars and node agents mount. While
discovery is in sync it rewrites the file every ``refresh_s`` seconds even without a change, so
``synced_at`` stays fresh and a reader can tell a quiet cluster from a dead watcher.

Writing a ConfigMap acts on exactly what was read: the watcher GETs it, refuses one that is not
marked as the auditor's networks ConfigMap (labels below) or that holds other keys, and PUTs it
back with the resourceVersion it read, so a concurrent change makes the API refuse the write
(409) instead of being overwritten; it then reads again and retries. It never creates the
ConfigMap: the manifests ship it empty, and RBAC grants only get/update on that one name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.core.networks_file import NetworksFileError, encode
from pipeline.errors import UsageError
from pipeline.kube.api import KubeApi, KubeApiError
from pipeline.kube.checks import check_cluster
from pipeline.kube.discovery import Discovery
from pipeline.kube.model import ClusterFacts
from pipeline.kube.networks import cluster_networks

log = logging.getLogger("auditor.discover")

# The labels that mark a ConfigMap as the auditor's networks file (deploy/kustomize/base).
OWNED_LABELS = {"app.kubernetes.io/name": "ban-auditor", "app.kubernetes.io/component": "networks"}
CHECK_S = 10.0  # how often the loop looks at discovery's status between changes
_CONFLICT_RETRIES = 3


class NotOurs(UsageError):
    """The target exists but is not the auditor's to write: a wrong name, never overwrite it."""


class Target(Protocol):
    """Where the networks file goes."""

    description: str

    async def write(self, data: bytes) -> bool:
        """Store ``data``; False when the target already held exactly that."""
        ...


class ConfigMapTarget:
    """One key of one ConfigMap (see module docstring for what is checked before a write)."""

    def __init__(self, api: KubeApi, namespace: str, name: str, key: str) -> None:
        self._api = api
        self._path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
        self._key = key
        self.description = f"ConfigMap {namespace}/{name} key {key}"

    def _verify(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata")
        labels = meta.get("labels") if isinstance(meta, dict) else None
        labels = labels if isinstance(labels, dict) else {}
        missing = [f"{k}={v}" for k, v in OWNED_LABELS.items() if labels.get(k) != v]
        if missing:
            msg = (
                f"{self.description}: refusing to write it: it lacks the label(s) "
                f"{', '.join(missing)} that mark the auditor's networks ConfigMap "
                "(wrong --configmap? the manifests ship it as ban-auditor-networks)"
            )
            raise NotOurs(msg)
        data = obj.get("data") or {}
        others = sorted(k for k in data if k != self._key) if isinstance(data, dict) else ["?"]
        if others or obj.get("binaryData"):
            msg = (
                f"{self.description}: refusing to write it: it holds other keys "
                f"({', '.join(others) or 'binaryData'}), so it is not the networks ConfigMap alone"
            )
            raise NotOurs(msg)
        assert isinstance(meta, dict)
        return meta

    async def write(self, data: bytes) -> bool:
        text = data.decode()
        for attempt in range(1, _CONFLICT_RETRIES + 1):
            obj = await self._api.get(self._path)
            meta = self._verify(obj)
            current = (obj.get("data") or {}).get(self._key)
            if current == text:
                return False
            # Back as read (uid, resourceVersion, labels...); the API keeps managedFields.
            metadata = {k: v for k, v in meta.items() if k != "managedFields"}
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
            body["data"] = {self._key: text}
            try:
                await self._api.replace(self._path, body)
            except KubeApiError as exc:
                if exc.conflict and attempt < _CONFLICT_RETRIES:
                    log.info("%s changed while writing it; reading it again", self.description)
                    continue
                raise
            return True
        return False  # not reached: the last attempt returns or raises


class FileTarget:
    """A plain file, replaced atomically (``--output-file``: tests, setups without Kubernetes
    volumes)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self.description = f"file {path}"

    async def write(self, data: bytes) -> bool:
        with contextlib.suppress(OSError):
            if self._path.read_bytes() == data:
                return False
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=self._path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)  # what a ConfigMap volume gives readers
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True


@dataclass(frozen=True, slots=True)
class WatcherOptions:
    refresh_s: float  # rewrite this often while in sync, even without a change
    check_s: float = CHECK_S
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0


class Watcher:
    """Publishes ``discovery``'s view to ``target`` until ``stop`` (see module docstring)."""

    def __init__(
        self,
        discovery: Discovery,
        target: Target,
        source: str,
        options: WatcherOptions,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.discovery = discovery
        self.target = target
        self.source = source
        self.options = options
        self._clock = clock
        self.changed = asyncio.Event()
        self.writes = 0
        self.failures = 0
        self.last_error = ""
        self.last_written: float | None = None  # when the target last took the file
        self._view: bytes | None = None  # what was last published, without its time stamp
        self._facts: ClusterFacts | None = None  # the snapshot it was made from
        self._failing = False

    def ready(self) -> tuple[bool, str]:
        if self.last_written is None:
            return False, self.last_error or "nothing published yet"
        if self._failing:
            return False, f"cannot publish: {self.last_error}"
        if not self.discovery.status.up:
            return False, f"kubernetes discovery down: {self.discovery.status.last_error}"
        return True, "ready"

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop``; ``NotOurs`` (a target that is not ours) ends it."""
        follow = asyncio.create_task(self._follow(), name="networks-follow")
        try:
            await self._publish_loop(stop)
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow

    async def _follow(self) -> None:
        """Wake the loop on every new cluster snapshot."""
        async for _ in self.discovery.snapshots():
            self.changed.set()

    async def _publish_loop(self, stop: asyncio.Event) -> None:
        retry = self.options.retry_initial_s
        wait = 0.0  # publish at once when discovery has a first view
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, self.changed), wait)
            if stop.is_set():
                return
            self.changed.clear()
            try:
                await self.publish_if_due()
            except (KubeApiError, OSError, NetworksFileError) as exc:
                self._failed(exc)
                wait, retry = retry, min(retry * 2, self.options.retry_max_s)
                continue
            wait, retry = self.options.check_s, self.options.retry_initial_s

    async def publish_if_due(self) -> bool:
        """Write the current view when it changed, a write failed, or the refresh is due."""
        facts = self.discovery.facts
        if facts is None:
            return False  # not listed yet
        status = self.discovery.status
        now = self._clock()
        stale = self.last_written is None or now - self.last_written >= self.options.refresh_s
        if facts is self._facts and not self._failing and not (status.up and stale):
            return False  # the same snapshot (discovery makes a new one on every change)
        networks = cluster_networks(facts)
        findings = check_cluster(facts)
        view = encode(synced_at=None, source=self.source, networks=networks, findings=findings)
        if view == self._view and not self._failing and not (status.up and stale):
            self._facts = facts  # a change that does not change the file
            return False
        synced = now if status.up else status.last_sync
        data = encode(synced_at=synced, source=self.source, networks=networks, findings=findings)
        changed = view != self._view
        await self.target.write(data)
        self.writes += 1
        self.last_written = now
        self._view = view
        self._facts = facts
        if self._failing:
            log.info("publishing to %s works again", self.target.description)
        self._failing = False
        self.last_error = ""
        if changed:
            log.info(
                "published %d networks and %d config findings to %s%s",
                len(networks),
                len(findings),
                self.target.description,
                "" if status.up else " (discovery not in sync: synced_at left as it was)",
            )
        return True

    def _failed(self, exc: Exception) -> None:
        why = str(exc)
        if isinstance(exc, KubeApiError):
            if exc.status == 404:
                why += " (create it: the manifests ship an empty ConfigMap of that name)"
            elif exc.status == 403:
                why += " (RBAC: grant get and update on this ConfigMap, by resourceNames)"
        self.failures += 1
        if not self._failing or why != self.last_error:
            log.warning("cannot publish to %s: %s; retrying", self.target.description, why)
        self._failing = True
        self.last_error = why


async def _first(stop: asyncio.Event, changed: asyncio.Event) -> None:
    """Return when either event is set."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
