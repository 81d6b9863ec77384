"""masking_started on a suspected hop: a public address that starts carrying everyone mid-stream.

k3s HA nodes that begin to SNAT to their public address after an upgrade, or Traefik moved to
another node, change no internal share: the hop is public. The step is looked for in the share
of all requests of each address judged a suspected hop, back over the history.
"""

from __future__ import annotations

import random

from bench.generate import DEFAULT_START, GenConfig, generate
from parsers import records as R
from parsers.records import AccessRecord, ParseStats
from parsers.traefik import TraefikParser
from pipeline.core import fixes
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.engine import Engine
from pipeline.core.findings import Finding, Kind, Severity, State
from pipeline.core.traffic import count_runs
from pipeline.kafka.totals import ClusterTimeline, ClusterView, PartitionState
from tests.support.engine import T0, FakeClock, events, feed, make_engine, rec

HOP = "203.0.113.21"
SITES = [(f"site{i}.example.com", f"site{i}@kubernetes") for i in range(6)]
START = 1741939200.0  # DEFAULT_START as epoch seconds
assert DEFAULT_START == "2025-03-14T08:00:00Z"


def minute(
    m: int,
    *,
    heavy: str = HOP,
    heavy_n: int = 0,
    heavy_sites: int = 6,
    heavy_uas: int = 20,
    others: int = 60,
) -> list[AccessRecord]:
    """One minute: ``others`` requests from 60 distinct public clients over every site, and
    ``heavy_n`` from ``heavy`` over its first ``heavy_sites`` sites with ``heavy_uas``
    User-Agents (a hop carries many browsers)."""
    t = T0 + m * 60
    out = []
    for i in range(others):
        host, router = SITES[i % len(SITES)]
        out.append(rec(f"93.184.{m % 200}.{i % 60 + 1}", t + i * 0.5, host=host, router=router))
    for i in range(heavy_n):
        host, router = SITES[i % heavy_sites]
        ua = f"Mozilla/5.0 (client {i % heavy_uas})"
        out.append(rec(heavy, t + i * 0.5 + 0.25, host=host, router=router, ua=ua))
    out.sort(key=lambda r: r[0])
    return out


def replay(records: list[AccessRecord]) -> Engine:
    engine, _ = make_engine(clear_recovered=False, blast_scope="span")
    feed(engine, records)
    engine.finish()
    return engine


def of(engine: Engine, kind: Kind) -> list[Finding]:
    return [f for f in engine.findings.values() if f.kind is kind]


def test_a_public_hop_appearing_after_30_minutes_is_a_step_at_that_minute() -> None:
    # 30 minutes of direct traffic, then a node's public address carries 40 of 100 a minute.
    records = [r for m in range(50) for r in minute(m, heavy_n=40 if m >= 30 else 0)]
    engine = replay(records)
    (hop,) = of(engine, Kind.SUSPECTED_HOP)
    (f,) = of(engine, Kind.MASKING_STARTED)
    ev = f.evidence
    assert (f.target, f.severity, f.key) == (HOP, Severity.HIGH, f"masking_started:hop:{HOP}")
    assert hop.target == HOP
    assert ev["changed_at"] == T0 + 30 * 60
    assert ev["changed_at_utc"] == "2026-01-01T00:30:00Z"
    assert (ev["share_before"], ev["share_after"]) == (0.0, 0.4)
    assert (ev["requests_before"], ev["hop_requests_before"]) == (30 * 60, 0)
    assert (ev["requests_after"], ev["hop_requests_after"]) == (20 * 100, 20 * 40)
    assert (ev["minutes_before"], ev["minutes_after"]) == (30.0, 20.0)
    assert ev["share_of"] == "suspected_hop"
    assert ev["entrypoint"] is None and ev["entrypoints_known"] is False
    assert "entrypoints it reached are unknown" in ev["note"]
    assert ev["returned_at"] is None
    assert f"{HOP}, a suspected hop" in f.summary and "00:30:00Z" in f.summary
    assert f.fix == fixes.masking_started_hop_fix(HOP, "2026-01-01T00:30:00Z")
    assert "--node-ip" in f.fix and "Traefik rescheduled" in f.fix
    # Retroactive: found when it was judged a hop, minutes after the step began.
    assert ev["detected_at"] >= ev["changed_at"] + 5 * 60


def test_a_hop_on_generated_traffic_is_found_within_its_minute() -> None:
    # bench/generate.py: 2 requests a second from 300 Zipf-weighted clients (the busiest near
    # the per-minute floor); from 60% of the lines (minute 30) 40% go through a public hop.
    cfg = GenConfig(
        lines=50 * 60 * 2,
        seed=7,
        rate=2.0,
        clients=300,
        masked_share=0.4,
        masked_span=(0.6, 1.0),
        hops=((HOP, 1.0),),
    )
    records = TraefikParser().parse([ln.rstrip(b"\n") for ln in generate(cfg)], ParseStats())
    engine, _ = make_engine(FakeClock(START), clear_recovered=False, blast_scope="span")
    for i in range(0, len(records), 120):
        feed(engine, records[i : i + 120])
    engine.finish()
    (f,) = of(engine, Kind.MASKING_STARTED)
    ev = f.evidence
    assert f.target == HOP
    assert abs(ev["changed_at"] - (START + 30 * 60)) <= 60
    assert ev["share_before"] < 0.02
    assert 0.35 < ev["share_after"] < 0.45
    assert [h.target for h in of(engine, Kind.SUSPECTED_HOP)] == [HOP]


def test_generated_traffic_without_a_change_gives_no_step() -> None:
    # 60 minutes, 300 Zipf-weighted clients (the busiest ~16%: above the per-minute floor
    # often), a steady 10% through internal hops: nothing steps.
    cfg = GenConfig(lines=60 * 60 * 2, seed=11, rate=2.0, clients=300)
    records = TraefikParser().parse([ln.rstrip(b"\n") for ln in generate(cfg)], ParseStats())
    engine, _ = make_engine(FakeClock(START), clear_recovered=False, blast_scope="span")
    for i in range(0, len(records), 120):
        feed(engine, records[i : i + 120])
    engine.finish()
    assert of(engine, Kind.MASKING_STARTED) == []


def test_a_hop_present_from_the_start_is_a_hop_but_no_step() -> None:
    engine = replay([r for m in range(50) for r in minute(m, heavy_n=40)])
    assert [f.target for f in of(engine, Kind.SUSPECTED_HOP)] == [HOP]
    assert of(engine, Kind.MASKING_STARTED) == []


def test_a_heavy_crawler_on_one_site_appearing_mid_stream_is_neither() -> None:
    records = [
        r
        for m in range(50)
        for r in minute(m, heavy_n=120 if m >= 30 else 0, heavy_sites=1, heavy_uas=1)
    ]
    engine = replay(records)
    assert of(engine, Kind.SUSPECTED_HOP) == []
    assert of(engine, Kind.MASKING_STARTED) == []


def test_a_hop_whose_share_only_wanders_is_no_step() -> None:
    # A hop there from the start whose share wanders between 20% and 45% a minute.
    rng = random.Random(3)
    records = [r for m in range(60) for r in minute(m, heavy_n=rng.randint(15, 50))]
    engine = replay(records)
    assert [f.target for f in of(engine, Kind.SUSPECTED_HOP)] == [HOP]
    assert of(engine, Kind.MASKING_STARTED) == []


def test_a_short_burst_through_a_hop_is_no_step() -> None:
    # 4 minutes (fewer than drift_min_buckets) of a hop carrying half of everything.
    records = [r for m in range(50) for r in minute(m, heavy_n=60 if 30 <= m < 34 else 0)]
    engine = replay(records)
    assert of(engine, Kind.MASKING_STARTED) == []


def test_the_internal_step_and_the_hop_step_do_not_collide() -> None:
    # The same minute: an internal hop on one entrypoint and a public hop across all of them.
    records = []
    for m in range(50):
        records += minute(m, heavy_n=40 if m >= 30 else 0)
        if m >= 30:
            t = T0 + m * 60
            records += [rec("10.42.0.9", t + 40 + i * 0.1, ep="web") for i in range(60)]
        else:
            records += [rec("93.184.250.1", T0 + m * 60 + 40 + i, ep="web") for i in range(10)]
    engine = replay(sorted(records, key=lambda r: r[0]))
    found = {f.key: f for f in of(engine, Kind.MASKING_STARTED)}
    assert set(found) == {"masking_started:web", f"masking_started:hop:{HOP}"}
    assert found["masking_started:web"].evidence["changed_at"] == T0 + 30 * 60
    assert found[f"masking_started:hop:{HOP}"].target == HOP


def test_live_raises_once_and_clears_when_the_hop_is_gone() -> None:
    # 30 minutes direct, 20 through the hop, 20 direct again; the clock runs with the data.
    engine, clock = make_engine(FakeClock(T0))
    seen: list[tuple[State, Kind, str]] = []
    raised_at: dict[Kind, float] = {}
    for m in range(70):
        clock.now = T0 + (m + 1) * 60
        feed(engine, minute(m, heavy_n=40 if 30 <= m < 50 else 0))
        engine.tick()
        for e in events(engine):
            if e[1] not in (Kind.MASKING_STARTED, Kind.SUSPECTED_HOP):
                continue
            seen.append(e)
            if e[0] is State.RAISED:
                raised_at.setdefault(e[1], clock.now)
            if e == (State.RAISED, Kind.MASKING_STARTED, HOP):
                ev = engine.findings[f"masking_started:hop:{HOP}"].evidence
                assert ev["changed_at"] == T0 + 30 * 60  # when it stepped, not when seen
    assert [e for e in seen if e[1] is Kind.MASKING_STARTED] == [
        (State.RAISED, Kind.MASKING_STARTED, HOP),
        (State.CLEARED, Kind.MASKING_STARTED, HOP),
    ]
    assert (State.CLEARED, Kind.SUSPECTED_HOP, HOP) in seen
    assert raised_at[Kind.SUSPECTED_HOP] <= raised_at[Kind.MASKING_STARTED]
    assert of(engine, Kind.MASKING_STARTED) == []


def test_replay_keeps_a_hop_step_that_ended_and_says_when() -> None:
    engine = replay([r for m in range(70) for r in minute(m, heavy_n=40 if 30 <= m < 50 else 0)])
    (f,) = of(engine, Kind.MASKING_STARTED)
    assert f.evidence["changed_at"] == T0 + 30 * 60
    # As the internal step: the first of the 5 minutes whose share fell back below the midpoint.
    assert abs(f.evidence["returned_at"] - (T0 + 50 * 60)) <= 2 * 60
    assert "came back at 2026-01-01T00:4" in f.summary


def _publish(
    view: ClusterView, state: PartitionState, records: list[AccessRecord], now: float
) -> None:
    classify = Classifier(k3s_defaults()).classify
    state.timeline.add_runs(count_runs(records, 60), classify)
    state.offset += 1
    assert view.apply(state.encode(now))


def test_aggregate_finds_the_step_on_the_cluster_timeline() -> None:
    """``auditor aggregate``: two partitions (nodes) publish snapshots; the engine runs on the
    ClusterTimeline and gets each closed bucket from ``closed_since`` at its tick."""
    view = ClusterView(900, 60, clock=lambda: clock.now)
    parts = [PartitionState(p, epoch=1, window_s=900, bucket_s=60) for p in (0, 1)]
    timeline = ClusterTimeline(view)
    engine, clock = make_engine(FakeClock(T0), timeline=timeline)
    seen: list[tuple[State, Kind, str]] = []
    for m in range(50):
        clock.now = T0 + (m + 1) * 60
        records = minute(m, heavy_n=40 if m >= 30 else 0)
        # Node A sees every other direct request; node B the rest and all of the hop's.
        node_a = [r for i, r in enumerate(records) if r[R.CLIENT] != HOP and i % 2]
        node_b = [r for i, r in enumerate(records) if r[R.CLIENT] == HOP or not i % 2]
        _publish(view, parts[0], node_a, clock.now)
        _publish(view, parts[1], node_b, clock.now)
        timeline.sync()
        engine.tick()
        seen += [e for e in events(engine) if e[1] is Kind.MASKING_STARTED]
    assert seen == [(State.RAISED, Kind.MASKING_STARTED, HOP)]
    f = engine.findings[f"masking_started:hop:{HOP}"]
    assert f.evidence["changed_at"] == T0 + 30 * 60
    assert f.evidence["share_before"] == 0.0
    assert abs(f.evidence["share_after"] - 0.4) < 0.01


def test_history_is_bounded_by_the_floor() -> None:
    """Only public clients at or above hop_share/2 of a bucket are kept: a minute of 60
    distinct clients keeps none of them, the hop's minutes keep it alone."""
    engine, _ = make_engine(clear_recovered=False, blast_scope="span")
    feed(engine, [r for m in range(40) for r in minute(m, heavy_n=40 if m >= 30 else 0)])
    rows = engine._drift._pub  # the bound is the point of this test
    assert len(rows) <= 3600 // 60
    assert all(not heavy for b, _, heavy in rows if b < T0 // 60 + 30)
    assert all(set(heavy) == {HOP} for b, _, heavy in rows if b >= T0 // 60 + 30)
