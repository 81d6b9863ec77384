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

**Versions.** A message's ``"v"`` fixes the shape of every row in it:

* version 1 (9 fields): ``[end, fmt, ts, entrypoint, client, host, router, xff, real_ip]``;
* version 2 (12 fields): version 1 then ``user_agent, client_host, peer`` (``ClientHost`` as
  written, ``ClientAddr`` as written), so the aggregator judges ``suspected_hop``'s User-Agent
  diversity and ``ban_mismatch`` (``pipeline.core.bouncer``) as ``run`` does. ``client_host`` is
  sent as ``""`` when it equals ``xff`` (Traefik writes the whole X-Forwarded-For there, so it
  would travel twice); the reader takes ``client_host or xff``, which is exact except for a
  ``ClientHost`` absent beside a logged header, a case the bouncer model judges alike.

A new version rather than optional trailing fields: the row length is then a property of the
message, so the aggregator's per-row check stays one expression with a fixed length, and an
aggregator that predates a version dead-letters it as ``unknown_version`` (a label that says
"upgrade me") rather than as ``bad_schema``. Sidecars write version 2; aggregators read 1 and 2,
so during a rolling upgrade **aggregators go first**, then sidecars (a version-2 message at an
older aggregator is a dead letter: its lines are lost to the cluster view). Version 1 rows count
as a log without those fields: no User-Agents (``suspected_hop`` skips its User-Agent test), and
``ban_mismatch`` counts them unjudged (without the peer, a hop cannot be told from a forwarded
element).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from aiokafka.partitioner import murmur2

from parsers.envelope import Envelope, EnvelopeDecoder
from parsers.records import CLIENT_HOST_RAW as R_CLIENT_HOST
from parsers.records import PEER as R_PEER
from parsers.records import XFF as R_XFF
from parsers.records import AccessRecord, ParseStats, SkipReason
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
    version_in,
)

VERSION = 2  # what this build writes
VERSIONS = (1, 2)  # what it reads
JSON = 0
COMMON = 1
# Row layout of an event: end offset, format, then the record fields the engine reads.
END, FMT, TS, EP, CLIENT, HOST, ROUTER, XFF, REAL_IP, USER_AGENT, CLIENT_HOST, PEER = range(12)
ROW_FIELDS = {1: 9, 2: 12}  # fields of a row, per message version
# [end, fmt, ts, entrypoint, client, host, router, xff, real_ip, user_agent, client_host, peer]
Row = list[Any]
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
    def version(self) -> int:
        """The message version of its rows (an older sidecar's rows arrive as version 1)."""
        return 1 if self.events and len(self.events[0]) == ROW_FIELDS[1] else VERSION

    @property
    def max_end(self) -> int:
        a = self.events[-1][END] if self.events else -1
        b = self.skips[-1][0] if self.skips else -1
        return int(max(a, b))


def encode_chunk(chunk: Chunk) -> bytes:
    return orjson.dumps(
        {
            "v": chunk.version,
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
    d, version = version_in(load(data), VERSIONS, "an event chunk")
    node = need_str(field(d, "n", "chunk"), MAX_NAME_CHARS, "node")
    file_key = need_str(field(d, "f", "chunk"), MAX_NAME_CHARS, "file key")
    path = need_str(field(d, "p", "chunk"), MAX_NAME_CHARS, "path")
    events = need_list(field(d, "e", "chunk"), "events")
    skips = need_list(field(d, "s", "chunk"), "skips")
    if len(events) + len(skips) > MAX_ITEMS:
        fail(Reason.RANGE, f"more than {MAX_ITEMS} entries")
    if version == 2:
        _check_v2(events)
    else:
        _check_v1(events)
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


def _check_v2(events: list[Any]) -> None:
    last = -1
    for row in events:  # the aggregator's hot loop: one expression per good row
        if type(row) is list and len(row) == 12:
            end, fmt, ts, ep, client, host, router, xff, rip, ua, ch, peer = row
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
                and type(ua) is str
                and type(ch) is str
                and type(peer) is str
                and len(ep)
                + len(client)
                + len(host)
                + len(router)
                + len(xff)
                + len(rip)
                + len(ua)
                + len(ch)
                + len(peer)
                <= MAX_FIELD_CHARS
            ):
                last = end
                continue
        _bad_row(events, row, last, 12)


def _check_v1(events: list[Any]) -> None:
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
        _bad_row(events, row, last, 9)


def _bad_row(events: list[Any], row: Any, last: int, n: int) -> NoReturn:
    """Raise the ``DeadLetter`` that says what is wrong with a row the fast check refused."""
    i = events.index(row)
    if type(row) is not list or len(row) != n:
        fail(Reason.SCHEMA, f"event {i}: not a list of {n}")
    end = need_int(row[END], 0, MAX_OFFSET, f"event {i} offset")
    if end < last:  # in line order: the duplicate filter relies on it
        fail(Reason.SCHEMA, f"event {i}: offset out of order")
    fmt = row[FMT]
    if type(fmt) is not int or fmt not in _FORMATS:
        fail(Reason.SCHEMA, f"event {i}: unknown format")
    need_ts(row[TS], f"event {i} timestamp")
    for j in range(EP, n):
        need_str(row[j], MAX_FIELD_CHARS, f"event {i} field {j}")
    fail(Reason.RANGE, f"event {i}: fields longer than {MAX_FIELD_CHARS} characters in all")


def record_of(row: Row) -> AccessRecord:
    """The access record of a row of either version (see the module docstring). Status and
    duration do not travel (no finding reads them): 0, as when the log lacks them. A version-1
    row has no User-Agent, ClientHost or peer: "", as when the log drops them."""
    if len(row) == 9:
        return (*row[TS:], "", "", "", 0, 0)
    return (*row[TS:CLIENT_HOST], row[CLIENT_HOST] or row[XFF], row[PEER], 0, 0)


def records_of(rows: Sequence[Row]) -> list[AccessRecord]:
    """``record_of`` for every row of one message (all rows of a message share its version)."""
    if rows and len(rows[0]) == ROW_FIELDS[1]:
        return [(*r[TS:], "", "", "", 0, 0) for r in rows]
    return [(*r[TS:CLIENT_HOST], r[CLIENT_HOST] or r[XFF], r[PEER], 0, 0) for r in rows]


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
            rows = [event_row(end, fmt, rec) for rec, end in zip(records, lends, strict=True)]
        else:  # some lines were skipped or formats are mixed: classify line by line
            for line, end in zip(logical, lends, strict=True):
                one = ParseStats()
                got = parser.parse((line,), one)
                if got:
                    rows.append(event_row(end, COMMON if one.common else JSON, got[0]))
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
            for data in _split(Chunk(self.node, file_key, path, evs, sks)):
                out.append((p, data))
        return out, len(rows)


def event_row(end: int, fmt: int, rec: AccessRecord) -> Row:
    """A version-2 row: ClientHost elided when it repeats X-Forwarded-For (module docstring)."""
    ch = rec[R_CLIENT_HOST]
    return [end, fmt, *rec[:R_CLIENT_HOST], "" if ch == rec[R_XFF] else ch, rec[R_PEER]]


def _first(entry: Skip) -> int:
    return int(entry[0])


def _split(chunk: Chunk) -> list[bytes]:
    """The chunk as messages that each fit a broker message, in order.

    Cut into as many pieces as the size asks for at once (User-Agents make rows long, so a busy
    batch takes several), then each piece again if it is still too large. A single event too
    large to send even alone (a huge line under a large ``max_line_bytes``, with X-Forwarded-For
    and User-Agent JSON-escaped) becomes a ``too_long`` skip: the broker would refuse it on every
    retry and hold the file's checkpoint forever.
    """
    data = encode_chunk(chunk)
    size = len(data)
    n = len(chunk.events) + len(chunk.skips)
    if size <= MAX_MESSAGE_BYTES:
        return [data]
    if n <= 1:
        if not chunk.events:
            return [data]
        skip = [chunk.events[0][END], SkipReason.TOO_LONG.value]
        return [encode_chunk(Chunk(chunk.node, chunk.file_key, chunk.path, [], [skip]))]
    entries: list[tuple[int, bool, list[Any]]] = [(r[END], True, r) for r in chunk.events]
    entries += [(s[0], False, s) for s in chunk.skips]
    entries.sort(key=lambda e: e[0])
    pieces = min(n, size // MAX_MESSAGE_BYTES + 1)
    step = -(-n // pieces)
    out: list[bytes] = []
    for lo in range(0, n, step):
        part = entries[lo : lo + step]
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
