"""``auditor_source_unreadable``: the health state of ``auditor run`` for a wrong input (the
same rule ``auditor replay`` exits 2 on), behind the BanAuditorInputUnreadable alert."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from parsers.records import ParseStats, SkipReason
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.engine import Engine, EngineConfig
from sinks.prometheus import Metrics, SourceHealth


def _engine() -> Engine:
    return Engine(EngineConfig(), Classifier(k3s_defaults()), lambda: 1_700_000_000.0)


def _feed(engine: Engine, source: str, *, json: int = 0, **skipped: int) -> None:
    stats = ParseStats()
    stats.json = json
    for reason, n in skipped.items():
        stats.skip(SkipReason(reason), n)
    stats.lines = json + sum(skipped.values())
    engine.ingest([], stats, source)


def _unreadable(registry: CollectorRegistry, source: str) -> float | None:
    return registry.get_sample_value("auditor_source_unreadable", {"source": source})


def test_a_source_of_only_garbage_is_unreadable() -> None:
    registry = CollectorRegistry()
    metrics, engine = Metrics(registry), _engine()
    _feed(engine, "/var/log/a.log", unrecognized=19)
    metrics.refresh(engine, {"/var/log/a.log": "file"}, SourceHealth())
    assert _unreadable(registry, "file") == 0.0  # too few lines to judge yet
    _feed(engine, "/var/log/a.log", unrecognized=10, empty=50)
    metrics.refresh(engine, {"/var/log/a.log": "file"}, SourceHealth())
    assert _unreadable(registry, "file") == 1.0


def test_wrong_envelope_is_unreadable_and_recovers_once_records_parse() -> None:
    registry = CollectorRegistry()
    metrics, engine = Metrics(registry), _engine()
    kinds = {"c": "container"}
    _feed(engine, "c", bad_envelope=100)
    metrics.refresh(engine, kinds, SourceHealth())
    assert _unreadable(registry, "container") == 1.0
    _feed(engine, "c", json=20)
    metrics.refresh(engine, kinds, SourceHealth())
    assert _unreadable(registry, "container") == 0.0


def test_some_noise_is_not_unreadable() -> None:
    registry = CollectorRegistry()
    metrics, engine = Metrics(registry), _engine()
    _feed(engine, "a", json=10, not_access_log=90)
    metrics.refresh(engine, {"a": "file"}, SourceHealth())
    assert _unreadable(registry, "file") == 0.0


def test_no_series_for_a_source_that_read_nothing() -> None:
    registry = CollectorRegistry()
    metrics, engine = Metrics(registry), _engine()
    _feed(engine, "a", json=30)
    metrics.refresh(engine, {"a": "file"}, SourceHealth())
    assert _unreadable(registry, "file") == 0.0
    assert _unreadable(registry, "kafka") is None
    assert _unreadable(registry, "container") is None
