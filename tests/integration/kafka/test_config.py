"""Kafka configuration, topic checks, the findings topic, and shutdown with the broker down."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from parsers.envelope import Envelope
from pipeline.config import RunConfig
from pipeline.core.findings import Finding, FindingEvent, Kind, Severity, State
from pipeline.errors import ConfigError
from pipeline.kafka.client import KafkaSettings, TopicSpec, ensure_topics
from pipeline.kafka.findings import KafkaFindings
from pipeline.kafka.producer import KafkaPublisher, PublishAborted
from pipeline.live.aggregator import Aggregator
from pipeline.sources.tail import TailBatch
from sinks.prometheus import Metrics
from tests.support.crowdsec import traefik_json_line
from tests.support.kafka import TansuBroker, free_port
from tests.support.paths import ROOT


def settings_of(**keys: Any) -> KafkaSettings:
    return KafkaSettings.from_config(RunConfig(kafka_bootstrap="127.0.0.1:9092", **keys), role="t")


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "kafka_sasl_mechanism"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN"},
            "kafka_sasl_username",
        ),
        ({"kafka_sasl_mechanism": "PLAIN"}, "kafka_sasl_mechanism"),
        ({"kafka_ssl_cafile": "/etc/ca.pem"}, "kafka_ssl_cafile"),
        ({"kafka_acks": "1"}, "kafka_idempotence"),
        ({"kafka_timeout": 0.0}, "kafka_timeout"),
    ],
)
def test_bad_settings_name_the_key(keys: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        settings_of(**keys)


def test_bad_bootstrap_names_the_key() -> None:
    with pytest.raises(ConfigError, match="kafka_bootstrap"):
        KafkaSettings.from_config(RunConfig(kafka_bootstrap="broker-without-port"), role="t")


def test_sasl_and_tls_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = tmp_path / "kafka-password"
    password.write_text("s3cret\n")
    s = settings_of(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="auditor",
        kafka_sasl_password_file=str(password),
    )
    assert "s3cret" not in repr(s)
    kw = s.client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("auditor", "s3cret")
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    monkeypatch.setenv("AUDITOR_KAFKA_SASL_PASSWORD", "from-env")
    env = settings_of(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="auditor",
    ).client_kwargs()
    assert env["sasl_plain_password"] == "from-env"
    assert "ssl_context" not in env
    missing_ca = settings_of(kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="kafka_ssl"):
        missing_ca.client_kwargs()


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def test_missing_topic_is_a_clear_error(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    common = ("--kafka-bootstrap", kafka_broker.bootstrap, "--no-kafka-create-topics")
    common += ("--no-kafka-idempotence", "--metrics-listen", "127.0.0.1:0")
    agg = run_cli("-m", "pipeline.cli", "aggregate", *common, "--kafka-events-topic", "ev-missing")
    assert agg.returncode == 2, agg.stderr
    assert "'ev-missing'" in agg.stderr
    assert "kafka_events_topic" in agg.stderr
    log = tmp_path / "access.log"
    log.write_text("")
    run = run_cli(
        *("-m", "pipeline.cli.main", "run", "--access-log", str(log), *common),
        *("--kafka-events-topic", "ev-missing-too"),
    )
    assert run.returncode == 2, run.stderr
    assert "'ev-missing-too'" in run.stderr
    assert "kafka_create_topics" in run.stderr


async def test_topics_are_created_with_their_partitions(kafka_broker: TansuBroker) -> None:
    s = KafkaSettings(bootstrap=(kafka_broker.bootstrap,), timeout=10.0)
    specs = [TopicSpec("a-events", 3, "kafka_events_topic"), TopicSpec("a-totals", 1, "k")]
    assert await ensure_topics(s, specs, create=True) == {"a-events": 3, "a-totals": 1}
    assert await ensure_topics(s, specs, create=False) == {"a-events": 3, "a-totals": 1}


async def test_findings_topic_messages_are_keyed_by_finding(kafka_broker: TansuBroker) -> None:
    s = KafkaSettings(bootstrap=(kafka_broker.bootstrap,), timeout=10.0, idempotence=False)
    await ensure_topics(s, [TopicSpec("findings", 2, "kafka_findings_topic")], create=True)
    sink = KafkaFindings(s, "findings")
    f = Finding(Kind.INTERNAL_BAN, Severity.CRITICAL, "10.42.0.12", "ban", {}, "fix", key="k1")
    sink.emit([FindingEvent(State.RAISED, f, 1.0), FindingEvent(State.CLEARED, f, 2.0)])
    await sink.aclose()
    assert (sink.sent, sink.pending) == (2, 0)
    consumer = AIOKafkaConsumer(
        "findings", bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        got: list[Any] = []
        for _ in range(50):
            batch = await consumer.getmany(timeout_ms=200)
            got += [m for msgs in batch.values() for m in msgs]
            if len(got) == 2:
                break
    finally:
        await consumer.stop()
    assert [m.key for m in got] == [b"k1", b"k1"]
    assert [orjson.loads(m.value)["state"] for m in got] == ["raised", "cleared"]


async def test_publish_and_stop_do_not_hang_while_the_broker_is_down(
    kafka_broker: TansuBroker,
) -> None:
    stop = asyncio.Event()
    s = KafkaSettings(bootstrap=(kafka_broker.bootstrap,), timeout=1.0, idempotence=False)
    pub = KafkaPublisher(
        s,
        topic="events",
        partitions=2,
        create_topics=True,
        node="n1",
        envelope=Envelope.RAW,
        max_line_bytes=65536,
        metrics=Metrics(CollectorRegistry()),
        source_kind="file",
        stop=stop,
    )
    service = asyncio.create_task(pub.run(stop, _no_post))
    line = traefik_json_line("203.0.113.9").encode()
    batch = TailBatch([line], "dev:ino:h", "/a.log", 0, len(line) + 1, None)
    await asyncio.wait_for(pub.publish(batch), 30)
    assert pub.healthy
    kafka_broker.stop(kill=True)
    sending = asyncio.create_task(pub.publish(batch))
    await asyncio.sleep(0)
    stop.set()
    with pytest.raises(PublishAborted):
        await asyncio.wait_for(sending, 30)
    assert not pub.healthy
    await asyncio.wait_for(pub.aclose(), 30)
    await asyncio.wait_for(service, 30)


async def _no_post(fn: object) -> None:
    raise AssertionError("the publisher posts nothing")


async def test_aggregator_without_a_broker_stops_cleanly(tmp_path: Path) -> None:
    agg = Aggregator(
        RunConfig(
            kafka_bootstrap=f"127.0.0.1:{free_port()}",
            kafka_timeout=1.0,
            metrics_listen="127.0.0.1:0",
            findings=str(tmp_path / "f.jsonl"),
        ),
        registry=CollectorRegistry(),
    )
    task = asyncio.create_task(agg.run())
    await asyncio.sleep(1.5)
    assert not task.done()
    agg.stop.set()
    assert await asyncio.wait_for(task, 30) == 0


async def test_aggregator_stops_while_the_broker_is_down(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    agg = Aggregator(
        RunConfig(
            kafka_bootstrap=kafka_broker.bootstrap,
            kafka_idempotence=False,
            kafka_timeout=2.0,
            metrics_listen="127.0.0.1:0",
            findings=str(tmp_path / "f.jsonl"),
        ),
        registry=CollectorRegistry(),
        session_timeout_ms=3000,
        heartbeat_interval_ms=300,
    )
    task = asyncio.create_task(agg.run())
    for _ in range(300):
        if agg.events.owned:
            break
        await asyncio.sleep(0.1)
    assert agg.events.owned
    kafka_broker.stop(kill=True)
    await asyncio.sleep(0.5)
    agg.stop.set()
    assert await asyncio.wait_for(task, 60) == 0


async def test_records_are_not_taken_before_their_partition_is_restored(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    """consumer.start() returns once the assignment is set, before the rebalance listener has
    restored the partitions: records must wait (the listener pauses them) or they are lost."""
    stop = asyncio.Event()
    s = KafkaSettings(bootstrap=(kafka_broker.bootstrap,), timeout=10.0, idempotence=False)
    pub = KafkaPublisher(
        s,
        topic="auditor-events",
        partitions=2,
        create_topics=True,
        node="n1",
        envelope=Envelope.RAW,
        max_line_bytes=65536,
        metrics=Metrics(CollectorRegistry()),
        source_kind="file",
        stop=stop,
    )
    service = asyncio.create_task(pub.run(stop, _no_post))
    lines = [traefik_json_line(f"198.51.100.{i}", path=f"/{i}").encode() for i in range(200)]
    offset = 0
    for i in range(0, 200, 20):
        chunk = lines[i : i + 20]
        end = offset + sum(len(ln) + 1 for ln in chunk)
        await asyncio.wait_for(pub.publish(TailBatch(chunk, "k", "/a.log", offset, end, None)), 30)
        offset = end
    stop.set()
    await pub.aclose()
    await service

    agg = Aggregator(
        RunConfig(
            kafka_bootstrap=kafka_broker.bootstrap,
            kafka_idempotence=False,
            kafka_partitions=2,
            kafka_timeout=10.0,
            metrics_listen="127.0.0.1:0",
            findings=str(tmp_path / "f.jsonl"),
        ),
        registry=CollectorRegistry(),
        session_timeout_ms=3000,
        heartbeat_interval_ms=300,
    )
    catch_up = agg.reader.catch_up
    calls = 0

    async def slow_catch_up(seconds: float) -> bool:
        nonlocal calls
        calls += 1
        if calls > 1:  # the listener's call, while start() has already returned
            await asyncio.sleep(2.0)
        return await catch_up(seconds)

    agg.reader.catch_up = slow_catch_up  # type: ignore[method-assign]
    task = asyncio.create_task(agg.run())
    for _ in range(300):
        if agg.view.lines() == 200:
            break
        await asyncio.sleep(0.1)
    agg.stop.set()
    assert await asyncio.wait_for(task, 60) == 0
    assert calls > 1
    assert agg.view.lines() == 200
