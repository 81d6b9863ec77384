"""Prometheus metrics of the auditor (names and labels are a contract with deploy/ rules and
dashboards; tests/support/metric_names.py lists them).

Counters are advanced from the engine's cumulative tallies by difference, once per refresh, so the
hot path never touches a metric object. Known label sets are initialised to zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from parsers.records import SkipReason
from pipeline import __version__
from pipeline.core.addresses import INTERNAL_CLASSES, AddrClass
from pipeline.core.engine import BAN_TYPES, Engine
from pipeline.core.findings import Kind, Severity

SOURCE_KINDS = ("file", "container", "stdin", "kafka")
RESULTS = ("json", "common", *(r.value for r in SkipReason))
SCOPES = ("Ip", "Range", "other")
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
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.build_info = Gauge(
            "auditor_build_info", "Build of the running auditor", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
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
        self.lapi_up = Gauge(
            "auditor_lapi_up", "1 when the last CrowdSec LAPI poll succeeded", registry=r
        )
        self.lapi_last_success = Gauge(
            "auditor_lapi_last_success_timestamp_seconds",
            "Time of the last successful LAPI poll",
            registry=r,
        )
        self.lapi_polls = Counter(
            "auditor_lapi_polls", "LAPI polls by result", ["result"], registry=r
        )
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
            "auditor_remediations", "Remediation actions", ["action", "result"], registry=r
        )
        # Created on the first refresh with discovery configured: a 0 from an auditor that does
        # not do discovery would fire the discovery-down alert.
        self.kube_up: Gauge | None = None
        self.kube_sync: Gauge | None = None
        self.kafka_published = Counter(
            "auditor_kafka_events_published", "Access events acknowledged by Kafka", registry=r
        )
        self.kafka_consumed = Counter(
            "auditor_kafka_events_consumed", "Access events consumed from Kafka", registry=r
        )
        self.kafka_duplicates = Counter(
            "auditor_kafka_duplicates_dropped", "Duplicate access events dropped", registry=r
        )
        self.kafka_dead_letters = Counter(
            "auditor_kafka_dead_letters",
            "Kafka messages skipped as unreadable or invalid, by topic kind and reason class",
            ["topic", "reason"],
            registry=r,
        )
        self._seen_lines: dict[tuple[str, str], int] = {}
        self._seen_requests: dict[tuple[str, str], int] = {}
        self._seen_raised: dict[tuple[str, str], int] = {}
        self._seen_polls = (0, 0)
        self._seen_rotations = 0
        self._init_zero()

    def _init_zero(self) -> None:
        for src in SOURCE_KINDS:
            for res in RESULTS:
                self.lines.labels(src, res)
        for kind in Kind:
            for sev in Severity:
                self.findings_active.labels(kind.value, sev.value).set(0)
                self.findings_total.labels(kind.value, sev.value)
        for cls in AddrClass:
            self.internal_bans.labels(cls.value).set(0)
        for res in ("ok", "error"):
            self.lapi_polls.labels(res)
        for res in ("done", "dry_run", "error", "rate_limited"):
            self.remediations.labels("delete_decision", res)
        for topic in DEAD_LETTER_TOPICS:
            for reason in DEAD_LETTER_REASONS:
                self.kafka_dead_letters.labels(topic, reason)
        self.lapi_up.set(0)

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
        for name, st in engine.stats.items():
            kind = source_kinds.get(name, "file")
            for res, n in (("json", st.json), ("common", st.common)):
                lines[(kind, res)] = lines.get((kind, res), 0) + n
            for reason, n in st.skipped.items():
                lines[(kind, reason.value)] = lines.get((kind, reason.value), 0) + n
        self._advance(self.lines, self._seen_lines, lines.items())

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
            self.lapi_up.set(1 if health.lapi_up else 0)
            if health.lapi_last_success:
                self.lapi_last_success.set(health.lapi_last_success)
            ok0, bad0 = self._seen_polls
            if health.lapi_polls_ok > ok0:
                self.lapi_polls.labels("ok").inc(health.lapi_polls_ok - ok0)
            if health.lapi_polls_failed > bad0:
                self.lapi_polls.labels("error").inc(health.lapi_polls_failed - bad0)
            self._seen_polls = (health.lapi_polls_ok, health.lapi_polls_failed)
        self.tail_lag.set(health.tail_lag_bytes)
        if health.tail_rotations > self._seen_rotations:
            self.tail_rotations.inc(health.tail_rotations - self._seen_rotations)
            self._seen_rotations = health.tail_rotations
        if health.kube_configured:
            if self.kube_up is None or self.kube_sync is None:
                self.kube_up = Gauge(
                    "auditor_kubernetes_up",
                    "1 when Kubernetes discovery is in sync",
                    registry=self.registry,
                )
                self.kube_sync = Gauge(
                    "auditor_kubernetes_sync_timestamp_seconds",
                    "Time of the last successful Kubernetes sync",
                    registry=self.registry,
                )
            self.kube_up.set(1 if health.kube_up else 0)
            if health.kube_last_sync:
                self.kube_sync.set(health.kube_last_sync)

    def dead_letter(self, topic: str, reason: str) -> None:
        """Count a skipped Kafka message; the labels must come from the closed sets above."""
        if topic not in DEAD_LETTER_TOPICS or reason not in DEAD_LETTER_REASONS:
            raise ValueError(f"unknown dead-letter label {topic!r}/{reason!r}")
        self.kafka_dead_letters.labels(topic, reason).inc()

    def mark_event(self, source_kind: str, now: float) -> None:
        self.last_event.labels(source_kind).set(now)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
