"""Replay counts the open bucket's keys across batches and folds them when the bucket is read.

``Timeline.add_records`` must leave exactly what ``add_runs(count_runs(batch))`` per batch
leaves: the same buckets closed at the same moments (``on_close`` sees the same window and time
span), the same tallies with their keys in the same order, whatever reads come in between and
however small ``PENDING_CAP`` is. The engine's own timeline also keeps no public clients' tables
in its span, and drift's early "no" must never hide a step the full search finds.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench.generate import GenConfig, generate
from parsers.records import AccessRecord, ParseStats
from parsers.traefik import TraefikParser
from pipeline.core import traffic
from pipeline.core.addresses import AddrClass, Classifier, k3s_defaults
from pipeline.core.drift import DriftTracker, Row, _History, _Rule
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.traffic import Summary, Timeline, count_runs
from tests.support.engine import T0, FakeClock, ban, new, rec
from tests.support.traffic import cut, ordered_state, traffic_lines

BUCKET_S = 60


def state(s: Summary) -> dict[str, Any]:
    """Every slot in order (``ordered_state``): their order decides ties and first examples."""
    return ordered_state(s)


@settings(max_examples=150, deadline=None)
@given(
    traffic_lines(),
    st.lists(st.integers(1, 90), min_size=1, max_size=20),
    st.lists(st.booleans(), min_size=1, max_size=20),
    st.sampled_from([120, 900]),
    st.sampled_from([1, 3, traffic.PENDING_CAP]),
)
def test_add_records_is_add_runs_of_count_runs(
    records: list[AccessRecord],
    batches: list[int],
    reads: list[bool],
    window_s: int,
    cap: int,
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(traffic, "PENDING_CAP", cap)
        check_add_records(records, batches, reads, window_s, cap)


def check_add_records(
    records: list[AccessRecord], batches: list[int], reads: list[bool], window_s: int, cap: int
) -> None:
    classify = Classifier(k3s_defaults()).classify
    runs, records_tl = Timeline(window_s, BUCKET_S), Timeline(window_s, BUCKET_S)
    seen: dict[str, list[Any]] = {"runs": [], "records": []}

    def on_close(name: str, tl: Timeline) -> Any:
        def look() -> None:
            newest = tl.newest()
            assert newest is not None
            seen[name].append(
                (
                    newest[0],
                    state(newest[1]),
                    tl.first_ts,
                    tl.last_ts,
                    state(tl.window()),
                    state(tl.window(full=True)),
                )
            )

        return look

    for i, batch in enumerate(cut(records, batches)):
        runs.add_runs(count_runs(batch, BUCKET_S), classify, on_close("runs", runs))
        records_tl.add_records(batch, classify, on_close("records", records_tl))
        assert (records_tl.first_ts, records_tl.last_ts) == (runs.first_ts, runs.last_ts)
        if reads[i % len(reads)]:  # a read folds what waits; the next batch counts afresh
            assert state(records_tl.window()) == state(runs.window())
            assert records_tl.by_class() == runs.by_class()
        pending = records_tl._pending
        assert pending is None or len(pending) < cap
    assert seen["records"] == seen["runs"]
    assert state(records_tl.whole()) == state(runs.whole())
    assert state(records_tl.window(full=True)) == state(runs.window(full=True))
    assert state(records_tl.window()) == state(runs.window())


def test_every_read_sees_the_lines_still_waiting() -> None:
    classify = Classifier(k3s_defaults()).classify
    tl = Timeline(900, BUCKET_S)
    tl.add_records([rec("198.51.100.1", T0 + 1), rec("10.42.0.12", T0 + 2)], classify)
    assert tl.window().total == 2
    tl.add_records([rec("198.51.100.1", T0 + 3)], classify)
    assert tl.by_class()[("websecure", AddrClass.PUBLIC)] == 2
    tl.add_records([rec("198.51.100.2", T0 + 4)], classify)
    assert tl.whole().clients == {"198.51.100.1": 2, "10.42.0.12": 1, "198.51.100.2": 1}
    tl.add_records([rec("198.51.100.2", T0 + 5)], classify)
    newest = tl.newest()
    assert newest is not None
    assert newest[1].total == 5
    tl.add_records([rec("198.51.100.2", T0 + 6)], classify)
    tl.advance(T0 + 600.0)  # a quiet period closes the bucket with its last line in it
    assert tl.span.total == 6


def test_the_engines_span_keeps_no_public_tables_but_reports_the_same() -> None:
    classify = Classifier(k3s_defaults()).classify
    lines = [rec("198.51.100.1", T0 + 70.0 * i, ua=f"agent/{i % 4}") for i in range(10)]
    default, lean = Timeline(900, BUCKET_S), Timeline(900, BUCKET_S, lean=True)
    for tl in (default, lean):
        tl.add_runs(count_runs(lines, BUCKET_S), classify)
    assert default.span.pub_count and not lean.span.pub_count
    assert lean.window(full=True).pub_ua == default.window(full=True).pub_ua
    full, light = state(default.whole()), state(lean.whole())
    for k in ("pub_count", "pub_mask", "pub_ua"):
        del full[k], light[k]
    assert light == full


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4)), min_size=0, max_size=12),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.integers(1, 30), min_size=1, max_size=10),
)
@example([[(7 * m + i, 1 + i % 3) for i in range(7)] for m in range(6)], [5])  # 42 clients
def test_the_engines_buckets_count_clients_into_the_span_as_merging_would(
    minutes: list[list[tuple[int, int]]], batches: list[int]
) -> None:
    """A lean timeline's buckets count their clients straight into the span's table: after
    every batch, ``whole()`` has the table a timeline that merges each bucket's own at close
    has, in the same order, pruned at the same moments (``CLIENTS_CAP`` 16, well under the 41
    clients, over the 12 of one minute), fed by lines or by folded runs (parallel replay), and
    the same at the end when nothing read it before."""
    classify = Classifier(k3s_defaults()).classify
    records = [
        rec(f"198.51.100.{c}", T0 + 60.0 * m + i)
        for m, minute in enumerate(minutes)
        for i, (c, n) in enumerate(minute)
        for _ in range(n)
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(traffic, "CLIENTS_CAP", 16)
        default, lean, folded, unread = (
            Timeline(900, BUCKET_S),
            Timeline(900, BUCKET_S, lean=True),
            Timeline(900, BUCKET_S, lean=True),
            Timeline(900, BUCKET_S, lean=True),  # folded runs too, read only at the end
        )
        for batch in cut(records, batches):
            default.add_records(batch, classify)
            lean.add_records(batch, classify)
            runs = []
            for bucket, counts, lo, hi in count_runs(batch, BUCKET_S):
                summary = Summary()  # what a parallel replay worker sends
                assert isinstance(counts, Counter)
                summary.add_counts(counts, classify)
                runs.append((bucket, summary, lo, hi))
            folded.add_runs(runs, classify)
            unread.add_runs([(b, copy.deepcopy(r), lo, hi) for b, r, lo, hi in runs], classify)
            want = list(default.whole().clients.items())
            assert list(lean.whole().clients.items()) == want
            assert list(folded.whole().clients.items()) == want
        assert list(unread.whole().clients.items()) == list(default.whole().clients.items())
    assert lean.window(full=True).clients == {}  # they are the span's alone


def test_a_flood_minute_keeps_truer_counts_in_the_shared_client_table() -> None:
    """More distinct clients in one minute than ``CLIENTS_CAP`` (16 here): a bucket with a table
    of its own pruned it mid-minute, and a light client it dropped counted again from 0; the
    lean timeline's shared table is pruned only past twice the cap, so it keeps the true count,
    and it never holds more than that after a fold."""
    classify = Classifier(k3s_defaults()).classify
    first = [rec(f"198.51.100.{c}", T0 + c) for c in range(24)]  # one request each
    again = [rec("198.51.100.20", T0 + 30.0 + i) for i in range(10)]  # the 21st, ten more
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(traffic, "CLIENTS_CAP", 16)
        own, lean = Timeline(900, BUCKET_S), Timeline(900, BUCKET_S, lean=True)
        for tl in (own, lean):
            tl.add_records(first, classify)
            tl.whole()  # a read (a scrape, a blast radius) folds what waits
            tl.add_records(again, classify)
            newest = tl.newest()
            assert newest is not None
            assert len(newest[1].clients) <= 2 * 16
        assert lean.whole().clients["198.51.100.20"] == 11
        assert own.whole().clients["198.51.100.20"] == 10  # dropped at 1, then 10 more


def generated(minutes: int, rate: float, **kw: Any) -> list[AccessRecord]:
    cfg = GenConfig(lines=int(minutes * 60 * rate), seed=3, rate=rate, clients=300, **kw)
    return TraefikParser().parse([ln.rstrip(b"\n") for ln in generate(cfg)], ParseStats())


@pytest.mark.parametrize(("window_s", "reads"), [(120, False), (900, False), (900, True)])
def test_the_engines_span_takes_closed_buckets_in_batches(window_s: int, reads: bool) -> None:
    """A lean timeline merges closed buckets into its span ``SPAN_BATCH`` at a time and holds
    none back past its window (2 buckets, or 15): the span and ``whole()`` are those of merging
    each bucket as it closes, read only at the end or every few batches (a read merges what
    waits)."""
    classify = Classifier(k3s_defaults()).classify
    records = generated(60, 2.0)
    default, lean = Timeline(window_s, BUCKET_S), Timeline(window_s, BUCKET_S, lean=True)
    closes = 0

    def check() -> None:  # lean's on_close: the bucket that closes is still the newest
        nonlocal closes
        closes += 1
        held = [id(s) for _, s in lean._buckets]
        assert all(id(s) in held for s in lean._unmerged)
        assert len(lean._unmerged) < traffic.SPAN_BATCH

    for i, batch in enumerate(cut(records, [50] * len(records))):
        default.add_records(batch, classify)
        lean.add_records(batch, classify, check)
        if reads and i % 7 == 0:
            assert lean.by_class() == default.by_class()
    assert closes > 3 * traffic.SPAN_BATCH
    # The lean span has no public tables, and its client table is its buckets' too.
    skip = {"pub_count", "pub_mask", "pub_ua", "clients"}
    assert ordered_state(lean.span, skip) == ordered_state(default.span, skip)
    assert ordered_state(lean.whole(), skip - {"clients"}) == ordered_state(
        default.whole(), skip - {"clients"}
    )


def replay(records: list[AccessRecord], *, by_records: bool, batch: int) -> Engine:
    """A replay engine fed with ``ingest`` (counts wait per bucket) or with ``ingest_runs`` of
    each batch's runs (the path before), a ban applied half way (its blast radius reads the
    timeline mid-bucket)."""
    config = EngineConfig(clear_recovered=False, blast_scope="span")
    engine = Engine(config, Classifier(k3s_defaults()), FakeClock(records[0][0]))
    half = len(records) // 2
    for i in range(0, len(records), batch):
        part = records[i : i + batch]
        stats = ParseStats()
        stats.lines = stats.json = len(part)
        if by_records:
            engine.ingest(part, stats, "traefik")
        else:
            engine.ingest_runs(count_runs(part, config.bucket_s), stats, "traefik")
        if i <= half < i + batch:
            engine.apply(new(ban("10.42.0.12")))
    engine.finish()
    return engine


@pytest.mark.parametrize("batch", [37, 1024])
def test_replay_finds_and_reports_the_same_either_way(batch: int) -> None:
    """A masking step mid-file and a busy public hop: every finding event, in order, and the
    whole-span tallies the report reads are the same."""
    records = generated(90, 3.0, masked_share=0.8, masked_span=(0.5, 1.0))
    records += [
        rec("203.0.113.50", records[-1][0] + i, host=f"h{i % 5}.example", ua=f"ua{i % 9}")
        for i in range(400)
    ]
    runs = replay(records, by_records=False, batch=batch)
    counted = replay(records, by_records=True, batch=batch)
    got, want = counted.drain_events(), runs.drain_events()
    assert {e.finding.kind.value for e in want} >= {"masked_client_ip", "internal_ban"}
    assert [(e.state, e.finding) for e in got] == [(e.state, e.finding) for e in want]
    assert state(counted.traffic.whole()) == state(runs.traffic.whole())


def reference_find(tracker: DriftTracker, rows: list[Row], rule: _Rule) -> tuple[int, int] | None:
    """The full search ``_find`` did before its early "no" (issue 16), kept as its
    specification: the split and its "before" requests, or None."""
    cfg = tracker._cfg
    n, least = len(rows), cfg.drift_min_buckets
    if n < 2 * least:
        return None
    all_t = sum(t for _, t, _ in rows)
    all_i = sum(i for _, _, i in rows)
    best: tuple[float, int, int, int] | None = None
    tb = ib = 0
    for k, (_, t, i) in enumerate(rows):
        if k >= least and n - k >= least:
            step = tracker._step(tb, ib, all_t - tb, all_i - ib, k, n - k, rule)
            if (
                step is not None
                and (best is None or step > best[0])
                and tracker._held(rows, k, ib / tb + step / 2)
            ):
                best = (step, k, tb, ib)
        tb += t
        ib += i
    return None if best is None else (best[1], best[2])


AFTER = [0.0, 0.05, 0.1, 0.2, 0.25, 0.5, 0.9, 1.0]
BEFORE = [0.0, 0.1, 0.2]


@pytest.mark.parametrize("hop", [False, True])
def test_drifts_early_no_never_hides_a_step(hop: bool) -> None:
    """Random histories around the thresholds (shares on both sides of the midpoint bound,
    exact halves, small and large buckets): the search finds what the full search finds."""
    tracker = DriftTracker(EngineConfig(), keep=True)
    rule = tracker._hop_rule if hop else tracker._internal_rule
    rng = random.Random(11)
    found = 0
    for _ in range(3000):
        n = rng.randint(8, 40)
        split = rng.randint(0, n)
        rows: list[Row] = []
        for b in range(n):
            t = rng.choice([4, 10, 20, 60, 300])
            shares = AFTER if b >= split else BEFORE
            i = round(t * rng.choice(shares)) + rng.choice([-1, 0, 0, 1])
            rows.append((b, t, min(t, max(0, i))))
        want = reference_find(tracker, rows, rule)
        step = tracker._find("k", _History(rule, rows), hop=hop)  # rows as note() keeps them
        got = None if step is None else (step.buckets_before, step.requests_before)
        assert got == want
        found += want is not None
    assert found > 100  # the histories do hold steps, not only noise


def test_drifts_early_no_keeps_a_step_held_just_at_its_midpoint() -> None:
    """0% for ten minutes, then 50%: two minutes at 100% and four at exactly 25%, the step's
    midpoint, so only the midpoint bound of the early "no" lets it through."""
    tracker = DriftTracker(EngineConfig(), keep=True)
    shares = [0.0] * 10 + [1.0, 1.0, 0.25, 0.25, 0.25, 0.25]
    rows: list[Row] = [(b, 20, round(20 * s)) for b, s in enumerate(shares)]
    step = tracker._find("websecure", _History(tracker._internal_rule, rows), hop=False)
    assert step is not None
    assert (step.buckets_before, step.share_before, step.share_after) == (10, 0.0, 0.5)
    assert reference_find(tracker, rows, tracker._internal_rule) == (10, 200)
