"""An aggregator dies mid-stream: the other takes over and every event counts exactly once.

Two ``auditor aggregate`` processes share the events partitions; one is SIGKILLed (no leave, no
final flush) while sidecars keep publishing. A sidecar is also rewound to an older checkpoint,
so it re-sends lines the cluster already counted: they must be dropped as duplicates.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from parsers.records import ENTRYPOINT, ParseStats
from parsers.traefik import TraefikParser
from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from pipeline.live.runner import Runner
from tests.support.kafka import (
    PARTITIONS,
    AggregatorProcess,
    TansuBroker,
    fold_findings,
    metric_sum,
    node_log_lines,
)
from tests.support.waiting import until as _wait

HALF = 600


@pytest.fixture
def aggregators(kafka_broker: TansuBroker, tmp_path: Path) -> Iterator[list[AggregatorProcess]]:
    procs = [AggregatorProcess(kafka_broker, tmp_path, f"agg{j}") for j in range(2)]
    try:
        yield procs
    finally:
        for p in procs:
            p.signal(signal.SIGKILL)
            p.wait()


async def wait_until(pred: Callable[[], bool], what: str) -> None:
    await _wait(pred, what, timeout=60.0, interval=0.2)


def sidecar(broker: TansuBroker, tmp_path: Path, i: int) -> Runner:
    config = RunConfig(
        access_log=(str(tmp_path / f"node{i}.log"),),
        checkpoint_dir=str(tmp_path / f"ck{i}"),
        start_at="beginning",
        node_name=f"node{i}",
        poll_interval=0.05,
        metrics_listen="127.0.0.1:0",
        kafka_bootstrap=broker.bootstrap,
        kafka_idempotence=False,
        kafka_partitions=PARTITIONS,
        kafka_timeout=10.0,
    )
    return build_runner(config, registry=CollectorRegistry())


def lines_seen(agg: AggregatorProcess) -> float:
    return metric_sum(agg.metrics(), "auditor_lines_total", source="kafka")


async def test_killed_aggregator_is_replaced_and_every_event_counts_once(
    kafka_broker: TansuBroker, aggregators: list[AggregatorProcess], tmp_path: Path
) -> None:
    victim, survivor = aggregators
    await wait_until(
        lambda: (
            victim.owned() | survivor.owned() == set(range(PARTITIONS))
            and not victim.owned() & survivor.owned()
            and all(a.owned() for a in aggregators)
        ),
        "the two aggregators to share the partitions",
    )
    logs = [node_log_lines(2 * HALF, seed=30 + i, masked_share=0.9) for i in range(2)]
    paths = [tmp_path / f"node{i}.log" for i in range(2)]
    for path, lines in zip(paths, logs, strict=True):
        path.write_bytes(b"".join(lines[:HALF]))

    runners = [sidecar(kafka_broker, tmp_path, i) for i in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    await wait_until(lambda: lines_seen(survivor) == 2 * HALF, "the first half to be counted")

    # Sidecar 1 stops; keep its checkpoint (after the first half) to rewind to later.
    runners[1].stop.set()
    assert await tasks[1] == 0
    shutil.copytree(tmp_path / "ck1", tmp_path / "ck1-first-half")

    victim.signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    for path, lines in zip(paths, logs, strict=True):
        with path.open("ab") as fh:
            fh.write(b"".join(lines[HALF:]))
    runners[1] = sidecar(kafka_broker, tmp_path, 1)
    tasks[1] = asyncio.create_task(runners[1].run())
    total = 4 * HALF
    await wait_until(lambda: lines_seen(survivor) == total, "the survivor to count every line")

    # Rewind sidecar 1 to its first-half checkpoint: it re-sends its whole second half.
    runners[1].stop.set()
    assert await tasks[1] == 0
    shutil.rmtree(tmp_path / "ck1")
    shutil.copytree(tmp_path / "ck1-first-half", tmp_path / "ck1")
    runners[1] = sidecar(kafka_broker, tmp_path, 1)
    tasks[1] = asyncio.create_task(runners[1].run())
    await wait_until(
        lambda: metric_sum(survivor.metrics(), "auditor_kafka_duplicates_dropped_total") >= HALF,
        "the re-sent second half to be dropped as duplicates",
    )
    for r in runners:
        r.stop.set()
    assert await asyncio.gather(*tasks) == [0, 0]

    metrics = survivor.metrics()
    assert metric_sum(metrics, "auditor_lines_total", source="kafka") == total
    assert metric_sum(metrics, "auditor_requests_total") == total
    assert metric_sum(metrics, "auditor_kafka_duplicates_dropped_total") >= HALF
    survivor.signal(signal.SIGTERM)
    assert survivor.wait() == 0

    # Every request counted once in the findings: the survivor now speaks for all partitions.
    per_ep: Counter[str] = Counter()
    parser = TraefikParser()
    for lines in logs:
        for rec in parser.parse([ln.rstrip(b"\n") for ln in lines], ParseStats()):
            per_ep[rec[ENTRYPOINT]] += 1
    findings = fold_findings([victim.findings, survivor.findings])
    masked = {t: f for (k, t), f in findings.items() if k == "masked_client_ip"}
    assert "websecure" in masked
    for ep, f in masked.items():
        assert f["evidence"]["requests"] == per_ep[ep]  # type: ignore[index]
