"""``auditor aggregate`` judges ban_mismatch and suspected_hop's User-Agents on a real Tansu broker.

Two ``auditor run`` sidecars (in process) publish version-2 events: node 0 serves most clients
through a public hop (its own SNAT: many User-Agents behind one address), node 1 serves clients
through the servicelb hop while the bouncer plugin reads ``X-Real-Ip`` (the hop): every such
request is checked on the hop while CrowdSec bans the client. An older sidecar still publishes
version-1 messages (a rolling upgrade). An ``auditor aggregate`` process, given the plugin's
settings by flag, folds them all and raises ``ban_mismatch`` (hop) and ``suspected_hop`` with
``user_agents`` in its evidence; the version-1 lines count, unjudged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from pipeline.kafka.events import BatchEncoder, Chunk, encode_chunk, partition_for
from tests.support.crowdsec import traefik_json_line
from tests.support.kafka import (
    PARTITIONS,
    AggregatorProcess,
    TansuBroker,
    fold_findings,
    metric_sum,
    public_hop_lines,
)
from tests.support.paths import ROOT
from tests.support.waiting import until

LINES = 1500
PUBLIC_HOP = "198.51.100.7"  # node 0's SNAT address
SVCLB = "10.42.0.9"  # node 1's servicelb hop, which the bouncer checks
THROUGH_SVCLB = 240
OLD_LINES = 30
START = dt.datetime(2025, 3, 14, 8, 0, 0, tzinfo=dt.UTC)  # the generated lines' start
GROUP = "mismatch-test"


@pytest.fixture
def procs() -> Iterator[list[AggregatorProcess]]:
    started: list[AggregatorProcess] = []
    try:
        yield started
    finally:
        for p in started:
            p.signal(signal.SIGKILL)
            p.wait()


def through_svclb(n: int) -> list[bytes]:
    """Clients behind servicelb: ClientHost is the client (X-Forwarded-For trusted by Traefik),
    the peer and X-Real-Ip are the hop."""
    out = []
    for i in range(n):
        client = f"81.2.0.{i % 40 + 1}"
        out.append(
            traefik_json_line(
                client,
                client_addr=f"{SVCLB}:{30000 + i}",
                when=START + dt.timedelta(seconds=i * 0.25),
                extra={"request_X-Forwarded-For": client, "request_X-Real-Ip": SVCLB},
            ).encode()
            + b"\n"
        )
    return out


async def publish_v1(broker: TansuBroker) -> None:
    """What a sidecar of the previous release writes: version-1 rows (no User-Agent, ClientHost
    or peer), one message per partition."""
    lines = [
        traefik_json_line(f"93.184.0.{i + 1}", when=START + dt.timedelta(seconds=i)).encode()
        for i in range(OLD_LINES)
    ]
    ends, pos = [], 0
    for line in lines:
        pos += len(line) + 1
        ends.append(pos)
    rows, skips = BatchEncoder("old-node").entries("9:9:old", lines, ends)
    assert not skips
    by_part: dict[int, list[list[Any]]] = {}
    for row in rows:
        by_part.setdefault(partition_for(row[4], PARTITIONS), []).append(row[:9])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for p, part_rows in sorted(by_part.items()):
            data = encode_chunk(Chunk("old-node", "9:9:old", "/var/log/traefik.log", part_rows, []))
            assert data.startswith(b'{"v":1,')
            await producer.send_and_wait("auditor-events", data, partition=p)
    finally:
        await producer.stop()


async def wait_for(agg: AggregatorProcess, pred: Callable[[], bool], what: str) -> None:
    def check() -> bool:
        if not agg.running:
            pytest.fail(f"the aggregator exited ({agg.proc.returncode}):\n{agg.log_text()[-3000:]}")
        return pred()

    await until(check, what, timeout=90.0, interval=0.2, detail=lambda: agg.log_text()[-2000:])


async def test_aggregate_raises_ban_mismatch_and_a_hop_with_its_user_agents(
    kafka_broker: TansuBroker, tmp_path: Path, procs: list[AggregatorProcess]
) -> None:
    files = [tmp_path / "node0.log", tmp_path / "node1.log"]
    files[0].write_bytes(b"".join(public_hop_lines(LINES, seed=21, hop=PUBLIC_HOP)))
    files[1].write_bytes(b"".join(through_svclb(THROUGH_SVCLB)))
    total = LINES + THROUGH_SVCLB + OLD_LINES

    plugin = ("--plugin-forwarded-headers-custom-name", "X-Real-Ip")
    agg = AggregatorProcess(kafka_broker, tmp_path, "agg", group=GROUP, extra=plugin)
    procs.append(agg)
    await wait_for(
        agg,
        lambda: agg.ready()[0] == 200 and len(agg.owned()) == PARTITIONS,
        "the aggregator to own every partition and be ready",
    )
    await publish_v1(kafka_broker)
    runners = [
        build_runner(
            RunConfig(
                access_log=(str(f),),
                checkpoint_dir=str(tmp_path / f"ck{i}"),
                start_at="beginning",
                node_name=f"node{i}",
                poll_interval=0.05,
                findings=str(tmp_path / f"sidecar{i}.jsonl"),
                kafka_bootstrap=kafka_broker.bootstrap,
                kafka_idempotence=False,  # Tansu answers InitProducerId with an unknown error
                kafka_partitions=PARTITIONS,
                kafka_timeout=10.0,
                metrics_listen="127.0.0.1:0",
            ),
            registry=CollectorRegistry(),
        )
        for i, f in enumerate(files)
    ]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    await wait_for(
        agg,
        lambda: metric_sum(agg.metrics(), "auditor_lines_total", source="kafka") >= total,
        "the aggregator to fold every line",
    )
    for r in runners:
        r.stop.set()
    assert await asyncio.gather(*tasks) == [0, 0]
    assert metric_sum(agg.metrics(), "auditor_lines_total", source="kafka") == total
    assert metric_sum(agg.metrics(), "auditor_kafka_dead_letters_total") == 0
    agg.signal(signal.SIGTERM)
    assert agg.wait(60) == 0

    found = fold_findings([agg.findings])
    mismatch = found.get(("ban_mismatch", "hop"))
    assert mismatch is not None, sorted(found)
    ev: dict[str, Any] = mismatch["evidence"]  # type: ignore[assignment]
    assert ev["mode"] == "hop"
    assert ev["scope"] == "window"
    assert ev["bouncer_checks"][0] == SVCLB  # (the generated CDN's edges are hops too)
    assert ev["requests"] >= THROUGH_SVCLB
    assert ev["bouncer"]["forwardedHeadersCustomName"] == "X-Real-Ip"
    # The same verdicts as one replay of both nodes' logs; the older sidecar's lines (no peer
    # sent) are the only difference: unjudged.
    out = subprocess.run(
        [
            *(sys.executable, "-m", "pipeline.cli.main", "replay", *map(str, files), *plugin),
            *("--format", "json", "--no-progress"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1, out.stderr  # findings at or above high
    [want] = [
        f["evidence"]
        for f in json.loads(out.stdout)["findings"]
        if (f["kind"], f["target"]) == ("ban_mismatch", "hop")
    ]
    same = ("requests", "judged_requests", "share", "bouncer_checks", "crowdsec_bans", "examples")
    assert {k: ev[k] for k in same} == {k: want[k] for k in same}
    assert ev["unjudged_requests"] == want["unjudged_requests"] + OLD_LINES

    hop = found.get(("suspected_hop", PUBLIC_HOP))
    assert hop is not None, sorted(found)
    hop_ev: dict[str, Any] = hop["evidence"]  # type: ignore[assignment]
    assert hop_ev["user_agents"] is not None
    assert hop_ev["user_agents"] >= 3
    assert not any((tmp_path / f"sidecar{i}.jsonl").read_text() for i in range(2))
