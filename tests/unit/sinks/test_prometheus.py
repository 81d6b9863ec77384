"""The exporter exposes the metric contract (tests/support/metric_names.py) with values from
the engine."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from parsers.crowdsec import parse_decisions
from parsers.records import AccessRecord, ParseStats
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.engine import Engine, EngineConfig
from sinks.http import MetricsServer
from sinks.prometheus import Metrics, SourceHealth
from tests.support.engine import rec
from tests.support.metric_names import METRICS, allowed_values


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _rec(ts: float, ep: str, client: str) -> AccessRecord:
    return rec(client, ts, ep=ep, host="video.example", router="invidious@kubernetes")


def _engine() -> Engine:
    return Engine(EngineConfig(), Classifier(k3s_defaults()), Clock())


def _scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client import generate_latest

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_every_contract_metric_is_exposed_with_allowed_labels() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    engine = _engine()
    stats = ParseStats()
    stats.lines = stats.json = 3
    engine.ingest([_rec(1_700_000_000.0, "web", "10.42.0.9")] * 3, stats, "/var/log/a.log")
    engine.apply(
        parse_decisions(
            b'[{"id":1,"origin":"crowdsec","scenario":"x","scope":"Ip",'
            b'"type":"ban","value":"10.42.0.9","duration":"4h"}]'
        )
    )
    metrics.refresh(
        engine,
        {"/var/log/a.log": "file"},
        SourceHealth(
            lapi_configured=True,
            lapi_up=True,
            lapi_last_success=1.0,
            lapi_polls_ok=2,
            kube_configured=True,
            kube_up=True,
            kube_last_sync=2.0,
        ),
    )
    metrics.mark_event("file", 3.0)
    metrics.set_networks_file_age(5.0)
    metrics.set_echo_dropped(0)
    metrics.kafka_published.inc(0)
    metrics.kafka_consumed.inc(0)
    metrics.kafka_duplicates.inc(0)
    scraped = _scrape(registry)
    for name, (_, labels) in METRICS.items():
        assert name in scraped, f"{name} not exposed"
        for sample_labels, _ in scraped[name]:
            assert set(sample_labels) == labels, (name, sample_labels)
            for label, value in sample_labels.items():
                allowed = allowed_values(name, label)
                assert allowed is None or value in allowed, (name, label, value)
    bans = {lab["target_class"]: v for lab, v in scraped["auditor_internal_bans_active"]}
    assert bans["pod"] == 1.0
    req = {
        (lab["entrypoint"], lab["client_class"]): v for lab, v in scraped["auditor_requests_total"]
    }
    assert req[("web", "pod")] == 3.0
    lines = {(lab["source"], lab["result"]): v for lab, v in scraped["auditor_lines_total"]}
    assert lines[("file", "json")] == 3.0
    assert lines[("file", "invalid_json")] == 0.0  # initialised to zero for a seen source
    assert ("container", "invalid_json") not in lines  # no series for an absent source


def test_no_ip_host_or_path_in_labels() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    engine = _engine()
    stats = ParseStats()
    stats.lines = stats.json = 1
    engine.ingest([_rec(1_700_000_000.0, "web", "203.0.113.5")], stats, "/var/log/a.log")
    metrics.refresh(engine, {}, SourceHealth())
    text = metrics.exposition().decode()
    assert "203.0.113.5" not in text
    assert "video.example" not in text
    assert "/var/log" not in text


def test_counters_advance_by_difference() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    engine = _engine()
    for i in range(3):
        stats = ParseStats()
        stats.lines = stats.json = 2
        engine.ingest([_rec(1_700_000_000.0 + i, "web", "198.51.100.1")] * 2, stats, "a")
        metrics.refresh(engine, {"a": "file"}, SourceHealth())
    assert (
        registry.get_sample_value(
            "auditor_requests_total", {"entrypoint": "web", "client_class": "public"}
        )
        == 6.0
    )
    assert (
        registry.get_sample_value("auditor_lines_total", {"source": "file", "result": "json"})
        == 6.0
    )


async def test_http_routes() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    ready = {"ok": False}
    server = MetricsServer(
        "127.0.0.1",
        0,
        metrics.exposition,
        lambda: (ready["ok"], "ready" if ready["ok"] else "lapi down"),
    )
    await server.start()

    async def get(path: str) -> tuple[str, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0].decode(), body

    try:
        status, body = await get("/metrics")
        assert status.endswith("200 OK") and b"auditor_build_info" in body
        assert (await get("/healthz"))[0].endswith("200 OK")
        status, body = await get("/readyz")
        assert "503" in status and body == b"lapi down\n"
        ready["ok"] = True
        assert (await get("/readyz"))[0].endswith("200 OK")
        assert "404" in (await get("/nope"))[0]
    finally:
        await server.close()


def test_kubernetes_gauges_only_with_discovery() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.refresh(_engine(), {}, SourceHealth())
    assert b"auditor_kubernetes_up" not in metrics.exposition()
    metrics.refresh(_engine(), {}, SourceHealth(kube_configured=True, kube_up=False))
    assert registry.get_sample_value("auditor_kubernetes_up") == 0.0


async def test_a_client_that_never_reads_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    import sinks.http

    monkeypatch.setattr(sinks.http, "WRITE_TIMEOUT_S", 0.5)
    big = b"x" * (8 << 20)  # larger than the socket buffers
    server = MetricsServer("127.0.0.1", 0, lambda: big, lambda: (True, "ready"))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1024)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1.5)  # read nothing: the server gives up and aborts
        got = b""
        while chunk := await reader.read(1 << 20):
            got += chunk
        assert len(got) < len(big)  # the body was cut off, not delivered to a stalled client
        writer.close()
    finally:
        await server.close()
