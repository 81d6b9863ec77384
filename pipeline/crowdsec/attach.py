"""The optional CrowdSec-facing parts of ``auditor run``: GeoIP enrichment of finding events,
CrowdSec health polling and opt-in remediation.

Everything that can be wrong in the config (a database file, the credentials file, the rate)
fails here, at start, before any input is read.
"""

from __future__ import annotations

import logging

from pipeline.config import RunConfig
from pipeline.contracts import EventSink, Plugin, PluginContext
from pipeline.errors import ConfigError
from pipeline.secrets import redact_url

log = logging.getLogger("auditor.crowdsec")


def attach_crowdsec(config: RunConfig, ctx: PluginContext) -> list[Plugin]:
    plugins: list[Plugin] = []
    if config.geoip_db:
        from sinks.geoip import GeoIP, GeoSink

        geo = GeoIP.open(config.geoip_db, ctx.classifier)
        log.info("geoip: %s", ", ".join(f"{d['path']} ({d['kind']})" for d in geo.describe()))

        def enrich(sink: EventSink) -> EventSink:
            return GeoSink(sink, geo)

        plugins.append(Plugin(wrap_sink=enrich, closers=(geo.close,)))
    if config.crowdsec_metrics_url:
        from pipeline.crowdsec.health import HealthChecker, HealthService

        checker = HealthChecker(config.crowdsec_metrics_url, access_logs=config.access_log)
        # CrowdSec is polled at one pace: its metrics as often as its decisions.
        plugins.append(Plugin(services=(HealthService(checker, config.lapi_poll_interval),)))
    if config.remediate:
        from pipeline.crowdsec.remediate import Remediator, WatcherClient, load_credentials

        if not config.lapi_credentials_file:
            raise ConfigError("config key 'lapi_credentials_file': required by remediate")
        creds = load_credentials(config.lapi_credentials_file, fallback_url=config.lapi_url)
        remediator = Remediator(
            WatcherClient(creds),
            ctx.classifier,
            dry_run=config.remediate_dry_run,
            max_per_minute=config.remediate_max_per_minute,
            origins=frozenset(config.remediate_origins),
        )
        plugins.append(Plugin(sinks=(remediator,), services=(remediator,)))
        if not config.lapi_url:
            log.warning("remediate is on but lapi_url is not set: no decisions, nothing to do")
        log.info(
            "remediation on%s: internal bans by %s are deleted through %s as machine %s",
            " (dry run)" if config.remediate_dry_run else "",
            "/".join(sorted(set(config.remediate_origins))) or "no origin",
            redact_url(creds.url),
            creds.login,
        )
    return plugins
