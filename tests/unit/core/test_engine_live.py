"""Live-mode engine behaviour found in review: clock skew, quiet periods, event churn, notes,
stray common-format lines, and the cost of many external decisions."""

from __future__ import annotations

from parsers.records import ParseStats
from pipeline.core.addresses import AddrClass
from pipeline.core.findings import Finding, Kind, Severity, State
from tests.support.engine import T0, ban, feed, make_engine, new, rec


def _live(**cfg: object):  # type: ignore[no-untyped-def]
    return make_engine(clear_recovered=True, max_future_s=300.0, **cfg)


def test_future_dated_line_does_not_freeze_the_window() -> None:
    engine, clock = _live()
    clock.now = T0
    feed(engine, [rec("198.51.100.1", T0 + 365 * 86400)])  # a node whose clock is a year ahead
    for minute in range(120):
        feed(engine, [rec("198.51.100.1", T0 + minute * 60 + i) for i in range(10)])
        clock.advance(60)
    window = engine.traffic.window()
    # 15 buckets of 10 lines, not two hours piled into one future bucket.
    assert window.total <= 16 * 10
    assert engine.traffic.last_ts <= clock.now + 300


def test_masked_finding_clears_when_traffic_stops() -> None:
    engine, clock = _live()
    clock.now = T0
    feed(engine, [rec("10.42.0.9", T0 + i) for i in range(50)])
    clock.advance(61)
    feed(engine, [rec("10.42.0.9", T0 + 61 + i, ep="web") for i in range(40)])
    engine.tick()
    assert {f.target for f in engine.findings.values()} == {"websecure", "web"}
    # No more data at all: as wall time passes the window empties and both findings clear.
    for _ in range(20):
        clock.advance(61)
        engine.tick()
    assert engine.findings == {}
    states = [(e.state, e.finding.target) for e in engine.drain_events()]
    assert (State.CLEARED, "websecure") in states
    assert (State.CLEARED, "web") in states


def test_blast_radius_drift_does_not_emit_an_update_per_tick() -> None:
    engine, clock = _live()
    clock.now = T0
    engine.apply(new(ban("10.42.0.7")))
    for second in range(600):
        hop = 4 if second % 3 else 3  # the hop's share wobbles between 30% and 40%
        lines = [rec("10.42.0.7", T0 + second) for _ in range(hop)]
        lines += [rec("198.51.100.1", T0 + second) for _ in range(10 - hop)]
        feed(engine, lines)
        clock.advance(1)
        engine.tick()
    kinds = [e.state for e in engine.drain_events() if e.finding.kind is Kind.INTERNAL_BAN]
    assert kinds.count(State.RAISED) == 1
    assert kinds.count(State.UPDATED) <= 3  # only when the share moves by a tenth


def test_note_is_raised_and_cleared_at_once() -> None:
    engine, _ = _live()
    engine.note(Finding(Kind.REMEDIATION, Severity.INFO, "10.42.0.7", "deleted", {}, "none"))
    events = engine.drain_events()
    assert [e.state for e in events] == [State.RAISED, State.CLEARED]
    assert engine.findings == {}
    assert engine.raised_total[(Kind.REMEDIATION, Severity.INFO)] == 1


def test_a_stray_common_format_line_is_not_a_finding() -> None:
    engine, _ = _live()
    stats = ParseStats()
    stats.lines, stats.json, stats.common = 1001, 1000, 1
    engine.ingest([rec("198.51.100.1", T0)], stats, "access.log")
    assert engine.findings == {}
    stats = ParseStats()
    stats.lines = stats.common = 50
    engine.ingest([rec("198.51.100.1", T0)], stats, "access.log")
    assert [f.kind for f in engine.findings.values()] == [Kind.LOG_FORMAT]
    # Traefik switched to JSON: the share falls under half the threshold and the finding clears.
    stats = ParseStats()
    stats.lines = stats.json = 20_000
    engine.ingest([rec("198.51.100.1", T0)], stats, "access.log")
    engine.tick()
    assert engine.findings == {}


def test_decision_counts_follow_adds_deletes_and_reclassification() -> None:
    engine, _ = _live()
    engine.apply(new(*(ban(f"203.0.113.{i}", id_=i) for i in range(1, 101))))
    engine.apply(new(ban("10.42.0.7", id_=500)))
    assert engine.decision_counts == {
        ("Ip", "ban", AddrClass.PUBLIC): 100,
        ("Ip", "ban", AddrClass.POD): 1,
    }
    engine.apply(new(ban("10.42.0.7", id_=500, duration_s=-1.0)))
    assert engine.decision_counts == {("Ip", "ban", AddrClass.PUBLIC): 100}
