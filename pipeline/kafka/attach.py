"""Kafka as a plugin of ``auditor run``: the sidecar publishes its batches instead of (or as
well as, with ``kafka_local_audit``) auditing them.

Attached by ``pipeline.cli.run`` when ``kafka_bootstrap`` is set. The publisher is also a
service, so the topic is checked (or created) at startup and a missing topic with
``kafka_create_topics=false`` ends the run with exit code 2.
"""

from __future__ import annotations

import socket

from parsers.envelope import Envelope
from pipeline.config import RunConfig
from pipeline.contracts import Plugin, PluginContext
from pipeline.kafka.client import KafkaSettings
from pipeline.kafka.producer import KafkaPublisher


def attach_kafka(config: RunConfig, ctx: PluginContext) -> Plugin:
    settings = KafkaSettings.from_config(config, role="sidecar")
    publisher = KafkaPublisher(
        settings,
        topic=config.kafka_events_topic,
        partitions=config.kafka_partitions,
        create_topics=config.kafka_create_topics,
        node=config.node_name or socket.gethostname(),
        envelope=Envelope(config.envelope),
        max_line_bytes=config.max_line_bytes,
        metrics=ctx.metrics,
        source_kind=ctx.source_kind,
        stop=ctx.stop,
        clock=ctx.clock,
    )
    return Plugin(
        publisher=publisher, services=(publisher,), audit_locally=config.kafka_local_audit
    )
