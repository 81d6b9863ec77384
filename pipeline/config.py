"""Effective configuration for ``run`` / ``aggregate``: file (TOML) < ``AUDITOR_*`` env < flags.

Every key is a field of ``RunConfig``; the same name is the TOML key, the flag (``--key-name``)
and the env var (``AUDITOR_KEY_NAME``). Unknown keys are rejected naming the key; secrets are never
config values, only the file or env var that holds them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson

from pipeline.errors import ConfigError

ENV_PREFIX = "AUDITOR_"
# Env vars with the prefix that are not config keys (they hold secrets themselves).
SECRET_ENV = frozenset({"AUDITOR_LAPI_KEY", "AUDITOR_KAFKA_SASL_PASSWORD", "AUDITOR_LAPI_PASSWORD"})

CHOICES: dict[str, tuple[str, ...]] = {
    "envelope": ("auto", "raw", "cri", "docker"),
    "start_at": ("beginning", "end"),
    "log_level": ("debug", "info", "warning", "error"),
    "kafka_acks": ("all", "1", "0"),
    "kafka_security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
}


@dataclass(frozen=True, slots=True)
class RunConfig:
    """All settings of the live commands. Defaults are safe for a sidecar on loopback."""

    access_log: tuple[str, ...] = ()
    envelope: str = "auto"
    checkpoint_dir: str | None = None
    start_at: str = "end"
    max_line_bytes: int = 65536
    poll_interval: float = 0.25
    rotate_wait: float = 30.0
    lapi_url: str | None = None
    lapi_key_file: str | None = None
    lapi_key_env: str = "AUDITOR_LAPI_KEY"
    lapi_poll_interval: float = 10.0
    metrics_listen: str = "127.0.0.1:9977"
    findings: str = "-"
    pod_cidr: tuple[str, ...] = ()
    service_cidr: tuple[str, ...] = ()
    node_ip: tuple[str, ...] = ()
    lb_ip: tuple[str, ...] = ()
    internal_cidr: tuple[str, ...] = ()
    k3s_defaults: bool = True
    window: int = 900
    masked_share: float = 0.5
    masked_min_requests: int = 30
    discovery: bool = False
    kubeconfig: str | None = None
    kube_context: str | None = None
    geoip_db: tuple[str, ...] = ()
    remediate: bool = False
    remediate_dry_run: bool = True
    lapi_credentials_file: str | None = None
    remediate_max_per_minute: int = 6
    crowdsec_metrics_url: str | None = None
    kafka_bootstrap: str | None = None
    kafka_events_topic: str = "auditor-events"
    kafka_totals_topic: str = "auditor-totals"
    kafka_findings_topic: str = "auditor-findings"
    kafka_group: str = "ban-auditor"
    kafka_local_audit: bool = False
    kafka_acks: str = "all"
    kafka_idempotence: bool = True
    kafka_create_topics: bool = True
    kafka_partitions: int = 6
    kafka_timeout: float = 30.0
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password_file: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    node_name: str | None = None
    log_level: str = "info"

    def redacted(self) -> dict[str, Any]:
        """For ``--print-config``: every value, secrets shown only by where they come from."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["lapi_key"] = (
            f"<from file {self.lapi_key_file}>"
            if self.lapi_key_file
            else f"<from env {self.lapi_key_env}>"
        )
        return out


_HINTS = typing.get_type_hints(RunConfig)
KEYS: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))


def _base_type(key: str) -> type:
    hint = _HINTS[key]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return tuple
    return typing.cast("type", hint)


def _optional(key: str) -> bool:
    return type(None) in typing.get_args(_HINTS[key])


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, value: object, where: str) -> object:
    """Convert a file/env/flag value to the field's type; the error names the key."""
    kind = _base_type(key)

    def bad(why: str) -> ConfigError:
        return ConfigError(f"config key {key!r} ({where}): {why}")

    if value is None:
        if _optional(key):
            return None
        raise bad("must not be empty")
    if kind is tuple:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise bad("expected a list of strings")
        if not all(isinstance(i, str) for i in items):
            raise bad("expected a list of strings")
        return tuple(items)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad(f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise bad("expected an integer")
        try:
            return int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise bad(f"expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise bad("expected a number")
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise bad(f"expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise bad(f"expected a string, got {type(value).__name__}")
    choices = CHOICES.get(key)
    if choices and value not in choices:
        raise bad(f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _from_file(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        msg = f"config file not found: {path}"
        raise ConfigError(msg) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        msg = f"config file {path}: not valid TOML: {exc}"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"config file {path}: cannot read it: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    out: dict[str, object] = {}
    for key, value in data.items():
        norm = key.replace("-", "_")
        if norm not in KEYS:
            msg = f"config file {path}: unknown key {key!r}"
            raise ConfigError(msg)
        out[norm] = _coerce(norm, value, f"file {path}")
    return out


# Kubernetes injects <SERVICE>_PORT, <SERVICE>_SERVICE_HOST, ... for every Service in the
# namespace; a Service named "auditor" must not make the pod fail on "unknown keys".
_SERVICE_LINK = re.compile(
    r"^AUDITOR_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)$"
)


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    # The variable named by lapi_key_env holds a secret, not a config value.
    secret_names = SECRET_ENV | {env.get("AUDITOR_LAPI_KEY_ENV", "AUDITOR_LAPI_KEY")}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in secret_names or _SERVICE_LINK.match(name):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in KEYS:
            msg = f"environment: unknown key {name!r}"
            raise ConfigError(msg)
        out[key] = _coerce(key, value if value != "" else None, f"env {name}")
    return out


def add_config_args(parser: argparse.ArgumentParser, keys: tuple[str, ...] = KEYS) -> None:
    """One flag per key; flags default to 'not given' so file and env values survive."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective config and exit"
    )
    for key in keys:
        flag = "--" + key.replace("_", "-")
        kind = _base_type(key)
        if kind is bool:
            parser.add_argument(
                flag, dest=key, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS
            )
        elif kind is tuple:
            parser.add_argument(
                flag, dest=key, action="append", default=argparse.SUPPRESS, metavar="VALUE"
            )
        else:
            parser.add_argument(
                flag, dest=key, default=argparse.SUPPRESS, metavar=key.split("_")[-1].upper()
            )


def load_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> RunConfig:
    values: dict[str, object] = {}
    if getattr(args, "config", None):
        values.update(_from_file(args.config))
    values.update(_from_env(os.environ if env is None else env))
    for key in KEYS:
        if key in vars(args):
            values[key] = _coerce(key, getattr(args, key), f"flag --{key.replace('_', '-')}")
    config = RunConfig(**values)  # type: ignore[arg-type]
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"config key {key!r}: {why}")

    host, sep, port = config.metrics_listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host or int(port) > 65535:
        raise bad("metrics_listen", f"expected HOST:PORT, got {config.metrics_listen!r}")
    if config.window <= 0:
        raise bad("window", "must be positive")
    if not 0.0 < config.masked_share <= 1.0:
        raise bad("masked_share", "must be in (0, 1]")
    if config.masked_min_requests < 1:
        raise bad("masked_min_requests", "must be at least 1")
    if config.max_line_bytes < 256:
        raise bad("max_line_bytes", "must be at least 256")
    if config.poll_interval <= 0 or config.lapi_poll_interval <= 0:
        raise bad("poll_interval", "must be positive")
    if config.lapi_key_file and not config.lapi_url:
        raise bad("lapi_url", "lapi_key_file is set but lapi_url is not")
    if config.remediate and not config.lapi_credentials_file:
        raise bad("lapi_credentials_file", "required by remediate")
    if config.kafka_partitions < 1:
        raise bad("kafka_partitions", "must be at least 1")


def print_config(config: RunConfig) -> None:
    """``--print-config``: the effective config as JSON, secrets only by where they come from."""
    sys.stdout.write(orjson.dumps(config.redacted(), option=orjson.OPT_INDENT_2).decode() + "\n")


def listen_address(config: RunConfig) -> tuple[str, int]:
    host, _, port = config.metrics_listen.rpartition(":")
    return host.strip("[]"), int(port)
