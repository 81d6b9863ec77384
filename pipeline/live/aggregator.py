"""The aggregator behind ``auditor aggregate``: the engine on the cluster-wide view.

Tasks on one event loop, so the engine stays single-threaded: the events consumer (partition
states and snapshots), the totals reader (cluster view), the LAPI decisions stream and a ticker
that evaluates the engine once a second. Findings leave through ``FindingRouter`` (only those of
owned partitions) to the JSONL sink and the findings topic. See ``pipeline.kafka`` for the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from parsers.records import ParseStats
from pipeline.config import RunConfig, listen_address
from pipeline.core.engine import EngineConfig
from pipeline.core.findings import Finding, FindingEvent, State
from pipeline.crowdsec.lapi import LapiAuthError, LapiStream
from pipeline.errors import UsageError
from pipeline.kafka.client import (
    KafkaSettings,
    KafkaUnavailable,
    TopicSpec,
    ensure_topics_retrying,
)
from pipeline.kafka.consumer import EventsConsumer, TotalsReader
from pipeline.kafka.events import Partitioner
from pipeline.kafka.findings import KafkaFindings
from pipeline.kafka.totals import ClusterTimeline, ClusterView
from pipeline.live.runner import EventSink, engine_from_config, lapi_from_config
from sinks.http import MetricsServer
from sinks.jsonl import JsonlFindings
from sinks.prometheus import Metrics, SourceHealth

log = logging.getLogger("auditor.aggregate")

TICK_S = 1.0
TOTALS_CONFIGS = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(8 * 1024 * 1024),
    "segment.ms": str(10 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
}
FINDINGS_CONFIGS = {"cleanup.policy": "compact"}


def session_timeout_ms(kafka_timeout: float) -> int:
    """A third of ``kafka_timeout``, within the broker defaults' allowed range (6 s to 10 s)."""
    return int(min(10.0, max(6.0, kafka_timeout / 3)) * 1000)


class FindingRouter:
    """Lets through the finding events of the partitions this aggregator owns.

    Every aggregator's engine holds every finding (same view); the owner of
    ``partition(target)`` speaks for it. A new owner re-announces active findings, and the
    clears it saw in the last ``keep_cleared_s`` (they may have happened while nobody owned the
    partition); consumers key findings, so a repeat is harmless.
    """

    def __init__(
        self,
        partition_of: Callable[[str], int],
        clock: Callable[[], float],
        keep_cleared_s: float = 3600.0,
    ) -> None:
        self.partition_of = partition_of
        self.clock = clock
        self.keep_cleared_s = keep_cleared_s
        self.owned: set[int] = set()
        self._last: dict[str, dict[str, Any]] = {}
        self._cleared: dict[str, tuple[Finding, float]] = {}

    def owner(self, f: Finding) -> int:
        return self.partition_of(f.target or f.key)

    def _remember(self, e: FindingEvent) -> None:
        if e.state is State.CLEARED:
            self._last.pop(e.finding.key, None)
        else:
            self._last[e.finding.key] = e.finding.as_dict()

    def route(self, events: Sequence[FindingEvent]) -> list[FindingEvent]:
        out: list[FindingEvent] = []
        for e in events:
            key = e.finding.key
            if e.state is State.CLEARED:
                self._cleared[key] = (e.finding, e.at)
            else:
                self._cleared.pop(key, None)
            if self.owner(e.finding) in self.owned:
                out.append(e)
                self._remember(e)
        horizon = self.clock() - self.keep_cleared_s
        for key in [k for k, (_, at) in self._cleared.items() if at < horizon]:
            del self._cleared[key]
        return out

    def gain(self, parts: set[int], active: Mapping[str, Finding]) -> list[FindingEvent]:
        self.owned |= parts
        now = self.clock()
        out = [
            FindingEvent(State.RAISED, f, now) for f in active.values() if self.owner(f) in parts
        ]
        out += [
            FindingEvent(State.CLEARED, f, now)
            for key, (f, _) in self._cleared.items()
            if key not in active and self.owner(f) in parts
        ]
        for e in out:
            self._remember(e)
        return out

    def lose(self, parts: set[int]) -> None:
        self.owned -= parts

    def refresh(self, active: Mapping[str, Finding]) -> list[FindingEvent]:
        """Owned findings whose evidence moved since last emitted (sent once at shutdown)."""
        now = self.clock()
        out = [
            FindingEvent(State.UPDATED, f, now)
            for key, f in active.items()
            if self.owner(f) in self.owned and self._last.get(key) != f.as_dict()
        ]
        for e in out:
            self._remember(e)
        return out


def _minus(a: ParseStats, b: ParseStats) -> ParseStats | None:
    d = ParseStats()
    d.lines, d.json, d.common = a.lines - b.lines, a.json - b.json, a.common - b.common
    for reason, n in a.skipped.items():
        d.skipped[reason] = n - b.skipped[reason]
    if min(d.lines, d.json, d.common, *d.skipped.values()) < 0:
        return None
    return d


def _copy(st: ParseStats) -> ParseStats:
    out = ParseStats()
    out.merge(st)
    return out


class Aggregator:
    """One consumer-group member. ``run()`` returns the exit code; ``stop`` ends it."""

    def __init__(
        self,
        config: RunConfig,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        session_timeout_ms: int | None = None,
        heartbeat_interval_ms: int | None = None,
        flush_s: float = 1.0,
        tick_s: float = TICK_S,
    ) -> None:
        self.config = config
        self.clock = clock
        self.tick_s = tick_s
        self.settings = KafkaSettings.from_config(config, role="aggregator")
        self.view = ClusterView(config.window, EngineConfig().bucket_s)
        self.timeline = ClusterTimeline(self.view)
        self.engine = engine_from_config(config, clock, self.timeline)
        self.metrics = Metrics(registry or CollectorRegistry())
        self.lapi: LapiStream | None = lapi_from_config(config)
        self.stop = asyncio.Event()
        self.reader = TotalsReader(self.settings, config.kafka_totals_topic, self.view)
        session = session_timeout_ms or session_timeout_ms_default(config)
        self.events = EventsConsumer(
            self.settings,
            events_topic=config.kafka_events_topic,
            totals_topic=config.kafka_totals_topic,
            group=config.kafka_group,
            view=self.view,
            reader=self.reader,
            classify=self.engine.classifier.classify,
            metrics=self.metrics,
            window_s=config.window,
            bucket_s=self.engine.config.bucket_s,
            session_timeout_ms=session,
            heartbeat_interval_ms=heartbeat_interval_ms or max(100, session // 4),
            flush_s=flush_s,
            clock=clock,
        )
        self.router: FindingRouter | None = None
        self.sinks: list[EventSink] = []
        self.server: MetricsServer | None = None
        self._fed: dict[str, ParseStats] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> int:
        host, port = listen_address(self.config)
        self.server = MetricsServer(host, port, self.metrics.exposition, self._ready)
        try:
            await self.server.start()
        except (OSError, OverflowError) as exc:
            msg = (
                f"config key 'metrics_listen': cannot listen on {self.config.metrics_listen}: {exc}"
            )
            raise UsageError(msg) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop.set)
        log.info("aggregator listening on %s:%d", host, self.server.port)
        reader_stop = asyncio.Event()
        try:
            if not await self._connect(reader_stop):
                return 0
            self._started = True
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.events.run(self.stop))
                tg.create_task(self._ticker())
                if self.lapi is not None:
                    tg.create_task(self._decisions(self.lapi))
            if self.events.healthy:  # read our own last snapshots back before the last word
                await self.reader.catch_up(self.settings.timeout)
            self._evaluate()
            if self.router is not None:
                self._send(self.router.refresh(self.engine.findings))
        except ExceptionGroup as group:  # a bug past the handlers: still stop cleanly, exit 2
            log.error("stopped by an unexpected error", exc_info=group)
            self._fatal = self._fatal or group
        finally:
            reader_stop.set()
            if self._reader_task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(self._reader_task, self.settings.timeout)
            closing = [self.events.aclose(), self.reader.aclose(), self.server.close()]
            closing += [sink.aclose() for sink in self.sinks]
            if self.lapi is not None:
                closing.append(self.lapi.aclose())
            await asyncio.gather(*closing)
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if self._fatal is not None:
            log.error("%s", self._fatal)
            return 2
        return 0

    async def _connect(self, reader_stop: asyncio.Event) -> bool:
        """Topics, then the cluster view (running), then the group: a partition assigned to us
        is restored from a view that is already following the totals topic."""
        cfg = self.config
        specs = [
            TopicSpec(cfg.kafka_events_topic, cfg.kafka_partitions, "kafka_events_topic"),
            TopicSpec(cfg.kafka_totals_topic, 1, "kafka_totals_topic", TOTALS_CONFIGS),
            TopicSpec(
                cfg.kafka_findings_topic,
                cfg.kafka_partitions,
                "kafka_findings_topic",
                FINDINGS_CONFIGS,
            ),
        ]
        counts = await ensure_topics_retrying(
            self.settings, specs, create=cfg.kafka_create_topics, stop=self.stop
        )
        if counts is None:
            return False
        self.reader.partition_count = counts[cfg.kafka_totals_topic]
        self.router = FindingRouter(
            Partitioner(counts[cfg.kafka_events_topic]), self.clock, float(cfg.window)
        )
        try:
            self.sinks = [JsonlFindings(cfg.findings)]
        except OSError as exc:
            msg = f"config key 'findings': cannot open {cfg.findings}: {exc}"
            raise UsageError(msg) from None
        self.sinks.append(KafkaFindings(self.settings, cfg.kafka_findings_topic))
        self.events.on_gained = self._gained
        self.events.on_lost = self._lost
        if not await self._until_started(self.reader.start):
            return False
        self._reader_task = asyncio.create_task(self.reader.run(reader_stop))
        return await self._until_started(self.events.start)

    async def _until_started(self, start: Callable[[], Awaitable[None]]) -> bool:
        while not self.stop.is_set():
            try:
                await start()
                return True
            except KafkaUnavailable as exc:
                log.warning("Kafka is unreachable (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 2.0)
        return False

    def _ready(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        if not self.reader.ready.is_set():
            return False, "reading the cluster view"
        if not self.events.healthy:
            return False, "kafka: cannot read events or publish snapshots"
        if self.lapi is not None and not self.lapi.status.up:
            return False, f"lapi down: {self.lapi.status.last_error or 'no successful poll yet'}"
        return True, "ready"

    # -- tasks ----------------------------------------------------------------------------------
    async def _ticker(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.tick_s)
            self._evaluate()

    async def _decisions(self, lapi: LapiStream) -> None:
        try:
            async for delta in lapi.deltas(self.stop):
                self.engine.apply(delta)
                self._emit()
        except LapiAuthError as exc:
            self._fatal = exc
            self.stop.set()

    # -- engine ---------------------------------------------------------------------------------
    def _evaluate(self) -> None:
        if not self.reader.ready.is_set():
            return
        self.timeline.sync()
        for source, st in self.view.source_stats().items():
            seen = self._fed.get(source)
            delta = _minus(st, seen) if seen is not None else _copy(st)
            if delta is not None and delta.lines:
                self.engine.ingest_runs([], delta, source)
            self._fed[source] = _copy(st)
        self.engine.tick()
        self._emit()
        self._refresh()

    def _emit(self) -> None:
        events = self.engine.drain_events()
        if self.router is None or not events:
            return
        self._send(self.router.route(events))

    def _send(self, events: Sequence[FindingEvent]) -> None:
        if not events:
            return
        for sink in self.sinks:
            sink.emit(events)
        for e in events:
            log.info("finding %s: %s %s", e.state.value, e.finding.kind.value, e.finding.summary)

    def _gained(self, parts: set[int]) -> None:
        if self.router is None:
            return
        self._evaluate()
        self._send(self.router.gain(parts, self.engine.findings))

    def _lost(self, parts: set[int]) -> None:
        if self.router is not None:
            self.router.lose(parts)

    def _refresh(self) -> None:
        lapi = self.lapi.status if self.lapi is not None else None
        self.metrics.refresh(
            self.engine,
            dict.fromkeys(self.engine.stats, "kafka"),
            SourceHealth(
                lapi_configured=lapi is not None,
                lapi_up=bool(lapi and lapi.up),
                lapi_last_success=lapi.last_success if lapi else None,
                lapi_polls_ok=lapi.polls_ok if lapi else 0,
                lapi_polls_failed=lapi.polls_failed if lapi else 0,
            ),
        )


def session_timeout_ms_default(config: RunConfig) -> int:
    return session_timeout_ms(config.kafka_timeout)
