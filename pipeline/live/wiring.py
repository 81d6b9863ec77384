"""The engine and the LAPI stream as both live commands build them from the config.

``auditor run`` and ``auditor aggregate`` must judge alike: the same networks, the same window,
the same clamp on future-dated data. Built here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipeline.config import RunConfig
from pipeline.core.addresses import Classifier
from pipeline.core.bouncer import (
    CLIENT_TRUSTED_KEY,
    HEADER_KEY,
    TRUSTED_KEY,
    BouncerSettings,
    MismatchTally,
)
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.networks import build_networks
from pipeline.core.traffic import Timeline
from pipeline.errors import UsageError
from pipeline.secrets import load_secret

if TYPE_CHECKING:
    from pipeline.crowdsec.lapi import LapiStream

MAX_FUTURE_S = 300.0  # live data stamped further ahead of the clock is clamped
_BOUNCER_KEYS = (TRUSTED_KEY, CLIENT_TRUSTED_KEY, HEADER_KEY)
BOUNCER_CONFIG_KEYS = (
    "config key 'plugin_config':",
    "config key 'plugin_forwarded_headers_trusted_ips'",
    "config key 'plugin_client_trusted_ips'",
    "config key 'plugin_forwarded_headers_custom_name'",
)


def lapi_from_config(config: RunConfig) -> LapiStream | None:
    if not config.lapi_url:
        return None
    # Imported here: a sidecar without a LAPI need not load the CrowdSec modules.
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
        bouncer=bouncer_settings(
            config.plugin_config,
            config.plugin_forwarded_headers_trusted_ips or None,
            config.plugin_client_trusted_ips or None,
            config.plugin_forwarded_headers_custom_name,
            names=BOUNCER_CONFIG_KEYS,
        ),
    )


def engine_from_config(
    config: RunConfig,
    clock: Callable[[], float],
    timeline: Timeline | None = None,
    engine_config: EngineConfig | None = None,
    mismatch: MismatchTally | None = None,
) -> Engine:
    """``timeline``, ``mismatch`` and ``engine_config``: the aggregator's cluster view (its
    traffic and its bouncer verdicts), which must be built with the same bucket size as the
    engine that reads it."""
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
        engine_config or engine_config_from(config),
        Classifier(networks),
        clock,
        timeline,
        mismatch,
    )


def bouncer_settings(
    path: str | None,
    trusted: Sequence[str] | None,
    client_trusted: Sequence[str] | None,
    header: str | None,
    *,
    names: Sequence[str],
) -> BouncerSettings | None:
    """The bouncer plugin's settings from its file (``path``) and single settings over it;
    None when none is given. ``names``: how the four are spelled to the user (flags or config
    keys), for the error that names the culprit (exit 2)."""
    from pipeline.core.bouncer import (
        MAX_FILE_BYTES,
        SettingsError,
        settings_from_text,
        with_overrides,
    )

    base = None
    if path:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"{names[0]} {path}: cannot read: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise UsageError(f"{names[0]} {path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        try:
            base = settings_from_text(data.decode("utf-8"), path)
        except UnicodeDecodeError:
            raise UsageError(f"{names[0]} {path}: not UTF-8 text") from None
        except SettingsError as exc:
            raise UsageError(f"{names[0]} {path}: key {exc}") from None
    try:
        settings = with_overrides(base, trusted, client_trusted, header)
    except SettingsError as exc:
        flag = dict(zip(_BOUNCER_KEYS, names[1:], strict=True)).get(exc.key, exc.key)
        raise UsageError(f"{flag}: {str(exc).partition(': ')[2]}") from None
    if settings is not None and not settings.judgeable:
        where = names[3] if header is not None else f"{names[0]} {path}"
        msg = (
            f"{where}: forwardedHeadersCustomName {settings.header!r}: the access log carries "
            "only X-Forwarded-For (ClientHost) and X-Real-Ip, so requests cannot be judged by it"
        )
        raise UsageError(msg)
    return settings
