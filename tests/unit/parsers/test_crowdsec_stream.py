"""The incremental decisions-stream parser against orjson on the whole body, chunk by chunk.

Any split of a body into chunks must give what ``delta_from_obj(orjson.loads(body))`` gives, and
whatever it accepts orjson must accept the same way; anything else is a ``DecisionFormatError``,
never another exception, with memory bounded by one element.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from parsers.crowdsec import DecisionDelta, DecisionFormatError, delta_from_obj
from parsers.crowdsec_stream import Batch, StreamParser, parse_stream_body
from tests.support.paths import CORPUS

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that stresses a splitter: braces, brackets, quotes, backslashes, escapes, non-ASCII.
NASTY = st.text(alphabet=st.sampled_from(list('{}[]",:\\ \t\n/\u00e9\u2028\U0001f600ab01')))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), NASTY)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NASTY, inner, max_size=3),
    max_leaves=8,
)
DECISION = st.fixed_dictionaries(
    {
        "value": st.one_of(NASTY, st.sampled_from(["10.42.0.7", "2001:db8::1", "10.0.0.0/8"])),
        "scope": st.sampled_from(["Ip", "Range", "ip", "country", "}{"]),
    },
    optional={
        "id": st.one_of(st.integers(-5, 2**40), st.none(), st.booleans()),
        "duration": st.sampled_from(["4h", "3h59m59.5s", "-1s", "0", "bogus}", "1.5h2m"]),
        "origin": NASTY,
        "scenario": NASTY,
        "type": st.sampled_from(["ban", "captcha", '"]']),
        "simulated": st.sampled_from([True, False, True, False, "true", "maybe"]),
        "nested": JSON,
        "uuid": NASTY,
    },
)
# Now and then an element that is no decision: the whole answer is then a format error.
LIST = st.one_of(
    st.none(),
    st.lists(DECISION, max_size=6),
    st.lists(DECISION, max_size=6),
    st.lists(st.one_of(DECISION, JSON), max_size=4),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A stream body: new/deleted (either may be null or missing, not both), other members."""
    members: dict[str, Any] = {}
    names = ["new", "deleted", *draw(st.lists(NASTY, max_size=3, unique=True))]
    for name in draw(st.permutations(names)):
        if name in ("new", "deleted"):
            if draw(st.booleans()) or not any(k in members for k in ("new", "deleted")):
                members[name] = draw(LIST)
        elif draw(st.booleans()):
            members[name] = draw(JSON)
    if not any(k in members for k in ("new", "deleted")):
        members["new"] = draw(LIST)
    style = draw(st.sampled_from(["orjson", "spaced", "indented", "ascii"]))
    if style == "orjson":
        return orjson.dumps(members)
    if style == "spaced":
        return json.dumps(members, ensure_ascii=False, separators=(" , ", " : ")).encode()
    if style == "indented":
        return (" \n" + json.dumps(members, ensure_ascii=False, indent=1) + "\r\n\t").encode()
    return json.dumps(members, ensure_ascii=True).encode()  # braces stay, text becomes \\uXXXX


def expected(body: bytes) -> DecisionDelta | type[DecisionFormatError]:
    try:
        return delta_from_obj(orjson.loads(body))
    except (DecisionFormatError, orjson.JSONDecodeError):
        return DecisionFormatError


def chunked(body: bytes, cuts: list[int], max_item: int = 1 << 20) -> DecisionDelta:
    parser = StreamParser(max_item=max_item)
    out = Batch()
    edges = [0, *sorted({c % (len(body) + 1) for c in cuts}), len(body)]
    for a, b in itertools.pairwise(edges):
        got = parser.feed(body[a:b])
        out.new += got.new
        out.deleted += got.deleted
    tail = parser.close()
    return DecisionDelta(tuple(out.new + tail.new), tuple(out.deleted + tail.deleted))


def outcome(body: bytes, cuts: list[int]) -> DecisionDelta | type[DecisionFormatError]:
    try:
        return chunked(body, cuts)
    except DecisionFormatError:
        return DecisionFormatError


@FAST
@given(bodies(), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_gives_what_the_whole_body_gives(body: bytes, cuts: list[int]) -> None:
    assert outcome(body, cuts) == expected(body)


@FAST
@given(bodies())
def test_one_byte_at_a_time(body: bytes) -> None:
    assert outcome(body, list(range(len(body)))) == expected(body)


@FAST
@given(bodies(), st.data())
@example(b'{"new":[]}', None)
def test_a_truncated_body_is_a_format_error(body: bytes, data: st.DataObject | None) -> None:
    end = body.rstrip().rfind(b"}")  # anything before the closing brace is unfinished
    cut = data.draw(st.integers(0, end - 1)) if data is not None else end - 1
    with pytest.raises(DecisionFormatError):
        chunked(body[:cut], [cut // 2])


@FAST
@given(
    bodies(),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=3)), min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_damage_is_a_format_error_or_what_orjson_reads(
    body: bytes, edits: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """Bytes inserted, replaced or cut anywhere: never another exception, and whatever is
    accepted is exactly what orjson reads from the same bytes."""
    data = bytearray(body)
    for where, blob in edits:
        at = where % (len(data) + 1)
        data[at : at + len(blob) % 2] = blob
    got = outcome(bytes(data), cuts)
    if got is not DecisionFormatError:
        assert got == expected(bytes(data))


@pytest.mark.parametrize(
    "body",
    [
        b"null",
        b' {"deleted":null,"new":null} ',
        b'{"new":[],"deleted":[]}',
        b'{"new":[{"value":"1.2.3.4","scope":"Ip","id":1,"x":{"y":[1,{"z":"}]"}]}}]}',
        b'{"new":[{"value":"a\\"}]\\\\","scope":"Ip","id":2}],"deleted":null}',
        b'{"\\u006eew":[{"value":"1.2.3.4","scope":"Ip"}]}',  # an escaped member name
        b'{"other":[1,2,{"new":[]}],"new":[{"value":"::1","scope":"Ip"}]}',
    ],
)
def test_shapes_the_whole_body_reads_alike(body: bytes) -> None:
    for size in (1, 2, 3, 7, len(body)):
        assert chunked(body, list(range(size, len(body), size))) == expected(body)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "ends before"),
        (b"[]", "an object with 'new'/'deleted', or null"),  # a list is not a stream answer
        (b'{"value":"1.2.3.4","scope":"Ip"}', "without 'new' or 'deleted'"),
        (b"{}", "without 'new' or 'deleted'"),
        (b'{"new":[],"new":[]}', "'new' given twice"),
        (b'{"new":{}}', "neither a list of decisions nor null"),
        (b'{"new":[1]}', "not a decision object"),
        (b'{"new":[{"value":"1.2.3.4","scope":"Ip"},]}', "not a decision object"),
        (b'{"new":[{"value":"1.2.3.4"}]}', "lacks a string 'value' or 'scope'"),
        (b'{"new":[]}x', "data after the decisions"),
        (b'{"new":[]}{"new":[]}', "data after the decisions"),
        (b'{"new":[{"value":"1.2.3.4","scope":"Ip"}}', "expected ',' or ']'"),
        (b'{"new":[{"value":"1.2.3.4","scope":"Ip" "id":1}]}', "not JSON"),
        (b'{"new":[],"x":[1,}', "not JSON"),
        (b'{"new":nul}', "neither a list"),
        (b'{"new":[{"value":"\xff","scope":"Ip"}]}', "not JSON"),
    ],
)
def test_malformed_bodies(body: bytes, why: str) -> None:
    for size in (1, 5, max(1, len(body))):
        with pytest.raises(DecisionFormatError, match=why):
            chunked(body, list(range(size, len(body), size)))


def test_an_endless_element_is_cut_off_at_the_item_cap() -> None:
    """A decision that never closes: the parser holds at most ``max_item`` bytes of it."""
    parser = StreamParser(max_item=4096)
    parser.feed(b'{"new":[{"value":"')
    for _ in range(3):
        parser.feed(b"}]" * 512)  # 3 KiB, still an unfinished string
    with pytest.raises(DecisionFormatError, match="longer than 4096 bytes"):
        parser.feed(b"}]" * 512)


def test_endless_whitespace_and_decisions_hold_nothing() -> None:
    parser = StreamParser(max_item=4096)
    parser.feed(b'{"deleted": null, "new": [')
    one = b'{"id":1,"value":"203.0.113.9","scope":"Ip","type":"ban","duration":"4h"},'
    seen = 0
    for _ in range(2000):
        seen += len(parser.feed(one * 50 + b" " * 1000).new)
        assert len(parser._buf) < 4096
    assert seen == 100_000
    parser.feed(one[:-1] + b"]}")
    assert parser.close() == Batch()


def test_a_documented_stream_body_from_the_corpus() -> None:
    body = (CORPUS / "crowdsec-decisions-stream-delta-docs.json").read_bytes()
    delta = parse_stream_body(body, startup=True)
    assert delta == delta_from_obj(orjson.loads(body), startup=True)
    assert [d.value for d in delta.new] == ["3.3.3.4"]
