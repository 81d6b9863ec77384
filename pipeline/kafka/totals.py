"""Per-partition state snapshots (the totals topic) and the cluster-wide view built from them.

The aggregator that owns an events partition folds its deduplicated events into a
``PartitionState``: a ``Timeline`` of that partition's traffic, its parse statistics per source
and its duplicate watermarks, plus the next events offset to read. About once a second it
publishes the whole state as one **snapshot** message (key: the partition) to the totals topic,
and only then commits the events offset. Every aggregator reads the totals topic in full (no
group) and keeps the latest snapshot per partition: that is the ``ClusterView``, and the engine's
timeline (``ClusterTimeline``) is the merge of all partitions' windows. So every aggregator sees
the same cluster-wide numbers, both numerators and denominators.

Why snapshots and not per-batch deltas: a snapshot *replaces* its predecessor, so replays,
duplicates and zombies cannot double count. State and offset travel in one message, so any
snapshot is a consistent restore point: a new owner seeks to its offset and continues
(the "local state + seek on assign" pattern of the aiokafka docs). The snapshot's ``epoch``
(larger for each new owner) makes the view ignore a deposed owner that still writes.
With one message per partition the topic can be compacted (latest per key) on Apache Kafka.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from parsers.records import TS, AccessRecord, ParseStats
from pipeline.core.addresses import AddrClass, Classification
from pipeline.core.bouncer import BouncerModel, MismatchTally, ModeCounts
from pipeline.core.traffic import Summary, Timeline, clamp_future, count_runs
from pipeline.kafka.events import Chunk, Watermarks, chunk_stats, records_of
from pipeline.kafka.mismatch import buckets_to_json
from pipeline.kafka.snapshot import (
    SNAPSHOT_VERSION,
    Snapshot,
    decode_snapshot,
    encode_by_class,
    stats_to_json,
    summary_to_json,
)
from pipeline.kafka.validate import DeadLetter, Reason

__all__ = [
    "ClusterMismatch",
    "ClusterTimeline",
    "ClusterView",
    "PartitionState",
    "Snapshot",
    "decode_snapshot",
]

log = logging.getLogger("auditor.kafka")

SNAPSHOT_MAX_BYTES = 4 * 1024 * 1024  # topic max.message.bytes is raised to 8 MiB on creation
MARK_IDLE_S = 24 * 3600.0
# A snapshot's epoch is the wall-clock millisecond of a takeover: one far ahead of the clock
# would fence every later owner of its partition out of the view, so it is a dead letter.
EPOCH_AHEAD_S = 24 * 3600.0
# How far (in buckets) a partition may trail the newest one before it stops holding back the
# buckets the engine sees close: live, data time is wall time, so more is an idle partition.
SETTLE_LAG_BUCKETS = 2

Classify = Callable[[str], Classification]


# -- one partition ---------------------------------------------------------------------------


class PartitionTimeline(Timeline):
    """A ``Timeline`` whose buckets can be exported to a snapshot and loaded back."""

    __slots__ = ()

    def buckets(self) -> list[tuple[int, Summary]]:
        return list(self._buckets)

    def load(
        self,
        buckets: Sequence[tuple[int, Summary]],
        span_by_class: Mapping[tuple[str, AddrClass], int],
        first_ts: float,
        last_ts: float,
    ) -> None:
        self._buckets = deque(buckets)
        self.span = Summary()
        self.span.by_class = dict(span_by_class)
        self.first_ts = first_ts
        self.last_ts = last_ts


class PartitionState:
    """What the owner of one events partition has folded in so far."""

    __slots__ = (
        "bucket_s",
        "dirty",
        "epoch",
        "exact",
        "marks",
        "mismatch",
        "offset",
        "partition",
        "stats",
        "timeline",
    )

    def __init__(
        self,
        partition: int,
        epoch: int,
        window_s: int,
        bucket_s: int,
        offset: int = 0,
        bouncer: BouncerModel | None = None,
    ) -> None:
        """``bouncer``: judge ``ban_mismatch`` per bucket (``pipeline.kafka.mismatch``)."""
        self.partition = partition
        self.epoch = epoch
        self.offset = offset
        self.bucket_s = bucket_s
        self.timeline = PartitionTimeline(window_s, bucket_s)
        self.stats: dict[str, ParseStats] = {}
        self.marks = Watermarks()
        self.mismatch: MismatchTally | None = None
        if bouncer is not None:  # the same buckets kept as ``run``'s engine keeps
            self.mismatch = MismatchTally(bouncer, bucket_s, window_s // bucket_s + 2)
        self.dirty = True  # a new owner announces itself with its first snapshot
        # True once ``offset`` is known to be the next message (restored, or one read): a
        # later message means some were skipped.
        self.exact = False

    @classmethod
    def restore(
        cls,
        snap: Snapshot,
        epoch: int,
        window_s: int,
        bucket_s: int,
        bouncer: BouncerModel | None = None,
    ) -> PartitionState:
        """A snapshot without verdicts (an older writer, or one without bouncer settings)
        restores with none: they start from here."""
        state = cls(snap.partition, epoch, window_s, bucket_s, snap.offset, bouncer)
        state.timeline.load(snap.buckets, snap.span_by_class, snap.first_ts, snap.last_ts)
        if state.mismatch is not None:
            state.mismatch.buckets = dict(snap.mismatch)
        state.stats = snap.stats
        state.marks = Watermarks.from_list(snap.marks)
        state.exact = True
        return state

    def apply(
        self,
        offset: int,
        chunk: Chunk,
        classify: Classify,
        now: float,
        max_future_s: float | None = None,
    ) -> tuple[int, int]:
        """Fold one message in; returns (new events, duplicate events).

        ``max_future_s``: events stamped further ahead of ``now`` are placed at that edge, as
        ``run``'s engine does (``EngineConfig.max_future_s``); without it one node stamped in
        2100 slides this partition's window, and the cluster-wide one, past all real traffic.
        """
        events, skips = self.marks.fresh(chunk)
        if events:
            records = records_of(events)
            runs = count_runs(records, self.bucket_s)
            if max_future_s is not None:
                runs = clamp_future(runs, now + max_future_s, self.bucket_s)
            self.timeline.add_runs(runs, classify)
            if self.mismatch is not None:
                if max_future_s is not None:
                    records = _clamped(records, now + max_future_s)
                if chunk.version == 1:  # no ClientHost, no peer: nothing can be judged
                    self.mismatch.add_unjudged(records)
                else:
                    self.mismatch.add(records)
        if events or skips:
            st = self.stats.get(chunk.source)
            if st is None:
                st = self.stats[chunk.source] = ParseStats()
            st.merge(chunk_stats(events, skips))
            self.marks.advance(chunk, now)
        self.offset = offset + 1
        self.exact = True
        self.dirty = True
        return len(events), len(chunk.events) - len(events)

    def skip(self, offset: int) -> None:
        """An unreadable message: step over it (it is logged by the caller)."""
        self.offset = offset + 1
        self.exact = True
        self.dirty = True

    def encode(self, now: float) -> bytes:
        self.marks.prune(now, MARK_IDLE_S)
        tl = self.timeline
        body: dict[str, Any] = {
            "v": SNAPSHOT_VERSION,
            "p": self.partition,
            "e": self.epoch,
            "o": self.offset,
            "f": tl.first_ts,
            "l": tl.last_ts,
            "sb": encode_by_class(tl.span.by_class),
            "b": [[b, summary_to_json(s)] for b, s in tl.buckets()],
            "st": {k: stats_to_json(v) for k, v in self.stats.items()},
            "wm": self.marks.as_list(),
            "w": now,
        }
        if self.mismatch is not None:
            body["mm"] = buckets_to_json(self.mismatch)
        data = orjson.dumps(body)
        if len(data) > SNAPSHOT_MAX_BYTES:
            log.warning(
                "snapshot of partition %d is %d bytes; leaving out distinct-client sets",
                self.partition,
                len(data),
            )
            body["b"] = [[b, summary_to_json(s, clients=False)] for b, s in tl.buckets()]
            if self.mismatch is not None:
                body["mm"] = buckets_to_json(self.mismatch, addresses=False)
            data = orjson.dumps(body)
        return data


def _clamped(records: list[AccessRecord], edge: float) -> list[AccessRecord]:
    """Records with no time past ``edge`` (``clamp_future`` for the verdict tally, which puts a
    batch in the bucket of its latest time); a copy only when one is past it."""
    if max(r[TS] for r in records) <= edge:
        return records
    return [r if r[TS] <= edge else (edge, *r[1:]) for r in records]


# -- the cluster view ------------------------------------------------------------------------


class ClusterView:
    """Latest snapshot of every events partition, as read from the totals topic.

    With ``max_future_s`` the view also reads through any future-dated bucket a snapshot still
    carries (from a writer that did not clamp) as if it were at the clock's edge, so it cannot
    push the cluster-wide window past every other partition's traffic.
    """

    def __init__(
        self,
        window_s: int,
        bucket_s: int,
        *,
        clock: Callable[[], float] = time.time,
        max_future_s: float | None = None,
    ) -> None:
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.clock = clock
        self.max_future_s = max_future_s
        self.parts: dict[int, Snapshot] = {}
        self._raw: dict[int, bytes] = {}
        self.version = 0
        self._cache: dict[bool, tuple[tuple[int, int | None], Summary]] = {}
        self._mismatch: tuple[tuple[int, int, int], ModeCounts] | None = None
        self._revised: set[int] = set()  # buckets a newer snapshot changed (``take_revised``)

    def apply(self, data: bytes | None) -> bool:
        """Take a snapshot message; False if it is stale (older epoch or offset).

        Raises ``DeadLetter`` for a message that is not a valid snapshot, or whose epoch is so
        far ahead of the clock that it would fence out every later owner of its partition.
        """
        snap = decode_snapshot(data)
        if snap.epoch > (self.clock() + EPOCH_AHEAD_S) * 1000:
            raise DeadLetter(Reason.RANGE, "epoch: ahead of the clock")
        assert data is not None  # decode_snapshot rejects an empty message
        cur = self.parts.get(snap.partition)
        if cur is not None and (snap.epoch, snap.offset) < (cur.epoch, cur.offset):
            return False
        before = {b: bs.total for b, bs in cur.buckets} if cur is not None else {}
        self._revised.update(b for b, bs in snap.buckets if before.get(b) != bs.total)
        self.parts[snap.partition] = snap
        self._raw[snap.partition] = data
        self.version += 1
        return True

    def take_revised(self, noted: int) -> list[tuple[int, Summary]]:
        """The cluster-wide summary of each bucket up to ``noted`` (already handed out by
        ``closed_since``) that a snapshot changed since the last call, still in the window.

        A partition that had no data yet does not hold buckets back from closing
        (``settled_bucket``), so its first lines can land in buckets the engine has already
        judged: a node's public hop whose sidecar started late was undercounted for good."""
        revised, self._revised = self._revised, set()
        newest = self.newest_bucket()
        if newest is None:
            return []
        lo = newest - max(1, self.window_s // self.bucket_s)
        wanted = {b for b in revised if lo < b <= noted}
        if not wanted:
            return []
        merged: dict[int, Summary] = {}
        for p in sorted(self.parts):
            for b, bs in self.parts[p].buckets:
                if b in wanted:
                    out = merged.get(b)
                    if out is None:
                        out = merged[b] = Summary()
                    out.merge(bs)
        return sorted(merged.items(), key=lambda t: t[0])

    def epoch(self, partition: int) -> int:
        cur = self.parts.get(partition)
        return cur.epoch if cur is not None else 0

    def restore_point(self, partition: int) -> Snapshot | None:
        """A private copy of the partition's latest snapshot, for its new owner to continue."""
        raw = self._raw.get(partition)
        return decode_snapshot(raw) if raw is not None else None

    def _edge(self) -> float | None:
        if self.max_future_s is None:
            return None
        return self.clock() + self.max_future_s

    def newest_bucket(self) -> int | None:
        ids = [s.buckets[-1][0] for s in self.parts.values() if s.buckets]
        if not ids:
            return None
        edge = self._edge()
        newest = max(ids)
        return newest if edge is None else min(newest, int(edge) // self.bucket_s)

    def settled_bucket(self) -> int | None:
        """Buckets below this are closed in every partition: each partition's newest bucket is
        past them, and late lines join a partition's newest bucket (``Timeline``), so they no
        longer change. A partition more than ``SETTLE_LAG_BUCKETS`` behind the newest is idle
        (or stuck) and does not hold the others back."""
        newest = self.newest_bucket()
        if newest is None:
            return None
        ids = [min(s.buckets[-1][0], newest) for s in self.parts.values() if s.buckets]
        return max(min(ids), newest - SETTLE_LAG_BUCKETS)

    def closed_since(self, after: int, closed_to: int = -1) -> list[tuple[int, Summary]]:
        """The cluster-wide summary (all partitions merged) of each bucket newer than ``after``
        that is closed (``settled_bucket``, or below ``closed_to``) and still in the window."""
        newest = self.newest_bucket()
        settled = self.settled_bucket()
        if newest is None or settled is None:
            return []
        upto = min(max(settled, closed_to), newest + 1)
        lo = max(after, newest - max(1, self.window_s // self.bucket_s))
        if upto <= lo + 1:
            return []
        merged: dict[int, Summary] = {}
        for p in sorted(self.parts):
            for b, s in self.parts[p].buckets:
                if lo < b < upto:
                    out = merged.get(b)
                    if out is None:
                        out = merged[b] = Summary()
                    out.merge(s)
        self._revised -= merged.keys()  # handed out as they are now
        return sorted(merged.items(), key=lambda t: t[0])

    def window(self, *, full: bool = False) -> Summary:
        newest = self.newest_bucket()
        key = (self.version, newest)
        hit = self._cache.get(full)
        if hit is not None and hit[0] == key:
            return hit[1]
        out = Summary()
        if newest is not None:
            horizon = newest - max(1, self.window_s // self.bucket_s)
            for p in sorted(self.parts):
                for bucket, s in self.parts[p].buckets:
                    if bucket > horizon:
                        out.merge(s, full=full)
        self._cache[full] = (key, out)
        return out

    def whole(self) -> Summary:
        out = Summary()
        for p in sorted(self.parts):
            for _, s in self.parts[p].buckets:
                out.merge(s)
        return out

    def mismatch(self, last_ts: float, window_s: int) -> ModeCounts:
        """The partitions' bouncer verdicts in the window ending at ``last_ts``, merged as
        ``MismatchTally.window`` sums one tally's buckets (partitions in order: every
        aggregator merges alike, caps included)."""
        newest = int(last_ts) // self.bucket_s
        first = newest - max(1, window_s // self.bucket_s) + 1
        key = (self.version, first, newest)
        if self._mismatch is not None and self._mismatch[0] == key:
            return self._mismatch[1]
        out = ModeCounts()
        for p in sorted(self.parts):
            for b, counts in self.parts[p].mismatch:
                if first <= b <= newest:
                    out.merge(counts)
        self._mismatch = (key, out)
        return out

    def by_class(self) -> dict[tuple[str, AddrClass], int]:
        out: dict[tuple[str, AddrClass], int] = {}
        for snap in self.parts.values():
            for key, n in snap.by_class().items():
                out[key] = out.get(key, 0) + n
        return out

    def first_ts(self) -> float:
        firsts = [s.first_ts for s in self.parts.values() if s.first_ts]
        return self._clamp(min(firsts)) if firsts else 0.0

    def last_ts(self) -> float:
        return self._clamp(max((s.last_ts for s in self.parts.values()), default=0.0))

    def _clamp(self, ts: float) -> float:
        edge = self._edge()
        return ts if edge is None else min(ts, edge)

    def source_stats(self) -> dict[str, ParseStats]:
        out: dict[str, ParseStats] = {}
        for p in sorted(self.parts):
            for source, st in self.parts[p].stats.items():
                mine = out.get(source)
                if mine is None:
                    mine = out[source] = ParseStats()
                mine.merge(st)
        return out

    def lines(self) -> int:
        return sum(st.lines for snap in self.parts.values() for st in snap.stats.values())


class ClusterTimeline(Timeline):
    """The engine's timeline on an aggregator: reads go to the cluster view.

    Nothing is added to it directly (the aggregator feeds only statistics to the engine);
    ``sync`` copies the view's time span before each evaluation. Buckets close here without
    ``on_close``: the engine's tick asks ``closed_since`` for the cluster-wide summary of each
    bucket that closed since the last one it saw (suspected hops, masking drift).
    """

    __slots__ = ("_closed_to", "view")

    def __init__(self, view: ClusterView) -> None:
        super().__init__(view.window_s, view.bucket_s)
        self.view = view
        self._closed_to = -1  # buckets below this are closed by time (advance) or at the end

    def advance(self, ts: float, on_close: Callable[[], None] | None = None) -> None:
        """No data for a while (the engine's tick): buckets before ``ts`` are closed."""
        self._closed_to = max(self._closed_to, int(ts) // self.bucket_s)

    def close_all(self) -> None:
        """The aggregator stops: every bucket counts as closed, as at the end of a replay."""
        newest = self.view.newest_bucket()
        if newest is not None:
            self._closed_to = max(self._closed_to, newest + 1)

    def revised(self, noted: int) -> list[tuple[int, Summary]]:
        """Buckets up to ``noted`` that late partitions changed (``ClusterView.take_revised``)."""
        return self.view.take_revised(noted)

    def closed_since(self, bucket: int) -> list[tuple[int, Summary]]:
        return self.view.closed_since(bucket, self._closed_to)

    def sync(self) -> None:
        self.first_ts = self.view.first_ts()
        self.last_ts = self.view.last_ts()

    def window(self, *, full: bool = False) -> Summary:
        return self.view.window(full=full)

    @property
    def newest_bucket(self) -> int | None:
        return self.view.newest_bucket()

    def window_shares(self) -> tuple[dict[str, int], dict[str, int]]:
        window = self.view.window()
        return dict(window.ep_total), dict(window.ep_internal)

    def whole(self) -> Summary:
        return self.view.whole()

    def by_class(self) -> dict[tuple[str, AddrClass], int]:
        return self.view.by_class()


class ClusterMismatch(MismatchTally):
    """The engine's bouncer tally on an aggregator: its window is the cluster view's merge.

    Nothing is added to it (the aggregator's engine sees no records); the partition owners count
    (``PartitionState``) and the snapshots carry the counts here.
    """

    __slots__ = ("view",)

    def __init__(self, model: BouncerModel, view: ClusterView) -> None:
        super().__init__(model, view.bucket_s, keep=None)
        self.view = view

    def add(self, records: Sequence[AccessRecord]) -> None:
        """Never called on an aggregator (counted per partition instead)."""

    def window(self, last_ts: float, window_s: int) -> ModeCounts:
        return self.view.mismatch(last_ts, window_s)
