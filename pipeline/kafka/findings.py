"""Findings to a Kafka topic: one message per finding state change, keyed by the finding's key.

The key makes a compacted topic keep each finding's latest state, and lets consumers treat
messages idempotently (an aggregator that takes over a partition re-announces its findings).
``emit`` is synchronous (the ``EventSink`` contract) and only queues; a background task sends
with acks and retries while the broker is unreachable, dropping the oldest queued events past
``max_pending``. ``aclose`` drains for at most the Kafka timeout, then gives up. A sender task
that died of something unexpected is logged and started again by the next ``emit``, so the
findings topic does not go silent for the rest of the process's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.core.findings import FindingEvent
from pipeline.kafka.client import KafkaSettings, KafkaUnavailable, bounded, stop_quietly

log = logging.getLogger("auditor.kafka")

SEND_SLICE = 500


class KafkaFindings:
    def __init__(self, settings: KafkaSettings, topic: str, *, max_pending: int = 10000) -> None:
        self.settings = settings
        self.topic = topic
        self.max_pending = max_pending
        self.sent = 0
        self.dropped = 0
        self.restarts = 0
        self._pending: deque[tuple[bytes, bytes]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def emit(self, events: Sequence[FindingEvent]) -> None:
        if not events:
            return
        for e in events:
            f = e.finding
            key = (f.key or f"{f.kind.value}:{f.check}:{f.target}").encode()
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append((key, orjson.dumps(e.as_dict())))
        self._wake.set()
        task = self._task
        if task is not None and task.done() and not self._closing:
            self.restarts += 1
            failure = None if task.cancelled() else task.exception()
            log.error("findings sender stopped; starting it again", exc_info=failure)
            task = None
        if task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        producer: AIOKafkaProducer | None = None
        timeout = self.settings.timeout
        delay = 0.5
        warned = False
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = [self._pending[i] for i in range(min(SEND_SLICE, len(self._pending)))]
                try:
                    if producer is None:
                        producer = AIOKafkaProducer(**self.settings.producer_kwargs())
                        try:
                            await bounded(producer.start(), timeout, "connect findings producer")
                        except BaseException:
                            await stop_quietly(producer, timeout, "findings producer")
                            producer = None
                            raise
                    await bounded(self._send(producer, batch), timeout, "publish findings")
                except (KafkaUnavailable, KafkaError) as exc:
                    if not warned:
                        log.warning("cannot publish findings to %s: %s; retrying", self.topic, exc)
                        warned = True
                    await asyncio.sleep(delay)
                    delay = min(10.0, delay * 2)
                    continue
                for _ in batch:
                    if self._pending:
                        self._pending.popleft()
                self.sent += len(batch)
                delay = 0.5
                warned = False
        finally:
            if producer is not None:
                await stop_quietly(producer, timeout, "findings producer")

    async def _send(self, producer: AIOKafkaProducer, batch: list[tuple[bytes, bytes]]) -> None:
        futures = [await producer.send(self.topic, value, key=key) for key, value in batch]
        await asyncio.gather(*futures)

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=self.settings.timeout)
        if not done:
            log.warning("dropping %d finding events: Kafka did not take them", len(self._pending))
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({task}, timeout=self.settings.timeout)
