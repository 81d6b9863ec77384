"""aiokafka plumbing shared by the sidecar publisher, the aggregator and the findings sink.

Everything that talks to the broker goes through ``bounded`` or ``stop_quietly``: with the broker
down some aiokafka calls wait forever (aio-libs/aiokafka#1101: ``send_and_wait`` and then
``stop()`` of an idempotent producer), so each call gets ``kafka_timeout`` and a timeout becomes
``KafkaUnavailable``, which callers retry. Topic problems that retrying cannot fix (missing topic
with creation off, creation refused) are ``ConfigError`` naming the topic and its config key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.secrets import Secret, load_secret, redact_url

log = logging.getLogger("auditor.kafka")

T = TypeVar("T")

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC_EXISTS = 36  # TopicAlreadyExists: another process created it first


class KafkaUnavailable(Exception):
    """The broker did not answer in time or refused the connection; worth retrying."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    key: str  # the config key that names the topic, for error messages
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Connection settings, validated once; ``client_kwargs`` feeds every aiokafka client."""

    bootstrap: tuple[str, ...]
    timeout: float = 30.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "ban-auditor"
    acks: str = "all"
    idempotence: bool = True

    @classmethod
    def from_config(cls, config: RunConfig, *, role: str) -> KafkaSettings:
        if not config.kafka_bootstrap:
            raise ConfigError("config key 'kafka_bootstrap': required for Kafka")
        servers = tuple(s.strip() for s in config.kafka_bootstrap.split(",") if s.strip())
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                msg = (
                    "config key 'kafka_bootstrap': expected HOST:PORT[,HOST:PORT...], "
                    f"got {redact_url(server)[:80]!r}"
                )
                raise ConfigError(msg)
        if config.kafka_timeout <= 0:
            raise ConfigError("config key 'kafka_timeout': must be positive")
        if config.kafka_idempotence and config.kafka_acks != "all":
            msg = "config key 'kafka_idempotence': an idempotent producer needs kafka_acks=all"
            raise ConfigError(msg)
        protocol = config.kafka_security_protocol
        password: Secret | None = None
        if protocol.startswith("SASL_"):
            mech = config.kafka_sasl_mechanism
            if mech not in SASL_MECHANISMS:
                msg = (
                    f"config key 'kafka_sasl_mechanism': {protocol} needs one of "
                    f"{', '.join(SASL_MECHANISMS)}, got {mech!r}"
                )
                raise ConfigError(msg)
            if not config.kafka_sasl_username:
                msg = f"config key 'kafka_sasl_username': required by {protocol}"
                raise ConfigError(msg)
            if config.kafka_sasl_password_file:
                password, _ = load_secret(
                    file=config.kafka_sasl_password_file, what="kafka_sasl_password_file"
                )
            else:
                password, _ = load_secret(
                    env="AUDITOR_KAFKA_SASL_PASSWORD", what="kafka SASL password"
                )
        elif config.kafka_sasl_mechanism:
            msg = (
                "config key 'kafka_sasl_mechanism': set kafka_security_protocol to "
                f"SASL_PLAINTEXT or SASL_SSL to use it (it is {protocol})"
            )
            raise ConfigError(msg)
        uses_tls = protocol in ("SSL", "SASL_SSL")
        tls_keys = {
            "kafka_ssl_cafile": config.kafka_ssl_cafile,
            "kafka_ssl_certfile": config.kafka_ssl_certfile,
            "kafka_ssl_keyfile": config.kafka_ssl_keyfile,
        }
        for key, value in tls_keys.items():
            if value and not uses_tls:
                msg = f"config key {key!r}: set kafka_security_protocol to SSL or SASL_SSL"
                raise ConfigError(msg)
        node = config.node_name or socket.gethostname()
        return cls(
            bootstrap=servers,
            timeout=config.kafka_timeout,
            security_protocol=protocol,
            sasl_mechanism=config.kafka_sasl_mechanism,
            sasl_username=config.kafka_sasl_username,
            sasl_password=password,
            ssl_cafile=config.kafka_ssl_cafile,
            ssl_certfile=config.kafka_ssl_certfile,
            ssl_keyfile=config.kafka_ssl_keyfile,
            client_id=f"ban-auditor-{role}-{node}",
            acks=config.kafka_acks,
            idempotence=config.kafka_idempotence,
        )

    @property
    def servers(self) -> str:
        return ",".join(self.bootstrap)

    def client_kwargs(self) -> dict[str, Any]:
        """Connection keyword arguments common to producers, consumers and the admin client."""
        kw: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            try:
                kw["ssl_context"] = create_ssl_context(
                    cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
                )
            except (OSError, ValueError) as exc:
                msg = f"config keys 'kafka_ssl_*': cannot load TLS files: {exc}"
                raise ConfigError(msg) from None
        if self.security_protocol.startswith("SASL_"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = (
                self.sasl_password.reveal() if self.sasl_password is not None else None
            )
        return kw

    def producer_kwargs(self) -> dict[str, Any]:
        """Durable producer settings: acks as configured (all by default), bounded requests."""
        acks: str | int = "all" if self.acks == "all" else int(self.acks)
        return {
            **self.client_kwargs(),
            "acks": acks,
            "enable_idempotence": self.idempotence,
            "request_timeout_ms": int(self.timeout * 1000),
            "linger_ms": 0,
        }


async def bounded(aw: Awaitable[T], seconds: float, what: str) -> T:
    """Await ``aw`` for at most ``seconds``; timeouts and connection errors become
    ``KafkaUnavailable`` (other broker errors propagate)."""
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        msg = f"{what}: no answer within {seconds:g}s"
        raise KafkaUnavailable(msg) from None
    except (OSError, KafkaError) as exc:
        if isinstance(exc, KafkaError) and not _transport_error(exc):
            raise
        msg = f"{what}: {type(exc).__name__}: {exc}"
        raise KafkaUnavailable(msg) from None


def _transport_error(exc: KafkaError) -> bool:
    name = type(exc).__name__
    return getattr(exc, "retriable", False) or name in (
        "KafkaConnectionError",
        "NoBrokersAvailable",
        "NodeNotReadyError",
        "KafkaTimeoutError",
        "RequestTimedOutError",
        "UnknownError",
    )


async def stop_quietly(client: Any, seconds: float, what: str) -> None:
    """``client.stop()`` (or ``close()``) that cannot hang: bounded wait, then cancel."""
    closer = getattr(client, "stop", None) or client.close
    task = asyncio.ensure_future(closer())
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        log.warning("%s did not stop within %gs; abandoning it", what, seconds)
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait({task}, timeout=1.0)
        return
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("%s stopped with an error: %s", what, exc)


async def ensure_topics(
    settings: KafkaSettings, specs: Sequence[TopicSpec], *, create: bool
) -> dict[str, int]:
    """Check that every topic exists, creating the missing ones when ``create``; returns the
    partition count of each.

    Existence is checked on the topic list, never by describing a topic: some brokers (Tansu
    among them) auto-create a topic that is merely described.
    """
    admin = AIOKafkaAdminClient(
        **settings.client_kwargs(), request_timeout_ms=int(settings.timeout * 1000)
    )
    where = f"Kafka at {settings.servers}"
    try:
        await bounded(admin.start(), settings.timeout, f"connect to {where}")
        existing = set(
            await bounded(admin.list_topics(), settings.timeout, f"list topics on {where}")
        )
        missing = [s for s in specs if s.name not in existing]
        if missing:
            await _create(admin, settings, missing, create=create)
        described = await bounded(
            admin.describe_topics([s.name for s in specs]),
            settings.timeout,
            f"describe topics on {where}",
        )
        counts = {str(t["topic"]): len(t.get("partitions") or ()) for t in described}
        for s in specs:
            if counts.get(s.name, 0) < 1:
                msg = f"Kafka topic {s.name!r} (config key {s.key!r}) has no partitions"
                raise ConfigError(msg)
        return counts
    finally:
        await stop_quietly(admin, settings.timeout, "Kafka admin client")


async def _create(
    admin: AIOKafkaAdminClient,
    settings: KafkaSettings,
    missing: Sequence[TopicSpec],
    *,
    create: bool,
) -> None:
    where = f"Kafka at {settings.servers}"
    if not create:
        s = missing[0]
        msg = (
            f"Kafka topic {s.name!r} (config key {s.key!r}) does not exist on "
            f"{settings.servers}; create it with {s.partitions} partition(s) or set "
            "kafka_create_topics=true"
        )
        raise ConfigError(msg)
    new = [NewTopic(s.name, s.partitions, 1, topic_configs=dict(s.configs)) for s in missing]
    resp = await bounded(admin.create_topics(new), settings.timeout, f"create topics on {where}")
    by_name = {s.name: s for s in missing}
    for err in resp.topic_errors:
        name, code = err[0], err[1]
        message = err[2] if len(err) > 2 else None
        if code not in (0, _TOPIC_EXISTS):
            s = by_name[name]
            msg = (
                f"cannot create Kafka topic {name!r} (config key {s.key!r}) on "
                f"{settings.servers}: error {code} {message or ''}".rstrip()
            )
            raise ConfigError(msg)
        if code == 0:
            log.info("created Kafka topic %s (%d partitions)", name, by_name[name].partitions)


async def ensure_topics_retrying(
    settings: KafkaSettings,
    specs: Sequence[TopicSpec],
    *,
    create: bool,
    stop: asyncio.Event,
    backoff_max: float = 10.0,
) -> dict[str, int] | None:
    """``ensure_topics`` until it succeeds (partition counts) or ``stop`` is set (None).

    An unreachable broker is retried with backoff; a topic problem is raised at once.
    """
    delay = 0.5
    warned = False
    while not stop.is_set():
        try:
            counts = await ensure_topics(settings, specs, create=create)
            if warned:
                log.info("Kafka at %s is reachable", settings.servers)
            return counts
        except KafkaUnavailable as exc:
            if not warned:
                log.warning("Kafka is unreachable (%s); retrying", exc)
                warned = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(backoff_max, delay * 2)
    return None
