"""The aggregator's totals reader dies (a failure injected into the real reader, on a real
broker): ``/readyz`` turns 503 naming it, the supervisor restarts it, and the cluster view
follows the topic again before the aggregator says it is ready."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from pipeline.config import RunConfig
from pipeline.kafka.events import BatchEncoder, Chunk, encode_chunk
from pipeline.live.aggregator import Aggregator
from tests.support.crowdsec import traefik_json_line
from tests.support.kafka import TansuBroker, readiness
from tests.support.waiting import until


def message(node: str, n: int, start: int = 0) -> bytes:
    now = dt.datetime.now(dt.UTC)
    lines = [traefik_json_line(f"198.51.100.{i}", when=now).encode() for i in range(n)]
    ends = [start + 100 * (i + 1) for i in range(n)]
    rows, _ = BatchEncoder(node).entries("k", lines, ends)
    return encode_chunk(Chunk(node, "k", "/a.log", rows, []))


async def test_a_dead_totals_reader_makes_the_aggregator_unready_until_restarted(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    config = RunConfig(
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka_idempotence=False,
        kafka_partitions=2,
        kafka_timeout=10.0,
        kafka_group="reader-dies",
        metrics_listen="127.0.0.1:0",
        findings=str(tmp_path / "findings.jsonl"),
    )
    agg = Aggregator(config, registry=CollectorRegistry(), session_timeout_ms=3000)
    real_run = agg.reader.run
    boom = asyncio.Event()
    runs = 0

    async def run_until_boom(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            return await real_run(stop)
        inner = asyncio.create_task(real_run(stop))
        await boom.wait()
        inner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await inner
        raise RuntimeError("injected: the reader's connection handler crashed")

    agg.reader.run = run_until_boom  # type: ignore[method-assign]
    task = asyncio.create_task(agg.run())

    async def ready() -> tuple[int, str]:
        """/readyz from another thread: the server runs on this test's event loop."""
        assert agg.lifecycle is not None
        url = f"http://127.0.0.1:{agg.lifecycle.port}/readyz"
        return await asyncio.to_thread(readiness, url)

    async def wait_ready(want: Callable[[int, str], bool], what: str) -> tuple[int, str]:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            assert not task.done(), f"the aggregator stopped: {task.result()}"
            if agg.lifecycle is not None and want(*(got := await ready())):
                return got
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    try:
        await wait_ready(lambda code, _: code == 200, "ready")
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("auditor-events", message("n1", 3), partition=0)
            await until(lambda: agg.view.lines() == 3, "the first event", timeout=30)
            boom.set()
            _, body = await wait_ready(lambda code, _: code == 503, "503")
            assert body.startswith("task down: totals reader (RuntimeError: injected")
            # While the reader is down the view does not move; after the restart it catches up.
            await producer.send_and_wait("auditor-events", message("n1", 2, 300), partition=1)
            await wait_ready(lambda code, _: code == 200, "ready again")
            await until(lambda: agg.view.lines() == 5, "the view to follow again", timeout=30)
        finally:
            await producer.stop()
        assert runs == 2
        assert agg.tasks.restarts == {"totals reader": 1}
    finally:
        agg.stop.set()
        code = await asyncio.wait_for(task, 60)
    assert code == 0
