"""The aggregator behind ``auditor aggregate``: the engine on the cluster-wide view.

Tasks on one event loop, so the engine stays single-threaded: the events consumer (partition
states and snapshots), the totals reader (cluster view), the LAPI decisions stream, the poll of
CrowdSec's metrics (health and whitelist_gap, judged on the cluster's traffic) and a ticker
that evaluates the engine once a second. Findings leave through ``FindingRouter`` (only those of
owned partitions) to the JSONL sink and the findings topic. See ``pipeline.kafka`` for the design;
the start/stop machinery is the one ``auditor run`` uses (``pipeline.live.lifecycle``).

Every task runs under a ``Supervisor``: one that dies is restarted with backoff and makes
``/readyz`` answer 503 naming it until it runs again, so the process never serves a frozen
cluster view as ready. Bad messages do not kill a task in the first place: the readers skip and
count them (``pipeline.kafka.validate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry

from parsers.records import ParseStats
from pipeline.config import RunConfig
from pipeline.contracts import LiveState, Service
from pipeline.core.bouncer import BouncerModel
from pipeline.core.findings import EventSink, FindingEvent
from pipeline.crowdsec.lapi import LapiAuthError, LapiStream
from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.kafka.client import (
    KafkaSettings,
    KafkaUnavailable,
    TopicSpec,
    ensure_topics_retrying,
)
from pipeline.kafka.consumer import EventsConsumer, TotalsReader
from pipeline.kafka.events import Partitioner
from pipeline.kafka.findings import KafkaFindings
from pipeline.kafka.routing import FindingRouter
from pipeline.kafka.totals import ClusterMismatch, ClusterTimeline, ClusterView
from pipeline.live.lifecycle import (
    Lifecycle,
    Supervisor,
    lapi_unready,
    open_findings,
    send,
    source_health,
)
from pipeline.live.wiring import engine_config_from, engine_from_config, lapi_from_config
from sinks.prometheus import Metrics

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
        engine_config = engine_config_from(config)
        self.view = ClusterView(
            config.window,
            engine_config.bucket_s,
            clock=clock,
            max_future_s=engine_config.max_future_s,
        )
        self.timeline = ClusterTimeline(self.view)
        bouncer: BouncerModel | None = None
        mismatch: ClusterMismatch | None = None
        if engine_config.bouncer is not None:  # plugin_* keys: judge ban_mismatch
            bouncer = BouncerModel(engine_config.bouncer)
            mismatch = ClusterMismatch(bouncer, self.view)
        self.engine = engine_from_config(config, clock, self.timeline, engine_config, mismatch)
        self.metrics = Metrics(registry or CollectorRegistry(), remediation=False)
        self.lapi: LapiStream | None = lapi_from_config(config)
        self.health: Service | None = None
        if config.crowdsec_metrics_url:  # whitelist_gap and CrowdSec health, cluster-wide
            from pipeline.crowdsec.health import HealthChecker, HealthService

            checker = HealthChecker(config.crowdsec_metrics_url)
            self.health = HealthService(checker, config.lapi_poll_interval)
        self.stop = asyncio.Event()
        self.tasks = Supervisor(self.stop, log)
        self.reader = TotalsReader(
            self.settings, config.kafka_totals_topic, self.view, self.metrics
        )
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
            max_future_s=engine_config.max_future_s,
            bouncer=bouncer,
        )
        self.router: FindingRouter | None = None
        self.sinks: list[EventSink] = []
        self.lifecycle: Lifecycle | None = None
        self._fed: dict[str, ParseStats] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> int:
        self.lifecycle = Lifecycle(self.config, self.metrics.exposition, self._ready, self.stop)
        await self.lifecycle.start()
        log.info("aggregator listening on %s:%d", self.lifecycle.host, self.lifecycle.port)
        reader_stop = asyncio.Event()
        try:
            if not await self._connect(reader_stop):
                return EXIT_OK
            self._started = True
            main = [
                self.tasks.spawn("events consumer", lambda: self.events.run(self.stop)),
                self.tasks.spawn("ticker", self._ticker),
            ]
            if self.lapi is not None:
                lapi = self.lapi
                main.append(self.tasks.spawn("decisions", lambda: self._decisions(lapi)))
            if self.health is not None:
                health = self.health
                main.append(
                    self.tasks.spawn("crowdsec health", lambda: health.run(self.stop, self._post))
                )
            await asyncio.gather(*main)
            if self.tasks.fatal is None:
                if self.events.healthy:  # read our own last snapshots back before the last word
                    await self.reader.catch_up(self.settings.timeout)
                self.timeline.close_all()  # the last word covers the open bucket, as replay's
                self._evaluate()
                if self.router is not None:
                    self._send(self.router.refresh(self.engine.findings))
        finally:
            reader_stop.set()
            if self._reader_task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(self._reader_task, self.settings.timeout)
            closing = [self.events.aclose(), self.reader.aclose(), self.lifecycle.close()]
            closing += [sink.aclose() for sink in self.sinks]
            if self.lapi is not None:
                closing.append(self.lapi.aclose())
            await asyncio.gather(*closing)
            self.lifecycle.release()
        fatal = self._fatal or self.tasks.fatal
        if fatal is not None:
            log.error("%s", fatal)
            return EXIT_USAGE
        return EXIT_OK

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
        self.sinks = [open_findings(cfg), KafkaFindings(self.settings, cfg.kafka_findings_topic)]
        self.events.on_gained = self._gained
        self.events.on_lost = self._lost
        if not await self._until_started(self.reader.start):
            return False
        self._reader_task = self.tasks.spawn(
            "totals reader", lambda: self.reader.run(reader_stop), reader_stop
        )
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
        why = self.tasks.unready()
        if why is not None:
            return False, why
        if not self.reader.ready.is_set():
            return False, "reading the cluster view"
        if not self.reader.healthy:
            return False, "kafka: cannot read the totals topic (cluster view not updated)"
        if not self.events.healthy:
            return False, "kafka: cannot read events or publish snapshots"
        why = lapi_unready(self.lapi)
        if why is not None:
            return False, why
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

    async def _post(self, apply: Callable[[LiveState], None]) -> None:
        """A service's verdicts (``pipeline.contracts.Service``): applied at once, on the one
        event loop that also runs the ticker, then routed like every finding event."""
        apply(self)
        self._emit()

    @property
    def lapi_configured(self) -> bool:
        return self.lapi is not None

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
        send(events, self.sinks, log)

    def _gained(self, parts: set[int]) -> None:
        if self.router is None:
            return
        self._evaluate()
        self._send(self.router.gain(parts, self.engine.findings))

    def _lost(self, parts: set[int]) -> None:
        if self.router is not None:
            self.router.lose(parts)

    def _refresh(self) -> None:
        self.metrics.refresh(
            self.engine, dict.fromkeys(self.engine.stats, "kafka"), source_health(self.lapi)
        )


def session_timeout_ms_default(config: RunConfig) -> int:
    return session_timeout_ms(config.kafka_timeout)
