"""Prometheus metrics of the auditor (names and labels are a contract with deploy/ rules and
dashboards; tests/support/metric_names.py lists them).

Counters are advanced from the engine's cumulative tallies by difference, once per refresh, so the
hot path never touches a metric object. Known label sets are initialised to zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

import pipeline
from parsers.records import SkipReason
from pipeline.core.addresses import INTERNAL_CLASSES, AddrClass
from pipeline.core.engine import BAN_TYPES, Engine
from pipeline.core.findings import Kind, Severity

# A `_created` series per counter doubles an idle sidecar's exposition for no alert or panel.
disable_created_metrics()  # type: ignore[no-untyped-call]

SOURCE_KINDS = ("file", "container", "stdin", "kafka")
RESULTS = ("json", "common", *(r.value for r in SkipReason))
SCOPES = ("Ip", "Range", "other")
# auditor_source_unreadable: judged once a source read this many non-blank lines, of which
# fewer than this share were access records (the same share as replay's exit 2).
UNREADABLE_MIN_LINES = 20
MIN_PARSED_SHARE = 0.05
# Dead letters: messages the aggregator skipped (pipeline/kafka/validate.py names the classes).
DEAD_LETTER_TOPICS = ("events", "totals")
DEAD_LETTER_REASONS = (
    "empty",
    "too_large",
    "not_json",
    "unknown_version",
    "bad_schema",
    "bad_timestamp",
    "out_of_range",
    "apply_error",
)


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """Numbers the wiring reports at refresh time (sources own them, not the engine)."""

    lapi_configured: bool = False
    lapi_up: bool = False
    lapi_last_success: float | None = None
    lapi_polls_ok: int = 0
    lapi_polls_failed: int = 0
    tail_lag_bytes: int = 0
    tail_rotations: int = 0
    kube_configured: bool = False
    kube_up: bool = False
    kube_last_sync: float | None = None


class Metrics:
    """Series exist only for what is configured: LAPI gauges once a LAPI is (``SourceHealth``),
    line counters per source kind once it is seen (``source_seen``), Kafka and remediation
    counters when ``kafka``/``remediation`` say so (elsewhere they count into a registry that
    is never exported, so callers need no checks)."""

    def __init__(
        self, registry: CollectorRegistry, *, kafka: bool = True, remediation: bool = True
    ) -> None:
        self.registry = registry
        r = registry
        unexported = CollectorRegistry(auto_describe=False)
        rk = r if kafka else unexported
        rr = r if remediation else unexported
        self.build_info = Gauge(
            "auditor_build_info", "Build of the running auditor", ["version"], registry=r
        )
        self.build_info.labels(pipeline.__version__).set(1)
        self.lines = Counter(
            "auditor_lines",
            "Log lines read, by source kind and parse result",
            ["source", "result"],
            registry=r,
        )
        self.requests = Counter(
            "auditor_requests",
            "Access-log requests by entrypoint and class of the client address",
            ["entrypoint", "client_class"],
            registry=r,
        )
        self.internal_ratio = Gauge(
            "auditor_internal_client_ratio",
            "Share of requests from internal addresses over the sliding window",
            ["entrypoint"],
            registry=r,
        )
        self.decisions_active = Gauge(
            "auditor_decisions_active",
            "Active CrowdSec decisions",
            ["scope", "type", "target_class"],
            registry=r,
        )
        self.internal_bans = Gauge(
            "auditor_internal_bans_active",
            "Active CrowdSec ban/captcha decisions on internal targets",
            ["target_class"],
            registry=r,
        )
        self.findings_active = Gauge(
            "auditor_findings_active", "Findings currently raised", ["kind", "severity"], registry=r
        )
        self.findings_total = Counter(
            "auditor_findings", "Findings raised", ["kind", "severity"], registry=r
        )
        # Created on the first refresh with a LAPI configured: `auditor_lapi_up 0` from an
        # auditor without one would read as "LAPI down".
        self.lapi_up: Gauge | None = None
        self.lapi_last_success: Gauge | None = None
        self.lapi_polls: Counter | None = None
        self.tail_lag = Gauge(
            "auditor_tail_lag_bytes", "Bytes written to followed files but not read yet", registry=r
        )
        self.tail_rotations = Counter(
            "auditor_tail_rotations", "Rotations and truncations seen", registry=r
        )
        self.last_event = Gauge(
            "auditor_last_event_timestamp_seconds",
            "Wall time the last line from a source was processed",
            ["source"],
            registry=r,
        )
        self.remediations = Counter(
            "auditor_remediations", "Remediation actions", ["action", "result"], registry=rr
        )
        # Created on the first refresh with discovery configured: a 0 from an auditor that does
        # not do discovery would fire the discovery-down alert.
        self.kube_up: Gauge | None = None
        self.kube_sync: Gauge | None = None
        # Likewise created on first use: only an auditor that reads a networks file, or echoes
        # its access log, exports these.
        self.networks_file_age: Gauge | None = None
        self.echo_dropped: Counter | None = None
        self._seen_echo_dropped = 0
        self.kafka_published = Counter(
            "auditor_kafka_events_published", "Access events acknowledged by Kafka", registry=rk
        )
        self.kafka_consumed = Counter(
            "auditor_kafka_events_consumed", "Access events consumed from Kafka", registry=rk
        )
        self.kafka_duplicates = Counter(
            "auditor_kafka_duplicates_dropped", "Duplicate access events dropped", registry=rk
        )
        self.kafka_dead_letters = Counter(
            "auditor_kafka_dead_letters",
            "Kafka messages skipped as unreadable or invalid, by topic kind and reason class",
            ["topic", "reason"],
            registry=rk,
        )
        self.source_unreadable = Gauge(
            "auditor_source_unreadable",
            "1 when a source read lines but (almost) none were access log records: the wrong "
            "file or container envelope; 0 once it reads access records",
            ["source"],
            registry=r,
        )
        self._seen_lines: dict[tuple[str, str], int] = {}
        self._seen_requests: dict[tuple[str, str], int] = {}
        self._seen_raised: dict[tuple[str, str], int] = {}
        self._seen_polls = (0, 0)
        self._seen_rotations = 0
        self._kinds_seen: set[str] = set()
        self._init_zero()

    def source_seen(self, kind: str) -> None:
        """Zero series for a source kind's line results, so rates start from zero."""
        if kind not in self._kinds_seen:
            self._kinds_seen.add(kind)
            for res in RESULTS:
                self.lines.labels(kind, res)

    def _init_zero(self) -> None:
        for kind in Kind:
            for sev in Severity:
                self.findings_active.labels(kind.value, sev.value).set(0)
                self.findings_total.labels(kind.value, sev.value)
        for cls in AddrClass:
            self.internal_bans.labels(cls.value).set(0)
        for res in ("done", "dry_run", "error", "rate_limited"):
            self.remediations.labels("delete_decision", res)
        for topic in DEAD_LETTER_TOPICS:
            for reason in DEAD_LETTER_REASONS:
                self.kafka_dead_letters.labels(topic, reason)

    @staticmethod
    def _advance(
        counter: Counter,
        seen: dict[tuple[str, str], int],
        current: Iterable[tuple[tuple[str, str], int]],
    ) -> None:
        for labels, value in current:
            delta = value - seen.get(labels, 0)
            if delta > 0:
                counter.labels(*labels).inc(delta)
                seen[labels] = value

    def refresh(self, engine: Engine, source_kinds: dict[str, str], health: SourceHealth) -> None:
        """Bring every metric up to date with the engine and the sources' health."""
        lines: dict[tuple[str, str], int] = {}
        for kind in source_kinds.values():
            self.source_seen(kind)
        for name, st in engine.stats.items():
            kind = source_kinds.get(name, "file")
            self.source_seen(kind)
            for res, n in (("json", st.json), ("common", st.common)):
                lines[(kind, res)] = lines.get((kind, res), 0) + n
            for reason, n in st.skipped.items():
                lines[(kind, reason.value)] = lines.get((kind, reason.value), 0) + n
        self._advance(self.lines, self._seen_lines, lines.items())
        self._judge_readable(lines)

        whole_by_class: dict[tuple[str, str], int] = {}
        for (ep, cls), n in engine.request_classes().items():
            whole_by_class[(ep, cls.value)] = n
        self._advance(self.requests, self._seen_requests, whole_by_class.items())

        window = engine.traffic.window()
        self.internal_ratio.clear()  # entrypoints that left the window drop out
        for ep, total in window.ep_total.items():
            self.internal_ratio.labels(ep).set(
                window.ep_internal.get(ep, 0) / total if total else 0
            )

        self.decisions_active.clear()
        for cls in AddrClass:
            self.internal_bans.labels(cls.value).set(0)
        for (scope, dtype, cls), n in engine.decision_counts.items():
            label_scope = scope if scope in SCOPES else "other"
            self.decisions_active.labels(label_scope, dtype, cls.value).inc(n)
            if cls in INTERNAL_CLASSES and dtype.lower() in BAN_TYPES:
                self.internal_bans.labels(cls.value).inc(n)

        for kind in Kind:
            for sev in Severity:
                self.findings_active.labels(kind.value, sev.value).set(0)
        for f in engine.findings.values():
            self.findings_active.labels(f.kind.value, f.severity.value).inc()
        raised = {(k.value, s.value): n for (k, s), n in engine.raised_total.items()}
        self._advance(self.findings_total, self._seen_raised, raised.items())

        if health.lapi_configured:
            self._refresh_lapi(health)
        self.tail_lag.set(health.tail_lag_bytes)
        if health.tail_rotations > self._seen_rotations:
            self.tail_rotations.inc(health.tail_rotations - self._seen_rotations)
            self._seen_rotations = health.tail_rotations
        if health.kube_configured:
            if self.kube_up is None or self.kube_sync is None:
                self.kube_up, self.kube_sync = kube_gauges(self.registry)
            self.kube_up.set(1 if health.kube_up else 0)
            if health.kube_last_sync:
                self.kube_sync.set(health.kube_last_sync)

    def _refresh_lapi(self, health: SourceHealth) -> None:
        if self.lapi_up is None or self.lapi_last_success is None or self.lapi_polls is None:
            self.lapi_up = Gauge(
                "auditor_lapi_up",
                "1 when the last CrowdSec LAPI poll succeeded",
                registry=self.registry,
            )
            self.lapi_last_success = Gauge(
                "auditor_lapi_last_success_timestamp_seconds",
                "Time of the last successful LAPI poll",
                registry=self.registry,
            )
            self.lapi_polls = Counter(
                "auditor_lapi_polls", "LAPI polls by result", ["result"], registry=self.registry
            )
            for res in ("ok", "error"):
                self.lapi_polls.labels(res)
        self.lapi_up.set(1 if health.lapi_up else 0)
        if health.lapi_last_success:
            self.lapi_last_success.set(health.lapi_last_success)
        ok0, bad0 = self._seen_polls
        if health.lapi_polls_ok > ok0:
            self.lapi_polls.labels("ok").inc(health.lapi_polls_ok - ok0)
        if health.lapi_polls_failed > bad0:
            self.lapi_polls.labels("error").inc(health.lapi_polls_failed - bad0)
        self._seen_polls = (health.lapi_polls_ok, health.lapi_polls_failed)

    def _judge_readable(self, lines: dict[tuple[str, str], int]) -> None:
        """The health state behind BanAuditorInputUnreadable, by the rule ``auditor replay``
        exits 2 on (``pipeline/cli/replay.py``): under 5 % of the non-blank lines parsed."""
        parsed: dict[str, int] = {}
        nonblank: dict[str, int] = {}
        for (kind, res), n in lines.items():
            if res != SkipReason.EMPTY.value:
                nonblank[kind] = nonblank.get(kind, 0) + n
            if res in ("json", "common"):
                parsed[kind] = parsed.get(kind, 0) + n
        for kind, n in nonblank.items():  # only sources that read something get a series
            bad = n >= UNREADABLE_MIN_LINES and parsed.get(kind, 0) < MIN_PARSED_SHARE * n
            self.source_unreadable.labels(kind).set(1 if bad else 0)

    def set_networks_file_age(self, age_s: float) -> None:
        """Seconds since the networks file in force was in sync with the cluster (+Inf: no
        good copy yet)."""
        if self.networks_file_age is None:
            self.networks_file_age = Gauge(
                "auditor_networks_file_age_seconds",
                "Seconds since the cluster view in the networks file was in sync (+Inf: none)",
                registry=self.registry,
            )
        self.networks_file_age.set(age_s)

    def set_echo_dropped(self, total: int) -> None:
        """``echo_access_log``: lines not echoed because stdout did not keep up (cumulative)."""
        if self.echo_dropped is None:
            self.echo_dropped = Counter(
                "auditor_echo_dropped_lines",
                "Access-log lines not echoed to stdout because it did not keep up",
                registry=self.registry,
            )
        if total > self._seen_echo_dropped:
            self.echo_dropped.inc(total - self._seen_echo_dropped)
            self._seen_echo_dropped = total

    def dead_letter(self, topic: str, reason: str) -> None:
        """Count a skipped Kafka message; the labels must come from the closed sets above."""
        if topic not in DEAD_LETTER_TOPICS or reason not in DEAD_LETTER_REASONS:
            raise ValueError(f"unknown dead-letter label {topic!r}/{reason!r}")
        self.kafka_dead_letters.labels(topic, reason).inc()

    def mark_event(self, source_kind: str, now: float) -> None:
        self.last_event.labels(source_kind).set(now)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def kube_gauges(registry: CollectorRegistry) -> tuple[Gauge, Gauge]:
    """``auditor_kubernetes_up`` and ``_sync_timestamp_seconds``: of ``auditor run`` with
    discovery, and of the ``auditor discover`` watcher."""
    up = Gauge("auditor_kubernetes_up", "1 when Kubernetes discovery is in sync", registry=registry)
    sync = Gauge(
        "auditor_kubernetes_sync_timestamp_seconds",
        "Time of the last successful Kubernetes sync",
        registry=registry,
    )
    return up, sync
