"""``auditor run``: the command line of the live sidecar, and its composition root.

``attach_plugins`` decides which optional parts the config turns on; each part's module is
imported only then, so a plain sidecar loads none of Kafka, Kubernetes, MaxMind or aiohttp.
Registering the command stays import-light for the same reason: ``auditor replay`` must not
load the async stack.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipeline.config import RunConfig, add_config_args, load_config, print_config
from pipeline.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from pipeline.contracts import Plugin, PluginContext
    from pipeline.live.runner import Runner


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="follow Traefik access logs and CrowdSec decisions (sidecar mode)",
        description="Follow Traefik access logs and the CrowdSec LAPI decision stream; expose "
        "Prometheus metrics and write findings as JSON lines. Every flag is also a config key "
        "(--config FILE, TOML) and an AUDITOR_<KEY> environment variable; flags win over the "
        "environment, which wins over the file.",
    )
    add_config_args(p)
    p.set_defaults(func=main_run)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def attach_plugins(config: RunConfig, ctx: PluginContext) -> list[Plugin]:
    """The optional parts of ``auditor run`` that ``config`` turns on, in a fixed order."""
    plugins: list[Plugin] = []
    if config.remediate or config.crowdsec_metrics_url or config.geoip_db:
        from pipeline.crowdsec.attach import attach_crowdsec

        plugins += attach_crowdsec(config, ctx)
    if config.kafka_bootstrap:
        from pipeline.kafka.attach import attach_kafka

        plugins.append(attach_kafka(config, ctx))
    if config.discovery:
        from pipeline.kube.attach import attach_discovery

        plugins.append(attach_discovery(config, ctx))
    if config.networks_file:
        from pipeline.kube.from_file import attach_networks_file  # no Kubernetes client

        plugins.append(attach_networks_file(config, ctx))
    return plugins


def build_runner(
    config: RunConfig,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    extra: Sequence[Plugin] = (),
) -> Runner:
    """The sidecar as ``auditor run`` builds it; ``extra`` plugins join after the config's."""
    from pipeline.live.runner import Runner

    def attach(cfg: RunConfig, ctx: PluginContext) -> list[Plugin]:
        return [*attach_plugins(cfg, ctx), *extra]

    return Runner(config, registry=registry, clock=clock, attach=attach)


def load_live_config(args: argparse.Namespace, *, require: str, why: str) -> RunConfig | None:
    """The config of ``run`` or ``aggregate``, logging set up; None when ``--print-config``
    printed it and there is nothing to run. ``require`` is the key the command cannot do
    without (``why`` completes the error naming it)."""
    config = load_config(args)
    if args.print_config:
        print_config(config)
        return None
    if not getattr(config, require):
        raise UsageError(f"config key '{require}': {why}")
    require_extras(config)
    setup_logging(config.log_level)
    return config


def require_extras(config: RunConfig) -> None:
    """The extras the config's features need, checked before anything starts."""
    from pipeline.cli.extras import require as need

    if config.kafka_bootstrap:
        need("aiokafka", "config key 'kafka_bootstrap' (Kafka)")
    if config.discovery:
        need("kubernetes_asyncio", "config key 'discovery' (Kubernetes)")
    if config.geoip_db:
        need("maxminddb", "config key 'geoip_db' (GeoIP)")


def main_run(args: argparse.Namespace) -> int:
    config = load_live_config(
        args, require="access_log", why="at least one access log path is required"
    )
    if config is None:
        return EXIT_OK
    import asyncio  # heavy imports only where the command runs

    return asyncio.run(build_runner(config).run())
