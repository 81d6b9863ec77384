"""The engine and the LAPI stream as both live commands build them from the config.

``auditor run`` and ``auditor aggregate`` must judge alike: the same networks, the same window,
the same clamp on future-dated data. Built here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.config import RunConfig
from pipeline.core.addresses import Classifier
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.networks import build_networks
from pipeline.core.traffic import Timeline
from pipeline.secrets import load_secret

if TYPE_CHECKING:
    from pipeline.crowdsec.lapi import LapiStream

MAX_FUTURE_S = 300.0  # live data stamped further ahead of the clock is clamped


def lapi_from_config(config: RunConfig) -> LapiStream | None:
    if not config.lapi_url:
        return None
    # Imported here: aiohttp costs ~10 MB of RSS, which a sidecar without a LAPI need not pay.
    from pipeline.crowdsec.lapi import LapiConfig, LapiStream

    if config.lapi_key_file:
        key, source = load_secret(file=config.lapi_key_file, what="lapi_key_file")
    else:
        key, source = load_secret(env=config.lapi_key_env, what="lapi key")
    return LapiStream(
        LapiConfig(
            url=config.lapi_url,
            key=key,
            key_source=source,
            poll_interval=config.lapi_poll_interval,
        )
    )


def engine_config_from(config: RunConfig) -> EngineConfig:
    return EngineConfig(
        window_s=config.window,
        blast_scope="window",
        masked_share=config.masked_share,
        masked_min_requests=config.masked_min_requests,
        clear_recovered=True,
        max_future_s=MAX_FUTURE_S,
    )


def engine_from_config(
    config: RunConfig,
    clock: Callable[[], float],
    timeline: Timeline | None = None,
    engine_config: EngineConfig | None = None,
) -> Engine:
    """``timeline`` and ``engine_config``: the aggregator's cluster view, which must be built
    with the same bucket size as the engine that reads it."""
    networks = build_networks(
        {
            "pod_cidr": config.pod_cidr,
            "service_cidr": config.service_cidr,
            "node_ip": config.node_ip,
            "lb_ip": config.lb_ip,
            "internal_cidr": config.internal_cidr,
        },
        k3s=config.k3s_defaults,
        origin="config",
    )
    return Engine(
        engine_config or engine_config_from(config), Classifier(networks), clock, timeline
    )
