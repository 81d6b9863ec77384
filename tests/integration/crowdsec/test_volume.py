"""A real CrowdSec 1.4.6 LAPI holding a blocklist-sized set of decisions (``cscli decisions
import``): the stream brings every one of them into the engine, counted right, the few internal
ones flagged, at a bounded cost per decision."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections import Counter
from pathlib import Path

from bench.lapi_volume import volume_rows, write_csv
from pipeline.core.addresses import AddrClass
from pipeline.core.findings import Kind
from pipeline.crowdsec.lapi import LapiConfig, LapiStream
from pipeline.secrets import Secret
from tests.support.crowdsec_fixtures import CrowdSecFactory, start_or_fail
from tests.support.engine import make_engine

N = 30_000
INTERNAL = 12
CLASS = {"10.42.": AddrClass.POD, "10.43.": AddrClass.SERVICE, "192.168.": AddrClass.PRIVATE}


def expected_class(value: str) -> AddrClass:
    return next((c for prefix, c in CLASS.items() if value.startswith(prefix)), AddrClass.PUBLIC)


async def test_a_blocklist_sized_lapi_is_held_counted_and_judged(
    crowdsec_factory: CrowdSecFactory, tmp_path: Path
) -> None:
    inst = crowdsec_factory()
    start_or_fail(inst.start_lapi)
    key = inst.add_bouncer("auditor-volume")
    rows = volume_rows(N, internal=INTERNAL)
    csv = tmp_path / "decisions.csv"
    write_csv(rows, csv)
    inst.cscli("decisions", "import", "-i", str(csv), timeout=300)

    engine, _ = make_engine()
    stream = LapiStream(
        LapiConfig(url=inst.lapi_url, key=Secret(key), key_source="test", timeout=60,
                   poll_interval=0.2)
    )  # fmt: skip
    stop = asyncio.Event()
    deltas = stream.deltas(stop).__aiter__()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        while True:
            delta = await asyncio.wait_for(anext(deltas), 120)
            engine.apply(delta)
            if getattr(delta, "last", True):  # the startup answer is complete
                break
        per_decision = (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        tracemalloc.stop()

    try:
        assert len(engine.decisions) == N
        # 1.4.6's import stores every line with the --scope flag's default, Ip: the ranges come
        # back as Ip decisions on a CIDR, which the engine classifies as ranges.
        want = Counter(("Ip", r.type, expected_class(r.value)) for r in rows)
        assert dict(engine.decision_counts) == dict(want)
        internal = {r.value for r in rows[:INTERNAL]}
        flagged = {f.target for f in engine.findings.values() if f.kind is Kind.INTERNAL_BAN}
        assert flagged == internal
        # The whole-record engine held ~1.5 KB per decision (Decision, ActiveDecision,
        # Classification, key, dict slot), and the answer whole while parsing it.
        assert per_decision < 400, per_decision

        # An increment on top of the big state: one internal ban lifted.
        gone = rows[0].value
        await asyncio.to_thread(inst.delete_decision, ip=gone)
        while len(engine.decisions) == N:
            engine.apply(await asyncio.wait_for(anext(deltas), 30))
        assert len(engine.decisions) == N - 1
        flagged = {f.target for f in engine.findings.values() if f.kind is Kind.INTERNAL_BAN}
        assert flagged == internal - {gone}
    finally:
        stop.set()
        await deltas.aclose()  # type: ignore[attr-defined]
