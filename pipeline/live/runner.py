"""The live sidecar behind ``auditor run``: follows access logs and CrowdSec decisions, keeps
metrics and findings current.

Wiring: producers (file tailer, LAPI stream, ticker) put items on one bounded queue; a single
consumer drives the engine and the sinks synchronously, so a slow sink stops the queue from
draining and the tailer stops reading (backpressure without unbounded buffers). A stop signal
reaches producers only; the consumer drains what is queued, checkpoints are written, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from parsers.crowdsec import DecisionDelta
from parsers.envelope import Envelope
from pipeline.config import RunConfig, listen_address
from pipeline.core.addresses import Classifier
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.feed import SourceAuditor
from pipeline.core.findings import FindingEvent
from pipeline.core.networks import build_networks
from pipeline.core.traffic import Timeline
from pipeline.errors import FatalSourceError, UsageError
from pipeline.live.plugins import attach_all
from pipeline.secrets import load_secret
from pipeline.sources.tail import FileTailer, TailBatch, TailConfig
from sinks.http import MetricsServer
from sinks.jsonl import JsonlFindings
from sinks.prometheus import Metrics, SourceHealth

if TYPE_CHECKING:
    from pipeline.crowdsec.lapi import LapiStream

log = logging.getLogger("auditor.run")

QUEUE_ITEMS = 8
TICK_S = 1.0
CHECKPOINT_EVERY_S = 5.0
MAX_FUTURE_S = 300.0  # live data stamped further ahead of the clock is clamped


@dataclass(frozen=True, slots=True)
class _Tick:
    at: float


_DONE = object()

Post = Callable[[Callable[["Runner"], None]], Awaitable[None]]


class EventSink(Protocol):
    """Receives finding state changes (JSONL file, Kafka findings topic, remediation...)."""

    def emit(self, events: Sequence[FindingEvent]) -> None: ...

    async def aclose(self) -> None: ...


class Service(Protocol):
    """A background producer (CrowdSec health poller, Kubernetes discovery...).

    It never touches the engine directly: it posts callables that the single consumer runs
    between batches, which keeps the engine single-threaded and ordered.
    """

    async def run(self, stop: asyncio.Event, post: Post) -> None: ...


class Publisher(Protocol):
    """Sends a batch elsewhere (Kafka) and returns once it is durably acknowledged."""

    async def publish(self, batch: TailBatch) -> None: ...

    async def aclose(self) -> None: ...


def lapi_from_config(config: RunConfig) -> LapiStream | None:
    if not config.lapi_url:
        return None
    # Imported here: aiohttp costs ~10 MB of RSS, which a sidecar without a LAPI need not pay.
    from pipeline.crowdsec.lapi import LapiConfig, LapiStream

    if config.lapi_key_file:
        key, source = load_secret(file=config.lapi_key_file, what="lapi_key_file")
    else:
        key, source = load_secret(env=config.lapi_key_env, what="lapi key")
    return LapiStream(
        LapiConfig(
            url=config.lapi_url,
            key=key,
            key_source=source,
            poll_interval=config.lapi_poll_interval,
        )
    )


def engine_from_config(
    config: RunConfig, clock: Callable[[], float], timeline: Timeline | None = None
) -> Engine:
    networks = build_networks(
        {
            "pod_cidr": config.pod_cidr,
            "service_cidr": config.service_cidr,
            "node_ip": config.node_ip,
            "lb_ip": config.lb_ip,
            "internal_cidr": config.internal_cidr,
        },
        k3s=config.k3s_defaults,
        origin="config",
    )
    engine_config = EngineConfig(
        window_s=config.window,
        blast_scope="window",
        masked_share=config.masked_share,
        masked_min_requests=config.masked_min_requests,
        clear_recovered=True,
        max_future_s=MAX_FUTURE_S,
    )
    return Engine(engine_config, Classifier(networks), clock, timeline)


class Runner:
    """One live auditor. ``run()`` returns the exit code; ``stop`` ends it gracefully."""

    def __init__(
        self,
        config: RunConfig,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.engine = engine_from_config(config, clock)
        self.metrics = Metrics(registry or CollectorRegistry())
        self.stop = asyncio.Event()
        self.lapi = lapi_from_config(config)
        self.tailer = FileTailer(
            TailConfig(
                paths=tuple(config.access_log),
                checkpoint_dir=config.checkpoint_dir,
                start_at=config.start_at,  # type: ignore[arg-type]
                max_line_bytes=config.max_line_bytes,
                poll_interval=config.poll_interval,
                rotate_wait=config.rotate_wait,
            )
        )
        self.envelope = Envelope(config.envelope)
        self.source_kind = (
            "container" if self.envelope in (Envelope.CRI, Envelope.DOCKER) else "file"
        )
        self._sources: dict[str, SourceAuditor] = {}
        self._source_kinds: dict[str, str] = {}
        self.server: MetricsServer | None = None
        self.sinks: list[EventSink] = []
        self.services: list[Service] = []
        self.publisher: Publisher | None = None
        self.audit_locally = True
        self.kube_status: Any = None  # set by discovery: .up, .last_sync
        self._fatal: BaseException | None = None
        self._last_checkpoint = 0.0
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> int:
        attach_all(self)
        host, port = listen_address(self.config)
        self.server = MetricsServer(host, port, self.metrics.exposition, self._ready)
        try:
            await self.server.start()
        except (OSError, OverflowError) as exc:
            msg = (
                f"config key 'metrics_listen': cannot listen on {self.config.metrics_listen}: {exc}"
            )
            raise UsageError(msg) from None
        try:
            self.sinks.insert(0, JsonlFindings(self.config.findings))
        except OSError as exc:
            await self.server.close()
            msg = f"config key 'findings': cannot open {self.config.findings}: {exc}"
            raise UsageError(msg) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop.set)
        log.info(
            "listening on %s:%d; following %s",
            host,
            self.server.port,
            ", ".join(self.config.access_log),
        )
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_ITEMS)
        producers = [self._tail(queue), self._ticker(queue)]
        if self.lapi is not None:
            producers.append(self._lapi(queue, self.lapi))

        async def post(fn: Callable[[Runner], None]) -> None:
            await queue.put(fn)

        producers += [svc.run(self.stop, post) for svc in self.services]
        try:
            async with asyncio.TaskGroup() as tg:
                consumer = tg.create_task(self._consume(queue, len(producers)))
                for coro in producers:
                    tg.create_task(self._producer(coro, queue))
                self._started = True
                await consumer
        except ExceptionGroup as group:  # a bug past the handlers above: still exit cleanly
            log.error("stopped by an unexpected error", exc_info=group)
            self._fail(group)
        finally:
            await self._close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if self._fatal is not None:
            log.error("stopped: %s", self._fatal)
            return 2
        return 0

    async def _close(self) -> None:
        """Release everything; a failure in one part must not skip the checkpoint or the rest."""
        steps: list[Callable[[], Awaitable[None] | None]] = [self.tailer.flush_checkpoints]
        if self.lapi is not None:
            steps.append(self.lapi.aclose)
        if self.publisher is not None:
            steps.append(self.publisher.aclose)
        if self.server is not None:
            steps.append(self.server.close)
        steps += [sink.aclose for sink in self.sinks]
        for step in steps:
            try:
                result = step()
                if result is not None:
                    await result
            except Exception:
                log.exception("shutdown step failed")

    def _ready(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        if self.lapi is not None and not self.lapi.status.up:
            return False, f"lapi down: {self.lapi.status.last_error or 'no successful poll yet'}"
        return True, "ready"

    def _fail(self, exc: BaseException) -> None:
        """Something cannot go on: stop the sources, drain, exit 2 with the reason."""
        if self._fatal is None:
            self._fatal = exc
        self.stop.set()

    async def _producer(self, coro: Any, queue: asyncio.Queue[Any]) -> None:
        # No `finally`: a cancelled producer must not block on a full queue whose consumer
        # is gone. Failures stop everything else and still end the producer's stream.
        try:
            await coro
        except (FatalSourceError, UsageError) as exc:
            self._fail(exc)
        except Exception as exc:
            log.exception("a source failed")
            self._fail(exc)
        await queue.put(_DONE)

    # -- producers --------------------------------------------------------------------------
    async def _tail(self, queue: asyncio.Queue[Any]) -> None:
        async for batch in self.tailer.batches(self.stop):
            await queue.put(batch)

    async def _lapi(self, queue: asyncio.Queue[Any], lapi: LapiStream) -> None:
        async for delta in lapi.deltas(self.stop):
            await queue.put(delta)

    async def _ticker(self, queue: asyncio.Queue[Any]) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), TICK_S)
            await queue.put(_Tick(self.clock()))

    # -- consumer ---------------------------------------------------------------------------
    async def _consume(self, queue: asyncio.Queue[Any], producers: int) -> None:
        """Drive the engine and sinks until every producer has ended.

        After a failure the loop keeps taking items (so producers can finish) but handles none:
        unacked batches are read again after a restart, which is the at-least-once contract.
        """
        done = 0
        while done < producers:
            item = await queue.get()
            if item is _DONE:
                done += 1
                continue
            if self._fatal is not None:
                continue
            try:
                await self._handle(item)
                self._emit()
            except Exception as exc:
                if not (self.stop.is_set() and isinstance(item, TailBatch)):
                    log.exception("processing failed")
                    self._fail(exc)
                # Stopping while a sink (Kafka) is down: leave the batch unacked.
        if self._fatal is None:
            self.engine.tick()
            self._emit()
            self._refresh()

    async def _handle(self, item: object) -> None:
        if isinstance(item, TailBatch):
            if self.publisher is not None:
                await self.publisher.publish(item)
            if self.audit_locally:
                self.feed(item)
            self.tailer.ack(item)
        elif isinstance(item, DecisionDelta):
            self.engine.apply(item)
        elif isinstance(item, _Tick):
            self.engine.tick()
            self._refresh()
        elif callable(item):
            item(self)

    def feed(self, batch: TailBatch) -> None:
        src = self._sources.get(batch.file_key)
        if src is None:
            src = self._sources[batch.file_key] = SourceAuditor(
                self.engine, batch.path, self.envelope, self.config.max_line_bytes
            )
            self._source_kinds[batch.path] = self.source_kind
        src.feed(batch.lines)
        self.metrics.mark_event(self.source_kind, self.clock())

    def _emit(self) -> None:
        events = self.engine.drain_events()
        if events:
            for sink in self.sinks:
                sink.emit(events)
            for e in events:
                log.info(
                    "finding %s: %s %s", e.state.value, e.finding.kind.value, e.finding.summary
                )

    def _refresh(self) -> None:
        lapi = self.lapi.status if self.lapi is not None else None
        stats = self.tailer.stats
        self.metrics.refresh(
            self.engine,
            self._source_kinds,
            SourceHealth(
                lapi_configured=lapi is not None,
                lapi_up=bool(lapi and lapi.up),
                lapi_last_success=lapi.last_success if lapi else None,
                lapi_polls_ok=lapi.polls_ok if lapi else 0,
                lapi_polls_failed=lapi.polls_failed if lapi else 0,
                tail_lag_bytes=stats.lag_bytes,
                tail_rotations=stats.rotations + stats.truncations,
                kube_configured=self.kube_status is not None,
                kube_up=bool(self.kube_status is not None and self.kube_status.up),
                kube_last_sync=getattr(self.kube_status, "last_sync", None),
            ),
        )
        now = time.monotonic()
        if now - self._last_checkpoint >= CHECKPOINT_EVERY_S:
            self._last_checkpoint = now
            self.tailer.flush_checkpoints()
