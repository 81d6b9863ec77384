"""``/metrics`` of an idle sidecar: only what is configured, no ``_created`` series, no
``auditor_lapi_up 0`` without a LAPI, no zero series for sources that are not there."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.engine import Engine, EngineConfig
from sinks.prometheus import Metrics, SourceHealth


def _engine() -> Engine:
    return Engine(EngineConfig(), Classifier(k3s_defaults()), lambda: 1_700_000_000.0)


def _series(metrics: Metrics) -> list[str]:
    text = metrics.exposition().decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _idle(**kwargs: bool) -> tuple[Metrics, list[str]]:
    metrics = Metrics(CollectorRegistry(), **kwargs)
    metrics.refresh(_engine(), {}, SourceHealth())
    return metrics, _series(metrics)


def test_idle_plain_sidecar_exports_few_series_and_no_created() -> None:
    _, series = _idle(kafka=False, remediation=False)
    names = {s.split("{")[0].split(" ")[0] for s in series}
    assert not any(n.endswith("_created") for n in names)
    assert "auditor_lapi_up" not in names
    assert "auditor_lapi_polls_total" not in names
    assert not any(n.startswith("auditor_kafka_") for n in names)
    assert "auditor_remediations_total" not in names
    assert "auditor_lines_total" not in names  # no source has been seen yet
    # Most are the zeroed findings series: 10 kinds x 5 severities, active and total (100).
    assert len(series) < 130, len(series)


def test_lapi_series_appear_once_a_lapi_is_configured() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, kafka=False, remediation=False)
    metrics.refresh(_engine(), {}, SourceHealth(lapi_configured=True, lapi_up=False))
    assert registry.get_sample_value("auditor_lapi_up") == 0.0
    assert registry.get_sample_value("auditor_lapi_polls_total", {"result": "error"}) == 0.0


def test_line_series_only_for_the_sources_seen() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, kafka=False, remediation=False)
    metrics.refresh(_engine(), {"/var/log/access.log": "file"}, SourceHealth())
    families = {
        s.labels["source"]
        for fam in text_string_to_metric_families(metrics.exposition().decode())
        for s in fam.samples
        if s.name == "auditor_lines_total"
    }
    assert families == {"file"}


def test_kafka_and_remediation_counters_still_count_when_off() -> None:
    """Callers need no checks: counters of a feature that is off count into nothing."""
    metrics, _ = _idle(kafka=False, remediation=False)
    metrics.kafka_published.inc(3)
    metrics.remediations.labels("delete_decision", "done").inc()
    assert "auditor_kafka" not in metrics.exposition().decode()


def test_default_keeps_kafka_and_remediation_series() -> None:
    _, series = _idle()
    assert any(s.startswith("auditor_kafka_dead_letters_total") for s in series)
    assert any(s.startswith("auditor_remediations_total") for s in series)
