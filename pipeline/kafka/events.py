"""Access events on the wire: what a sidecar publishes for each tailed batch, and their ids.

A sidecar parses each batch with the same envelope decoder and Traefik parser as ``run`` and turns
every line into exactly one *entry*: an **event** (a parsed request, JSON or common format) or a
**skip** (a line that yielded no request, with its bounded reason). Entries are grouped into one
Kafka message per partition per batch:

* an event goes to the partition of its client address (``murmur2(client) % partitions``, Kafka's
  own default partitioner), so all of one client's requests live in one partition and the per
  client tallies of different partitions are disjoint (distinct-client counts add up);
* skips go to the partition of the file's key, so a file's parse statistics are not scattered.

One message per partition (rather than per client) bounds the messages per batch by the
partition count whatever the number of clients, which is what keeps broker round trips and
per-message overhead flat on a busy node.

Every entry carries the **end offset of its line** in the file; with the node name and the file
identity (``dev:ino:head-hash``, a new one per truncation) in the message, that is a stable id:
re-reading after a restart yields the same ids whatever the batch boundaries. Within one
(partition, node, file), first publications arrive in offset order (one batch in flight, one
message per partition per batch, Kafka keeps partition order), so a per-key high watermark is an
exact duplicate filter: an entry at or below it was seen before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from aiokafka.partitioner import murmur2

from parsers.envelope import Envelope, EnvelopeDecoder
from parsers.records import ParseStats, SkipReason
from parsers.traefik import MAX_LINE_BYTES, TraefikParser
from pipeline.kafka.validate import (
    MAX_FIELD_CHARS,
    MAX_ITEMS,
    MAX_NAME_CHARS,
    MAX_OFFSET,
    MAX_TS,
    Reason,
    fail,
    field,
    load,
    need_int,
    need_list,
    need_str,
    need_ts,
    need_tuple,
    version_of,
)

VERSION = 1
JSON = 0
COMMON = 1
# Row layout of an event: end offset, format, then the record fields the engine counts.
END, FMT, TS, EP, CLIENT, HOST, ROUTER, XFF, REAL_IP = range(9)
Row = list[Any]  # [end, fmt, ts, entrypoint, client, host, router, xff, real_ip]
_FORMATS = (JSON, COMMON)
Skip = list[Any]  # [end, reason]

MAX_MESSAGE_BYTES = 900_000  # stay under the common 1 MiB broker limit
_PARTITION_CACHE = 65536
_ENVELOPE_REASONS = (SkipReason.EMPTY, SkipReason.BAD_ENVELOPE, SkipReason.PARTIAL_OVERFLOW)
_REASONS = {r.value: r for r in SkipReason}


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key bytes), as the Java client computes it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions  # type: ignore[no-any-return]


class Partitioner:
    """``partition_for`` with a bounded cache (client addresses repeat a lot)."""

    __slots__ = ("_cache", "partitions")

    def __init__(self, partitions: int) -> None:
        if partitions < 1:
            raise ValueError("partitions must be positive")
        self.partitions = partitions
        self._cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) >= _PARTITION_CACHE:
                self._cache.clear()
            p = self._cache[key] = partition_for(key, self.partitions)
        return p


@dataclass(frozen=True, slots=True)
class Chunk:
    """One message: a file's entries for one partition from one batch, in offset order."""

    node: str
    file_key: str
    path: str
    events: list[Row]
    skips: list[Skip]

    @property
    def source(self) -> str:
        """The source name the aggregator's statistics and log-format findings use."""
        return f"{self.node}:{self.path}"

    @property
    def max_end(self) -> int:
        a = self.events[-1][END] if self.events else -1
        b = self.skips[-1][0] if self.skips else -1
        return int(max(a, b))


def encode_chunk(chunk: Chunk) -> bytes:
    return orjson.dumps(
        {
            "v": VERSION,
            "n": chunk.node,
            "f": chunk.file_key,
            "p": chunk.path,
            "e": chunk.events,
            "s": chunk.skips,
        }
    )


def decode_chunk(data: bytes | None) -> Chunk:
    """Decode and check one events message; ``DeadLetter`` (with its reason) if it is bad.

    Every field is checked, not only the ones this build reads: a row that fails would reach
    the tallies (``count_runs`` does arithmetic on the timestamp) and crash the consumer on
    every redelivery. A bad row dead-letters its whole message: the message is the unit of an
    offset, and a legitimate sidecar never writes a bad row, so there is nothing to salvage.
    """
    d = version_of(load(data), VERSION, "an event chunk")
    node = need_str(field(d, "n", "chunk"), MAX_NAME_CHARS, "node")
    file_key = need_str(field(d, "f", "chunk"), MAX_NAME_CHARS, "file key")
    path = need_str(field(d, "p", "chunk"), MAX_NAME_CHARS, "path")
    events = need_list(field(d, "e", "chunk"), "events")
    skips = need_list(field(d, "s", "chunk"), "skips")
    if len(events) + len(skips) > MAX_ITEMS:
        fail(Reason.RANGE, f"more than {MAX_ITEMS} entries")
    last = -1
    for row in events:  # the aggregator's hot loop: one expression per good row
        if type(row) is list and len(row) == 9:
            end, fmt, ts, ep, client, host, router, xff, rip = row
            t = type(ts)
            if (
                type(end) is int
                and last <= end <= MAX_OFFSET
                and type(fmt) is int
                and fmt in _FORMATS
                and (t is float or t is int)
                and 0.0 <= ts <= MAX_TS  # False for NaN; inf is past MAX_TS
                and type(ep) is str
                and type(client) is str
                and type(host) is str
                and type(router) is str
                and type(xff) is str
                and type(rip) is str
                and len(ep) + len(client) + len(host) + len(router) + len(xff) + len(rip)
                <= MAX_FIELD_CHARS
            ):
                last = end
                continue
        _bad_row(events, row, last)
    last = -1
    for i, skip in enumerate(skips):
        need_tuple(skip, 2, f"skip {i}")
        end = need_int(skip[0], 0, MAX_OFFSET, f"skip {i} offset")
        if end < last:
            fail(Reason.SCHEMA, f"skip {i}: offsets out of order")
        if type(skip[1]) is not str or skip[1] not in _REASONS:
            fail(Reason.SCHEMA, f"skip {i}: unknown reason")
        last = end
    return Chunk(node, file_key, path, events, skips)


def _bad_row(events: list[Any], row: Any, last: int) -> NoReturn:
    """Raise the ``DeadLetter`` that says what is wrong with a row the fast check refused."""
    i = events.index(row)
    if type(row) is not list or len(row) != 9:
        fail(Reason.SCHEMA, f"event {i}: not a list of 9")
    end = need_int(row[END], 0, MAX_OFFSET, f"event {i} offset")
    if end < last:  # in line order: the duplicate filter relies on it
        fail(Reason.SCHEMA, f"event {i}: offset out of order")
    fmt = row[FMT]
    if type(fmt) is not int or fmt not in _FORMATS:
        fail(Reason.SCHEMA, f"event {i}: unknown format")
    need_ts(row[TS], f"event {i} timestamp")
    for j in range(EP, REAL_IP + 1):
        need_str(row[j], MAX_FIELD_CHARS, f"event {i} field {j}")
    fail(Reason.RANGE, f"event {i}: fields longer than {MAX_FIELD_CHARS} characters in all")


def record_of(row: Row) -> tuple[Any, ...]:
    """The access-record prefix ``traffic.count_runs`` reads (TS and the KEY slice). Rows carry
    no User-Agent: the aggregator judges suspected hops without it, as when the log drops it."""
    return (*row[TS:], "")


def chunk_stats(events: Sequence[Row], skips: Sequence[Skip]) -> ParseStats:
    """The parse statistics of a set of entries (each entry is one line)."""
    st = ParseStats()
    st.lines = len(events) + len(skips)
    common = sum(1 for r in events if r[FMT] == COMMON)
    st.common = common
    st.json = len(events) - common
    for skip in skips:
        st.skip(_REASONS[skip[1]])
    return st


# -- sidecar side ----------------------------------------------------------------------------


class _SourceParser:
    """Per-file parsing state: envelope partials and the parser's time cache."""

    __slots__ = ("envelope", "parser")

    def __init__(self, envelope: Envelope, max_line_bytes: int) -> None:
        self.parser = TraefikParser(max_line_bytes)
        self.envelope = EnvelopeDecoder(envelope)


class BatchEncoder:
    """Turns tailed batches into per-partition chunks (the pure part of the publisher)."""

    def __init__(
        self,
        node: str,
        envelope: Envelope = Envelope.AUTO,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_sources: int = 256,
    ) -> None:
        self.node = node
        self.envelope = envelope
        self.max_line_bytes = max_line_bytes
        self.max_sources = max_sources
        self._sources: dict[str, _SourceParser] = {}

    def _source(self, file_key: str) -> _SourceParser:
        src = self._sources.get(file_key)
        if src is None:
            if len(self._sources) >= self.max_sources:
                self._sources.pop(next(iter(self._sources)))
            src = self._sources[file_key] = _SourceParser(self.envelope, self.max_line_bytes)
        return src

    def entries(
        self, file_key: str, lines: Sequence[bytes], ends: Sequence[int]
    ) -> tuple[list[Row], list[Skip]]:
        """Every line of the batch as exactly one event row or skip entry, in offset order."""
        src = self._source(file_key)
        skips: list[Skip] = []
        logical, lends = self._unwrap(src, lines, ends, skips)
        rows: list[Row] = []
        parser = src.parser
        st = ParseStats()
        records = parser.parse(logical, st)
        if len(records) == len(logical) and (st.common == 0 or st.json == 0):
            fmt = COMMON if st.common else JSON
            rows = [[end, fmt, *rec[:7]] for rec, end in zip(records, lends, strict=True)]
        else:  # some lines were skipped or formats are mixed: classify line by line
            for line, end in zip(logical, lends, strict=True):
                one = ParseStats()
                got = parser.parse((line,), one)
                if got:
                    rows.append([end, COMMON if one.common else JSON, *got[0][:7]])
                else:
                    reason = next(r for r, n in one.skipped.items() if n)
                    skips.append([end, reason.value])
        if len(skips) > 1:
            skips.sort(key=_first)
        return rows, skips

    def _unwrap(
        self, src: _SourceParser, lines: Sequence[bytes], ends: Sequence[int], skips: list[Skip]
    ) -> tuple[Sequence[bytes], Sequence[int]]:
        env = src.envelope
        if not env.settle(lines):
            return lines, ends
        logical: list[bytes] = []
        lends: list[int] = []
        st = ParseStats()
        skipped = st.skipped
        for line, end in zip(lines, ends, strict=True):
            before = st.lines
            seen = [skipped[r] for r in _ENVELOPE_REASONS]
            out = env.unwrap((line,), st)
            if out:
                logical.append(out[0])
                lends.append(end)
            elif st.lines != before:
                for r, n in zip(_ENVELOPE_REASONS, seen, strict=True):
                    if skipped[r] != n:
                        skips.append([end, r.value])
                        break
        return logical, lends

    def encode(
        self,
        file_key: str,
        path: str,
        lines: Sequence[bytes],
        ends: Sequence[int],
        partition_of: Partitioner,
    ) -> tuple[list[tuple[int, bytes]], int]:
        """(partition, message) pairs for a batch, and the number of events in them."""
        rows, skips = self.entries(file_key, lines, ends)
        by_part: dict[int, tuple[list[Row], list[Skip]]] = {}
        for row in rows:
            p = partition_of(row[CLIENT])
            slot = by_part.get(p)
            if slot is None:
                slot = by_part[p] = ([], [])
            slot[0].append(row)
        if skips:
            p = partition_of(file_key)
            slot = by_part.get(p)
            if slot is None:
                slot = by_part[p] = ([], [])
            slot[1].extend(skips)
        out: list[tuple[int, bytes]] = []
        for p in sorted(by_part):
            evs, sks = by_part[p]
            for chunk in _split(Chunk(self.node, file_key, path, evs, sks)):
                out.append((p, encode_chunk(chunk)))
        return out, len(rows)


def _first(entry: Skip) -> int:
    return int(entry[0])


def _split(chunk: Chunk) -> list[Chunk]:
    """Halve a chunk until each piece fits a broker message; order is kept."""
    size = len(encode_chunk(chunk))
    n = len(chunk.events) + len(chunk.skips)
    if size <= MAX_MESSAGE_BYTES or n <= 1:
        return [chunk]
    entries: list[tuple[int, bool, list[Any]]] = [(r[END], True, r) for r in chunk.events]
    entries += [(s[0], False, s) for s in chunk.skips]
    entries.sort(key=lambda e: e[0])
    half = len(entries) // 2
    out: list[Chunk] = []
    for part in (entries[:half], entries[half:]):
        evs = [e[2] for e in part if e[1]]
        sks = [e[2] for e in part if not e[1]]
        out += _split(Chunk(chunk.node, chunk.file_key, chunk.path, evs, sks))
    return out


# -- aggregator side -------------------------------------------------------------------------


class Watermarks:
    """Highest line end offset seen per (node, file) in one partition: the duplicate filter.

    Keys not touched for ``max_idle_s`` of data time are dropped (a rotated file never comes
    back), so the table stays small.
    """

    __slots__ = ("marks",)

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], tuple[int, float]] = {}

    def fresh(self, chunk: Chunk) -> tuple[list[Row], list[Skip]]:
        """The entries of ``chunk`` not seen before (a suffix of each list)."""
        mark = self.marks.get((chunk.node, chunk.file_key))
        if mark is None:
            return chunk.events, chunk.skips
        wm = mark[0]
        return _after(chunk.events, wm), _after(chunk.skips, wm)

    def advance(self, chunk: Chunk, now: float) -> None:
        key = (chunk.node, chunk.file_key)
        end = chunk.max_end
        mark = self.marks.get(key)
        if mark is None or end > mark[0]:
            self.marks[key] = (end, now)
        else:
            self.marks[key] = (mark[0], now)

    def prune(self, now: float, max_idle_s: float) -> None:
        for key in [k for k, (_, seen) in self.marks.items() if now - seen > max_idle_s]:
            del self.marks[key]

    def as_list(self) -> list[list[Any]]:
        return [[n, f, end, seen] for (n, f), (end, seen) in self.marks.items()]

    @classmethod
    def from_list(cls, items: Sequence[Sequence[Any]]) -> Watermarks:
        out = cls()
        for n, f, end, seen in items:
            out.marks[(str(n), str(f))] = (int(end), float(seen))
        return out


def _after(entries: list[list[Any]], wm: int) -> list[list[Any]]:
    if not entries or entries[0][0] > wm:
        return entries
    if entries[-1][0] <= wm:
        return []
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        if entries[mid][0] <= wm:
            lo = mid + 1
        else:
            hi = mid
    return entries[lo:]
