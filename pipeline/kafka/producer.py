"""The sidecar's ``Publisher``: each tailed batch to the events topic, acknowledged before ack.

``publish`` returns only once the broker acknowledged every message of the batch (acks=all by
default), so the runner advances the file checkpoint only over acknowledged lines, in order.
While the broker is unreachable it retries the whole batch with backoff (re-sent lines are
dropped downstream by their ids) and the tailer stops reading: backpressure, not buffering.
Every broker call is bounded by ``kafka_timeout`` (aio-libs/aiokafka#1101).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from parsers.envelope import Envelope
from pipeline.errors import UsageError
from pipeline.kafka.client import (
    KafkaSettings,
    KafkaUnavailable,
    TopicSpec,
    bounded,
    ensure_topics_retrying,
    stop_quietly,
)
from pipeline.kafka.events import BatchEncoder, Partitioner
from pipeline.sources.tail import TailBatch
from sinks.prometheus import Metrics

if TYPE_CHECKING:
    from pipeline.contracts import Post

log = logging.getLogger("auditor.kafka")

BACKOFF_MAX_S = 10.0


class PublishAborted(Exception):
    """Stopping while the broker is unreachable: the batch was not acknowledged (nor acked)."""


def line_ends(batch: TailBatch) -> list[int]:
    """The end offset of each line of the batch.

    Uses the tailer's per-line offsets when it provides them; otherwise rebuilds them from the
    line lengths (exact unless the tailer dropped or trimmed bytes inside the batch).
    """
    ends = getattr(batch, "line_ends", None)
    if ends is not None and len(ends) == len(batch.lines):
        return list(ends)
    out: list[int] = []
    pos = batch.start_offset
    for line in batch.lines:
        pos += len(line) + 1
        out.append(min(pos, batch.end_offset))
    if out:
        out[-1] = batch.end_offset
    return out


class KafkaPublisher:
    """The publisher of the Kafka plugin; also its ``Service`` (topic check at startup)."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        topic: str,
        partitions: int,
        create_topics: bool,
        node: str,
        envelope: Envelope,
        max_line_bytes: int,
        metrics: Metrics,
        source_kind: str,
        stop: asyncio.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.partitions = partitions
        self.create_topics = create_topics
        self.node = node
        self.encoder = BatchEncoder(node, envelope, max_line_bytes)
        self.metrics = metrics
        self.source_kind = source_kind
        self.stop = stop
        self.clock = clock
        self.healthy = False
        self.last_error = ""
        self._producer: AIOKafkaProducer | None = None
        self._partitioner: Partitioner | None = None
        self._ready = asyncio.Event()
        self._outage_logged = False

    # -- Service: connect and check the topic at startup, before the first batch -------------
    async def run(self, stop: asyncio.Event, post: Post) -> None:
        spec = TopicSpec(self.topic, self.partitions, "kafka_events_topic")
        ok = await ensure_topics_retrying(
            self.settings, [spec], create=self.create_topics, stop=stop
        )
        if not ok:
            return
        while not stop.is_set() and self._producer is None:
            try:
                await self._start()
            except KafkaUnavailable as exc:
                self._fail(exc)
                await _sleep(stop, 2.0)
        await stop.wait()

    async def _start(self) -> None:
        s = self.settings
        producer = AIOKafkaProducer(**s.producer_kwargs())
        try:
            await bounded(producer.start(), s.timeout, f"connect to Kafka at {s.servers}")
            parts = await bounded(
                producer.partitions_for(self.topic), s.timeout, f"metadata of {self.topic}"
            )
        except BaseException:
            await stop_quietly(producer, s.timeout, "events producer")
            raise
        if not parts:
            await stop_quietly(producer, s.timeout, "events producer")
            msg = f"Kafka topic {self.topic!r} (config key 'kafka_events_topic') has no partitions"
            raise UsageError(msg)
        self._partitioner = Partitioner(len(parts))
        self._producer = producer
        self.healthy = True
        self._ready.set()
        log.info("publishing to %s (%d partitions) on %s", self.topic, len(parts), s.servers)

    # -- Publisher ----------------------------------------------------------------------------
    async def publish(self, batch: TailBatch) -> None:
        await self._wait_ready()
        producer, partitioner = self._producer, self._partitioner
        assert producer is not None
        assert partitioner is not None
        messages, events = self.encoder.encode(
            batch.file_key, batch.path, batch.lines, line_ends(batch), partitioner
        )
        if messages:
            await self._send(producer, messages)
        self.metrics.kafka_published.inc(events)
        self.metrics.mark_event(self.source_kind, self.clock())

    async def _wait_ready(self) -> None:
        if self._ready.is_set():
            return
        waiter = asyncio.ensure_future(self._ready.wait())
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        if not self._ready.is_set():
            msg = f"stopping before Kafka at {self.settings.servers} was reachable"
            raise PublishAborted(msg)

    async def _send(
        self, producer: AIOKafkaProducer, messages: Sequence[tuple[int, bytes]]
    ) -> None:
        timeout = self.settings.timeout
        delay = 0.5
        attempts = 0
        while True:
            attempts += 1
            try:
                await bounded(self._send_once(producer, messages), timeout, "publish events")
            except (KafkaUnavailable, KafkaError) as exc:
                self._fail(exc)
                if self.stop.is_set() and attempts > 1:
                    msg = f"stopping while Kafka is unreachable ({exc}); batch not acknowledged"
                    raise PublishAborted(msg) from None
                await _sleep(self.stop, delay)
                delay = min(BACKOFF_MAX_S, delay * 2)
                continue
            if self._outage_logged:
                log.info("Kafka at %s acknowledges again", self.settings.servers)
                self._outage_logged = False
            self.healthy = True
            return

    async def _send_once(
        self, producer: AIOKafkaProducer, messages: Sequence[tuple[int, bytes]]
    ) -> None:
        futures = [await producer.send(self.topic, value, partition=p) for p, value in messages]
        await asyncio.gather(*futures)

    def _fail(self, exc: BaseException) -> None:
        """Log the first failure of an outage only; ``last_error`` is always current."""
        self.last_error = str(exc)
        if not self._outage_logged:
            log.warning("Kafka publish failed (%s); retrying, checkpoint held", exc)
            self._outage_logged = True
        self.healthy = False

    async def aclose(self) -> None:
        if self._producer is not None:
            await stop_quietly(self._producer, self.settings.timeout, "events producer")
            self._producer = None


async def _sleep(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
