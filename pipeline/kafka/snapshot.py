"""Partition snapshots on the wire: the JSON a partition's owner writes to the totals topic, and
the strict decoder every aggregator reads it back with.

Encoding is generic over the slots of ``Summary`` and ``InternalClient`` (one tag per non-JSON
type). Decoding is not: every aggregator folds every snapshot into its cluster view, so one
snapshot with a wrong type (``"st":[]``) would crash the view's reader, or worse, pass the
decoder and crash the engine later, on every aggregator at once. So each slot has a decoder
that checks type, shape and bounds (``SUMMARY_FIELDS``); a new tally in ``pipeline.core.traffic``
needs its entry here (tests/unit/kafka compare the tables with the slots). Unknown keys are
ignored, so a newer writer can add a tally without older readers dead-lettering its snapshots.
The bouncer verdicts per bucket (``"mm"``, ``pipeline.kafka.mismatch``) are optional the same
way: a snapshot of an older writer, or of an aggregator without bouncer settings, has none.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from parsers.records import ParseStats, SkipReason
from pipeline.core.addresses import AddrClass
from pipeline.core.bouncer import ModeCounts
from pipeline.core.diversity import MASK_LIMIT
from pipeline.core.traffic import InternalClient, Summary
from pipeline.kafka.mismatch import buckets_from_json
from pipeline.kafka.validate import (
    MAX_FIELD_CHARS,
    MAX_NAME_CHARS,
    MAX_OFFSET,
    MAX_TS,
    Reason,
    fail,
    field,
    load,
    need_count,
    need_count_map,
    need_dict,
    need_int,
    need_list,
    need_str,
    need_ts,
    need_tuple,
    version_of,
)

SNAPSHOT_VERSION = 1
MAX_PARTITION = (1 << 31) - 1  # Kafka partition ids are int32
MAX_EPOCH = int(MAX_TS * 1000)  # epochs are wall-clock milliseconds of a takeover
MAX_BUCKET = int(MAX_TS)
MAX_SOURCE_CHARS = 2 * MAX_NAME_CHARS + 1  # "node:path"

_CLASSES = {c.value: c for c in AddrClass}
_REASONS = {r.value: r for r in SkipReason}

# -- encoding --------------------------------------------------------------------------------
# The top-client table is left out (only the replay report reads it, and it is the largest), and
# so are the keys a summary that defers its diversity masks keeps (``settle`` runs first), and
# whether its top-client table is borrowed (a decoded summary owns its own, empty one).

_SKIP_SLOTS = frozenset({"clients", "_deferred", "_borrowed"})
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


def encode_by_class(by_class: Mapping[tuple[str, AddrClass], int]) -> Any:
    return _enc(dict(by_class))


def summary_to_json(s: Summary, *, clients: bool = True) -> dict[str, Any]:
    """``clients=False`` also leaves out the distinct-client sets (oversized snapshots)."""
    s.settle()
    out = {k: _enc(getattr(s, k)) for k in Summary.__slots__ if k not in _SKIP_SLOTS}
    if not clients:
        out.pop("ep_clients", None)
    return out


def stats_to_json(st: ParseStats) -> list[Any]:
    return [st.lines, st.json, st.common, {r.value: n for r, n in st.skipped.items() if n}]


# -- strict decoding -------------------------------------------------------------------------

Decode = Callable[[Any, str], Any]


def _tagged(v: Any, tag: str, what: str) -> Any:
    if type(v) is not dict or len(v) != 1 or tag not in v:
        fail(Reason.SCHEMA, f"{what}: not a {tag} value")
    return v[tag]


def _text(v: Any, what: str) -> str:
    return need_str(v, MAX_FIELD_CHARS, what)


# Sets of strings and maps of counts are most of a snapshot: they are checked with C-level
# passes (map/min/max), not a Python call per element.


def _strings(items: Collection[Any], what: str) -> None:
    if items and not (set(map(type, items)) == {str} and max(map(len, items)) <= MAX_FIELD_CHARS):
        for x in items:
            _text(x, what)  # raises with the reason


def _set(v: Any, what: str) -> set[str]:
    body = need_list(_tagged(v, "$s", what), what)
    _strings(body, what)
    return set(body)


def _counts(v: Any, what: str) -> dict[str, int]:
    return need_count_map(_tagged(v, "$d", what), what)


def _texts(v: Any, what: str) -> dict[str, str]:
    body = need_dict(_tagged(v, "$d", what), what)
    _strings(body.values(), what)
    return dict(body)


def _map(value: Decode) -> Decode:
    def decode(v: Any, what: str) -> dict[str, Any]:
        body = need_dict(_tagged(v, "$d", what), what)
        return {k: value(x, what) for k, x in body.items()}

    return decode


def _cls(v: Any, what: str) -> AddrClass:
    body = _tagged(v, "$c", what)
    if type(body) is not str or body not in _CLASSES:
        fail(Reason.SCHEMA, f"{what}: unknown address class")
    return _CLASSES[body]


def _class_map(v: Any, what: str) -> dict[tuple[str, AddrClass], int]:
    """Requests per (entrypoint, class): ``$t`` rows, or ``{"$d": {}}`` when empty."""
    if type(v) is dict and len(v) == 1 and "$d" in v:
        if v["$d"] != {}:
            fail(Reason.SCHEMA, f"{what}: not a $t value")
        return {}
    out: dict[tuple[str, AddrClass], int] = {}
    for row in need_list(_tagged(v, "$t", what), what):
        ep, cls, n = need_tuple(row, 3, what)
        out[(_text(ep, what), _cls(cls, what))] = need_count(n, what)
    return out


_INTERNAL_FIELDS: dict[str, Decode] = {
    "count": need_count,
    "forwarded": need_count,
    "hosts": _set,
    "routers": _set,
    "visible": need_count,
}
_INTERNAL_SLOTS = frozenset(InternalClient.__slots__)


def _internal(v: Any, what: str) -> InternalClient:
    """An ``$i`` value; a field this build's ``InternalClient`` lacks (a newer writer's) is
    ignored."""
    body = need_dict(_tagged(v, "$i", what), what)
    ic = InternalClient(_cls(field(body, "cls", what), what))
    for k, decode in _INTERNAL_FIELDS.items():
        if k in body and k in _INTERNAL_SLOTS:
            setattr(ic, k, decode(body[k], f"{what}.{k}"))
    return ic


def _masks(v: Any, what: str) -> dict[str, int]:
    """Diversity masks per public client (``pipeline.core.diversity``): ints below MASK_LIMIT."""
    body = need_dict(_tagged(v, "$d", what), what)
    for x in body.values():
        if type(x) is not int or not 0 <= x < MASK_LIMIT:
            fail(Reason.SCHEMA, f"{what}: not a diversity mask")
    return dict(body)


# One decoder per encoded slot of Summary (all but _SKIP_SLOTS).
SUMMARY_FIELDS: dict[str, Decode] = {
    "total": need_count,
    "ep_total": _counts,
    "ep_internal": _counts,
    "ep_visible": _counts,
    "ep_headers": _counts,
    "ep_clients": _map(_set),
    "by_class": _class_map,
    "internal": _map(_internal),
    "internal_overflow": need_count,
    "hosts": _set,
    "routers": _set,
    "ep_hops": _map(_counts),
    "ep_example": _texts,
    "pub_count": _counts,
    "pub_mask": _masks,
    "pub_ua": _masks,  # absent from an older writer's snapshot: no User-Agents known
}
INTERNAL_FIELDS = frozenset({"cls", *_INTERNAL_FIELDS})


def summary_from_json(d: Any, what: str = "summary") -> Summary:
    body = need_dict(d, what)
    s = Summary()
    for k, decode in SUMMARY_FIELDS.items():
        if k in body:
            setattr(s, k, decode(body[k], f"{what}.{k}"))
    return s


def stats_from_json(v: Any, what: str) -> ParseStats:
    lines, json_, common, skipped = need_tuple(v, 4, what)
    st = ParseStats()
    st.lines = need_count(lines, what)
    st.json = need_count(json_, what)
    st.common = need_count(common, what)
    for reason, n in need_dict(skipped, what, len(_REASONS)).items():
        if reason not in _REASONS:
            fail(Reason.SCHEMA, f"{what}: unknown skip reason")
        st.skip(_REASONS[reason], need_count(n, what))
    return st


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
    # Bouncer verdicts per bucket (``"mm"``, pipeline.kafka.mismatch): absent from an older
    # writer's snapshot or one without bouncer settings.
    mismatch: list[tuple[int, ModeCounts]] = dc_field(default_factory=list)

    def by_class(self) -> dict[tuple[str, AddrClass], int]:
        """Cumulative requests per (entrypoint, class), as ``Timeline.by_class``."""
        out = dict(self.span_by_class)
        if self.buckets:
            for key, n in self.buckets[-1][1].by_class.items():
                out[key] = out.get(key, 0) + n
        return out


def decode_snapshot(data: bytes | None) -> Snapshot:
    """Decode and check a totals message; ``DeadLetter`` (with its reason) if it is bad."""
    d = version_of(load(data), SNAPSHOT_VERSION, "a partition snapshot")
    buckets: list[tuple[int, Summary]] = []
    last = -1
    for i, entry in enumerate(need_list(field(d, "b", "snapshot"), "buckets")):
        bucket, body = need_tuple(entry, 2, f"bucket {i}")
        bucket = need_int(bucket, 0, MAX_BUCKET, f"bucket {i}")
        if bucket <= last:  # oldest first: the timeline slides on the last one
            fail(Reason.SCHEMA, f"bucket {i}: not in increasing order")
        last = bucket
        buckets.append((bucket, summary_from_json(body, f"bucket {i}")))
    stats: dict[str, ParseStats] = {}
    for source, v in need_dict(field(d, "st", "snapshot"), "stats").items():
        stats[need_str(source, MAX_SOURCE_CHARS, "stats source")] = stats_from_json(v, "stats")
    marks: list[list[Any]] = []
    for i, mark in enumerate(need_list(field(d, "wm", "snapshot"), "watermarks")):
        node, file_key, end, seen = need_tuple(mark, 4, f"watermark {i}")
        marks.append(
            [
                need_str(node, MAX_NAME_CHARS, f"watermark {i} node"),
                need_str(file_key, MAX_NAME_CHARS, f"watermark {i} file"),
                need_int(end, -1, MAX_OFFSET, f"watermark {i} offset"),
                need_ts(seen, f"watermark {i} time"),
            ]
        )
    if "w" in d:
        need_ts(d["w"], "write time")
    mismatch = buckets_from_json(d["mm"], MAX_BUCKET) if "mm" in d else []
    return Snapshot(
        partition=need_int(field(d, "p", "snapshot"), 0, MAX_PARTITION, "partition"),
        epoch=need_int(field(d, "e", "snapshot"), 0, MAX_EPOCH, "epoch"),
        offset=need_int(field(d, "o", "snapshot"), 0, MAX_OFFSET, "offset"),
        first_ts=need_ts(field(d, "f", "snapshot"), "first time"),
        last_ts=need_ts(field(d, "l", "snapshot"), "last time"),
        span_by_class=_class_map(field(d, "sb", "snapshot"), "span"),
        buckets=buckets,
        stats=stats,
        marks=marks,
        mismatch=mismatch,
    )
