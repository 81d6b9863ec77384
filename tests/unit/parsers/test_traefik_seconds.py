"""A new StartUTC second is read in the parser's fast path, and to the same time as before.

At 5 requests/s a fifth of the lines open a new second; each of them used to leave the fast
path and be read again by the general one (~1.2 µs each). The seconds cache now works a
missing second out itself, all 60 of a canonical minute at once. Whatever the text, the time
must be what ``datetime.fromisoformat(text[:19] + "+00:00")`` says (0.0 when it says nothing
or a time outside 0001..9999 UTC).
"""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.records import TS, AccessRecord, ParseStats
from parsers.traefik import TraefikParser
from tests.support.crowdsec import traefik_json_line

MAX_TS = 253402300799.0


def reference(start: str) -> float:
    try:
        value = datetime.fromisoformat(start[:19] + "+00:00").timestamp()
    except (ValueError, OverflowError, OSError):
        return 0.0
    return value if 0.0 <= value <= MAX_TS else 0.0


def line_with(start: str) -> bytes:
    d = orjson.loads(traefik_json_line("198.51.100.7", "/", 200))
    d["StartUTC"] = start
    return orjson.dumps(d)


EDGES = [
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:59.999Z",
    "2026-01-01T23:59:60Z",  # leap second: not a time for fromisoformat
    "2026-01-01T24:00:00Z",  # hour 24
    "2026-01-01T24:00:05Z",
    "2026-02-29T12:00:00Z",  # not a leap year
    "2024-02-29T12:00:07Z",
    "2026-01-01 00:00:07Z",  # space separator: not the canonical form, read whole
    "2026-01-01t00:00:07Z",
    "2026-01-01T00:00:0٣Z",  # a non-ASCII digit
    "2026-01-01T00:00:+1Z",
    "2026-01-01T00:00:1 Z",
    "2026-01-01T00:00:7Z",  # one digit (the 19 characters run into the Z)
    "0001-01-01T00:00:00Z",  # before 1970: no time
    "1970-01-01T00:00:00Z",  # epoch 0.0
    "1970-01-01T00:00:01Z",
    "9999-12-31T23:59:59Z",  # the last time there is
    "9999-12-31T23:59:58.5Z",
    "20260101T000000.000Z",
    "2026-W01-1T00:00:00Z",
    "2026-001T00:00:00.0Z",
    "2026-01-01T00:00:00+02:00",
    "abcdefghijklmnopqrstuvwxyz",
]


def test_edge_texts_read_as_fromisoformat_does() -> None:
    parser = TraefikParser()
    # Twice, in both orders: a cached minute must not change any answer.
    starts = EDGES + EDGES[::-1]
    records = parser.parse([line_with(s) for s in starts], ParseStats())
    assert [r[TS] for r in records] == [reference(s) for s in starts]
    assert all(type(r[TS]) is float for r in records)


SECOND = st.integers(0, 99).map(lambda n: f"{n:02d}")
CANONICAL = st.builds(
    lambda y, mo, d, h, mi, s, frac: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s}{frac}Z",
    st.sampled_from([1, 1969, 1970, 2000, 2024, 2026, 9999]),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.one_of(SECOND, st.text("0123456789:.+- Z٣", min_size=2, max_size=2)),
    st.sampled_from(["", ".5", ".123456789"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(CANONICAL, min_size=1, max_size=40))
def test_any_start_reads_as_fromisoformat_does(starts: list[str]) -> None:
    parser = TraefikParser()
    records = parser.parse([line_with(s) for s in starts], ParseStats())
    assert [r[TS] for r in records] == [reference(s) for s in starts]


def test_new_seconds_stay_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second not seen yet does not send the line to the general path (``_record``)."""
    general = 0
    slow = TraefikParser._record

    def counting(self: TraefikParser, d: object, stats: ParseStats) -> AccessRecord | None:
        nonlocal general
        general += 1
        return slow(self, d, stats)

    monkeypatch.setattr(TraefikParser, "_record", counting)
    lines = [line_with(f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}.5Z") for s in range(0, 600, 5)]
    assert len(TraefikParser().parse(lines, ParseStats())) == len(lines)
    assert general == 0
