"""Optional parts of ``auditor run``, attached only when the config enables them.

Each attach function imports its module lazily, so a plain sidecar loads none of Kafka,
Kubernetes or MaxMind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.live.runner import Runner


def attach_all(runner: Runner) -> None:
    config = runner.config
    if config.remediate or config.crowdsec_metrics_url or config.geoip_db:
        from pipeline.crowdsec.attach import attach_crowdsec

        attach_crowdsec(runner)
    if config.kafka_bootstrap:
        from pipeline.kafka.attach import attach_kafka

        attach_kafka(runner)
    if config.discovery:
        from pipeline.kube.attach import attach_discovery

        attach_discovery(runner)
