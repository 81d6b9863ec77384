"""``auditor run``: command-line entry of the live sidecar (the wiring is in pipeline.live.runner).

Kept import-light: registering the command must not load the HTTP and async stack, so that
``auditor replay`` stays small.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import add_config_args, load_config, print_config
from pipeline.errors import UsageError


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


def main_run(args: argparse.Namespace) -> int:
    config = load_config(args)
    if args.print_config:
        print_config(config)
        return 0
    if not config.access_log:
        raise UsageError("config key 'access_log': at least one access log path is required")
    setup_logging(config.log_level)
    import asyncio  # heavy imports only where the command runs

    from pipeline.live.runner import Runner

    return asyncio.run(Runner(config).run())
