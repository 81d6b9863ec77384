"""The exporter's metric contract, in one place.

Alert rules, the Grafana dashboard and the live-exporter test all check against these tables, so
a renamed metric or label value breaks a test instead of silently emptying a panel or an alert.
"""

from __future__ import annotations

import re
from typing import Final

SOURCES: Final = frozenset({"file", "container", "stdin", "kafka"})
LINE_RESULTS: Final = frozenset(
    {
        "json",
        "common",
        "empty",
        "too_long",
        "invalid_utf8",
        "invalid_json",
        "not_access_log",
        "bad_field",
        "unrecognized",
        "bad_envelope",
        "partial_overflow",
    }
)
CLIENT_CLASSES: Final = frozenset(
    {
        "loopback",
        "node",
        "loadbalancer",
        "pod",
        "service",
        "cgnat",
        "docker",
        "link_local",
        "private",
        "reserved",
        "public",
        "invalid",
    }
)
SCOPES: Final = frozenset({"Ip", "Range", "other"})
FINDING_KINDS: Final = frozenset(
    {
        "internal_ban",
        "masked_client_ip",
        "log_format",
        "config",
        "crowdsec_health",
        "remediation",
        "suspected_hop",
        "masking_started",
        "ban_mismatch",
        "whitelist_gap",
    }
)
SEVERITIES: Final = frozenset({"info", "low", "medium", "high", "critical"})
POLL_RESULTS: Final = frozenset({"ok", "error"})
REMEDIATION_ACTIONS: Final = frozenset({"delete_decision"})
REMEDIATION_RESULTS: Final = frozenset({"done", "dry_run", "error", "rate_limited"})
DEAD_LETTER_TOPICS: Final = frozenset({"events", "totals"})
DEAD_LETTER_REASONS: Final = frozenset(
    {
        "empty",
        "too_large",
        "not_json",
        "unknown_version",
        "bad_schema",
        "bad_timestamp",
        "out_of_range",
        "apply_error",
    }
)

# name -> (type, label names). Counter names include the `_total` suffix as scraped.
METRICS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "auditor_build_info": ("gauge", frozenset({"version"})),
    "auditor_lines_total": ("counter", frozenset({"source", "result"})),
    "auditor_requests_total": ("counter", frozenset({"entrypoint", "client_class"})),
    "auditor_internal_client_ratio": ("gauge", frozenset({"entrypoint"})),
    "auditor_decisions_active": ("gauge", frozenset({"scope", "type", "target_class"})),
    "auditor_internal_bans_active": ("gauge", frozenset({"target_class"})),
    "auditor_findings_active": ("gauge", frozenset({"kind", "severity"})),
    "auditor_findings_total": ("counter", frozenset({"kind", "severity"})),
    "auditor_lapi_up": ("gauge", frozenset()),
    "auditor_lapi_last_success_timestamp_seconds": ("gauge", frozenset()),
    "auditor_lapi_polls_total": ("counter", frozenset({"result"})),
    "auditor_tail_lag_bytes": ("gauge", frozenset()),
    "auditor_source_unreadable": ("gauge", frozenset({"source"})),
    "auditor_tail_rotations_total": ("counter", frozenset()),
    "auditor_last_event_timestamp_seconds": ("gauge", frozenset({"source"})),
    "auditor_remediations_total": ("counter", frozenset({"action", "result"})),
    "auditor_kubernetes_up": ("gauge", frozenset()),
    "auditor_kubernetes_sync_timestamp_seconds": ("gauge", frozenset()),
    "auditor_networks_file_age_seconds": ("gauge", frozenset()),
    "auditor_echo_dropped_lines_total": ("counter", frozenset()),
    "auditor_kafka_events_published_total": ("counter", frozenset()),
    "auditor_kafka_events_consumed_total": ("counter", frozenset()),
    "auditor_kafka_duplicates_dropped_total": ("counter", frozenset()),
    "auditor_kafka_dead_letters_total": ("counter", frozenset({"topic", "reason"})),
}

# Closed value sets per label; labels not listed (entrypoint, version, type) are open.
LABEL_VALUES: Final[dict[str, frozenset[str]]] = {
    "source": SOURCES,
    "client_class": CLIENT_CLASSES,
    "target_class": CLIENT_CLASSES,
    "scope": SCOPES,
    "kind": FINDING_KINDS,
    "severity": SEVERITIES,
}
# `result` and `action` mean different things per metric.
METRIC_LABEL_VALUES: Final[dict[tuple[str, str], frozenset[str]]] = {
    ("auditor_lines_total", "result"): LINE_RESULTS,
    ("auditor_lapi_polls_total", "result"): POLL_RESULTS,
    ("auditor_remediations_total", "result"): REMEDIATION_RESULTS,
    ("auditor_remediations_total", "action"): REMEDIATION_ACTIONS,
    ("auditor_kafka_dead_letters_total", "topic"): DEAD_LETTER_TOPICS,
    ("auditor_kafka_dead_letters_total", "reason"): DEAD_LETTER_REASONS,
}

# Labels Prometheus attaches at scrape time (target labels from a ServiceMonitor or static config).
TARGET_LABELS: Final = frozenset({"job", "instance", "namespace", "pod", "service", "container"})


def allowed_values(metric: str, label: str) -> frozenset[str] | None:
    """The closed set of values `label` may take on `metric`, or None when it is open."""
    return METRIC_LABEL_VALUES.get((metric, label), LABEL_VALUES.get(label))


# --- Static checks of PromQL text against the contract (used by the rule and dashboard tests) ---

_FUNCTIONS: Final = frozenset(
    {
        "abs", "absent", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp_max",
        "clamp_min", "count", "count_over_time", "delta", "deriv", "floor", "group",
        "histogram_quantile", "increase", "irate", "label_replace", "label_values",
        "last_over_time", "max", "max_over_time", "min", "min_over_time", "quantile", "rate",
        "resets", "round", "scalar", "sort", "sort_desc", "stddev", "sum", "sum_over_time",
        "time", "timestamp", "topk", "vector",
    }
)  # fmt: skip
_KEYWORDS: Final = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*,?')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[a-zA-Z_:][\w:]*")
# Metrics other than ours that rules and panels may use.
FOREIGN_METRICS: Final[dict[str, frozenset[str]]] = {"up": frozenset()}


def _labels_of(metric: str) -> frozenset[str] | None:
    if metric in METRICS:
        return METRICS[metric][1] | TARGET_LABELS
    if metric in FOREIGN_METRICS:
        return FOREIGN_METRICS[metric] | TARGET_LABELS
    return None


def metrics_in(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers that are not functions or keywords)."""
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", expr)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r'"[^"]*"', " ", text)
    text = re.sub(r"\b\d[\w.]*", " ", text)  # numbers, durations
    return {name for name in _IDENT.findall(text) if name not in _FUNCTIONS | _KEYWORDS}


def contract_errors(expr: str, extra_labels: frozenset[str] = frozenset()) -> list[str]:
    """Everything in `expr` that the exporter contract does not provide; empty when clean.

    Checks metric names, label names in selectors and grouping clauses, and label values
    against the closed value sets (plain alternatives of a regex matcher included).
    """
    errors: list[str] = []
    metrics = metrics_in(expr)
    known_labels = set(extra_labels)
    for metric in metrics:
        labels = _labels_of(metric)
        if labels is None:
            errors.append(f"unknown metric {metric}")
        else:
            known_labels |= labels
    for selector in _SELECTOR.finditer(expr):
        metric = selector.group(1) or ""
        labels = _labels_of(metric) if metric else TARGET_LABELS
        body = selector.group(2)
        matched = "".join(m.group(0) for m in _MATCHER.finditer(body))
        if matched.strip() != body.strip():
            errors.append(f"unparsed matchers in {metric}{{{body}}}")
        for m in _MATCHER.finditer(body):
            label, op, value = m.groups()
            if labels is not None and label not in labels:
                errors.append(f"{metric} has no label {label}")
                continue
            allowed = allowed_values(metric, label)
            if allowed is None:
                continue
            values = value.split("|") if op in ("=~", "!~") else [value]
            for v in values:
                if re.fullmatch(r"\w+", v) and v not in allowed:
                    errors.append(f'{metric}{{{label}{op}"{value}"}}: {v!r} is not a known value')
    for grouping in _GROUPING.finditer(expr):
        for label in filter(None, (x.strip() for x in grouping.group(2).split(","))):
            if label not in known_labels:
                errors.append(f"{grouping.group(1)} ({label}): no selected metric has it")
    return errors
