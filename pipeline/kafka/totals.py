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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from parsers.records import AccessRecord, ParseStats, SkipReason
from pipeline.core.addresses import AddrClass, Classification
from pipeline.core.traffic import InternalClient, Summary, Timeline, count_runs
from pipeline.kafka.events import Chunk, Watermarks, chunk_stats, record_of

log = logging.getLogger("auditor.kafka")

SNAPSHOT_VERSION = 1
SNAPSHOT_MAX_BYTES = 4 * 1024 * 1024  # topic max.message.bytes is raised to 8 MiB on creation
MARK_IDLE_S = 24 * 3600.0

Classify = Callable[[str], Classification]
_CLASSES = {c.value: c for c in AddrClass}
_REASONS = {r.value: r for r in SkipReason}


# -- Summary <-> JSON ------------------------------------------------------------------------
# Generic over the slots of Summary and InternalClient, with one tag per non-JSON type, so new
# tallies in pipeline.core.traffic travel without touching this module. The top-client table is left
# out (only the replay report reads it, and it is the largest table).

_SKIP_SLOTS = frozenset({"clients"})
_SCALARS = (int, float, str, bool)


def _enc(v: Any) -> Any:
    t = type(v)
    if t in _SCALARS or v is None:
        return v
    if isinstance(v, AddrClass):
        return {"$c": v.value}
    if t is set or t is frozenset:
        return {"$s": list(v)}
    if t is InternalClient:
        return {"$i": {k: _enc(getattr(v, k)) for k in InternalClient.__slots__}}
    if t is list or t is tuple:
        return {"$l": [_enc(x) for x in v]}
    if t is dict:
        if v and type(next(iter(v))) is tuple:
            return {"$t": [[*(_enc(x) for x in k), _enc(x)] for k, x in v.items()]}
        if v and type(next(iter(v.values()))) in _SCALARS:
            return {"$d": v}
        return {"$d": {k: _enc(x) for k, x in v.items()}}
    raise TypeError(f"cannot encode {t.__name__} in a snapshot")


def _dec(v: Any) -> Any:
    if type(v) is not dict:
        return v
    ((tag, body),) = v.items()
    if tag == "$d":
        if body and type(next(iter(body.values()))) is not dict:
            return dict(body)
        return {k: _dec(x) for k, x in body.items()}
    if tag == "$s":
        return set(body)
    if tag == "$c":
        return _CLASSES[body]
    if tag == "$t":
        return {tuple(_dec(x) for x in row[:-1]): _dec(row[-1]) for row in body}
    if tag == "$i":
        ic = InternalClient(_CLASSES[body["cls"]["$c"]])
        for k, x in body.items():
            if k in InternalClient.__slots__:
                setattr(ic, k, _dec(x))
        return ic
    if tag == "$l":
        return [_dec(x) for x in body]
    raise ValueError(f"unknown snapshot tag {tag!r}")


def summary_to_json(s: Summary, *, clients: bool = True) -> dict[str, Any]:
    """``clients=False`` also leaves out the distinct-client sets (oversized snapshots)."""
    out = {k: _enc(getattr(s, k)) for k in Summary.__slots__ if k not in _SKIP_SLOTS}
    if not clients:
        out.pop("ep_clients", None)
    return out


def summary_from_json(d: Mapping[str, Any]) -> Summary:
    s = Summary()
    for k, v in d.items():
        if k in Summary.__slots__ and k not in _SKIP_SLOTS:
            setattr(s, k, _dec(v))
    return s


def _stats_to_json(st: ParseStats) -> list[Any]:
    return [st.lines, st.json, st.common, {r.value: n for r, n in st.skipped.items() if n}]


def _stats_from_json(v: Sequence[Any]) -> ParseStats:
    st = ParseStats()
    st.lines, st.json, st.common = int(v[0]), int(v[1]), int(v[2])
    for reason, n in v[3].items():
        st.skip(_REASONS[reason], int(n))
    return st


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


@dataclass(slots=True)
class Snapshot:
    """A decoded snapshot message."""

    partition: int
    epoch: int
    offset: int  # next events offset to read: everything before it is in this state
    first_ts: float
    last_ts: float
    span_by_class: dict[tuple[str, AddrClass], int]
    buckets: list[tuple[int, Summary]]
    stats: dict[str, ParseStats]
    marks: list[list[Any]]

    def by_class(self) -> dict[tuple[str, AddrClass], int]:
        """Cumulative requests per (entrypoint, class), as ``Timeline.by_class``."""
        out = dict(self.span_by_class)
        if self.buckets:
            for key, n in self.buckets[-1][1].by_class.items():
                out[key] = out.get(key, 0) + n
        return out


def decode_snapshot(data: bytes) -> Snapshot:
    d = orjson.loads(data)
    if type(d) is not dict or d.get("v") != SNAPSHOT_VERSION:
        raise ValueError("not a partition snapshot of version 1")
    return Snapshot(
        partition=int(d["p"]),
        epoch=int(d["e"]),
        offset=int(d["o"]),
        first_ts=float(d["f"]),
        last_ts=float(d["l"]),
        span_by_class=_dec(d["sb"]),
        buckets=[(int(b), summary_from_json(s)) for b, s in d["b"]],
        stats={str(k): _stats_from_json(v) for k, v in d["st"].items()},
        marks=list(d["wm"]),
    )


class PartitionState:
    """What the owner of one events partition has folded in so far."""

    __slots__ = (
        "bucket_s",
        "dirty",
        "epoch",
        "exact",
        "marks",
        "offset",
        "partition",
        "stats",
        "timeline",
    )

    def __init__(
        self, partition: int, epoch: int, window_s: int, bucket_s: int, offset: int = 0
    ) -> None:
        self.partition = partition
        self.epoch = epoch
        self.offset = offset
        self.bucket_s = bucket_s
        self.timeline = PartitionTimeline(window_s, bucket_s)
        self.stats: dict[str, ParseStats] = {}
        self.marks = Watermarks()
        self.dirty = True  # a new owner announces itself with its first snapshot
        # True once ``offset`` is known to be the next message (restored, or one read): a
        # later message means some were skipped.
        self.exact = False

    @classmethod
    def restore(cls, snap: Snapshot, epoch: int, window_s: int, bucket_s: int) -> PartitionState:
        state = cls(snap.partition, epoch, window_s, bucket_s, snap.offset)
        state.timeline.load(snap.buckets, snap.span_by_class, snap.first_ts, snap.last_ts)
        state.stats = snap.stats
        state.marks = Watermarks.from_list(snap.marks)
        state.exact = True
        return state

    def apply(self, offset: int, chunk: Chunk, classify: Classify, now: float) -> tuple[int, int]:
        """Fold one message in; returns (new events, duplicate events)."""
        events, skips = self.marks.fresh(chunk)
        if events:
            records = cast("list[AccessRecord]", [record_of(r) for r in events])
            self.timeline.add_runs(count_runs(records, self.bucket_s), classify)
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
            "sb": _enc(tl.span.by_class),
            "b": [[b, summary_to_json(s)] for b, s in tl.buckets()],
            "st": {k: _stats_to_json(v) for k, v in self.stats.items()},
            "wm": self.marks.as_list(),
            "w": now,
        }
        data = orjson.dumps(body)
        if len(data) > SNAPSHOT_MAX_BYTES:
            log.warning(
                "snapshot of partition %d is %d bytes; leaving out distinct-client sets",
                self.partition,
                len(data),
            )
            body["b"] = [[b, summary_to_json(s, clients=False)] for b, s in tl.buckets()]
            data = orjson.dumps(body)
        return data


# -- the cluster view ------------------------------------------------------------------------


class ClusterView:
    """Latest snapshot of every events partition, as read from the totals topic."""

    def __init__(self, window_s: int, bucket_s: int) -> None:
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.parts: dict[int, Snapshot] = {}
        self._raw: dict[int, bytes] = {}
        self.version = 0
        self._cache: dict[bool, tuple[int, Summary]] = {}

    def apply(self, data: bytes | None) -> bool:
        """Take a snapshot message; False if it is stale (older epoch or offset) or unreadable."""
        if not data:
            return False
        try:
            snap = decode_snapshot(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring an unreadable totals message: %s", exc)
            return False
        cur = self.parts.get(snap.partition)
        if cur is not None and (snap.epoch, snap.offset) < (cur.epoch, cur.offset):
            return False
        self.parts[snap.partition] = snap
        self._raw[snap.partition] = data
        self.version += 1
        return True

    def epoch(self, partition: int) -> int:
        cur = self.parts.get(partition)
        return cur.epoch if cur is not None else 0

    def restore_point(self, partition: int) -> Snapshot | None:
        """A private copy of the partition's latest snapshot, for its new owner to continue."""
        raw = self._raw.get(partition)
        return decode_snapshot(raw) if raw is not None else None

    def newest_bucket(self) -> int | None:
        ids = [s.buckets[-1][0] for s in self.parts.values() if s.buckets]
        return max(ids) if ids else None

    def window(self, *, full: bool = False) -> Summary:
        hit = self._cache.get(full)
        if hit is not None and hit[0] == self.version:
            return hit[1]
        out = Summary()
        newest = self.newest_bucket()
        if newest is not None:
            horizon = newest - max(1, self.window_s // self.bucket_s)
            for p in sorted(self.parts):
                for bucket, s in self.parts[p].buckets:
                    if bucket > horizon:
                        out.merge(s, full=full)
        self._cache[full] = (self.version, out)
        return out

    def whole(self) -> Summary:
        out = Summary()
        for p in sorted(self.parts):
            for _, s in self.parts[p].buckets:
                out.merge(s)
        return out

    def by_class(self) -> dict[tuple[str, AddrClass], int]:
        out: dict[tuple[str, AddrClass], int] = {}
        for snap in self.parts.values():
            for key, n in snap.by_class().items():
                out[key] = out.get(key, 0) + n
        return out

    def first_ts(self) -> float:
        firsts = [s.first_ts for s in self.parts.values() if s.first_ts]
        return min(firsts) if firsts else 0.0

    def last_ts(self) -> float:
        return max((s.last_ts for s in self.parts.values()), default=0.0)

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
    ``sync`` copies the view's time span before each evaluation.
    """

    __slots__ = ("view",)

    def __init__(self, view: ClusterView) -> None:
        super().__init__(view.window_s, view.bucket_s)
        self.view = view

    def sync(self) -> None:
        self.first_ts = self.view.first_ts()
        self.last_ts = self.view.last_ts()

    def window(self, *, full: bool = False) -> Summary:
        return self.view.window(full=full)

    def whole(self) -> Summary:
        return self.view.whole()

    def by_class(self) -> dict[tuple[str, AddrClass], int]:
        return self.view.by_class()
