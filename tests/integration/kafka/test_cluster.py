"""Three node sidecars -> Tansu -> two aggregators: the same findings as one replay of all logs.

Real components: a Tansu broker, a CrowdSec 1.4.6 LAPI with the decisions, three ``Runner``
sidecars publishing, two ``Aggregator`` group members, and ``auditor replay`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from pipeline.live.aggregator import Aggregator
from tests.support.crowdsec import CrowdSecInstance
from tests.support.kafka import TansuBroker, clf_lines, fold_findings, node_log_lines
from tests.support.paths import ROOT
from tests.support.waiting import until as _wait

LINES = 1500
PARTITIONS = 4
HOP = "198.51.100.7"


async def wait_until(pred: Callable[[], bool], what: str) -> None:
    await _wait(pred, what, timeout=60.0, interval=0.1)


def kafka_keys(broker: TansuBroker, **extra: Any) -> dict[str, Any]:
    return {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_idempotence": False,  # Tansu answers InitProducerId with an unknown error
        "kafka_partitions": PARTITIONS,
        "kafka_timeout": 10.0,
        "kafka_group": "cluster-test",
        "metrics_listen": "127.0.0.1:0",
        **extra,
    }


def key_evidence(f: dict[str, Any]) -> dict[str, Any]:
    ev = f["evidence"]
    if f["kind"] == "internal_ban":
        br = ev["blast_radius"]
        keep = ("requests", "total_requests", "request_share", "hosts", "routers", "addresses")
        return {k: br[k] for k in keep}
    if f["kind"] == "masked_client_ip":
        keep = (
            "requests",
            "internal_requests",
            "internal_share",
            "distinct_clients",
            "internal_hops",
            "headers_kept",
            "real_client_visible",
        )
        return {k: ev[k] for k in keep}
    if f["kind"] == "suspected_hop":
        # Counts depend on where bucket edges fall in each process (late lines join the newest
        # bucket); which address, the sites and forwarded clients it reached do not.
        keep = ("address", "hosts", "routers", "forwarded_clients", "lockout")
        return {k: ev[k] for k in keep}
    return dict(ev)


def hop_lines(n: int, seed: int, hop: str) -> list[bytes]:
    """Generated lines 90% of which arrive through ``hop``, a public address (node SNAT)."""
    from bench.generate import GenConfig, generate

    cfg = GenConfig(
        lines=n, seed=seed, masked_share=0.9, rate=20.0, clients=400, hops=((hop, 1.0),)
    )
    return list(generate(cfg))


def comparable(f: dict[str, Any], *, cluster: bool = True) -> tuple[str, str, str, str]:
    target = f["target"]
    if cluster and f["kind"] == "log_format":
        target = target.split(":", 1)[1]  # the aggregator names sources node:path
    return (f["kind"], target, f["severity"], json.dumps(key_evidence(f), sort_keys=True))


async def test_sidecars_and_two_aggregators_equal_one_replay(
    kafka_broker: TansuBroker, crowdsec_lapi: CrowdSecInstance, tmp_path: Path
) -> None:
    # Node 0 sees most clients through a public hop (its own SNAT: a suspected_hop) and has
    # some common-format lines; nodes 1 and 2 are mostly masked by internal hops.
    files = []
    for i, share in enumerate((0.0, 0.9, 0.9)):
        lines = node_log_lines(LINES, seed=10 + i, masked_share=share)
        if i == 0:
            lines = hop_lines(LINES, seed=10, hop=HOP)
            lines = lines[:100] + clf_lines(40) + lines[100:]
        path = tmp_path / f"node{i}.log"
        path.write_bytes(b"".join(lines))
        files.append(path)
    total = LINES * 3 + 40

    crowdsec_lapi.add_decision(ip="10.42.0.12", reason="kafka cluster")
    crowdsec_lapi.add_decision(range="10.42.0.0/24", reason="kafka cluster")
    crowdsec_lapi.add_decision(ip="203.0.113.200", reason="kafka cluster")
    key_file = tmp_path / "lapi.key"
    key_file.write_text(crowdsec_lapi.add_bouncer("auditor-kafka-cluster") + "\n")
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps(crowdsec_lapi.decisions_list_json()))

    lapi = {
        "lapi_url": crowdsec_lapi.lapi_url,
        "lapi_key_file": str(key_file),
        "lapi_poll_interval": 0.5,
    }
    aggs = [
        Aggregator(
            RunConfig(findings=str(tmp_path / f"agg{j}.jsonl"), **lapi, **kafka_keys(kafka_broker)),
            registry=CollectorRegistry(),
            session_timeout_ms=3000,
            heartbeat_interval_ms=300,
        )
        for j in range(2)
    ]
    agg_tasks = [asyncio.create_task(a.run()) for a in aggs]
    await wait_until(
        lambda: (
            all(a.events.owned for a in aggs)
            and sum(len(a.events.owned) for a in aggs) == PARTITIONS
        ),
        "both aggregators to own partitions",
    )
    runners = [
        build_runner(
            RunConfig(
                access_log=(str(f),),
                checkpoint_dir=str(tmp_path / f"ck{i}"),
                start_at="beginning",
                node_name=f"node{i}",
                poll_interval=0.05,
                findings=str(tmp_path / f"sidecar{i}.jsonl"),
                **kafka_keys(kafka_broker),
            ),
            registry=CollectorRegistry(),
        )
        for i, f in enumerate(files)
    ]
    runner_tasks = [asyncio.create_task(r.run()) for r in runners]
    await wait_until(
        lambda: all(a.view.lines() == total and len(a.engine.decisions) == 3 for a in aggs),
        "both aggregators to see every line and decision",
    )
    for r in runners:
        r.stop.set()
    assert await asyncio.gather(*runner_tasks) == [0, 0, 0]
    published = sum(
        r.metrics.registry.get_sample_value("auditor_kafka_events_published_total") or 0
        for r in runners
    )
    assert published == total  # every line parsed, one event each
    for a in aggs:
        a.stop.set()
    assert await asyncio.gather(*agg_tasks) == [0, 0]

    # Both aggregators hold the same cluster-wide state (decision durations differ by poll
    # time); each spoke only for its own partitions.
    views = [sorted(comparable(f.as_dict()) for f in a.engine.findings.values()) for a in aggs]
    assert views[0] == views[1]
    per_agg = [fold_findings([tmp_path / f"agg{j}.jsonl"]) for j in range(2)]
    assert all(per_agg), "each aggregator owns some findings"
    assert not set(per_agg[0]) & set(per_agg[1])
    combined = fold_findings([tmp_path / f"agg{j}.jsonl" for j in range(2)])
    assert not any((tmp_path / f"sidecar{i}.jsonl").read_text() for i in range(3))

    out = subprocess.run(
        [
            *(sys.executable, "-m", "pipeline.cli.main", "replay", *map(str, files)),
            *("--decisions", str(decisions), "--format", "json", "--no-progress"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1, out.stderr  # findings at or above high
    report = json.loads(out.stdout)
    assert report["summary"]["lines"]["read"] == total
    want = sorted(comparable(f, cluster=False) for f in report["findings"])
    got = sorted(comparable(f) for f in combined.values())
    assert {w[:2] for w in want} >= {
        ("internal_ban", "10.42.0.12"),
        ("internal_ban", "10.42.0.0/24"),
        ("masked_client_ip", "websecure"),
        ("suspected_hop", HOP),
        ("log_format", str(files[0])),
    }
    assert got == want
