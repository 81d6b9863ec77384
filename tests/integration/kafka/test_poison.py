"""One bad message must not stop the cluster view (issue 12, item 5), on a real Tansu broker.

An ``auditor aggregate`` process is fed, between good messages, an event row with a
non-numeric time, non-JSON bytes, NaN and 1e999 literals, an empty message, a 2100-dated event
and snapshots that are not snapshots (``"st":[]``). It must keep running and ready, count each
bad message in ``auditor_kafka_dead_letters_total``, fold every good message into its view, and
commit past the bad ones: a restarted aggregator does not see the events poison again.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.kafka import events as ev
from pipeline.kafka.events import BatchEncoder, Chunk, encode_chunk
from pipeline.kafka.totals import PartitionState
from tests.support.crowdsec import traefik_json_line
from tests.support.kafka import AggregatorProcess, TansuBroker, metric_sum
from tests.support.waiting import until

EVENTS, TOTALS = "auditor-events", "auditor-totals"  # the config defaults
DEAD = "auditor_kafka_dead_letters_total"


@pytest.fixture
def procs() -> Iterator[list[AggregatorProcess]]:
    started: list[AggregatorProcess] = []
    try:
        yield started
    finally:
        for p in started:
            p.signal(signal.SIGKILL)
            p.wait()


async def wait_for(
    agg: AggregatorProcess, pred: Callable[[], bool], what: str, timeout: float = 60.0
) -> None:
    def check() -> bool:
        if not agg.running:
            pytest.fail(f"the aggregator exited ({agg.proc.returncode}):\n{agg.log_text()[-3000:]}")
        return pred()

    await until(check, what, timeout=timeout, interval=0.2, detail=lambda: agg.log_text()[-2000:])


async def start(broker: TansuBroker, tmp_path: Path, name: str, group: str) -> AggregatorProcess:
    agg = AggregatorProcess(broker, tmp_path, name, group=group)
    await wait_for(
        agg,
        lambda: agg.ready()[0] == 200 and len(agg.owned()) == 4,
        "the aggregator to own every partition and be ready",
    )
    return agg


def dead(agg: AggregatorProcess, **labels: str) -> float:
    return metric_sum(agg.metrics(), DEAD, **labels)


def kafka_lines(agg: AggregatorProcess) -> float:
    return metric_sum(agg.metrics(), "auditor_lines_total", source="kafka")


async def produce(broker: TansuBroker, messages: list[tuple[str, int, bytes]]) -> None:
    """Send in order and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for topic, partition, value in messages:
            await producer.send_and_wait(topic, value, partition=partition, key=b"poison")
    finally:
        await producer.stop()


async def committed(broker: TansuBroker, group: str, partition: int) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
    await consumer.start()
    try:
        value: int | None = await consumer.committed(TopicPartition(EVENTS, partition))
        return value
    finally:
        await consumer.stop()


class Sidecar:
    """Event messages as a sidecar on node ``node`` writes them, line ends continuing."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.encoder = BatchEncoder(node)
        self.offset = 0

    def rows(self, lines: list[bytes]) -> list[list[Any]]:
        ends = []
        for line in lines:
            self.offset += len(line) + 1
            ends.append(self.offset)
        rows, skips = self.encoder.entries("1:2:ab", lines, ends)
        assert not skips
        return rows

    def message(self, rows: list[list[Any]]) -> bytes:
        return encode_chunk(Chunk(self.node, "1:2:ab", "/var/log/traefik.log", rows, []))

    def good(self, n: int) -> bytes:
        now = dt.datetime.now(dt.UTC)
        lines = [traefik_json_line(f"198.51.100.{i}", when=now).encode() for i in range(n)]
        return self.message(self.rows(lines))


async def test_poison_events_are_skipped_counted_and_committed_past(
    kafka_broker: TansuBroker, tmp_path: Path, procs: list[AggregatorProcess]
) -> None:
    group = "poison-events"
    agg = await start(kafka_broker, tmp_path, "agg", group)
    procs.append(agg)
    node = Sidecar("node-a")
    before = node.good(5)
    notatime = node.rows([traefik_json_line("198.51.100.99").encode()])
    notatime[0][ev.TS] = "notatime"
    marked = node.rows([traefik_json_line("198.51.100.98").encode()])
    marked[0][ev.TS] = "TS"
    nan, inf = (node.message(marked).replace(b'"TS"', literal) for literal in (b"NaN", b"1e999"))
    # A node whose clock says 2100, on another partition: its window must not hide the rest.
    future_node = Sidecar("node-2100")
    future = future_node.rows(
        [traefik_json_line("198.51.100.7", when=dt.datetime(2100, 1, 1, tzinfo=dt.UTC)).encode()]
    )
    future[0][ev.EP] = "edge"
    after = node.good(5)
    await produce(
        kafka_broker,
        [
            (EVENTS, 0, before),
            (EVENTS, 0, node.message(notatime)),
            (EVENTS, 0, b"\x00 not json at all"),
            (EVENTS, 0, nan),
            (EVENTS, 0, inf),
            (EVENTS, 0, b""),
            (EVENTS, 1, future_node.message(future)),
            (EVENTS, 0, after),
        ],
    )
    await wait_for(agg, lambda: kafka_lines(agg) == 11, "every good line in the cluster view")
    await wait_for(agg, lambda: dead(agg) == 5, "five dead letters")
    metrics = agg.metrics()
    assert metric_sum(metrics, DEAD, topic="events", reason="bad_timestamp") == 1
    assert metric_sum(metrics, DEAD, topic="events", reason="not_json") == 3
    assert metric_sum(metrics, DEAD, topic="events", reason="empty") == 1
    assert metric_sum(metrics, DEAD, topic="totals") == 0
    assert metric_sum(metrics, "auditor_requests_total") == 11
    # The 2100 event was clamped to the clock's edge: the window still holds today's traffic.
    ratio = "auditor_internal_client_ratio"
    assert f'{ratio}{{entrypoint="web"}}' in metrics
    assert f'{ratio}{{entrypoint="edge"}}' in metrics
    assert agg.ready() == (200, "ready\n")
    assert "Traceback" not in agg.log_text()

    # Committed past the poison: the snapshot and the group offset are after the last message.
    agg.signal(signal.SIGTERM)
    assert agg.wait() == 0
    assert await committed(kafka_broker, group, 0) == 7
    assert await committed(kafka_broker, group, 1) == 1
    again = await start(kafka_broker, tmp_path, "again", group)
    procs.append(again)
    assert kafka_lines(again) == 11  # restored from the snapshots
    # A new message behind the poison on the same partition: once it is counted, the poison
    # would have been read (and counted) before it.
    await produce(kafka_broker, [(EVENTS, 0, node.good(2))])
    await wait_for(again, lambda: kafka_lines(again) == 13, "the next message after restart")
    assert dead(again, topic="events") == 0
    assert again.ready() == (200, "ready\n")


def bad_snapshots() -> list[bytes]:
    body = orjson.loads(PartitionState(3, 1, 900, 60).encode(time.time()))
    body["st"] = []
    return [orjson.dumps(body), b"{not a snapshot"]


async def test_a_poison_snapshot_leaves_the_view_following_and_ready(
    kafka_broker: TansuBroker, tmp_path: Path, procs: list[AggregatorProcess]
) -> None:
    group = "poison-totals"
    agg = await start(kafka_broker, tmp_path, "agg", group)
    procs.append(agg)
    node = Sidecar("node-a")
    await produce(kafka_broker, [(TOTALS, 0, data) for data in bad_snapshots()])
    await wait_for(agg, lambda: dead(agg, topic="totals") == 2, "two totals dead letters")
    assert dead(agg, topic="totals", reason="bad_schema") == 1
    assert dead(agg, topic="totals", reason="not_json") == 1
    # The reader is alive: the snapshot of a new event still reaches the view.
    await produce(kafka_broker, [(EVENTS, 2, node.good(4))])
    await wait_for(agg, lambda: kafka_lines(agg) == 4, "the view to follow after the poison")
    assert agg.ready() == (200, "ready\n")

    # Restart: the totals topic is read from the start again, poison included; still ready.
    agg.signal(signal.SIGTERM)
    assert agg.wait() == 0
    again = await start(kafka_broker, tmp_path, "again", group)
    procs.append(again)
    assert kafka_lines(again) == 4
    assert dead(again, topic="totals") == 2
    await produce(kafka_broker, [(EVENTS, 2, node.good(3))])
    await wait_for(again, lambda: kafka_lines(again) == 7, "the view to follow after restart")
    assert again.ready() == (200, "ready\n")


async def test_a_node_stamped_in_2100_does_not_empty_the_cluster_window(
    kafka_broker: TansuBroker, tmp_path: Path, procs: list[AggregatorProcess]
) -> None:
    """Future-dated events are clamped to the clock's edge, as ``run`` does: the partition
    that got them must not slide the cluster-wide window past every other partition's data."""
    agg = await start(kafka_broker, tmp_path, "agg", "future")
    procs.append(agg)
    skewed = Sidecar("node-2100")
    rows = skewed.rows(
        [traefik_json_line("198.51.100.7", when=dt.datetime(2100, 1, 1, tzinfo=dt.UTC)).encode()]
    )
    rows[0][ev.EP] = "edge"
    await produce(
        kafka_broker,
        [(EVENTS, 0, Sidecar("node-a").good(5)), (EVENTS, 1, skewed.message(rows))],
    )
    await wait_for(agg, lambda: kafka_lines(agg) == 6, "both messages in the cluster view")
    ratio = "auditor_internal_client_ratio"
    await wait_for(agg, lambda: f'{ratio}{{entrypoint="edge"}}' in agg.metrics(), "an evaluation")
    assert f'{ratio}{{entrypoint="web"}}' in agg.metrics()  # today's traffic is still in it
