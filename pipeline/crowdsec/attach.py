"""The optional CrowdSec-facing parts of ``auditor run``: GeoIP enrichment of finding events,
CrowdSec health polling and opt-in remediation.

Everything that can be wrong in the config (a database file, the credentials file, the rate)
fails here, at start, before any input is read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.live.runner import Post, Runner
    from sinks.geoip import GeoIP

log = logging.getLogger(__name__)


class GeoInstaller:
    """A Service whose only job is to wrap the runner's event sinks in ``GeoSink`` at start.

    The JSONL sink is added after the attach functions ran and the Kafka sink may be attached
    after this one, so wrapping at attach time would miss them; services start after all of
    that and before the consumer emits anything.
    """

    def __init__(self, runner: Runner, geo: GeoIP) -> None:
        self.runner = runner
        self.geo = geo

    async def run(self, stop: asyncio.Event, post: Post) -> None:
        from sinks.geoip import GeoSink

        self.runner.sinks[:] = [
            s if isinstance(s, GeoSink) else GeoSink(s, self.geo) for s in self.runner.sinks
        ]
        await stop.wait()
        self.geo.close()


def attach_crowdsec(runner: Runner) -> None:
    config = runner.config
    if config.geoip_db:
        from sinks.geoip import GeoIP

        geo = GeoIP.open(config.geoip_db, runner.engine.classifier)
        log.info("geoip: %s", ", ".join(f"{d['path']} ({d['kind']})" for d in geo.describe()))
        runner.services.append(GeoInstaller(runner, geo))
    if config.crowdsec_metrics_url:
        from pipeline.crowdsec.health import HealthChecker, HealthService

        checker = HealthChecker(config.crowdsec_metrics_url, access_logs=config.access_log)
        # CrowdSec is polled at one pace: its metrics as often as its decisions.
        runner.services.append(HealthService(checker, config.lapi_poll_interval))
    if config.remediate:
        from pipeline.crowdsec.remediate import Remediator, WatcherClient, load_credentials
        from pipeline.errors import ConfigError

        if not config.lapi_credentials_file:
            raise ConfigError("config key 'lapi_credentials_file': required by remediate")
        creds = load_credentials(config.lapi_credentials_file, fallback_url=config.lapi_url)
        remediator = Remediator(
            WatcherClient(creds),
            runner.engine.classifier,
            dry_run=config.remediate_dry_run,
            max_per_minute=config.remediate_max_per_minute,
        )
        runner.sinks.append(remediator)
        runner.services.append(remediator)
        if not config.lapi_url:
            log.warning("remediate is on but lapi_url is not set: no decisions, nothing to do")
        log.info(
            "remediation on%s: internal bans are deleted through %s as machine %s",
            " (dry run)" if config.remediate_dry_run else "",
            creds.url,
            creds.login,
        )
