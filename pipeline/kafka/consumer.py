"""The aggregator's two Kafka readers.

``TotalsReader`` reads every partition of the totals topic from the beginning, with no consumer
group, into the ``ClusterView`` (all aggregators hold the same view).

``EventsConsumer`` is a consumer-group member on the events topic. For each partition it owns it
folds events into a ``PartitionState`` (duplicates dropped by watermark), and about once a second
it publishes the state as a snapshot to the totals topic, waits for the broker's acknowledgement,
and only then commits ``{tp: next offset}`` (at-least-once: a commit never passes an event that
is not in an acknowledged snapshot). Auto-commit is off.

Ownership changes:

* on revocation (``ConsumerRebalanceListener.on_partitions_revoked``) it flushes and commits the
  revoked partitions, then forgets them; a ``CommitFailedError`` (the group already moved on) is
  logged: the snapshot is what the next owner restores from, the commit is only a fallback;
* on assignment it waits (bounded) until the view has read the totals topic to its current end,
  restores each partition from its latest snapshot with a higher epoch, seeks to the snapshot's
  offset and publishes a snapshot at once, so a deposed owner that still writes is ignored;
* when a member dies without revoking, the others wait out the session timeout, get its
  partitions and restore them from its last acknowledged snapshots: events it processed after
  that snapshot are read again and counted once, by the new owner.

Bad messages (``pipeline.kafka.validate``): both readers skip a message that fails its checks
or cannot be applied, count it in ``auditor_kafka_dead_letters_total`` and go on. On the events
topic the skip moves the partition's offset like any message, so the next snapshot and commit
pass it: neither a restart nor the next owner sees it again. The totals topic has no group and
is read from the start by every aggregator, so a bad snapshot is skipped (and counted) by each
reader every time it starts, until compaction or retention removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from pipeline.core.bouncer import BouncerModel
from pipeline.kafka.client import KafkaSettings, KafkaUnavailable, bounded, stop_quietly
from pipeline.kafka.events import decode_chunk
from pipeline.kafka.totals import Classify, ClusterView, PartitionState
from pipeline.kafka.validate import DeadLetter, Reason, Topic
from sinks.prometheus import Metrics

log = logging.getLogger("auditor.kafka")

FLUSH_S = 1.0
# Idle partitions are re-published this often, so their latest snapshot survives on brokers that
# delete old segments instead of compacting the totals topic.
REFRESH_S = 600.0
POLL_MS = 200
MAX_RECORDS = 2000
FETCH_BYTES = 8 * 1024 * 1024
GAP_RETRIES = 3
DEAD_LETTER_LOG_S = 1.0


class DeadLetters:
    """Counts skipped messages per topic kind and logs them, at most one line per second (a
    flood of bad messages must not flood the log; the metric counts every one)."""

    def __init__(self, topic: Topic, metrics: Metrics | None) -> None:
        self.topic = topic
        self.metrics = metrics
        self.count = 0
        self._next_log = 0.0
        self._quiet = 0

    def __call__(self, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        reason = exc.reason if isinstance(exc, DeadLetter) else Reason.APPLY
        self.count += 1
        if self.metrics is not None:
            self.metrics.dead_letter(self.topic.value, reason.value)
        now = time.monotonic()
        if now < self._next_log:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last one logged)" if self._quiet else ""
        self._next_log, self._quiet = now + DEAD_LETTER_LOG_S, 0
        if isinstance(exc, DeadLetter):
            log.warning(
                "skipping %s message %s:%d (%s): %s%s",
                self.topic.value,
                tp.partition,
                offset,
                reason.value,
                exc,
                more,
            )
        else:  # passed validation, failed anyway: a bug; keep the traceback
            log.error(
                "skipping %s message %s:%d that could not be applied%s",
                self.topic.value,
                tp.partition,
                offset,
                more,
                exc_info=exc,
            )


class TotalsReader:
    """Follows the totals topic into the cluster view; ``ready`` once it has read the backlog.

    ``healthy`` is False while the topic cannot be read (the view is frozen meanwhile).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        view: ClusterView,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.view = view
        self.ready = asyncio.Event()
        self.healthy = False
        self.dead_letters = DeadLetters(Topic.TOTALS, metrics)
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._pos: dict[TopicPartition, int] = {}
        self._moved = asyncio.Event()
        self.partition_count = 1

    async def start(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            **s.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=FETCH_BYTES,
        )
        try:
            await bounded(consumer.start(), s.timeout, f"connect to Kafka at {s.servers}")
            self._tps = [TopicPartition(self.topic, p) for p in range(self.partition_count)]
            consumer.assign(self._tps)
            await bounded(consumer.seek_to_beginning(*self._tps), s.timeout, "seek totals topic")
            for tp in self._tps:
                self._pos[tp] = await bounded(consumer.position(tp), s.timeout, "totals position")
        except BaseException:
            await stop_quietly(consumer, s.timeout, "totals reader")
            raise
        self._consumer = consumer

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        # Ready again only once this run has read the backlog (a restarted reader may be behind).
        self.ready.clear()
        initial = asyncio.create_task(self._initial_catch_up(stop))
        try:
            while not stop.is_set():
                try:
                    batch = await bounded(
                        consumer.getmany(timeout_ms=POLL_MS),
                        self.settings.timeout,
                        "read the totals topic",
                    )
                except (KafkaUnavailable, KafkaError) as exc:
                    self.healthy = False
                    log.warning("totals topic: %s", exc)
                    await _sleep(stop, 1.0)
                    continue
                self.healthy = True
                for tp, msgs in batch.items():
                    for m in msgs:
                        self._apply(tp, m)
                    if msgs:
                        self._pos[tp] = msgs[-1].offset + 1
                if batch:
                    self._moved.set()
                    self._moved = asyncio.Event()
        finally:
            initial.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await initial

    def _apply(self, tp: TopicPartition, m: Any) -> None:
        try:
            self.view.apply(m.value)
        except Exception as exc:  # noqa: BLE001 - DeadLetter, or a bug: skip it, not the reader
            self.dead_letters(tp, m.offset, exc)

    async def _initial_catch_up(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await self.catch_up(self.settings.timeout):
                self.ready.set()
                log.info("cluster view loaded (%d partitions)", len(self.view.parts))
                return
            log.warning("still reading the totals topic backlog")

    async def catch_up(self, seconds: float) -> bool:
        """Wait until everything in the totals topic right now has been read (False on timeout)."""
        consumer = self._consumer
        if consumer is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            ends = await bounded(consumer.end_offsets(self._tps), seconds, "totals end offsets")
        except (KafkaUnavailable, KafkaError) as exc:
            log.warning("cannot read the totals topic's end: %s", exc)
            return False
        while any(self._pos.get(tp, 0) < end for tp, end in ends.items()):
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), left)
        return True

    async def aclose(self) -> None:
        if self._consumer is not None:
            await stop_quietly(self._consumer, self.settings.timeout, "totals reader")
            self._consumer = None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventsConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.assigned(assigned)


class EventsConsumer:
    """Consumer-group member on the events topic; owns partition states and their snapshots."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        events_topic: str,
        totals_topic: str,
        group: str,
        view: ClusterView,
        reader: TotalsReader,
        classify: Classify,
        metrics: Metrics,
        window_s: int,
        bucket_s: int,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 3000,
        flush_s: float = FLUSH_S,
        clock: Callable[[], float] = time.time,
        max_future_s: float | None = None,
        bouncer: BouncerModel | None = None,
    ) -> None:
        """``bouncer``: count ``ban_mismatch`` verdicts per partition (pipeline.kafka.mismatch)."""
        self.settings = settings
        self.events_topic = events_topic
        self.totals_topic = totals_topic
        self.group = group
        self.view = view
        self.reader = reader
        self.classify = classify
        self.metrics = metrics
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.flush_s = flush_s
        self.clock = clock
        self.max_future_s = max_future_s
        self.bouncer = bouncer
        self.owned: dict[int, PartitionState] = {}
        self.on_gained: Callable[[set[int]], None] | None = None
        self.on_lost: Callable[[set[int]], None] | None = None
        self.healthy = False
        self.dead_letters = DeadLetters(Topic.EVENTS, metrics)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._gaps: dict[tuple[int, int], int] = {}
        self._lock = asyncio.Lock()  # never held around getmany() (rebalance listener deadlock)
        self._last_flush = 0.0
        self._last_refresh = time.monotonic()

    async def start(self) -> None:
        s = self.settings
        rebalance_ms = max(self.session_timeout_ms, int(s.timeout * 1000))
        producer = AIOKafkaProducer(**s.producer_kwargs(), max_request_size=FETCH_BYTES)
        consumer = AIOKafkaConsumer(
            **s.client_kwargs(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            rebalance_timeout_ms=rebalance_ms,
            max_partition_fetch_bytes=FETCH_BYTES,
        )
        consumer.subscribe([self.events_topic], listener=_Listener(self))
        # Set before start(): the first assignment (and its listener call) can happen inside it.
        self._producer, self._consumer = producer, consumer
        try:
            await bounded(producer.start(), s.timeout, f"connect to Kafka at {s.servers}")
            # start() waits for the first assignment (the broker's join delay, the other
            # members); our listener may still be restoring when it returns (see assigned()).
            join_s = 3 * s.timeout + rebalance_ms / 1000
            await bounded(consumer.start(), join_s, f"join consumer group {self.group!r}")
        except BaseException:
            self._producer = self._consumer = None
            self.owned.clear()
            await stop_quietly(producer, s.timeout, "snapshot producer")
            await stop_quietly(consumer, s.timeout, "events consumer")
            raise
        self.healthy = True

    # -- rebalance ----------------------------------------------------------------------------
    async def revoked(self, revoked: Iterable[TopicPartition]) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == self.events_topic}
        mine = parts & set(self.owned)
        if not mine:
            return
        try:
            await self.flush(mine)
        except (KafkaUnavailable, KafkaError) as exc:
            log.warning("could not flush partitions %s before handing them over: %s", mine, exc)
        for p in mine:
            self.owned.pop(p, None)
        log.info("handed over partitions %s", sorted(mine))
        if self.on_lost is not None:
            self.on_lost(mine)

    async def assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        tps = [tp for tp in assigned if tp.topic == self.events_topic]
        if not tps:
            return
        # The new assignment is live before this listener returns: without the pause, the main
        # loop could take records of a partition whose state is not restored yet (and lose them).
        consumer.pause(*tps)
        gained: set[int] = set()
        try:
            if not await self.reader.catch_up(self.settings.timeout):
                log.warning("cluster view is not caught up; restoring from the snapshots it has")
            for tp in tps:
                p = tp.partition
                if p in self.owned:
                    continue
                epoch = max(self.view.epoch(p) + 1, int(time.time() * 1000))
                snap = self.view.restore_point(p)
                if snap is not None:
                    state = PartitionState.restore(
                        snap, epoch, self.window_s, self.bucket_s, self.bouncer
                    )
                    consumer.seek(tp, snap.offset)
                else:
                    state = PartitionState(
                        p, epoch, self.window_s, self.bucket_s, bouncer=self.bouncer
                    )
                self.owned[p] = state
                gained.add(p)
        finally:
            live = consumer.assignment()
            consumer.resume(*(tp for tp in tps if tp in live))
        log.info("took over partitions %s", sorted(gained))
        try:
            await self.flush(gained, commit=False)
        except (KafkaUnavailable, KafkaError) as exc:
            log.warning("could not announce partitions %s: %s", sorted(gained), exc)
        if gained and self.on_gained is not None:
            self.on_gained(gained)

    # -- main loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        timeout = self.settings.timeout
        warned = False
        while not stop.is_set():
            try:
                batch = await bounded(
                    consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS),
                    timeout,
                    "read the events topic",
                )
            except (KafkaUnavailable, KafkaError) as exc:
                self.healthy = False
                if not warned:
                    log.warning("events topic: %s", exc)
                    warned = True
                await _sleep(stop, 1.0)
                continue
            self._process(batch)
            if time.monotonic() - self._last_flush >= self.flush_s:
                try:
                    await self.flush()
                    self.healthy = True
                    warned = False
                except (KafkaUnavailable, KafkaError) as exc:
                    self.healthy = False
                    if not warned:
                        log.warning("cannot publish partition snapshots: %s", exc)
                        warned = True
        if not self.healthy:
            log.warning("Kafka is unreachable: no final snapshot (the next owner re-reads)")
            return
        try:
            await self.flush()
        except (KafkaUnavailable, KafkaError) as exc:
            self.healthy = False
            log.warning("final snapshot flush failed (the next owner re-reads): %s", exc)

    def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        now = self.clock()
        new_total = dup_total = 0
        for tp, msgs in batch.items():
            state = self.owned.get(tp.partition)
            if state is None:
                continue  # revoked meanwhile: the next owner reads these again
            for m in msgs:
                if m.offset < state.offset:
                    continue
                if m.offset > state.offset and state.exact and not self._gap(tp, state, m.offset):
                    break  # re-reading from the expected offset
                try:
                    chunk = decode_chunk(m.value)
                    new, dup = state.apply(m.offset, chunk, self.classify, now, self.max_future_s)
                except Exception as exc:  # noqa: BLE001 - DeadLetter or a bug: skip, never block
                    self.dead_letters(tp, m.offset, exc)
                    state.skip(m.offset)
                    continue
                new_total += new
                dup_total += dup
        if new_total or dup_total:
            self.metrics.kafka_consumed.inc(new_total + dup_total)
            if dup_total:
                self.metrics.kafka_duplicates.inc(dup_total)
            self.metrics.mark_event("kafka", now)

    def _gap(self, tp: TopicPartition, state: PartitionState, offset: int) -> bool:
        """Messages were skipped (``offset`` is past the next expected one). Offsets of this
        topic are contiguous (no compaction, no transactions), so seek back and read them; a
        gap that persists is accepted (retention deleted them) and logged. True to go on."""
        key = (tp.partition, state.offset)
        tries = self._gaps.get(key, 0)
        if tries < GAP_RETRIES and self._consumer is not None:
            self._gaps[key] = tries + 1
            log.warning(
                "partition %d: expected offset %d, got %d; reading again from %d",
                tp.partition,
                state.offset,
                offset,
                state.offset,
            )
            self._consumer.seek(tp, state.offset)
            return False
        log.error(
            "partition %d: offsets %d..%d are missing (deleted by retention?)",
            tp.partition,
            state.offset,
            offset - 1,
        )
        self._gaps.pop(key, None)
        return True

    async def flush(self, parts: set[int] | None = None, *, commit: bool = True) -> None:
        """Publish the dirty states' snapshots; after the broker acknowledged them, commit."""
        producer, consumer = self._producer, self._consumer
        if producer is None or consumer is None:
            return
        timeout = self.settings.timeout
        async with self._lock:
            refresh = parts is None and time.monotonic() - self._last_refresh >= REFRESH_S
            if refresh:
                self._last_refresh = time.monotonic()
            states = [
                s
                for p, s in self.owned.items()
                if (s.dirty or refresh) and (parts is None or p in parts)
            ]
            self._last_flush = time.monotonic()
            if not states:
                return
            now = self.clock()
            sent: list[tuple[PartitionState, int]] = []
            futures = []
            for s in states:
                data = s.encode(now)
                sent.append((s, s.offset))  # before any await: the snapshot's own offset
                fut = await bounded(
                    producer.send(self.totals_topic, data, key=str(s.partition).encode()),
                    timeout,
                    "queue a partition snapshot",
                )
                futures.append(fut)
            await bounded(asyncio.gather(*futures), timeout, "publish partition snapshots")
            for s, offset in sent:
                s.dirty = s.offset != offset
            if not commit:
                return
            assigned = consumer.assignment()
            offsets = {
                tp: offset
                for s, offset in sent
                if (tp := TopicPartition(self.events_topic, s.partition)) in assigned
            }
            if not offsets:
                return
            try:
                await bounded(consumer.commit(offsets), timeout, "commit events offsets")
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("offset commit refused (the group moved on; snapshots stand): %s", exc)

    async def aclose(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        timeout = self.settings.timeout
        await asyncio.gather(
            *(
                stop_quietly(c, timeout, what)
                for c, what in ((consumer, "events consumer"), (producer, "snapshot producer"))
                if c is not None
            )
        )


async def _sleep(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
