"""The aggregator's timeline hands the engine each bucket that closed cluster-wide, once.

Partition states are encoded and read back through a real ``ClusterView``, as the totals
reader does; the engine runs on the ``ClusterTimeline`` as in ``auditor aggregate``.
"""

from __future__ import annotations

from parsers.records import AccessRecord
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.findings import Kind
from pipeline.core.traffic import count_runs
from pipeline.kafka.totals import ClusterTimeline, ClusterView, PartitionState
from tests.support.engine import T0, FakeClock, make_engine, only, rec

CLASSIFY = Classifier(k3s_defaults()).classify
SITES = [(f"site{i}.example.com", f"site{i}@kubernetes") for i in range(4)]
HOP = "198.51.100.7"


def minute(m: int, client: str = "93.184.216.34", n: int = 10) -> list[AccessRecord]:
    out = []
    for i in range(n):
        host, router = SITES[i % len(SITES)]
        out.append(rec(client, T0 + m * 60 + i, host=host, router=router))
    return out


def publish(view: ClusterView, partition: int, minutes: range, **kw: object) -> None:
    state = PartitionState(partition, epoch=1, window_s=900, bucket_s=60)
    for m in minutes:
        state.timeline.add_runs(count_runs(minute(m, **kw), 60), CLASSIFY)  # type: ignore[arg-type]
    assert view.apply(state.encode(T0))


def view() -> ClusterView:
    return ClusterView(900, 60, clock=lambda: T0)


def ids(closed: list[tuple[int, object]]) -> list[int]:
    return [b - int(T0) // 60 for b, _ in closed]


def test_a_bucket_closes_when_every_partition_is_past_it() -> None:
    v = view()
    publish(v, 0, range(3))
    publish(v, 1, range(2))
    closed = v.closed_since(-1)
    assert ids(closed) == [0]  # partition 1 may still add to minute 1
    assert closed[0][1].total == 20  # both partitions' minute 0, merged
    publish(v, 1, range(3))
    assert ids(v.closed_since(closed[-1][0])) == [1]


def test_an_idle_partition_does_not_hold_the_others_back() -> None:
    v = view()
    publish(v, 0, range(6))
    publish(v, 1, range(1))
    assert ids(v.closed_since(-1)) == [0, 1, 2]  # newest is 5: more than 2 behind is idle


def test_time_passing_or_the_end_closes_the_rest() -> None:
    v = view()
    publish(v, 0, range(3))
    tl = ClusterTimeline(v)
    assert ids(tl.closed_since(-1)) == [0, 1]
    tl.close_all()
    assert ids(tl.closed_since(-1)) == [0, 1, 2]
    again = ClusterTimeline(v)
    again.advance(T0 + 3 * 60)  # the engine's tick: no data for a while, now minute 3
    assert ids(again.closed_since(-1)) == [0, 1, 2]


def test_the_engine_on_the_cluster_timeline_raises_a_suspected_hop() -> None:
    v = view()
    publish(v, 0, range(5), client=HOP, n=40)  # one public address, every site: a hop
    publish(v, 1, range(5), n=20)
    tl = ClusterTimeline(v)
    engine, _ = make_engine(FakeClock(T0 + 5 * 60), timeline=tl)
    tl.sync()
    engine.tick()
    hop = only(engine, Kind.SUSPECTED_HOP)
    assert hop.target == HOP
    assert hop.evidence["heavy_minutes"] == 4  # minute 4 is still open
    assert hop.evidence["requests"] == 160


def test_a_snapshot_that_changes_a_closed_bucket_hands_it_out_again() -> None:
    v = view()
    publish(v, 0, range(6))
    closed = v.closed_since(-1)  # partition 1 has no data yet: it holds nothing back
    assert ids(closed) == [0, 1, 2, 3, 4]
    assert v.take_revised(closed[-1][0]) == []  # nothing changed since
    publish(v, 1, range(2), client=HOP)  # its first lines, for buckets already handed out
    again = v.take_revised(closed[-1][0])
    assert ids(again) == [0, 1]
    assert [s.total for _, s in again] == [20, 20]  # both partitions, merged
    assert v.take_revised(closed[-1][0]) == []  # once


def test_a_hop_whose_partition_starts_late_is_still_counted_whole() -> None:
    """The hop's sidecar starts after the others: its buckets were judged without it. Before
    buckets were handed out again, the hop was never seen (its minutes were all noted)."""
    v = view()
    publish(v, 1, range(6), n=20)
    tl = ClusterTimeline(v)
    engine, _ = make_engine(FakeClock(T0 + 6 * 60), timeline=tl)
    tl.sync()
    engine.tick()
    assert f"suspected_hop:{HOP}" not in engine.findings
    publish(v, 0, range(6), client=HOP, n=40)
    tl.sync()
    engine.tick()
    hop = engine.findings[f"suspected_hop:{HOP}"]
    assert hop.evidence["heavy_minutes"] == 5  # minutes 0-4 again; minute 5 is still open
    assert hop.evidence["requests"] == 200


def test_the_cluster_timeline_reads_its_newest_bucket_and_shares_from_the_view() -> None:
    """It holds no buckets of its own: what a local timeline keeps (the newest bucket, the
    window's per-entrypoint sums) comes from the cluster view."""
    v = view()
    tl = ClusterTimeline(v)
    assert tl.newest_bucket is None
    publish(v, 0, range(3))
    publish(v, 1, range(2), client="10.42.0.12")
    assert tl.newest_bucket == v.newest_bucket() == int(T0) // 60 + 2
    window = v.window()
    assert tl.window_shares() == (window.ep_total, window.ep_internal)
    assert window.ep_internal and window.ep_total
