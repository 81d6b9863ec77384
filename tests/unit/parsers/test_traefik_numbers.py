"""Numbers and times in hostile common-format lines: a bounded skip, never an exception.

``int()`` of 4,300 or more digits raises ``ValueError``, which left the parser as a traceback
(exit 1, the code for "findings"). The hypothesis part draws the numeric fields of a CLF line
from huge digit runs, signs and non-ASCII digits.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from parsers import records as R
from parsers.records import ParseStats, SkipReason
from parsers.traefik import MAX_DIGITS, TraefikParser

WHEN = "01/Jan/2024:00:00:00 +0000"


def clf(status: str = "200", size: str = "5", count: str = "1", dur: str = "3") -> bytes:
    return (
        f'1.2.3.4 - - [{WHEN}] "GET / HTTP/1.1" {status} {size} "-" "curl/8" {count} '
        f'"r@kubernetes" "http://10.42.0.9:80" {dur}ms'
    ).encode()


def parse(lines: list[bytes]) -> tuple[list[R.AccessRecord], ParseStats]:
    stats = ParseStats()
    return TraefikParser().parse(lines, stats), stats


def skipped(stats: ParseStats) -> dict[SkipReason, int]:
    return {reason: n for reason, n in stats.skipped.items() if n}


@pytest.mark.parametrize("field", ["status", "size", "count", "dur"])
def test_5000_digit_number_is_a_bad_field_skip(field: str) -> None:
    recs, stats = parse([clf(**{field: "9" * 5000}), clf()])
    assert len(recs) == 1
    assert (stats.lines, stats.common, stats.json) == (2, 1, 0)
    assert skipped(stats) == {SkipReason.BAD_FIELD: 1}


@pytest.mark.parametrize("field", ["status", "size", "count", "dur"])
def test_number_one_digit_over_the_bound_is_skipped(field: str) -> None:
    _, stats = parse([clf(**{field: "1" * (MAX_DIGITS + 1)})])
    assert skipped(stats) == {SkipReason.BAD_FIELD: 1}


def test_numbers_at_the_bound_are_read() -> None:
    top = "9" * MAX_DIGITS
    recs, stats = parse([clf(status=top, size=top, count=top, dur=top)])
    assert stats.common == 1
    assert recs[0][R.STATUS] == int(top)
    assert recs[0][R.DURATION_NS] == int(top) * 1_000_000
    assert recs[0][R.DURATION_NS] < 2**63  # int64 like the JSON path's numbers


@pytest.mark.parametrize(
    "status", ["-", "+200", "-200", "２００", "٢٠٠", "²", "0x1F", "1_000", "2e2"]
)
def test_status_that_is_not_ascii_digits_reads_as_zero(status: str) -> None:
    recs, stats = parse([clf(status=status)])
    assert stats.common == 1
    assert recs[0][R.STATUS] == 0


@pytest.mark.parametrize("dur", ["-3", "+3", "３", "٣"])
def test_duration_that_is_not_ascii_digits_reads_as_zero(dur: str) -> None:
    recs, stats = parse([clf(dur=dur)])
    assert stats.common == 1
    assert recs[0][R.DURATION_NS] == 0


def test_long_time_text_is_neither_parsed_nor_cached() -> None:
    """Each distinct time text was cached whole: 8,192 keys of 60 KB would hold 480 MB."""
    parser = TraefikParser()
    stats = ParseStats()
    lines = [clf().replace(WHEN.encode(), b"%d" % i + b"7" * 10_000) for i in range(50)]
    lines += [
        json.dumps({"ClientHost": "1.2.3.4", "time": f"{i}" + "7" * 10_000}).encode()
        for i in range(50)
    ]
    recs = parser.parse(lines, stats)
    assert (stats.common, stats.json) == (50, 50)
    assert {r[R.TS] for r in recs} == {0.0}
    assert max(map(len, parser._times.by_key), default=0) <= 64


# -- property: the numeric fields of a common-format line --------------------------------------

UNICODE_DIGITS = "０１２３４５６７８９٠١٢٣٤٥٦٧٨٩۰۱۲۳߀०१२३²³¹①⑨"


def _digits(n: int) -> str:
    return ("1234567890" * (n // 10 + 1))[:n]


NUMBER = st.one_of(
    st.integers(1, 6000).map(_digits),  # digit runs up to past int()'s 4,300-digit limit
    st.tuples(st.sampled_from("+-"), st.integers(1, 5000).map(_digits)).map("".join),
    st.text(alphabet=UNICODE_DIGITS, min_size=1, max_size=60),
    st.text(alphabet="0123456789" + UNICODE_DIGITS + "+-_.eEx", min_size=1, max_size=40),
    st.sampled_from(["-", "0", "00000000000000", "1e400", "NaN", "inf", "9" * 4301]),
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


@FAST
@given(status=NUMBER, size=NUMBER, count=NUMBER, dur=NUMBER)
@example(status="9" * 5000, size="5", count="1", dur="3")
@example(status="200", size="5", count="1", dur="9" * 5000)
@example(status="１２３", size="٣", count="²", dur="٣")
def test_clf_numeric_fields_never_raise(status: str, size: str, count: str, dur: str) -> None:
    fields = (status, size, count, dur)
    recs, stats = parse([clf(status, size, count, dur)])
    assert stats.lines == 1
    assert stats.parsed + stats.skipped_total == 1
    if any(_is_number(f) and len(f) > MAX_DIGITS for f in fields):
        assert recs == []
        assert skipped(stats) == {SkipReason.BAD_FIELD: 1}
        return
    assert stats.common == 1
    rec = recs[0]
    assert rec[R.STATUS] == (int(status) if _is_number(status) else 0)
    assert rec[R.DURATION_NS] == (int(dur) * 1_000_000 if _is_number(dur) else 0)
    assert 0 <= rec[R.STATUS] < 10**MAX_DIGITS
    assert 0 <= rec[R.DURATION_NS] < 2**63
