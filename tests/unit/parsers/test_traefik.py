"""TraefikParser against the shared corpus (tests/data/corpus, SOURCES.md facts) and hostile lines.

Expected values come from an independent oracle where one exists (stdlib ``json`` and ``datetime``
on the same corpus line) and from SOURCES.md facts otherwise.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from parsers import records as R
from parsers.records import AccessRecord, ParseStats, SkipReason
from parsers.traefik import MAX_LINE_BYTES, TraefikParser, client_of
from tests.support.paths import CORPUS


def corpus_lines(name: str) -> list[bytes]:
    """File lines without newlines; a final newline does not make an extra (empty) line."""
    data = (CORPUS / name).read_bytes()
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return lines


def parse(lines: list[bytes], **kw: int) -> tuple[list[AccessRecord], ParseStats]:
    stats = ParseStats()
    return TraefikParser(**kw).parse(lines, stats), stats


def parse_one(line: bytes, **kw: int) -> tuple[AccessRecord | None, ParseStats]:
    recs, stats = parse([line], **kw)
    assert stats.lines == 1
    assert len(recs) + stats.skipped_total == 1
    return (recs[0] if recs else None), stats


def only_skip(stats: ParseStats) -> SkipReason:
    hit = [r for r, n in stats.skipped.items() if n]
    assert len(hit) == 1, stats.skipped
    assert stats.skipped[hit[0]] == 1
    return hit[0]


def record(
    *,
    ts: float,
    ep: str,
    client: str,
    host: str,
    router: str,
    ch: str,
    peer: str,
    status: int,
    xff: str,
    rip: str,
    ua: str,
    dur: int,
) -> AccessRecord:
    """Build a record by the schema's index constants (the tuple order is not the contract)."""
    out: list[object] = [None] * 12
    out[R.TS], out[R.ENTRYPOINT], out[R.CLIENT], out[R.HOST], out[R.ROUTER] = (
        ts,
        ep,
        client,
        host,
        router,
    )
    out[R.CLIENT_HOST_RAW], out[R.PEER], out[R.STATUS] = ch, peer, status
    out[R.XFF], out[R.REAL_IP], out[R.USER_AGENT], out[R.DURATION_NS] = xff, rip, ua, dur
    assert None not in out
    return tuple(out)  # type: ignore[return-value]


def oracle(line: bytes) -> AccessRecord:
    """What the record must be, computed with the stdlib from the same JSON line."""
    d = json.loads(line)
    ch = d.get("ClientHost", "")
    peer = d.get("ClientAddr", "")
    if ch:
        client = ch.split(",")[-1].strip()  # CrowdSec traefik-logs: last element of ClientHost
    elif peer.startswith("["):
        client = peer[1 : peer.index("]")]
    else:
        client = peer.rsplit(":", 1)[0]
    if "StartUTC" in d:
        ts = datetime.fromisoformat(d["StartUTC"][:19] + "+00:00").timestamp()
    else:
        ts = datetime.fromisoformat(d["time"]).timestamp()
    return record(
        ts=ts,
        ep=d.get("entryPointName", "-"),
        client=client,
        host=d.get("RequestHost", "-"),
        router=d.get("RouterName", "-"),
        ch=ch,
        peer=peer,
        status=d.get("DownstreamStatus", 0),
        xff=d.get("request_X-Forwarded-For", ""),
        rip=d.get("request_X-Real-Ip", ""),
        ua=d.get("request_User-Agent", ""),
        dur=d.get("Duration", 0),
    )


# -- JSON corpus ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["traefik-json-v2.jsonl", "traefik-json-v3.jsonl", "traefik-json-elastic-mixed.jsonl"],
)
def test_json_corpus_matches_stdlib_oracle(name: str) -> None:
    lines = corpus_lines(name)
    recs, stats = parse(lines)
    assert stats.lines == len(lines)
    assert stats.json == len(lines)
    assert stats.common == 0
    assert stats.skipped_total == 0
    assert recs == [oracle(line) for line in lines]


def test_v3_line4_xff_list_client_is_last_element_raw_kept() -> None:
    rec = parse(corpus_lines("traefik-json-v3.jsonl"))[0][3]
    assert rec[R.CLIENT] == "10.0.0.50"
    assert rec[R.CLIENT_HOST_RAW] == "192.168.1.100,10.0.0.50"
    assert rec[R.PEER] == "172.71.122.85:11029"
    assert rec[R.STATUS] == 204
    assert rec[R.ENTRYPOINT] == "web-secure"
    assert rec[R.ROUTER] == "matrix-synapse-public-client-api@docker"
    assert rec[R.DURATION_NS] == 2337877
    assert rec[R.TS] == datetime(2025, 11, 28, 9, 21, 55, tzinfo=UTC).timestamp()


def test_v3_router_chains_and_missing_router() -> None:
    recs = parse(corpus_lines("traefik-json-v3.jsonl"))[0]
    assert recs[0][R.ROUTER] == "root@file -> intermediate1@file -> intermediate2@file -> leaf@file"
    assert recs[1][R.ROUTER] == "parent@file -> child@file"
    # Line 3: a 404 answered by Traefik itself has no RouterName.
    assert recs[2][R.ROUTER] == "-"
    assert recs[2][R.STATUS] == 404
    assert recs[2][R.ENTRYPOINT] == "https"
    assert recs[2][R.TS] == datetime(2026, 1, 14, 9, 45, 33, tzinfo=UTC).timestamp()


def test_v2_docker_bridge_and_real_ip_header() -> None:
    recs = parse(corpus_lines("traefik-json-v2.jsonl"))[0]
    for rec in recs[:2]:
        assert rec[R.CLIENT] == "172.17.0.1"
        assert rec[R.REAL_IP] == "172.17.0.1"
        assert rec[R.XFF] == ""
        assert rec[R.USER_AGENT] == "Nikto"
        assert rec[R.ROUTER] == "test@docker"
        assert rec[R.ENTRYPOINT] == "http"


def test_v2_lines_3_4_without_client_host_fall_back_to_client_addr() -> None:
    recs = parse(corpus_lines("traefik-json-v2.jsonl"))[0]
    assert [r[R.CLIENT] for r in recs[2:4]] == ["10.10.10.20", "10.10.10.21"]
    assert [r[R.CLIENT_HOST_RAW] for r in recs[2:4]] == ["", ""]
    assert [r[R.PEER] for r in recs[2:4]] == ["10.10.10.20:23456", "10.10.10.21:34567"]
    # No StartUTC either: the time comes from logrus' `time` (seconds, with zone).
    assert recs[2][R.TS] == datetime(2024, 2, 2, 17, 7, 8, tzinfo=UTC).timestamp()


def test_v2_line5_reformatted_with_spaces_client_host_from_xff() -> None:
    rec = parse(corpus_lines("traefik-json-v2.jsonl"))[0][4]
    assert rec[R.CLIENT] == "175.16.199.10"
    assert rec[R.PEER] == "10.10.8.105:48376"
    assert rec[R.STATUS] == 200


def test_elastic_v1_keys_parse_and_ipv6_peer() -> None:
    recs = parse(corpus_lines("traefik-json-elastic-mixed.jsonl"))[0]
    # v1 lines: no RouterName, no entryPointName.
    assert [(r[R.ENTRYPOINT], r[R.ROUTER]) for r in recs[:2]] == [("-", "-"), ("-", "-")]
    assert recs[0][R.CLIENT] == "127.0.0.1"
    assert (recs[2][R.ENTRYPOINT], recs[2][R.ROUTER]) == ("ping", "ping@internal")
    v6 = recs[6]
    assert v6[R.CLIENT] == "::1"
    assert v6[R.PEER] == "[::1]:56348"
    assert v6[R.ROUTER] == "-"


@pytest.mark.parametrize(
    ("client_host", "peer", "expected"),
    [
        ("", "[::1]:56348", "::1"),
        ("", "10.42.0.9:443", "10.42.0.9"),
        ("", "[fe80::1%eth0]:80", "fe80::1%eth0"),
        ("", "::1", "::1"),
        ("", "", ""),
        ("1.2.3.4, 10.42.0.1", "10.42.0.1:5", "10.42.0.1"),
        ("1.2.3.4 ,  5.6.7.8 ", "", "5.6.7.8"),
        ("203.0.113.9", "10.42.0.1:5", "203.0.113.9"),
    ],
)
def test_client_of(client_host: str, peer: str, expected: str) -> None:
    assert client_of(client_host, peer) == expected


def test_stdout_mixed_plugin_line_is_not_access_log() -> None:
    lines = corpus_lines("traefik-stdout-mixed.log")
    assert len(lines) == 7  # no final newline in the source
    recs, stats = parse(lines)
    assert stats.lines == 7
    assert stats.json == 6
    assert stats.skipped[SkipReason.NOT_ACCESS_LOG] == 1
    assert stats.skipped_total == 1
    _, line6 = parse_one(lines[5])
    assert only_skip(line6) is SkipReason.NOT_ACCESS_LOG
    assert recs[-1][R.CLIENT] == "10.0.0.50"


def test_applog_text_lines_are_not_access_log() -> None:
    lines = corpus_lines("traefik-applog-text.log")
    recs, stats = parse(lines)
    assert recs == []
    assert stats.lines == 4
    assert stats.skipped[SkipReason.NOT_ACCESS_LOG] == 4
    assert stats.skipped_total == 4


# -- common log format ------------------------------------------------------------------------


def clf_ts(text: str) -> float:
    return datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").timestamp()


# (line number, client, status, router, duration ms, user agent, time text or None)
CLF_FACTS = [
    (1, "172.17.0.1", 200, "test@docker", 0, "", "08/Dec/2021:09:16:05 +0000"),
    (4, "172.17.0.1", 200, "test@docker", 1, "Nikto", "08/Dec/2021:13:59:39 +0000"),
    (5, "172.17.1.1", 0, "-", 0, "Mozilla/5.00 (Nikto/2.1.5) (Evasions:None) (Test:006607)", None),
    (6, "172.17.1.2", 200, "test@docker -> leaf@docker", 42, "Nikto", None),
    (
        7,
        "172.17.1.3",
        200,
        "root@docker -> intermediate1@docker -> intermediate2@docker -> leaf@docker",
        25,
        "curl/7.68.0",
        "24/Nov/2024:13:40:15 +0000",
    ),
    (12, "89.160.20.156", 200, "Host-host1-com-0", 247, None, "28/Feb/2018:17:30:33 +0000"),
    (13, "::1", 404, "backend not found", 0, "curl/7.62.0", None),
    (16, "127.0.0.1", 200, "-", 0, "", "10/Oct/2000:13:55:36 -0700"),  # plain Apache CLF
    (17, "::1", 0, "-", 0, "", None),
    (20, "10.32.0.1", 302, "entrypoint redirect for http", 0, None, None),
    (22, "127.0.0.1", 200, "-", 0, "", None),  # router/URL unquoted `- -`
    (23, "TestHost", 123, "testRouter", 1, "testUserAgent", "13/Apr/2016:07:14:19 -0700"),
    (24, "127.0.0.1", 401, "testRouter with space", 0, "Go-http-client/1.1", None),
    (27, "", 123, "testRouter", 1, "testUserAgent", None),  # ClientHost dropped: `-`
    (29, "", 0, "-", 0, "REDACTED", None),
    (
        31,
        "165.225.17.92",
        200,
        "websecure-web-homeassistant-home-myogg-net@kubernetes",
        59,
        "",
        "18/Aug/2025:09:27:45 +0000",
    ),
]


@pytest.mark.parametrize(("lineno", "client", "status", "router", "ms", "ua", "when"), CLF_FACTS)
def test_clf_line_facts(
    lineno: int, client: str, status: int, router: str, ms: int, ua: str | None, when: str | None
) -> None:
    rec, stats = parse_one(corpus_lines("traefik-clf.log")[lineno - 1])
    assert rec is not None
    assert stats.common == 1
    assert stats.json == 0
    assert rec[R.CLIENT] == client
    assert rec[R.STATUS] == status
    assert rec[R.ROUTER] == router
    assert rec[R.DURATION_NS] == ms * 1_000_000
    assert rec[R.ENTRYPOINT] == "-"
    assert rec[R.HOST] == "-"
    assert rec[R.PEER] == ""
    if ua is not None:
        assert rec[R.USER_AGENT] == ua
    if when is not None:
        assert rec[R.TS] == clf_ts(when)


def test_clf_whole_file_counts() -> None:
    lines = corpus_lines("traefik-clf.log")
    assert len(lines) == 31
    recs, stats = parse(lines)
    assert stats.lines == 31
    assert stats.skipped[SkipReason.EMPTY] == 2  # lines 8-9
    assert stats.skipped[SkipReason.UNRECOGNIZED] == 1  # line 25 "bad"
    assert stats.skipped_total == 3
    assert stats.common == 28 == len(recs)
    assert stats.json == 0


def test_clf_bad_line_is_unrecognized() -> None:
    assert only_skip(parse_one(corpus_lines("traefik-clf.log")[24])[1]) is SkipReason.UNRECOGNIZED


def test_clf_dropped_time_gives_zero_ts() -> None:
    rec, _ = parse_one(corpus_lines("traefik-clf.log")[27])  # `[-]`
    assert rec is not None
    assert rec[R.TS] == 0.0


def test_clf_malformed_beats_line_still_yields_client_and_status() -> None:
    rec, _ = parse_one(corpus_lines("traefik-clf.log")[18])
    assert rec is not None
    assert (rec[R.CLIENT], rec[R.STATUS]) == ("85.181.35.98", 304)


def test_clf_xff_list_in_first_field_uses_last_element() -> None:
    line = (
        b'203.0.113.7, 10.42.0.9 - - [18/Aug/2025:09:27:45 +0000] "GET / HTTP/1.1" 200 5 "-" '
        b'"curl/8" 3 "r@kubernetes" "http://10.42.0.141:8123" 4ms'
    )
    rec, _ = parse_one(line)
    assert rec is not None
    assert rec[R.CLIENT] == "10.42.0.9"
    assert rec[R.CLIENT_HOST_RAW] == "203.0.113.7, 10.42.0.9"
    assert rec[R.DURATION_NS] == 4_000_000


# -- hostile and malformed input --------------------------------------------------------------

GOOD = (
    b'{"ClientAddr":"10.42.0.9:1234","ClientHost":"10.42.0.9","DownstreamStatus":200,'
    b'"Duration":5,"RequestHost":"a.example","RequestMethod":"GET",'
    b'"StartUTC":"2024-01-01T00:00:00.5Z","entryPointName":"websecure"}'
)


def test_good_line_baseline() -> None:
    rec, _ = parse_one(GOOD)
    assert rec == record(
        ts=datetime(2024, 1, 1, tzinfo=UTC).timestamp(),
        ep="websecure",
        client="10.42.0.9",
        host="a.example",
        router="-",
        ch="10.42.0.9",
        peer="10.42.0.9:1234",
        status=200,
        xff="",
        rip="",
        ua="",
        dur=5,
    )


HOSTILE: list[tuple[str, bytes, SkipReason]] = [
    ("empty", b"", SkipReason.EMPTY),
    ("blank", b" \t ", SkipReason.EMPTY),
    ("cr only", b"\r", SkipReason.EMPTY),
    ("truncated json", GOOD[:57], SkipReason.INVALID_JSON),
    ("truncated at brace", b"{", SkipReason.INVALID_JSON),
    ("array truncated", b"[1, 2", SkipReason.INVALID_JSON),
    ("nan literal", GOOD.replace(b'"Duration":5', b'"Duration":NaN'), SkipReason.INVALID_JSON),
    ("inf literal", GOOD.replace(b'"Duration":5', b'"Duration":Infinity'), SkipReason.INVALID_JSON),
    ("neg inf", GOOD.replace(b'"Duration":5', b'"Duration":-Infinity'), SkipReason.INVALID_JSON),
    ("1e400", GOOD.replace(b'"Duration":5', b'"Duration":1e400'), SkipReason.INVALID_JSON),
    ("lone surrogate", GOOD.replace(b'"a.example"', b'"\\ud800"'), SkipReason.INVALID_JSON),
    ("single quotes", b"{'ClientHost': '1.2.3.4'}", SkipReason.INVALID_JSON),
    ("trailing comma", GOOD[:-1] + b",}", SkipReason.INVALID_JSON),
    ("two objects", GOOD + GOOD, SkipReason.INVALID_JSON),
    ("invalid utf8 in json", GOOD.replace(b"a.example", b"a.\xff\xfe"), SkipReason.INVALID_UTF8),
    ("invalid utf8 text", b"\xc3\x28 - - [x]", SkipReason.INVALID_UTF8),
    (
        "invalid utf8 clf",
        b'1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "\xff" 1 "r" "u" 1ms',
        SkipReason.INVALID_UTF8,
    ),
    ("overlong utf8", b'{"ClientHost":"\xc0\xaf"}', SkipReason.INVALID_UTF8),
    ("status as string", GOOD.replace(b":200", b':"200"'), SkipReason.BAD_FIELD),
    ("status true", GOOD.replace(b":200", b":true"), SkipReason.BAD_FIELD),
    ("status float", GOOD.replace(b":200", b":200.0"), SkipReason.BAD_FIELD),
    ("status null", GOOD.replace(b":200", b":null"), SkipReason.BAD_FIELD),
    ("status huge", GOOD.replace(b":200", b":" + b"9" * 40), SkipReason.BAD_FIELD),
    (
        "client host number",
        GOOD.replace(b'"ClientHost":"10.42.0.9"', b'"ClientHost":1234'),
        SkipReason.BAD_FIELD,
    ),
    (
        "client host list",
        GOOD.replace(b'"ClientHost":"10.42.0.9"', b'"ClientHost":["1.2.3.4"]'),
        SkipReason.BAD_FIELD,
    ),
    ("client addr object", GOOD.replace(b'"10.42.0.9:1234"', b'{"ip":"1"}'), SkipReason.BAD_FIELD),
    ("duration string", GOOD.replace(b'"Duration":5', b'"Duration":"5ms"'), SkipReason.BAD_FIELD),
    ("duration bool", GOOD.replace(b'"Duration":5', b'"Duration":false'), SkipReason.BAD_FIELD),
    ("host number", GOOD.replace(b'"a.example"', b"7"), SkipReason.BAD_FIELD),
    ("entrypoint null", GOOD.replace(b'"websecure"', b"null"), SkipReason.BAD_FIELD),
    ("router object", GOOD[:-1] + b',"RouterName":{}}', SkipReason.BAD_FIELD),
    ("xff number", GOOD[:-1] + b',"request_X-Forwarded-For":1}', SkipReason.BAD_FIELD),
    ("real ip list", GOOD[:-1] + b',"request_X-Real-Ip":[]}', SkipReason.BAD_FIELD),
    ("ua true", GOOD[:-1] + b',"request_User-Agent":true}', SkipReason.BAD_FIELD),
    ("json string", b'"hello"', SkipReason.NOT_ACCESS_LOG),
    ("json number", b"42", SkipReason.NOT_ACCESS_LOG),
    ("json null", b"null", SkipReason.NOT_ACCESS_LOG),
    ("json true", b"true", SkipReason.NOT_ACCESS_LOG),
    ("json array", b"[]", SkipReason.NOT_ACCESS_LOG),
    ("array of access objects", b"[" + GOOD + b"]", SkipReason.NOT_ACCESS_LOG),
    ("empty object", b"{}", SkipReason.NOT_ACCESS_LOG),
    (
        "traefik json app log",
        b'{"level":"info","msg":"Configuration loaded","time":"2024-01-01T00:00:00Z"}',
        SkipReason.NOT_ACCESS_LOG,
    ),
    (
        "logrus text",
        b'time="2024-01-15T18:43:09Z" level=error msg="x from 1.2.3.4"',
        SkipReason.NOT_ACCESS_LOG,
    ),
    ("level= line", b"level=info msg=started", SkipReason.NOT_ACCESS_LOG),
    ("NUL bytes", b"\x00\x00\x00", SkipReason.UNRECOGNIZED),
    ("garbage", b"this is not a log line", SkipReason.UNRECOGNIZED),
    ("bare NaN", b"NaN", SkipReason.UNRECOGNIZED),
    ("control chars", b"\x1b[31mred\x1b[0m", SkipReason.UNRECOGNIZED),
]


@pytest.mark.parametrize(("label", "line", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_line_skipped_with_reason(label: str, line: bytes, reason: SkipReason) -> None:
    rec, stats = parse_one(line)
    assert rec is None, label
    assert only_skip(stats) is reason


def test_hostile_batch_counts_every_line_once() -> None:
    lines = [h[1] for h in HOSTILE] + [GOOD]
    recs, stats = parse(lines)
    assert stats.lines == len(lines)
    assert len(recs) == 1
    assert stats.parsed + stats.skipped_total == len(lines)
    for reason in SkipReason:
        assert stats.skipped[reason] == sum(1 for h in HOSTILE if h[2] is reason)


def test_line_over_max_line_bytes_is_too_long_and_limit_is_inclusive() -> None:
    pad = GOOD[:-1] + b',"request_User-Agent":"'
    at_limit = pad + b"a" * (MAX_LINE_BYTES - len(pad) - 2) + b'"}'
    assert len(at_limit) == MAX_LINE_BYTES
    rec, _ = parse_one(at_limit)
    assert rec is not None
    over = pad + b"a" * (MAX_LINE_BYTES - len(pad) - 1) + b'"}'
    assert only_skip(parse_one(over)[1]) is SkipReason.TOO_LONG
    assert only_skip(parse_one(b" " * (MAX_LINE_BYTES + 1))[1]) is SkipReason.TOO_LONG


def test_one_megabyte_string_field() -> None:
    line = GOOD[:-1] + b',"request_User-Agent":"' + b"x" * (1 << 20) + b'"}'
    assert only_skip(parse_one(line)[1]) is SkipReason.TOO_LONG
    rec, _ = parse_one(line, max_line_bytes=2 << 20)
    assert rec is not None
    assert len(rec[R.USER_AGENT]) == 1 << 20


def test_deep_nesting_100k_levels() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert only_skip(parse_one(deep)[1]) is SkipReason.TOO_LONG
    # Allowed through the size cap, the parser's recursion limit still holds.
    assert only_skip(parse_one(deep, max_line_bytes=1 << 20)[1]) is SkipReason.INVALID_JSON
    deep_obj = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    assert only_skip(parse_one(deep_obj, max_line_bytes=1 << 21)[1]) is SkipReason.INVALID_JSON


def test_deep_nesting_inside_the_size_cap() -> None:
    deep = b"[" * 30_000 + b"]" * 30_000
    assert len(deep) < MAX_LINE_BYTES
    assert only_skip(parse_one(deep)[1]) is SkipReason.INVALID_JSON
    nested_field = GOOD[:-1] + b',"x":' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    assert only_skip(parse_one(nested_field)[1]) is SkipReason.INVALID_JSON


def test_duplicate_keys_last_wins_like_go() -> None:
    """Go's encoding/json (CrowdSec's UnmarshalJSON) keeps the last duplicate; so do we."""
    line = b'{"ClientHost":"10.42.0.1","RequestMethod":"GET","ClientHost":"203.0.113.5"}'
    rec, _ = parse_one(line)
    assert rec is not None
    assert rec[R.CLIENT] == "203.0.113.5"


def test_crlf_line_endings_parse() -> None:
    rec, _ = parse_one(GOOD + b"\r")
    assert rec == parse_one(GOOD)[0]
    clf = corpus_lines("traefik-clf.log")[30]
    rec2, stats = parse_one(clf + b"\r")
    assert stats.common == 1
    assert rec2 == parse_one(clf)[0]


def test_leading_whitespace_json_parses() -> None:
    rec, _ = parse_one(b"  \t" + GOOD)
    assert rec is not None
    assert rec[R.CLIENT] == "10.42.0.9"


def test_bom_before_json_line() -> None:
    rec, stats = parse_one(b"\xef\xbb\xbf" + GOOD)
    assert rec is not None or only_skip(stats) is SkipReason.INVALID_JSON


def test_bom_never_raises_and_is_bounded() -> None:
    for line in (b"\xef\xbb\xbf" + GOOD, b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"):
        rec, stats = parse_one(line)
        assert rec is not None or stats.skipped_total == 1


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("StartUTC", "garbage-garbage-garbage", 0.0),
        ("StartUTC", "0000-00-00T00:00:00Z", 0.0),
        ("StartUTC", "short", 0.0),
        ("time", "2026-01-14T10:45:33+01:00", datetime(2026, 1, 14, 9, 45, 33, tzinfo=UTC)),
        ("time", "2026-01-14T10:45:33z", datetime(2026, 1, 14, 10, 45, 33, tzinfo=UTC)),
        (
            "StartLocal",
            "2026-01-14T10:45:33.759014877+01:00",
            datetime(2026, 1, 14, 9, 45, 33, tzinfo=UTC),
        ),
        ("time", "2024-13-45T99:99:99+01:00", 0.0),
        ("time", "2024-01-01T00:00:00+99:00", 0.0),
        ("time", 12345, 0.0),
    ],
)
def test_timestamp_fallbacks_never_raise(field: str, value: object, expected: object) -> None:
    line = json.dumps({"ClientHost": "1.2.3.4", "RequestMethod": "GET", field: value}).encode()
    rec, _ = parse_one(line)
    assert rec is not None
    want = expected.timestamp() if isinstance(expected, datetime) else expected
    assert rec[R.TS] == want


def test_fraction_lengths_share_one_cached_second() -> None:
    p = TraefikParser()
    stats = ParseStats()
    lines = [
        json.dumps({"ClientHost": "1.2.3.4", "StartUTC": f"2024-02-01T15:43:38{frac}Z"}).encode()
        for frac in ("", ".5", ".669746824", ".000000000")
    ]
    recs = p.parse(lines, stats)
    assert {r[R.TS] for r in recs} == {datetime(2024, 2, 1, 15, 43, 38, tzinfo=UTC).timestamp()}


def test_parser_reuse_across_batches_keeps_counting() -> None:
    p = TraefikParser()
    stats = ParseStats()
    lines = corpus_lines("traefik-stdout-mixed.log")
    p.parse(lines[:3], stats)
    p.parse(lines[3:], stats)
    assert (stats.lines, stats.json, stats.skipped_total) == (7, 6, 1)


@pytest.mark.parametrize("status", ["²", "①"])
def test_clf_unicode_digit_status_does_not_raise(status: str) -> None:
    line = f'1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" {status} 1'.encode()
    rec, stats = parse_one(line)
    if rec is None:
        assert only_skip(stats) is SkipReason.BAD_FIELD
    else:
        assert rec[R.STATUS] == 0  # not a number: like '-'
