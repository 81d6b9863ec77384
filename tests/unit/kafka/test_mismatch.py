"""ban_mismatch on the aggregator: each partition counts bouncer verdicts per bucket, the counts
travel in its snapshot, and the cluster view's merge makes the engine judge as ``run`` does on
all the traffic (raised once, cleared when the window moves past it)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from parsers.records import PEER, AccessRecord
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.bouncer import BouncerModel, BouncerSettings, MismatchTally, Mode, ModeCounts
from pipeline.core.findings import Kind, State
from pipeline.kafka import mismatch as mm
from pipeline.kafka.events import Chunk, Partitioner, decode_chunk, encode_chunk, event_row
from pipeline.kafka.mismatch import counts_from_json, counts_to_json
from pipeline.kafka.totals import (
    ClusterMismatch,
    ClusterTimeline,
    ClusterView,
    PartitionState,
    decode_snapshot,
)
from pipeline.kafka.validate import DeadLetter, Reason
from tests.support.engine import FakeClock, feed, make_engine, rec

CLASSIFY = Classifier(k3s_defaults()).classify
T0 = 1_767_225_600.0  # a bucket boundary
HOP = "10.42.0.9"  # servicelb: X-Real-Ip is the hop, the bouncer checks it
SETTINGS = BouncerSettings(header="X-Real-Ip")
MODEL = BouncerModel(SETTINGS)
PARTS = 4
CFG: dict[str, Any] = {
    "bouncer": SETTINGS,
    "blast_scope": "window",
    "clear_recovered": True,
    "window_s": 900,
}


def through_hop(n: int, start: float = T0) -> list[AccessRecord]:
    out = []
    for i in range(n):
        client = f"81.2.0.{i % 40 + 1}"
        r = list(rec(client, start + i * 0.1, xff=client, rip=HOP))
        r[PEER] = f"{HOP}:{30000 + i}"
        out.append(tuple(r))
    return out  # type: ignore[return-value]


def direct(n: int, start: float = T0) -> list[AccessRecord]:
    return [
        rec(f"93.184.0.{i % 200 + 1}", start + i * 0.1, rip=f"93.184.0.{i % 200 + 1}")
        for i in range(n)
    ]


def by_partition(records: list[AccessRecord]) -> dict[int, list[AccessRecord]]:
    """As a sidecar splits them: by the client's partition."""
    part = Partitioner(PARTS)
    out: dict[int, list[AccessRecord]] = {}
    for r in records:
        out.setdefault(part(r[2]), []).append(r)
    return out


def chunk_of(records: list[AccessRecord], first_end: int = 0) -> Chunk:
    rows = [event_row(first_end + i + 1, 0, r) for i, r in enumerate(records)]
    return decode_chunk(encode_chunk(Chunk("n1", "k", "/a.log", rows, [])))


class Cluster:
    """Partition owners publishing snapshots into one view, as the Kafka path does."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.view = ClusterView(900, 60, clock=clock, max_future_s=300.0)
        self.states = {p: PartitionState(p, 1, 900, 60, bouncer=MODEL) for p in range(PARTS)}
        self.offsets = dict.fromkeys(range(PARTS), 0)
        self.ends = dict.fromkeys(range(PARTS), 0)

    def publish(self, records: list[AccessRecord]) -> None:
        for p, recs in by_partition(records).items():
            state = self.states[p]
            state.apply(self.offsets[p], chunk_of(recs, self.ends[p]), CLASSIFY, self.clock())
            self.offsets[p] += 1
            self.ends[p] += len(recs)
        for state in self.states.values():
            assert self.view.apply(state.encode(self.clock()))


def aggregate_engine(cluster: Cluster) -> tuple[Any, ClusterTimeline]:
    timeline = ClusterTimeline(cluster.view)
    mismatch = ClusterMismatch(MODEL, cluster.view)
    engine, _ = make_engine(cluster.clock, timeline=timeline, mismatch=mismatch, **CFG)
    return engine, timeline


def _plain(c: ModeCounts) -> dict[str, Any]:
    """The counts as JSON, examples sorted (their order follows arrival, not meaning)."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(counts_to_json(c)))
    out["x"] = {m: sorted(rows) for m, rows in out["x"].items()}
    return out


def test_the_merge_of_partitions_is_the_tally_of_all_traffic() -> None:
    records = through_hop(120) + direct(800)
    run = MismatchTally(MODEL, 60, 17)
    run.add(records)
    cluster = Cluster(FakeClock(T0 + 100))
    cluster.publish(records)
    assert len({p for p in by_partition(records)}) > 1
    merged = cluster.view.mismatch(T0 + 100, 900)
    assert _plain(merged) == _plain(run.window(T0 + 100, 900))
    assert merged.modes[Mode.HOP] == 120
    assert merged.judged == 920


def test_every_aggregator_merges_alike_whatever_order_snapshots_arrive() -> None:
    cluster = Cluster(FakeClock(T0 + 100))
    cluster.publish(through_hop(60) + direct(300))
    snaps = [s.encode(T0 + 100) for s in cluster.states.values()]
    other = ClusterView(900, 60, clock=cluster.clock, max_future_s=300.0)
    for data in reversed(snaps):
        other.apply(data)
    assert _plain(other.mismatch(T0 + 100, 900)) == _plain(cluster.view.mismatch(T0 + 100, 900))


def test_aggregate_raises_the_same_finding_as_run_once_and_clears_it() -> None:
    clock = FakeClock(T0 + 100)
    hop, clients = through_hop(120), direct(800)
    run, _ = make_engine(clock, **CFG)
    feed(run, hop + clients)
    run.tick()
    cluster = Cluster(clock)
    cluster.publish(hop + clients)
    agg, timeline = aggregate_engine(cluster)
    timeline.sync()
    agg.tick()
    want = run.findings["ban_mismatch:hop"]
    got = agg.findings["ban_mismatch:hop"]
    assert got.as_dict() == want.as_dict()
    assert got.evidence["bouncer_checks"] == [HOP]
    assert [(e.state, e.finding.kind) for e in agg.drain_events()] == [
        (State.RAISED, Kind.BAN_MISMATCH)
    ]
    timeline.sync()
    agg.tick()
    assert agg.drain_events() == []  # raised once
    # Twenty minutes later only direct traffic: the window has moved past the hop.
    clock.advance(1200)
    cluster.publish(direct(400, start=T0 + 1200))
    timeline.sync()
    agg.tick()
    assert "ban_mismatch:hop" not in agg.findings
    assert [(e.state, e.finding.target) for e in agg.drain_events()] == [(State.CLEARED, "hop")]


def test_v1_rows_from_an_older_sidecar_count_as_unjudged() -> None:
    state = PartitionState(0, 1, 900, 60, bouncer=MODEL)
    rows = [event_row(i + 1, 0, r)[:9] for i, r in enumerate(through_hop(30))]
    chunk = decode_chunk(encode_chunk(Chunk("n1", "k", "/a.log", rows, [])))
    assert chunk.version == 1
    state.apply(0, chunk, CLASSIFY, T0)
    assert state.mismatch is not None
    [counts] = state.mismatch.buckets.values()
    assert (counts.judged, counts.unknown, counts.modes) == (0, 30, {})


def test_the_verdicts_round_trip_in_the_snapshot() -> None:
    state = PartitionState(2, 5, 900, 60, bouncer=MODEL)
    state.apply(0, chunk_of(through_hop(50) + direct(50)), CLASSIFY, T0)
    data = state.encode(T0)
    snap = decode_snapshot(data)
    assert [b for b, _ in snap.mismatch] == [int(T0) // 60]
    assert snap.mismatch[0][1].modes == {Mode.HOP: 50, Mode.AGREE: 50}
    again = PartitionState.restore(snap, 6, 900, 60, MODEL)
    assert orjson.loads(again.encode(T0))["mm"] == orjson.loads(data)["mm"]


def test_a_snapshot_without_verdicts_decodes_and_restores_empty() -> None:
    """An older writer's snapshot, or one from an aggregator without bouncer settings."""
    plain = PartitionState(1, 5, 900, 60)
    plain.apply(0, chunk_of(through_hop(20)), CLASSIFY, T0)
    body = orjson.loads(plain.encode(T0))
    assert "mm" not in body
    snap = decode_snapshot(orjson.dumps(body))
    assert snap.mismatch == []
    state = PartitionState.restore(snap, 6, 900, 60, MODEL)
    assert state.mismatch is not None
    assert state.mismatch.buckets == {}
    assert state.timeline.whole().total == 20
    view = ClusterView(900, 60, clock=lambda: T0)
    assert view.apply(orjson.dumps(body))
    assert view.mismatch(T0, 900).judged == 0


def test_past_the_address_cap_a_partition_leaves_addresses_out_and_claims_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mm, "ADDRESSES_CAP", 3)
    state = PartitionState(0, 1, 900, 60, bouncer=MODEL)
    state.apply(0, chunk_of(through_hop(40) + direct(10)), CLASSIFY, T0)
    body = orjson.loads(state.encode(T0))
    [[_, counts]] = body["mm"]
    assert counts["s"] is True
    assert "c" not in counts
    assert "n" not in counts
    snap = decode_snapshot(orjson.dumps(body))
    assert snap.mismatch[0][1].never_checked() == []
    assert snap.mismatch[0][1].modes[Mode.HOP] == 40


def _mm_body() -> dict[str, Any]:
    state = PartitionState(0, 1, 900, 60, bouncer=MODEL)
    state.apply(0, chunk_of(through_hop(30) + direct(10)), CLASSIFY, T0)
    return orjson.loads(state.encode(T0))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.__setitem__("mm", {}), Reason.SCHEMA),
        (lambda b: b["mm"].append(b["mm"][0]), Reason.SCHEMA),  # buckets not increasing
        (lambda b: b["mm"][0].__setitem__(0, "1"), Reason.SCHEMA),
        (lambda b: b["mm"][0].__setitem__(0, -1), Reason.RANGE),
        (lambda b: b["mm"][0].__setitem__(1, []), Reason.SCHEMA),
        (lambda b: b["mm"][0][1].__setitem__("j", -3), Reason.RANGE),
        (lambda b: b["mm"][0][1].__setitem__("u", 1.5), Reason.SCHEMA),
        (lambda b: b["mm"][0][1]["m"].__setitem__("nope", 1), Reason.SCHEMA),
        (lambda b: b["mm"][0][1]["m"].__setitem__("unknown", 1), Reason.SCHEMA),
        (lambda b: b["mm"][0][1]["m"].__setitem__("hop", "many"), Reason.SCHEMA),
        (lambda b: b["mm"][0][1]["x"].__setitem__("agree", []), Reason.SCHEMA),
        (lambda b: b["mm"][0][1]["x"]["hop"][0].pop(), Reason.SCHEMA),
        (lambda b: b["mm"][0][1]["x"]["hop"][0].__setitem__(0, 5), Reason.SCHEMA),
        (lambda b: b["mm"][0][1]["x"]["hop"][0].__setitem__(4, -1), Reason.RANGE),
        (lambda b: b["mm"][0][1]["c"].__setitem__(HOP, "x"), Reason.SCHEMA),
        (lambda b: b["mm"][0][1]["n"].__setitem__("81.2.0.1", -1), Reason.RANGE),
        (lambda b: b["mm"][0][1].__setitem__("s", 1), Reason.SCHEMA),
        (lambda b: b["mm"][0][1].__setitem__("c", ["a"]), Reason.SCHEMA),
    ],
)
def test_hostile_verdicts_dead_letter_the_snapshot(mutate: Any, reason: Reason) -> None:
    body = _mm_body()
    mutate(body)
    with pytest.raises(DeadLetter) as info:
        decode_snapshot(orjson.dumps(body))
    assert info.value.reason is reason


def test_counts_codec_round_trips() -> None:
    run = MismatchTally(MODEL, 60, 17)
    run.add(through_hop(25) + direct(5))
    [counts] = run.buckets.values()
    again = counts_from_json(orjson.loads(orjson.dumps(counts_to_json(counts))), "t")
    assert _plain(again) == _plain(counts)
    assert again.never_checked() == counts.never_checked()
