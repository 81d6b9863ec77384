"""``auditor aggregate``: a consumer-group member that audits what node sidecars publish to Kafka.

Kept import-light like ``run``: aiokafka and the engine load only when the command runs.
"""

from __future__ import annotations

import argparse

from pipeline.cli.run import load_live_config
from pipeline.config import add_config_args
from pipeline.errors import EXIT_OK

DESCRIPTION = (
    "Consume access events published by 'auditor run --kafka-bootstrap ...' sidecars as a member "
    "of a Kafka consumer group, follow CrowdSec decisions from the LAPI, and raise the same "
    "findings as a single auditor would on all nodes' traffic. Findings go to --findings (JSON "
    "lines) and the findings topic; metrics to --metrics-listen. Run two or more for failover. "
    "Every flag is also a config key (--config FILE, TOML) and an AUDITOR_<KEY> environment "
    "variable."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "aggregate",
        help="audit the events node sidecars publish to Kafka (consumer group member)",
        description=DESCRIPTION,
    )
    add_config_args(p, "aggregate")
    p.set_defaults(func=main_aggregate)


def main_aggregate(args: argparse.Namespace) -> int:
    config = load_live_config(args, require="kafka_bootstrap", why="required by aggregate")
    if config is None:
        return EXIT_OK
    import asyncio

    from pipeline.live.aggregator import Aggregator

    return asyncio.run(Aggregator(config).run())
