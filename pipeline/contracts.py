"""What plugs into the live commands, and what they may touch in return.

A plugin (CrowdSec health and remediation, GeoIP, Kafka publishing, Kubernetes discovery) is a
function of the config and a small ``PluginContext`` that returns a ``Plugin`` record: the sinks,
services and publisher it adds. It never sees the runner. What a service later changes goes
through ``Post``: a callable the runner's single consumer runs between batches with a
``LiveState`` (the engine and the metrics), which keeps the engine single-threaded and ordered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pipeline.core.findings import EventSink

if TYPE_CHECKING:
    from pipeline.core.addresses import ClassifierView
    from pipeline.core.engine import Engine
    from pipeline.sources.tail import TailBatch
    from sinks.prometheus import Metrics

__all__ = [
    "EventSink",
    "LiveState",
    "Plugin",
    "PluginContext",
    "Post",
    "Publisher",
    "Service",
    "SyncStatus",
]


class LiveState(Protocol):
    """What a posted callable may use: the engine (through its inputs) and the metrics."""

    @property
    def engine(self) -> Engine: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def lapi_configured(self) -> bool: ...


Post = Callable[[Callable[[LiveState], None]], Awaitable[None]]


class Service(Protocol):
    """A background task (CrowdSec health poller, Kubernetes discovery, Kafka topic check...).

    It never touches the engine directly: it posts callables that the single consumer runs
    between batches.
    """

    async def run(self, stop: asyncio.Event, post: Post) -> None: ...


class Publisher(Protocol):
    """Sends a batch elsewhere (Kafka) and returns once it is durably acknowledged."""

    async def publish(self, batch: TailBatch) -> None: ...

    async def aclose(self) -> None: ...


class SyncStatus(Protocol):
    """A plugin's view of an outside source it keeps in sync (Kubernetes discovery)."""

    @property
    def up(self) -> bool: ...

    @property
    def last_sync(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class PluginContext:
    """The little a plugin may know of the live command it joins."""

    classifier: ClassifierView
    metrics: Metrics
    stop: asyncio.Event
    clock: Callable[[], float]
    source_kind: str  # "file" or "container": the metrics label of the access-log source


@dataclass(frozen=True, slots=True)
class Plugin:
    """What one optional part adds to ``auditor run``.

    ``wrap_sink`` decorates every event sink of the run, including those of plugins attached
    after this one (GeoIP enrichment); ``audit_locally=False`` means batches are only
    published (a Kafka sidecar whose aggregators do the audit).
    """

    sinks: tuple[EventSink, ...] = ()
    services: tuple[Service, ...] = ()
    publisher: Publisher | None = None
    audit_locally: bool = True
    kube_status: SyncStatus | None = None
    wrap_sink: Callable[[EventSink], EventSink] | None = None
    closers: tuple[Callable[[], None], ...] = ()
