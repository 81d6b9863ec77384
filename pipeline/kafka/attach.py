"""Wires Kafka into ``auditor run``: the sidecar publishes its batches instead of auditing them.

Called by ``pipeline.live.plugins.attach_all`` when ``kafka_bootstrap`` is set. The publisher is
also registered as a runner service, so the topic is checked (or created) at startup and a
missing topic with ``kafka_create_topics=false`` ends the run with exit code 2.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from parsers.envelope import Envelope
from pipeline.kafka.client import KafkaSettings
from pipeline.kafka.producer import KafkaPublisher

if TYPE_CHECKING:
    from pipeline.live.runner import Runner


def attach_kafka(runner: Runner) -> None:
    config = runner.config
    settings = KafkaSettings.from_config(config, role="sidecar")
    publisher = KafkaPublisher(
        settings,
        topic=config.kafka_events_topic,
        partitions=config.kafka_partitions,
        create_topics=config.kafka_create_topics,
        node=config.node_name or socket.gethostname(),
        envelope=Envelope(config.envelope),
        max_line_bytes=config.max_line_bytes,
        metrics=runner.metrics,
        source_kind=runner.source_kind,
        stop=runner.stop,
        clock=runner.clock,
    )
    runner.publisher = publisher
    runner.services.append(publisher)
    runner.audit_locally = config.kafka_local_audit
