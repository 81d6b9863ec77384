"""The live sidecar behind ``auditor run``: follows access logs and CrowdSec decisions, keeps
metrics and findings current.

Wiring: producers (file tailer, LAPI stream, ticker, plugin services) put items on one bounded
queue; a single consumer drives the engine and the sinks synchronously, so a slow sink stops the
queue from draining and the tailer stops reading (backpressure without unbounded buffers). A
stop signal reaches producers only; the consumer drains what is queued, checkpoints are
written, exit 0. Optional parts arrive as ``Plugin`` records from an ``attach`` function (the
composition root is ``pipeline.cli.run``); none of them sees the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from parsers.crowdsec import DecisionDelta
from parsers.envelope import Envelope
from pipeline.config import RunConfig
from pipeline.contracts import (
    EventSink,
    LiveState,
    Plugin,
    PluginContext,
    Publisher,
    Service,
    SyncStatus,
)
from pipeline.core.feed import SourceAuditor
from pipeline.errors import EXIT_OK, EXIT_USAGE, FatalSourceError, UsageError
from pipeline.live.echo import StderrFindings, StdoutEcho
from pipeline.live.lifecycle import Lifecycle, lapi_unready, open_findings, send, source_health
from pipeline.live.wiring import engine_from_config, lapi_from_config
from pipeline.sources.tail import FileTailer, TailBatch, TailConfig
from sinks.prometheus import Metrics

if TYPE_CHECKING:
    from pipeline.crowdsec.lapi import LapiStream

log = logging.getLogger("auditor.run")

QUEUE_ITEMS = 8
TICK_S = 1.0
CHECKPOINT_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class _Tick:
    at: float


_DONE = object()

Attach = Callable[[RunConfig, PluginContext], Sequence[Plugin]]


class Runner:
    """One live auditor. ``run()`` returns the exit code; ``stop`` ends it gracefully.

    ``attach`` turns the config into plugins (see ``pipeline.contracts``); it runs at the start
    of ``run()``, so a bad plugin config is a usage error before any input is read. It has no
    default: ``pipeline.cli.run.build_runner`` passes the one ``auditor run`` uses, and a runner
    built with ``attach=None`` knowingly ignores GeoIP, remediation, Kafka and discovery.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        attach: Attach | None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.engine = engine_from_config(config, clock)
        self.metrics = Metrics(
            registry or CollectorRegistry(),
            kafka=bool(config.kafka_bootstrap),
            remediation=config.remediate,
        )
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
        self._attach = attach
        self._sources: dict[str, SourceAuditor] = {}
        self._source_kinds: dict[str, str] = {}
        self.lifecycle: Lifecycle | None = None
        self.sinks: tuple[EventSink, ...] = ()
        self.services: tuple[Service, ...] = ()
        self.publisher: Publisher | None = None
        self.audit_locally = True
        self.kube_status: SyncStatus | None = None
        self.echo: StdoutEcho | None = None
        self._closers: list[Callable[[], None]] = []
        self._fatal: BaseException | None = None
        self._last_checkpoint = 0.0
        self._started = False

    @property
    def lapi_configured(self) -> bool:
        """Part of ``LiveState``: what a posted callable may read besides engine and metrics."""
        return self.lapi is not None

    @property
    def context(self) -> PluginContext:
        return PluginContext(
            classifier=self.engine.classifier,
            metrics=self.metrics,
            stop=self.stop,
            clock=self.clock,
            source_kind=self.source_kind,
        )

    def _install(self, plugins: Sequence[Plugin]) -> None:
        """Merge the plugins' parts; every sink (the findings file first) gets every wrapper."""
        sinks: list[EventSink] = [self._findings_sink()]
        services: list[Service] = []
        for p in plugins:
            sinks += p.sinks
            services += p.services
            self._closers += p.closers
            if p.publisher is not None:
                self.publisher = p.publisher
            if p.kube_status is not None:
                self.kube_status = p.kube_status
            self.audit_locally = self.audit_locally and p.audit_locally
        for p in plugins:
            if p.wrap_sink is not None:
                sinks = [p.wrap_sink(s) for s in sinks]
        self.sinks = tuple(sinks)
        self.services = tuple(services)

    def _findings_sink(self) -> EventSink:
        """The findings file; ``-`` means stderr when stdout carries the echoed access log."""
        if self.config.echo_access_log and self.config.findings == "-":
            return StderrFindings()
        return open_findings(self.config)

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> int:
        plugins = self._attach(self.config, self.context) if self._attach is not None else ()
        self.lifecycle = Lifecycle(self.config, self.metrics.exposition, self._ready, self.stop)
        await self.lifecycle.start()
        try:
            self._install(plugins)
        except UsageError:
            await self.lifecycle.close()
            self.lifecycle.release()
            raise
        if self.config.echo_access_log:
            self.echo = StdoutEcho()
        log.info(
            "listening on %s:%d; following %s",
            self.lifecycle.host,
            self.lifecycle.port,
            ", ".join(self.config.access_log),
        )
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=QUEUE_ITEMS)
        producers = [self._tail(queue), self._ticker(queue)]
        if self.lapi is not None:
            producers.append(self._lapi(queue, self.lapi))

        async def post(fn: Callable[[LiveState], None]) -> None:
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
        if self._fatal is not None:
            log.error("stopped: %s", self._fatal)
            return EXIT_USAGE
        return EXIT_OK

    async def _close(self) -> None:
        """Release everything; a failure in one part must not skip the checkpoint or the rest."""
        steps: list[Callable[[], Awaitable[None] | None]] = [self.tailer.flush_checkpoints]
        if self.echo is not None:
            steps.append(self.echo.close)
        if self.lapi is not None:
            steps.append(self.lapi.aclose)
        if self.publisher is not None:
            steps.append(self.publisher.aclose)
        if self.lifecycle is not None:
            steps.append(self.lifecycle.close)
        steps += [sink.aclose for sink in self.sinks]
        steps += self._closers
        for step in steps:
            try:
                result = step()
                if result is not None:
                    await result
            except Exception:
                log.exception("shutdown step failed")
        if self.lifecycle is not None:
            self.lifecycle.release()

    def _ready(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        why = lapi_unready(self.lapi)
        if why is not None:
            return False, why
        return True, "ready"

    def _fail(self, exc: BaseException) -> None:
        """Something cannot go on: stop the sources, drain, exit 2 with the reason."""
        if self._fatal is None:
            self._fatal = exc
        self.stop.set()

    async def _producer(self, coro: Awaitable[None], queue: asyncio.Queue[object]) -> None:
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
    async def _tail(self, queue: asyncio.Queue[object]) -> None:
        async for batch in self.tailer.batches(self.stop):
            await queue.put(batch)

    async def _lapi(self, queue: asyncio.Queue[object], lapi: LapiStream) -> None:
        async for delta in lapi.deltas(self.stop):
            await queue.put(delta)

    async def _ticker(self, queue: asyncio.Queue[object]) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), TICK_S)
            await queue.put(_Tick(self.clock()))

    # -- consumer ---------------------------------------------------------------------------
    async def _consume(self, queue: asyncio.Queue[object], producers: int) -> None:
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
            if self.echo is not None:
                self.echo.write(item.lines)
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
        send(self.engine.drain_events(), self.sinks, log)

    def _refresh(self) -> None:
        stats = self.tailer.stats
        self.metrics.refresh(
            self.engine,
            self._source_kinds,
            source_health(
                self.lapi,
                tail_lag_bytes=stats.lag_bytes,
                tail_rotations=stats.rotations + stats.truncations,
                kube=self.kube_status,
            ),
        )
        if self.echo is not None:
            self.metrics.set_echo_dropped(self.echo.dropped)
        now = time.monotonic()
        if now - self._last_checkpoint >= CHECKPOINT_EVERY_S:
            self._last_checkpoint = now
            self.tailer.flush_checkpoints()
