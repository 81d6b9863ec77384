"""Lines read as JSON arrays (``parse``'s groups, ``parse_text``'s pieces) give each line the
verdict it gets alone, and replay's unsplit blocks (``text_batches``) hold the same lines as
``line_batches``.

The oracle is the parser on one line at a time: a one-line array is that line's own document.
Lines come from the corpus (Traefik JSON v2/v3, common format, Traefik's own log, mixed stdout),
cut short anywhere (a writer killed mid-line), and hostile shapes: blank, whitespace, CRLF, a
BOM, invalid UTF-8, JSON that is not an object, two values on one line, lines over the limit.
"""

from __future__ import annotations

import io

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.records import AccessRecord, ParseStats, SkipReason
from parsers.traefik import MAX_LINE_BYTES, PIECE_BYTES, TraefikParser
from pipeline.sources.readfile import line_batches, text_batches
from tests.support.paths import CORPUS

_FILES = (
    "traefik-json-v2.jsonl",
    "traefik-json-v3.jsonl",
    "traefik-json-elastic-mixed.jsonl",
    "traefik-stdout-mixed.log",
    "traefik-clf.log",
    "traefik-applog-text.log",
)
CORPUS_LINES = [
    line for name in _FILES for line in (CORPUS / name).read_bytes().split(b"\n") if line
]
JSON_LINE = next(line for line in CORPUS_LINES if line.startswith(b'{"ClientAddr"'))
SPECIAL = [
    b"",
    b"   ",
    b"\t",
    JSON_LINE + b"\r",
    b"\xef\xbb\xbf" + JSON_LINE,
    b"\xff\xfe" + JSON_LINE,
    b"[1, 2]",
    b"3",
    b'"text"',
    b"null",
    b"{}",
    b'{"a":1},{"b":2}',
    b"{,",
    b"]",
    b"[",
    JSON_LINE[:-1] + b',"pad":"' + b"x" * 3000 + b'"}',  # over the smaller limits below
]
LIMITS = (MAX_LINE_BYTES, 2000, 700)


@st.composite
def line_lists(draw: st.DrawFn) -> list[bytes]:
    whole = st.sampled_from(CORPUS_LINES)
    cut = st.tuples(whole, st.integers(min_value=1, max_value=400)).map(lambda lc: lc[0][: lc[1]])
    line = st.one_of(whole, whole, whole, cut, st.sampled_from(SPECIAL))
    return draw(st.lists(line, min_size=1, max_size=300))


def one_by_one(lines: list[bytes], limit: int) -> tuple[list[AccessRecord], ParseStats]:
    """The reference, independent of the array paths (``_docs``, ``_take``): what the parser
    did before them, one ``orjson.loads`` a line, each value through the general path."""
    parser = TraefikParser(limit)
    stats = ParseStats()
    records: list[AccessRecord] = []
    for line in lines:
        stats.lines += 1
        if len(line) > limit:
            stats.skip(SkipReason.TOO_LONG)
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            stripped = line.strip()
            if not stripped:
                stats.skip(SkipReason.EMPTY)
                continue
            rec = parser._non_json(stripped, stats)
        else:
            rec = parser._record(value, stats)
        if rec is not None:
            records.append(rec)
    stats.json = len(records) - stats.common
    return records, stats


def same(a: ParseStats, b: ParseStats) -> bool:
    return (a.lines, a.json, a.common, a.skipped) == (b.lines, b.json, b.common, b.skipped)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=line_lists(), limit=st.sampled_from(LIMITS))
def test_arrays_give_every_line_its_own_verdict(lines: list[bytes], limit: int) -> None:
    want, want_stats = one_by_one(lines, limit)
    assert want_stats.lines == len(lines)

    stats = ParseStats()
    assert TraefikParser(limit).parse(lines, stats) == want
    assert same(stats, want_stats)

    stats = ParseStats()
    assert TraefikParser(limit).parse_text(b"\n".join(lines), stats) == want
    assert same(stats, want_stats)


def test_a_clean_piece_is_read_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed-up is real only if a piece of valid lines is one ``loads``, not one a line."""
    import parsers.traefik as traefik

    calls = count_loads(monkeypatch, traefik)
    lines = [line for line in CORPUS_LINES if line.startswith(b'{"ClientAddr"')] * 20
    stats = ParseStats()
    records = TraefikParser().parse_text(b"\n".join(lines), stats)
    assert len(records) == len(lines) == stats.json
    pieces = -(-sum(len(line) + 1 for line in lines) // (PIECE_BYTES - 1024))
    assert 1 <= len(calls) <= pieces


def test_a_line_holding_a_newline_is_read_alone() -> None:
    """A decoded envelope may hand over a line with a newline inside: it cannot become two
    records, nor merge with its neighbours."""
    two = JSON_LINE + b"\n" + JSON_LINE
    lines = [JSON_LINE, two, JSON_LINE]
    want, want_stats = one_by_one(lines, MAX_LINE_BYTES)
    stats = ParseStats()
    assert TraefikParser().parse(lines, stats) == want
    assert same(stats, want_stats)
    assert stats.json == 2
    assert stats.skipped_total == 1


def test_a_file_of_newlines_is_counted_not_parsed_line_by_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import parsers.traefik as traefik

    calls = count_loads(monkeypatch, traefik)
    stats = ParseStats()
    assert TraefikParser().parse_text(b"\n" * 2_000_000, stats) == []
    assert stats.lines == 2_000_001
    assert stats.skipped[SkipReason.EMPTY] == 2_000_001
    # a failed array and one failed line a piece, not a call a line
    assert len(calls) <= 2 * (2_000_001 // (PIECE_BYTES - 1) + 1)


def count_loads(monkeypatch: pytest.MonkeyPatch, module: object) -> list[int]:
    """Record the size of every ``orjson.loads`` input of the parser module."""
    calls: list[int] = []

    def counting(data: bytes) -> object:
        calls.append(len(data))
        return orjson.loads(data)

    monkeypatch.setattr(module, "_loads", counting)
    return calls


def test_groups_of_long_lines_stay_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """``parse`` groups lines by bytes as well as by count: 64 lines of 1 MiB joined would hold
    64 decoded documents and their text at once (``max_line_bytes`` goes up to 16 MiB)."""
    import parsers.traefik as traefik

    calls = count_loads(monkeypatch, traefik)
    pad = JSON_LINE[:-1] + b',"pad":"' + b"x" * 20_000 + b'"}'  # ~20 KB: one a group
    lines = [pad, JSON_LINE] * 40 + [JSON_LINE] * 200
    stats = ParseStats()
    want, want_stats = one_by_one(lines, MAX_LINE_BYTES)
    assert TraefikParser().parse(lines, stats) == want
    assert same(stats, want_stats)
    assert max(calls) <= PIECE_BYTES + 2 * len(JSON_LINE) + 1024
    assert len(calls) < len(lines) / 2  # still arrays, not a call a line


@st.composite
def files(draw: st.DrawFn) -> bytes:
    piece = st.one_of(
        st.sampled_from(CORPUS_LINES),
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
        st.integers(min_value=0, max_value=5000).map(lambda n: b"y" * n),
        st.just(b""),
    )
    body = b"\n".join(draw(st.lists(piece, max_size=60)))
    return body + draw(st.sampled_from([b"", b"\n", b"\n\n"]))


class Trickle:
    """A stream that hands out at most ``step`` bytes a read, as a pipe may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._fh = io.BytesIO(data)
        self._step = step

    def read(self, size: int) -> bytes:
        return self._fh.read(min(size, self._step))


@settings(max_examples=300, deadline=None)
@given(
    data=files(),
    limit=st.sampled_from((64, 1000, MAX_LINE_BYTES)),
    block=st.sampled_from((1, 7, 300, 4096)),
    step=st.sampled_from((3, 500, 1 << 20)),
)
def test_text_blocks_hold_the_same_lines(data: bytes, limit: int, block: int, step: int) -> None:
    """Where a line over the limit is cut depends on the reads (either way the parser counts it
    too long once), so such lines compare as one marker."""

    def seen(lines: list[bytes]) -> list[bytes | None]:
        return [line if len(line) <= limit else None for line in lines]

    batches = list(line_batches(Trickle(data, step), 5, None, limit))
    want = [line for batch in batches for line in batch]
    blocks = list(text_batches(Trickle(data, step), None, limit, block))
    assert seen([line for text in blocks for line in text.split(b"\n")]) == seen(want)
    # parsed as blocks, records and counts are those of the lines, read one by one
    want_records, want_stats = one_by_one(want, limit)
    stats = ParseStats()
    parser = TraefikParser(limit)
    records = [rec for text in blocks for rec in parser.parse_text(text, stats)]
    assert records == want_records
    assert same(stats, want_stats)


def test_text_blocks_cut_a_runaway_line_and_skip_its_rest() -> None:
    data = b"a\n" + b"z" * 10_000 + b"\nb"
    blocks = list(text_batches(io.BytesIO(data), None, 100, 64))
    lines = [line for text in blocks for line in text.split(b"\n")]
    assert lines == [b"a", b"z" * 101, b"b"]
    stats = ParseStats()
    for text in blocks:
        TraefikParser(100).parse_text(text, stats)
    assert stats.lines == 3
    assert stats.skipped[SkipReason.TOO_LONG] == 1
