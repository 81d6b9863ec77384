"""The broker (Tansu on S3 storage, so it keeps its data) stops and restarts mid-stream.

While it is down the sidecar cannot get acknowledgements: it holds its checkpoint and retries;
the aggregator's reads and commits time out and retry. After the restart nothing is lost and
nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from pipeline.kafka.producer import KafkaPublisher
from pipeline.live.aggregator import Aggregator
from tests.support.kafka import TansuBroker, node_log_lines
from tests.support.waiting import until as _wait

HALF = 500


async def wait_until(pred: Callable[[], bool], what: str) -> None:
    await _wait(pred, what, timeout=90.0, interval=0.1)


async def test_broker_restart_loses_nothing(kafka_broker_s3: TansuBroker, tmp_path: Path) -> None:
    broker = kafka_broker_s3
    kafka = {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_idempotence": False,
        "kafka_partitions": 2,
        "kafka_timeout": 3.0,
        "metrics_listen": "127.0.0.1:0",
    }
    agg = Aggregator(
        RunConfig(findings=str(tmp_path / "agg.jsonl"), kafka_group="restart", **kafka),
        registry=CollectorRegistry(),
        session_timeout_ms=3000,
        heartbeat_interval_ms=300,
    )
    agg_task = asyncio.create_task(agg.run())
    # Topics first: Tansu on S3 lets two concurrent CreateTopics of one name both succeed.
    await wait_until(lambda: len(agg.events.owned) == 2, "the aggregator to own the partitions")
    lines = node_log_lines(2 * HALF, seed=7, masked_share=0.5)
    log = tmp_path / "node.log"
    log.write_bytes(b"".join(lines[:HALF]))
    runner = build_runner(
        RunConfig(
            access_log=(str(log),),
            checkpoint_dir=str(tmp_path / "ck"),
            start_at="beginning",
            node_name="node0",
            poll_interval=0.05,
            **kafka,
        ),
        registry=CollectorRegistry(),
    )
    runner_task = asyncio.create_task(runner.run())
    await wait_until(lambda: agg.view.lines() == HALF, "the first half to be counted")

    broker.stop()
    with log.open("ab") as fh:
        fh.write(b"".join(lines[HALF:]))
    publisher = runner.publisher
    assert isinstance(publisher, KafkaPublisher)
    await wait_until(lambda: not publisher.healthy, "the sidecar to notice the broker is down")
    assert agg.view.lines() == HALF

    broker.start()
    await wait_until(lambda: agg.view.lines() == 2 * HALF, "every line after the restart")
    runner.stop.set()
    assert await runner_task == 0
    seen = agg.metrics.registry.get_sample_value("auditor_kafka_events_consumed_total")
    agg.stop.set()
    assert await agg_task == 0
    assert agg.view.lines() == 2 * HALF
    assert sum(agg.view.by_class().values()) == 2 * HALF
    assert seen is not None
    assert seen >= 2 * HALF
    checkpoint = json.loads((tmp_path / "ck" / "tail.json").read_text())
    assert [f["offset"] for f in checkpoint["files"]] == [log.stat().st_size]
