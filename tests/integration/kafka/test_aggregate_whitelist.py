"""``auditor aggregate --crowdsec-metrics-url``: whitelist_gap judged on the cluster's traffic.

In the Kafka layout the sidecars only publish, so no sidecar's engine sees the traffic that
``whitelist_gap``'s "internal traffic reaches CrowdSec's scenarios" compares CrowdSec's metrics
with; the aggregators do. Here a sidecar publishes masked traffic (most requests through
servicelb hops) to a real Tansu broker, and an ``auditor aggregate`` process polls two CrowdSec
agents' metrics (text captured from the real CrowdSec 1.4.6 agent, served on loopback): the one
without the whitelist parser gets ``internal_unwhitelisted`` (its counters rise while the
cluster's traffic is internal) and ``whitelist_missing`` (the other runs it); the one with it
gets nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from tests.support.crowdsec_agents import Agents, _agents  # noqa: F401 - the fixture
from tests.support.kafka import (
    PARTITIONS,
    AggregatorProcess,
    TansuBroker,
    metric_sum,
    node_log_lines,
)
from tests.support.waiting import until

LINES = 1200


async def test_aggregate_raises_whitelist_gap_from_the_cluster_traffic(
    kafka_broker: TansuBroker, tmp_path: Path, agents: Agents
) -> None:
    agents.serve("hub", "wl-hub-before")
    agents.serve("bare", "wl-none-before")
    hub, bare = agents.url("hub"), agents.url("bare")
    log = tmp_path / "node0.log"
    log.write_bytes(b"".join(node_log_lines(LINES, seed=31, masked_share=0.9)))
    agg = AggregatorProcess(
        kafka_broker,
        tmp_path,
        "agg",
        group="whitelist-test",
        extra=("--crowdsec-metrics-url", f"{hub},{bare}", "--lapi-poll-interval", "0.5"),
    )
    try:

        def alive() -> None:
            if not agg.running:
                pytest.fail(f"the aggregator exited:\n{agg.log_text()[-3000:]}")

        def ready() -> bool:
            alive()
            return agg.ready()[0] == 200 and len(agg.owned()) == PARTITIONS

        await until(ready, "the aggregator to be ready", timeout=90.0, interval=0.2)
        runner = build_runner(
            RunConfig(
                access_log=(str(log),),
                checkpoint_dir=str(tmp_path / "ck"),
                start_at="beginning",
                node_name="node0",
                poll_interval=0.05,
                kafka_bootstrap=kafka_broker.bootstrap,
                kafka_idempotence=False,  # Tansu answers InitProducerId with an unknown error
                kafka_partitions=PARTITIONS,
                kafka_timeout=10.0,
                metrics_listen="127.0.0.1:0",
            ),
            registry=CollectorRegistry(),
        )
        task = asyncio.create_task(runner.run())

        def folded() -> bool:
            alive()
            return metric_sum(agg.metrics(), "auditor_lines_total", source="kafka") >= LINES

        await until(folded, "the aggregator to fold every line", timeout=90.0, interval=0.2)
        runner.stop.set()
        assert await task == 0
        # Both agents now scored the Traefik lines; only "hub" whitelisted the hops.
        agents.serve("hub", "wl-hub-internal")
        agents.serve("bare", "wl-none-internal")

        def raised() -> bool:
            alive()
            if not agg.findings.exists():
                return False
            lines = agg.findings.read_text().splitlines()
            checks = {(e.get("check"), e["target"]) for e in map(json.loads, lines)}
            return {("internal_unwhitelisted", bare), ("whitelist_missing", bare)} <= checks

        await until(
            raised,
            "whitelist_gap for the agent without the whitelist",
            timeout=60.0,
            interval=0.2,
            detail=lambda: agg.log_text()[-2000:],
        )
        agg.signal(signal.SIGTERM)
        assert agg.wait(60) == 0
    finally:
        if agg.running:
            agg.signal(signal.SIGKILL)
            agg.wait()
    lines = agg.findings.read_text().splitlines()
    events = [e for e in map(json.loads, lines) if e["kind"] == "whitelist_gap"]
    checks = {e["check"] for e in events if e["target"] == bare}
    assert "internal_unwhitelisted" in checks, events
    assert "whitelist_missing" in checks, events
    unwhitelisted = next(e for e in events if e["check"] == "internal_unwhitelisted")
    assert unwhitelisted["evidence"]["internal_requests"] >= 20
    assert not [e for e in events if e["target"] == hub], "nothing about the agent with it"
