"""masking_started: a step up in an entrypoint's internal share, and when it began.

Traffic comes from bench/generate.py (the benchmark's and the demo's generator), parsed by the
real Traefik parser and fed to the engine in batches, as ``replay`` and ``run`` do.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench.generate import DEFAULT_START, GenConfig, generate
from parsers.records import AccessRecord, ParseStats
from parsers.traefik import TraefikParser
from pipeline.core.drift import DriftTracker, _History
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.findings import Kind, State
from pipeline.core.traffic import Summary
from tests.support.engine import T0, FakeClock, events, feed, make_engine, rec

RATE = 2.0  # requests per second: 120 a minute, a small site
START = 1741939200.0  # DEFAULT_START as epoch seconds
assert DEFAULT_START == "2025-03-14T08:00:00Z"


def traffic(minutes: int, **kw: Any) -> list[AccessRecord]:
    cfg = GenConfig(lines=int(minutes * 60 * RATE), seed=7, rate=RATE, clients=300, **kw)
    stats = ParseStats()
    return TraefikParser().parse([ln.rstrip(b"\n") for ln in generate(cfg)], stats)


def drive(records: list[AccessRecord], *, live: bool) -> Engine:
    """Feed a minute's worth at a time; live moves the clock along with the data."""
    engine, clock = make_engine(
        FakeClock(START), clear_recovered=live, blast_scope="window" if live else "span"
    )
    for i in range(0, len(records), 120):
        batch = records[i : i + 120]
        clock.now = max(clock.now, batch[-1][0])
        feed(engine, batch)
        if live:
            engine.tick()
    if not live:
        engine.finish()
    return engine


def started(engine: Engine, ep: str = "websecure") -> list[Any]:
    return [
        f for f in engine.findings.values() if f.kind is Kind.MASKING_STARTED and f.target == ep
    ]


def test_a_step_mid_file_is_reported_with_its_time_and_shares() -> None:
    # 40 minutes; from minute 20 on, 80% of requests come through a 10.42.0.x hop.
    engine = drive(traffic(40, masked_share=0.8, masked_span=(0.5, 1.0)), live=False)
    (f,) = started(engine)
    ev = f.evidence
    assert f.target == "websecure"
    assert f.severity.value == "high"
    assert abs(ev["changed_at"] - (START + 20 * 60)) <= 60  # within the minute it began
    assert ev["changed_at_utc"].startswith("2025-03-14T08:2")
    assert ev["share_before"] < 0.05
    assert 0.7 < ev["share_after"] < 0.9
    assert ev["returned_at"] is None
    assert "08:2" in f.summary and "deploy" in f.summary
    assert any(x.kind is Kind.MASKED_CLIENT_IP for x in engine.findings.values())
    assert started(engine, "web")  # the plain-HTTP entrypoint goes through the same hop


def test_a_share_masked_from_the_start_is_not_a_step() -> None:
    engine = drive(traffic(40, masked_share=0.8), live=False)
    assert not [f for f in engine.findings.values() if f.kind is Kind.MASKING_STARTED]
    assert any(f.kind is Kind.MASKED_CLIENT_IP for f in engine.findings.values())


def test_noise_and_a_short_burst_do_not_trigger_it() -> None:
    # A steady 10% masked share; then 3 minutes at 100% (less than drift_min_buckets).
    noisy = drive(traffic(40, masked_share=0.1), live=False)
    burst = drive(traffic(40, masked_share=1.0, masked_span=(0.5, 0.575)), live=False)
    for engine in (noisy, burst):
        assert not [f for f in engine.findings.values() if f.kind is Kind.MASKING_STARTED]


def test_live_raises_once_and_clears_when_the_share_returns() -> None:
    # 60 minutes: masked from minute 15 to minute 35, then the client IP is back.
    records = traffic(60, masked_share=0.8, masked_span=(0.25, 35 / 60))
    engine, clock = make_engine(FakeClock(START), clear_recovered=True)
    seen: list[tuple[State, Kind, str]] = []
    for i in range(0, len(records), 120):
        batch = records[i : i + 120]
        clock.now = max(clock.now, batch[-1][0])
        feed(engine, batch)
        engine.tick()
        seen += [e for e in events(engine) if e[1] is Kind.MASKING_STARTED and e[2] != "web"]
    assert seen == [
        (State.RAISED, Kind.MASKING_STARTED, "websecure"),
        (State.CLEARED, Kind.MASKING_STARTED, "websecure"),
    ]
    assert not started(engine)


def test_replay_keeps_a_step_that_ended_and_says_when() -> None:
    engine = drive(traffic(60, masked_share=0.8, masked_span=(0.25, 35 / 60)), live=False)
    (f,) = started(engine)
    assert abs(f.evidence["changed_at"] - (START + 15 * 60)) <= 60
    assert abs(f.evidence["returned_at"] - (START + 35 * 60)) <= 2 * 60
    assert "came back" in f.summary


def test_a_share_that_rises_because_public_traffic_fell_is_no_step() -> None:
    # The cluster's own probes (10 a minute) go on while public traffic falls from 200 to 5
    # a minute: the share goes from 5% to 67%, but nothing was masked.
    records = []
    for m in range(30):
        t = T0 + m * 60
        public = 200 if m < 15 else 5
        records += [rec(f"93.184.{m}.{i % 50 + 1}", t + i * 0.2) for i in range(public)]
        records += [rec("10.42.0.9", t + 50 + i) for i in range(10)]
    engine, _ = make_engine(clear_recovered=False, blast_scope="span")
    feed(engine, sorted(records, key=lambda r: r[0]))
    engine.finish()
    assert not started(engine)
    # The same shares with internal requests rising (masking) are a step.
    records = []
    for m in range(30):
        t = T0 + m * 60
        public, internal = (200, 10) if m < 15 else (5, 100)
        records += [rec(f"93.184.{m}.{i % 50 + 1}", t + i * 0.2) for i in range(public)]
        records += [rec("10.42.0.9", t + 50 + i * 0.1) for i in range(internal)]
    engine, _ = make_engine(clear_recovered=False, blast_scope="span")
    feed(engine, sorted(records, key=lambda r: r[0]))
    engine.finish()
    (f,) = started(engine)
    assert f.evidence["changed_at"] == T0 + 15 * 60


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 300), st.floats(0, 1), st.booleans()), min_size=0, max_size=40
    ),
    st.integers(0, 40),
    st.floats(0, 1),
    st.floats(0, 1),
    st.sampled_from(["internal", "hop"]),
)
@example([(200, 0.5, False)] * 20, 10, 0.0, 1.0, "internal")  # a clear step
@example([(200, 0.5, False)] * 20, 10, 0.0, 0.6, "internal")  # a step just above the rules
@example([(200, 0.5, False)] * 20, 8, 0.05, 0.5, "hop")
@example([(200, 0.5, False)] * 15, 10, 0.0, 1.0, "internal")  # just enough buckets after it
def test_early_no_never_hides_a_step(
    rows: list[tuple[int, float, bool]], split: int, low: float, high: float, which: str
) -> None:
    """``_no_step`` only answers "no" where the search over every split finds none: shares
    that stay low, stay high, step from ``low`` to ``high`` at ``split`` with noise, or sit
    right at the threshold it tests."""
    tracker = DriftTracker(EngineConfig(), keep=True)
    rule = tracker._internal_rule if which == "internal" else tracker._hop_rule
    history = []
    for b, (t, noise, edge) in enumerate(rows):
        share = rule.step / 2 if edge else 0.8 * (low if b < split else high) + 0.2 * noise
        history.append((b, t, round(t * share)))
    hop = which == "hop"
    kept = _History(rule, history)  # what note() keeps of an entrypoint's or a hop's rows
    found = tracker._find("web", kept, hop=hop)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DriftTracker, "_no_step", lambda self, h: False)
        searched = tracker._find("web", kept, hop=hop)
    assert found == searched


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 400),
            st.floats(0, 1) | st.sampled_from([0.0, 0.5, 1.0]),  # ties: equal shares
        ),
        min_size=1,
        max_size=90,
    ),
    st.booleans(),
)
@example([(0, 200, 0.0)] * 10 + [(0, 200, 1.0)] * 10 + [(0, 200, 0.0)] * 10, False)  # returns
@example([(0, 200, 0.0)] * 5 + [(0, 200, 1.0)] * 5, True)  # flags set from the least-th row on
def test_kept_shares_follow_the_rows(buckets: list[tuple[int, int, float]], keep: bool) -> None:
    """What ``_History`` keeps of its rows (flags, their count, the spread of shares) matches
    them after every close: rows expire, an entrypoint comes and goes, and live restarts a
    history where a step returned."""
    cfg = EngineConfig(drift_history_s=1200)
    tracker = DriftTracker(cfg, keep=keep)
    half = tracker._internal_rule.step / 2
    bucket = 0
    for gap, total, share in buckets:
        bucket += gap + 1
        s = Summary()
        if total:
            s.ep_total["web"] = total
            s.ep_internal["web"] = round(total * share)
        tracker.note(bucket, s, (), {})
        for h in tracker._hist.values():
            shares = [i / t for _, t, i in h.rows]
            assert h.spread() == max(shares) - min(shares)
            assert list(h.high) == [i >= half * t for _, t, i in h.rows]
            assert h.highs == sum(h.high)
            least, step = cfg.drift_min_buckets, tracker._internal_rule.step
            # _no_step's answer is the rule on the rows themselves (flags after the first
            # ``least``, the spread of the shares), not only a safe one
            plain = sum(list(h.high)[least:]) < least or max(shares) - min(shares) < step
            assert tracker._no_step(h) == plain
            assert all(b > bucket - 20 for b, _, _ in h.rows)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # buckets without traffic before this one
            st.integers(0, 400),  # requests
            st.dictionaries(st.sampled_from("abc"), st.integers(0, 400), max_size=3),  # heavy
            st.sets(st.sampled_from("abc")),  # judged suspected hops now
        ),
        min_size=1,
        max_size=90,
    ),
    st.booleans(),
)
@example(  # "a" carries everyone from bucket 10 to 20, then leaves: a step, and live a return
    [(0, 200, {"a": 200 if 10 <= m < 20 else 0}, {"a"}) for m in range(30)], False
)
def test_kept_hop_rows_judge_as_rows_rebuilt_each_close(
    closes: list[tuple[int, int, dict[str, int], set[str]]], keep: bool
) -> None:
    """A suspected hop's rows are kept from close to close (``_hop_hist``) instead of rebuilt
    from the history: the same steps, returns and changes as a tracker that rebuilds them at
    every close, while hops come and go and live restarts a hop's history after a return."""
    cfg = EngineConfig(drift_history_s=1200)
    kept, rebuilt = DriftTracker(cfg, keep=keep), DriftTracker(cfg, keep=keep)
    bucket = 0
    for gap, total, drawn, hops in closes:
        bucket += gap + 1
        s = Summary()
        s.total = total
        heavy = {a: min(n, total) for a, n in drawn.items()}
        rebuilt._hop_hist.clear()  # nothing kept: every hop's rows come from the history
        assert kept.note(bucket, s, hops, heavy) == rebuilt.note(bucket, s, hops, heavy)
        assert kept.hop_steps == rebuilt.hop_steps
        if kept._pub and kept._pub[-1][0] == bucket:  # it judged: what it kept is current
            for addr, (start, h) in kept._hop_hist.items():
                rows = [(b, t, n.get(addr, 0)) for b, t, n in kept._pub if b >= start]
                assert list(h.rows) == rows
