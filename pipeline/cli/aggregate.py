"""``auditor aggregate``: a consumer-group member that audits what node sidecars publish to Kafka.

Kept import-light like ``run``: aiokafka and the engine load only when the command runs.
"""

from __future__ import annotations

import argparse

from pipeline.config import add_config_args, load_config, print_config
from pipeline.errors import EXIT_OK, UsageError

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
    add_config_args(p)
    p.set_defaults(func=main_aggregate)


def main_aggregate(args: argparse.Namespace) -> int:
    config = load_config(args)
    if args.print_config:
        print_config(config)
        return EXIT_OK
    if not config.kafka_bootstrap:
        raise UsageError("config key 'kafka_bootstrap': required by aggregate")
    from pipeline.cli.run import setup_logging

    setup_logging(config.log_level)
    import asyncio

    from pipeline.live.aggregator import Aggregator

    return asyncio.run(Aggregator(config).run())
