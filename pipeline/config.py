"""Effective configuration for ``run`` / ``aggregate``: file (TOML) < ``AUDITOR_*`` env < flags.

Every key is a field of ``RunConfig``; the same name is the TOML key, the flag (``--key-name``)
and the env var (``AUDITOR_KEY_NAME``). Unknown keys are rejected naming the key; secrets are never
config values, only the file or env var that holds them. A numeric key carries its allowed range
in its definition (``limits``): NaN, infinities and values out of range are refused wherever they
come from, because a timer of NaN seconds or a window of 1e30 fails far from the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from pipeline.errors import ConfigError
from pipeline.listen import host_port, split_urls, url_problem
from pipeline.secrets import redact_url

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
# Keys whose value is a URL (or a list of addresses) that may carry ``user:password@``.
URL_KEYS = ("lapi_url", "crowdsec_metrics_url", "kafka_bootstrap")


@dataclass(frozen=True, slots=True)
class Limits:
    """The finite values a numeric key accepts: ``low`` (excluded when ``open_low``) to
    ``high``, both included otherwise."""

    low: float
    high: float
    open_low: bool = False

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # (an int is finite, and may be too big for math.isfinite)
        above = value > self.low if self.open_low else value >= self.low
        return above and value <= self.high

    def describe(self, *, integer: bool) -> str:
        """``an integer from 1 to 604800``, ``a number above 0 and at most 1``."""
        kind = "an integer" if integer else "a number"
        if self.open_low:
            return f"{kind} above {_fmt(self.low)} and at most {_fmt(self.high)}"
        return f"{kind} from {_fmt(self.low)} to {_fmt(self.high)}"


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def limits(low: float, high: float, *, open_low: bool = False) -> dict[str, Limits]:
    """Field metadata: the range of a numeric key, checked by ``_coerce`` and ``validate``."""
    return {"limits": Limits(low, high, open_low)}


DAY_S = 86400


@dataclass(frozen=True, slots=True)
class RunConfig:
    """All settings of the live commands. Defaults are safe for a sidecar on loopback."""

    access_log: tuple[str, ...] = ()
    envelope: str = "auto"
    checkpoint_dir: str | None = None
    start_at: str = "end"
    # A line longer than this is cut; the reader buffers up to this much per file.
    max_line_bytes: int = field(default=65536, metadata=limits(256, 16 << 20))
    # Seconds between looks at the access logs; below 10 ms is a busy loop.
    poll_interval: float = field(default=0.25, metadata=limits(0.01, 60))
    # Seconds a rotated-away file is still read after it stops growing (0: close at once).
    rotate_wait: float = field(default=30.0, metadata=limits(0, DAY_S))
    lapi_url: str | None = None
    lapi_key_file: str | None = None
    lapi_key_env: str = "AUDITOR_LAPI_KEY"
    # Seconds between LAPI decision-stream polls.
    lapi_poll_interval: float = field(default=10.0, metadata=limits(0.1, 3600))
    metrics_listen: str = "127.0.0.1:9977"
    findings: str = "-"
    pod_cidr: tuple[str, ...] = ()
    service_cidr: tuple[str, ...] = ()
    node_ip: tuple[str, ...] = ()
    lb_ip: tuple[str, ...] = ()
    internal_cidr: tuple[str, ...] = ()
    k3s_defaults: bool = True
    # Seconds of traffic behind the masked share and the live blast radius (up to a week).
    window: int = field(default=900, metadata=limits(1, 7 * DAY_S))
    # Share of internal clients that flags masking: above 0, at most 1.
    masked_share: float = field(default=0.5, metadata=limits(0, 1, open_low=True))
    # Requests a window needs before masking is judged.
    masked_min_requests: int = field(default=30, metadata=limits(1, 1_000_000))
    discovery: bool = False
    kubeconfig: str | None = None
    kube_context: str | None = None
    # The file `auditor discover` publishes (its ConfigMap, mounted): networks, config findings.
    networks_file: str | None = None
    # Re-emit every access-log line read on stdout, unchanged, for CrowdSec to read.
    echo_access_log: bool = False
    geoip_db: tuple[str, ...] = ()
    remediate: bool = False
    remediate_dry_run: bool = True
    lapi_credentials_file: str | None = None
    # Deletions per minute at most (a brake on a runaway remediation).
    remediate_max_per_minute: int = field(default=6, metadata=limits(1, 1000))
    # Decision origins remediation may delete; others (cscli, CAPI, lists...) are reported only.
    remediate_origins: tuple[str, ...] = ("crowdsec",)
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
    # Partitions of the topics the auditor creates.
    kafka_partitions: int = field(default=6, metadata=limits(1, 1024))
    # Seconds any one broker call may take (the group session gets a third, 6-10 s).
    kafka_timeout: float = field(default=30.0, metadata=limits(1, 600))
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password_file: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    node_name: str | None = None
    log_level: str = "info"
    # The Traefik bouncer plugin's settings, for ban_mismatch (none set: not judged).
    plugin_config: str | None = None
    plugin_forwarded_headers_trusted_ips: tuple[str, ...] = ()
    plugin_client_trusted_ips: tuple[str, ...] = ()
    plugin_forwarded_headers_custom_name: str | None = None

    def redacted(self) -> dict[str, Any]:
        """For ``--print-config``: every value, secrets shown only by where they come from."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        for key in URL_KEYS:
            if isinstance(out[key], str):
                out[key] = ",".join(redact_url(part) for part in out[key].split(","))
        out["lapi_key"] = (
            f"<from file {self.lapi_key_file}>"
            if self.lapi_key_file
            else f"<from env {self.lapi_key_env}>"
        )
        return out


_HINTS = typing.get_type_hints(RunConfig)
KEYS: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))
LIMITS: dict[str, Limits] = {f.name: f.metadata["limits"] for f in fields(RunConfig) if f.metadata}
_DEFAULTS: dict[str, object] = {f.name: f.default for f in fields(RunConfig)}

# One line of help and a metavar per key: ``--help`` of run/aggregate, ``--print-config`` and
# shell completion are all generated from here, with the default, choices and range of the key
# (tests/unit/cli/test_help.py fails on a key without an entry). A field may carry its own
# ``metadata={"help": ..., "metavar": ...}`` instead.
DOCS: dict[str, tuple[str, str]] = {
    "access_log": ("Traefik access log file or glob to follow (repeatable)", "PATH"),
    "envelope": ("container log envelope around each line", "ENVELOPE"),
    "checkpoint_dir": ("directory for read offsets, so a restart resumes (default: none)", "DIR"),
    "start_at": ("where to start in a file seen for the first time", "WHERE"),
    "max_line_bytes": ("longer lines are cut", "BYTES"),
    "poll_interval": ("seconds between looks at the access logs", "SECONDS"),
    "rotate_wait": ("seconds a rotated-away file is still read after it stops growing", "SECONDS"),
    "lapi_url": ("CrowdSec LAPI URL, e.g. http://127.0.0.1:8080 (default: none)", "URL"),
    "lapi_key_file": ("file holding the bouncer API key (else the env var lapi_key_env)", "PATH"),
    "lapi_key_env": ("environment variable holding the bouncer API key", "NAME"),
    "lapi_poll_interval": ("seconds between LAPI decision-stream polls", "SECONDS"),
    "metrics_listen": ("address of /metrics, /healthz and /readyz", "HOST:PORT"),
    "findings": ("file the findings are appended to as JSON lines (- for stdout)", "PATH"),
    "pod_cidr": ("pod network (repeatable; k3s default 10.42.0.0/16)", "CIDR"),
    "service_cidr": ("service network (repeatable; k3s default 10.43.0.0/16)", "CIDR"),
    "node_ip": ("a node address (repeatable)", "IP"),
    "lb_ip": ("a load-balancer address (repeatable)", "IP"),
    "internal_cidr": ("any other internal network (repeatable)", "CIDR"),
    "k3s_defaults": ("assume k3s' default pod and service networks", ""),
    "window": ("seconds of traffic behind the masked share and the blast radius", "SECONDS"),
    "masked_share": ("share of internal clients that flags masking", "SHARE"),
    "masked_min_requests": ("requests a window needs before masking is judged", "N"),
    "discovery": ("learn the cluster's networks from the Kubernetes API", ""),
    "kubeconfig": ("kubeconfig for discovery (default: in-cluster, then ~/.kube/config)", "PATH"),
    "kube_context": ("kubeconfig context for discovery (default: current)", "NAME"),
    "networks_file": ("networks file of the `auditor discover` watcher (its ConfigMap)", "PATH"),
    "echo_access_log": (
        "write every access-log line read to stdout, unchanged (findings = - goes to stderr)",
        "",
    ),
    "geoip_db": ("MaxMind DB adding country and AS to findings (repeatable)", "PATH"),
    "remediate": ("delete bans on internal targets from the LAPI (dry run unless told)", ""),
    "remediate_dry_run": ("only log what remediation would delete", ""),
    "lapi_credentials_file": ("machine credentials remediation logs in with", "PATH"),
    "remediate_max_per_minute": ("deletions per minute at most", "N"),
    "remediate_origins": ("decision origin remediation may delete (repeatable)", "ORIGIN"),
    "crowdsec_metrics_url": (
        "CrowdSec agents' Prometheus endpoints, comma-separated, for health and whitelist findings",
        "URL",
    ),
    "kafka_bootstrap": ("Kafka bootstrap servers, comma-separated (default: none)", "HOST:PORT"),
    "kafka_events_topic": ("topic of the access events sidecars publish", "TOPIC"),
    "kafka_totals_topic": ("topic of the per-node traffic totals", "TOPIC"),
    "kafka_findings_topic": ("topic the findings are published to", "TOPIC"),
    "kafka_group": ("consumer group of the aggregators", "GROUP"),
    "kafka_local_audit": ("also audit locally while publishing to Kafka", ""),
    "kafka_acks": ("producer acknowledgements", "ACKS"),
    "kafka_idempotence": ("idempotent producer (no duplicates on retry)", ""),
    "kafka_create_topics": ("create missing topics at start", ""),
    "kafka_partitions": ("partitions of the topics the auditor creates", "N"),
    "kafka_timeout": ("seconds any one broker call may take", "SECONDS"),
    "kafka_security_protocol": ("Kafka security protocol", "PROTOCOL"),
    "kafka_sasl_mechanism": ("SASL mechanism, e.g. SCRAM-SHA-512 (default: none)", "MECHANISM"),
    "kafka_sasl_username": ("SASL user name (default: none)", "USER"),
    "kafka_sasl_password_file": ("file holding the SASL password", "PATH"),
    "kafka_ssl_cafile": ("CA bundle to verify the brokers", "PATH"),
    "kafka_ssl_certfile": ("client certificate for TLS", "PATH"),
    "kafka_ssl_keyfile": ("client key for TLS", "PATH"),
    "node_name": ("this node's name in events and findings (default: the host name)", "NAME"),
    "log_level": ("log level", "LEVEL"),
    "plugin_config": (
        "the bouncer plugin's Middleware or option block (YAML/JSON), for ban_mismatch",
        "PATH",
    ),
    "plugin_forwarded_headers_trusted_ips": (
        "the bouncer's forwardedHeadersTrustedIPs (repeatable; replaces the file's)",
        "CIDR",
    ),
    "plugin_client_trusted_ips": (
        "the bouncer's clientTrustedIPs (repeatable; replaces the file's)",
        "CIDR",
    ),
    "plugin_forwarded_headers_custom_name": (
        "the bouncer's forwardedHeadersCustomName (X-Forwarded-For or X-Real-Ip)",
        "NAME",
    ),
}
# Keys only ``auditor run`` uses (reading files, the cluster, remediation, GeoIP): ``aggregate``
# has no flag for them (a shared config file may still set them).
RUN_ONLY: frozenset[str] = frozenset(
    {
        "access_log",
        "envelope",
        "checkpoint_dir",
        "start_at",
        "max_line_bytes",
        "poll_interval",
        "rotate_wait",
        "discovery",
        "kubeconfig",
        "kube_context",
        "networks_file",
        "echo_access_log",
        "geoip_db",
        "remediate",
        "remediate_dry_run",
        "lapi_credentials_file",
        "remediate_max_per_minute",
        "remediate_origins",
        "kafka_local_audit",
    }
)


def key_doc(key: str) -> tuple[str, str]:
    """(one-line help, metavar) of a key; KeyError when it has neither kind of entry."""
    meta = next(f.metadata for f in fields(RunConfig) if f.name == key)
    if "help" in meta:
        return str(meta["help"]), str(meta.get("metavar", "VALUE"))
    return DOCS[key]


def keys_for(command: str) -> tuple[str, ...]:
    """The keys that are flags of ``command`` (``run`` or ``aggregate``)."""
    return tuple(k for k in KEYS if command == "run" or k not in RUN_ONLY)


def _flag_help(key: str) -> str:
    text, _ = key_doc(key)
    kind = _base_type(key)
    default = _DEFAULTS[key]
    if key in LIMITS:
        text += f"; {LIMITS[key].describe(integer=kind is int)}"
    if kind is bool:
        return f"{text} (default: {'on' if default else 'off'})"
    if "(default" in text or (default is None or default == ()):
        return text
    if isinstance(default, tuple):
        default = ",".join(default)
    return f"{text} (default: {default})"


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


def _number(value: object, *, integer: bool) -> float | None:
    """A TOML number or a number written as text; None if it is not one (or, for an integer
    key, has a fraction). Infinities and NaN come back as floats for the range check to refuse."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, int):
        return value if integer else float(value)
    if not isinstance(value, float):
        return None
    if integer and math.isfinite(value):
        return int(value) if value.is_integer() else None
    return value


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
    if kind is int or kind is float:
        number = _number(value, integer=kind is int)
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        if number is None:
            raise bad(f"expected {'an integer' if kind is int else 'a number'}, got {shown}")
        bounds = LIMITS[key]
        if not bounds.admits(number):
            raise bad(f"must be {bounds.describe(integer=kind is int)}, got {shown}")
        return number
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


def add_config_args(parser: argparse.ArgumentParser, command: str = "run") -> None:
    """One flag per key of ``command``; flags default to 'not given' so file and env values
    survive. Help, metavar, choices and default come from the key's definition."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective config as TOML (secrets redacted) and exit",
    )
    group = parser.add_argument_group(
        "config keys (each also a TOML key and an AUDITOR_<KEY> environment variable)"
    )
    for key in keys_for(command):
        flag = "--" + key.replace("_", "-")
        kind = _base_type(key)
        _, metavar = key_doc(key)
        common: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS}
        help_text = _flag_help(key).replace("%", "%%")
        if kind is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, help=help_text, **common
            )
        elif kind is tuple:
            group.add_argument(flag, action="append", metavar=metavar, help=help_text, **common)
        elif key in CHOICES:
            group.add_argument(flag, choices=CHOICES[key], help=help_text, **common)
        else:
            group.add_argument(flag, metavar=metavar, help=help_text, **common)


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

    if host_port(config.metrics_listen) is None:
        raise bad("metrics_listen", f"expected HOST:PORT, got {config.metrics_listen!r}")
    for key, bounds in LIMITS.items():
        value = getattr(config, key)
        kinds = (int,) if _base_type(key) is int else (int, float)
        if not isinstance(value, kinds) or isinstance(value, bool) or not bounds.admits(value):
            raise bad(key, f"must be {bounds.describe(integer=kinds == (int,))}, got {value!r}")
    urls = [("lapi_url", config.lapi_url)] if config.lapi_url else []
    urls += [("crowdsec_metrics_url", u) for u in split_urls(config.crowdsec_metrics_url or "")]
    for key, url in urls:
        why = url_problem(url)
        if why:
            raise bad(key, why)
    if config.lapi_key_file and not config.lapi_url:
        raise bad("lapi_url", "lapi_key_file is set but lapi_url is not")
    if config.remediate and not config.lapi_credentials_file:
        raise bad("lapi_credentials_file", "required by remediate")
    if config.networks_file and config.discovery:
        raise bad("networks_file", "read the watcher's networks file or run discovery, not both")
    for origin in config.remediate_origins:
        if "," in origin:
            raise bad("remediate_origins", f"one origin per flag (repeat it), got {origin[:64]!r}")
        if not origin or len(origin) > 64 or not origin.isprintable():
            raise bad("remediate_origins", f"not a decision origin: {origin[:64]!r}")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A TOML basic string takes JSON's escapes (\", \\, \n, \uXXXX).
    return orjson.dumps(str(value)).decode()


def to_toml(config: RunConfig) -> str:
    """The effective config as a TOML file that ``--config`` reads back to the same config.

    URLs lose their ``user:password@``; secrets, which are never config values, appear only as
    a comment naming where they are read from, and only for the features that are on. Keys
    that are not set are comments (TOML has no null).
    """
    out = [
        "# ban-auditor config: the effective values (file < AUDITOR_* env < flags).",
        "# Paste it as the --config file; secrets are read from where the comments say.",
    ]
    for key in KEYS:
        value = getattr(config, key)
        if key in URL_KEYS and isinstance(value, str):
            value = ",".join(redact_url(part) for part in value.split(","))
        out.append(f"# {key} is not set" if value is None else f"{key} = {_toml_value(value)}")
    secrets = []
    if config.lapi_url:
        where = (
            f"file {config.lapi_key_file}" if config.lapi_key_file else f"env {config.lapi_key_env}"
        )
        secrets.append(f"# LAPI key: read from {where}")
    if config.kafka_bootstrap and config.kafka_sasl_mechanism:
        where = (
            f"file {config.kafka_sasl_password_file}"
            if config.kafka_sasl_password_file
            else "env AUDITOR_KAFKA_SASL_PASSWORD"
        )
        secrets.append(f"# Kafka SASL password: read from {where}")
    if config.remediate and config.lapi_credentials_file:
        secrets.append(f"# LAPI machine password: read from file {config.lapi_credentials_file}")
    return "\n".join([*out, *([""] if secrets else []), *secrets]) + "\n"


def print_config(config: RunConfig) -> None:
    """``--print-config``: the effective config as TOML (``to_toml``)."""
    sys.stdout.write(to_toml(config))
