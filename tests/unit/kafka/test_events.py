"""Event encoding, ids and duplicate filtering, snapshots and the cluster view (no broker)."""

from __future__ import annotations

import time

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from parsers.envelope import Envelope
from parsers.records import ParseStats, SkipReason
from pipeline.core.addresses import Classifier
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.feed import SourceAuditor
from pipeline.core.findings import Finding, FindingEvent, Kind, Severity, State
from pipeline.core.networks import build_networks
from pipeline.core.traffic import Timeline, count_runs
from pipeline.kafka import events as ev
from pipeline.kafka.events import (
    BatchEncoder,
    Chunk,
    Partitioner,
    chunk_stats,
    decode_chunk,
    encode_chunk,
    partition_for,
    record_of,
)
from pipeline.kafka.routing import FindingRouter
from pipeline.kafka.totals import ClusterView, PartitionState, decode_snapshot
from pipeline.kafka.validate import DeadLetter
from tests.support.crowdsec import traefik_json_line
from tests.support.paths import CORPUS

CLASSIFY = Classifier(build_networks({}, k3s=True, origin="test")).classify


def stats_tuple(st: ParseStats) -> tuple[int, int, int, dict[SkipReason, int]]:
    return st.lines, st.json, st.common, {r: n for r, n in st.skipped.items() if n}


def ends_of(lines: list[bytes], start: int = 0) -> list[int]:
    out, pos = [], start
    for line in lines:
        pos += len(line) + 1
        out.append(pos)
    return out


def mixed_lines() -> list[bytes]:
    clf = (CORPUS / "traefik-clf.log").read_bytes().splitlines()[:5]
    return [
        traefik_json_line("203.0.113.7").encode(),
        clf[0],
        b"",
        b'{"level":"info","msg":"Configuration loaded","time":"2025-03-14T08:00:00Z"}',
        b"{not json",
        traefik_json_line("10.42.0.12", path="/x").encode(),
        b"x" * 5000,
        *clf[1:],
        traefik_json_line("2001:db8::1").encode(),
    ]


def audited_stats(lines: list[bytes], envelope: Envelope, max_line: int = 4096) -> ParseStats:
    engine = Engine(EngineConfig(), Classifier(build_networks({}, k3s=True, origin="t")), time.time)
    return SourceAuditor(engine, "src", envelope, max_line).feed(lines)


def test_partitioner_matches_kafkas_default_partitioner() -> None:
    keys = ["10.42.0.12", "203.0.113.7", "2001:db8::1", "node-a:dev:ino:abc", ""]
    for n in (1, 3, 6, 12):
        p = Partitioner(n)
        for key in keys:
            want = DefaultPartitioner()(key.encode(), list(range(n)), list(range(n)))
            assert partition_for(key, n) == want == p(key)


def test_every_line_is_one_entry_and_stats_match_the_local_audit() -> None:
    lines = mixed_lines()
    rows, skips = BatchEncoder("n1", Envelope.RAW, 4096).entries("f", lines, ends_of(lines))
    assert len(rows) + len(skips) == len(lines)
    assert stats_tuple(chunk_stats(rows, skips)) == stats_tuple(audited_stats(lines, Envelope.RAW))
    assert {s[1] for s in skips} == {"empty", "not_access_log", "invalid_json", "too_long"}
    ends = [r[ev.END] for r in rows]
    assert ends == sorted(ends)
    assert sorted(ends + [s[0] for s in skips]) == ends_of(lines)  # ids are the line ends
    clients = [r[ev.CLIENT] for r in rows]
    assert clients[0] == "203.0.113.7"
    assert "10.42.0.12" in clients
    assert "2001:db8::1" in clients
    assert {r[ev.FMT] for r in rows} == {ev.JSON, ev.COMMON}


def test_records_on_the_wire_are_what_the_parser_counts() -> None:
    lines = [traefik_json_line(f"198.51.100.{i}", path=f"/p{i}").encode() for i in range(20)]
    rows, skips = BatchEncoder("n1").entries("f", lines, ends_of(lines))
    assert not skips
    timeline_wire = Timeline(900, 60)
    timeline_wire.add_runs(count_runs([record_of(r) for r in rows], 60), CLASSIFY)
    from parsers.traefik import TraefikParser

    timeline_local = Timeline(900, 60)
    timeline_local.add_runs(count_runs(TraefikParser().parse(lines, ParseStats()), 60), CLASSIFY)
    assert timeline_wire.whole().ep_total == timeline_local.whole().ep_total
    assert timeline_wire.whole().ep_clients == timeline_local.whole().ep_clients


def test_auto_envelope_settles_like_the_local_audit_across_batches() -> None:
    """Sidecar and ``run`` share the decoder's one AUTO rule: a blank-only batch passes through
    and leaves the envelope open; the next batch's first content line decides it."""
    batches = [
        [b"", b"  "],
        [b"", b"2024-04-16T06:21:39.0Z stdout F " + traefik_json_line("10.42.0.9").encode()],
        [b"2024-04-16T06:21:40.0Z stdout F " + traefik_json_line("198.51.100.3").encode()],
    ]
    enc = BatchEncoder("n1", Envelope.AUTO)
    engine = Engine(EngineConfig(), Classifier(build_networks({})), time.time)
    local = SourceAuditor(engine, "src", Envelope.AUTO)
    offset, clients = 0, []
    for batch in batches:
        ends = ends_of(batch, offset)
        offset = ends[-1]
        rows, skips = enc.entries("f", batch, ends)
        assert len(rows) + len(skips) == len(batch)
        assert stats_tuple(chunk_stats(rows, skips)) == stats_tuple(local.feed(batch))
        clients += [r[ev.CLIENT] for r in rows]
    assert clients == ["10.42.0.9", "198.51.100.3"]  # unwrapped: the CRI prefix is gone


def test_cri_envelope_partials_get_the_id_of_their_final_piece() -> None:
    lines = (CORPUS / "cri-lines.log").read_bytes().splitlines()
    lines.insert(3, b"garbage without an envelope")
    enc = BatchEncoder("n1", Envelope.AUTO)
    rows, skips = enc.entries("f", lines, ends_of(lines))
    assert stats_tuple(chunk_stats(rows, skips)) == stats_tuple(
        audited_stats(lines, Envelope.AUTO, 65536)
    )
    assert "bad_envelope" in {s[1] for s in skips}
    ends = ends_of(lines)
    partial = [i for i, ln in enumerate(lines) if b" P " in ln[:45]]
    assert partial, "the corpus has partial CRI lines"
    used = {r[ev.END] for r in rows} | {s[0] for s in skips}
    for i in partial:
        assert ends[i] not in used  # a P piece is never an id: its F piece is


def test_ids_do_not_depend_on_batch_boundaries() -> None:
    lines = [traefik_json_line(f"198.51.100.{i % 7}", path=f"/{i}").encode() for i in range(50)]
    lines[10] = b"not an access line"
    ends = ends_of(lines)
    whole = BatchEncoder("n1").entries("f", lines, ends)
    enc = BatchEncoder("n1")
    split: tuple[list[list[object]], list[list[object]]] = ([], [])
    for a, b in ((0, 7), (7, 31), (31, 50)):
        rows, skips = enc.entries("f", lines[a:b], ends[a:b])
        split[0].extend(rows)
        split[1].extend(skips)
    assert whole == split


def test_messages_group_by_partition_and_round_trip() -> None:
    lines = [traefik_json_line(f"198.51.100.{i}").encode() for i in range(40)] + [b""]
    part = Partitioner(4)
    messages, n_events = BatchEncoder("n1").encode(
        "dev:ino:h", "/var/log/a.log", lines, ends_of(lines), part
    )
    assert n_events == 40
    assert len({p for p, _ in messages}) == len(messages) <= 4
    seen = 0
    for p, data in messages:
        chunk = decode_chunk(data)
        assert chunk.node == "n1"
        assert chunk.file_key == "dev:ino:h"
        assert chunk.source == "n1:/var/log/a.log"
        assert all(part(r[ev.CLIENT]) == p for r in chunk.events)
        if chunk.skips:
            assert p == part("dev:ino:h")
        seen += len(chunk.events) + len(chunk.skips)
    assert seen == len(lines)


def test_oversized_batches_are_split_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "MAX_MESSAGE_BYTES", 4000)
    lines = [traefik_json_line("198.51.100.9", path=f"/{i}").encode() for i in range(60)]
    messages, _ = BatchEncoder("n1").encode("k", "/a", lines, ends_of(lines), Partitioner(1))
    assert len(messages) > 1
    chunks = [decode_chunk(m) for _, m in messages]
    assert all(len(m) <= 4000 for _, m in messages)
    ends = [r[ev.END] for c in chunks for r in c.events]
    assert ends == ends_of(lines)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b'{"v":3}',
        b'{"v":1,"n":"a","f":"b","p":"c","e":[[1]],"s":[]}',
        b'{"v":1,"n":"a","f":"b","p":"c","e":[],"s":[[1,"nope"]]}',
    ],
)
def test_unreadable_messages_are_rejected(data: bytes) -> None:
    with pytest.raises(DeadLetter):
        decode_chunk(data)


def _chunk(lines: list[bytes], ends: list[int], node: str = "n1", key: str = "k") -> Chunk:
    rows, skips = BatchEncoder(node).entries(key, lines, ends)
    return Chunk(node, key, "/a.log", rows, skips)


def test_duplicates_are_dropped_by_watermark_whatever_the_boundaries() -> None:
    lines = [traefik_json_line(f"198.51.100.{i % 5}", path=f"/{i}").encode() for i in range(30)]
    lines[4] = b""
    ends = ends_of(lines)
    state = PartitionState(0, 1, 900, 60)
    new, dup = state.apply(0, _chunk(lines[:20], ends[:20]), CLASSIFY, 0.0)
    assert (new, dup) == (19, 0)
    # A restarted sidecar re-sends from an older checkpoint with other batch boundaries.
    new, dup = state.apply(1, _chunk(lines[2:12], ends[2:12]), CLASSIFY, 0.0)
    assert (new, dup) == (0, 9)
    new, dup = state.apply(2, _chunk(lines[12:30], ends[12:30]), CLASSIFY, 0.0)
    assert (new, dup) == (10, 8)
    # Another file and another node have their own watermarks.
    assert state.apply(3, _chunk(lines[:3], ends[:3], key="k2"), CLASSIFY, 0.0) == (3, 0)
    assert state.apply(4, _chunk(lines[:3], ends[:3], node="n2"), CLASSIFY, 0.0) == (3, 0)
    st = state.stats["n1:/a.log"]
    assert (st.lines, st.json, st.skipped[SkipReason.EMPTY]) == (33, 32, 1)  # k and k2
    assert state.timeline.whole().total == 35
    assert state.offset == 5


def test_snapshot_restore_continues_exactly() -> None:
    lines = [traefik_json_line(f"10.42.0.{i % 3 + 1}", path=f"/{i}").encode() for i in range(40)]
    ends = ends_of(lines)
    straight = PartitionState(2, 1, 900, 60)
    for i in range(0, 40, 10):
        straight.apply(i // 10, _chunk(lines[i : i + 10], ends[i : i + 10]), CLASSIFY, 0.0)
    first = PartitionState(2, 1, 900, 60)
    first.apply(0, _chunk(lines[:10], ends[:10]), CLASSIFY, 0.0)
    first.apply(1, _chunk(lines[10:20], ends[10:20]), CLASSIFY, 0.0)
    snap = decode_snapshot(first.encode(0.0))
    assert (snap.partition, snap.epoch, snap.offset) == (2, 1, 2)
    second = PartitionState.restore(snap, 2, 900, 60)
    second.apply(1, _chunk(lines[10:20], ends[10:20]), CLASSIFY, 0.0)  # redelivered: dropped
    second.apply(2, _chunk(lines[20:30], ends[20:30]), CLASSIFY, 0.0)
    second.apply(3, _chunk(lines[30:40], ends[30:40]), CLASSIFY, 0.0)
    a, b = straight.timeline.whole(), second.timeline.whole()
    assert (a.total, a.ep_total, a.ep_internal, a.ep_hops) == (
        b.total,
        b.ep_total,
        b.ep_internal,
        b.ep_hops,
    )
    assert stats_tuple(straight.stats["n1:/a.log"]) == stats_tuple(second.stats["n1:/a.log"])
    assert straight.timeline.by_class() == second.timeline.by_class()


def test_cluster_view_keeps_the_latest_epoch_and_merges_partitions() -> None:
    view = ClusterView(900, 60)
    lines = [traefik_json_line(f"198.51.100.{i}", path=f"/{i}").encode() for i in range(10)]
    ends = ends_of(lines)
    old = PartitionState(0, 5, 900, 60)
    old.apply(0, _chunk(lines[:4], ends[:4]), CLASSIFY, 0.0)
    new = PartitionState.restore(decode_snapshot(old.encode(0.0)), 6, 900, 60)
    new.apply(1, _chunk(lines[4:6], ends[4:6]), CLASSIFY, 0.0)
    other = PartitionState(1, 1, 900, 60)
    other.apply(0, _chunk(lines[6:], ends[6:], node="n2"), CLASSIFY, 0.0)
    assert view.apply(old.encode(0.0))
    assert view.apply(new.encode(0.0))
    old.apply(1, _chunk(lines[4:5], ends[4:5]), CLASSIFY, 0.0)  # a deposed owner keeps writing
    assert not view.apply(old.encode(0.0))
    assert view.apply(other.encode(0.0))
    with pytest.raises(DeadLetter):
        view.apply(b"garbage")
    assert view.window(full=True).total == 10
    assert view.lines() == 10
    assert set(view.source_stats()) == {"n1:/a.log", "n2:/a.log"}
    assert view.epoch(0) == 6
    restored = view.restore_point(0)
    assert restored is not None
    assert restored.offset == 2


def _finding(target: str, kind: Kind = Kind.INTERNAL_BAN) -> Finding:
    return Finding(
        kind,
        Severity.CRITICAL,
        target,
        f"about {target}",
        {"n": 1},
        "fix",
        key=f"{kind.value}:{target}",
    )


def test_finding_router_speaks_only_for_owned_partitions() -> None:
    part = Partitioner(4)
    targets = [f"10.42.0.{i}" for i in range(1, 30)]
    mine = {part(t) for t in targets[:3]}
    router = FindingRouter(part, lambda: 100.0)
    router.gain(mine, {})
    events = [FindingEvent(State.RAISED, _finding(t), 1.0) for t in targets]
    out = router.route(events)
    assert {e.finding.target for e in out} == {t for t in targets if part(t) in mine}
    # Losing a partition silences it; the new owner re-announces active findings and clears.
    cleared = next(t for t in targets if part(t) not in mine)
    router.route([FindingEvent(State.CLEARED, _finding(cleared), 2.0)])
    active = {f.key: f for f in (_finding(t) for t in targets) if f.target != cleared}
    gained = router.gain({part(cleared)}, active)
    assert FindingEvent(State.CLEARED, _finding(cleared), 100.0) in gained
    assert all(part(e.finding.target) == part(cleared) for e in gained)
    assert not router.refresh(active)  # nothing moved since it was announced
    moved = {
        k: Finding(f.kind, f.severity, f.target, f.summary, {"n": 2}, f.fix, key=f.key)
        for k, f in active.items()
    }
    assert {e.finding.target for e in router.refresh(moved)} == {
        t for t in targets if part(t) in router.owned and t != cleared
    }


def test_snapshot_is_json_with_the_offset_and_epoch() -> None:
    state = PartitionState(3, 42, 900, 60, offset=17)
    body = orjson.loads(state.encode(1.0))
    assert (body["p"], body["e"], body["o"]) == (3, 42, 17)
    assert (
        encode_chunk(Chunk("a", "b", "c", [], []))
        == b'{"v":2,"n":"a","f":"b","p":"c","e":[],"s":[]}'
    )
