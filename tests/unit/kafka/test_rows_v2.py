"""Event rows of version 2 carry the User-Agent, ClientHost and the peer; version 1 rows from an
older sidecar still decode and count (a rolling upgrade), and hostile rows of either version are
dead letters with the right reason."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest

from parsers.records import CLIENT_HOST_RAW, PEER, USER_AGENT, ParseStats
from parsers.traefik import TraefikParser
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.findings import Kind
from pipeline.core.traffic import Timeline, count_runs
from pipeline.kafka import events as ev
from pipeline.kafka.events import (
    BatchEncoder,
    Chunk,
    Partitioner,
    decode_chunk,
    encode_chunk,
    record_of,
    records_of,
)
from pipeline.kafka.totals import ClusterTimeline, ClusterView, PartitionState
from pipeline.kafka.validate import MAX_FIELD_CHARS, DeadLetter, Reason
from tests.support.crowdsec import traefik_json_line
from tests.support.engine import FakeClock, make_engine, only

CLASSIFY = Classifier(k3s_defaults()).classify
NOW = 1_741_939_200.0  # 2025-03-14T08:00:00Z
WHEN = dt.datetime.fromtimestamp(NOW, dt.UTC)
HOP = "198.51.100.7"
V1_ROW: list[Any] = [120, 0, NOW, "web", "203.0.113.5", "a.example", "r@docker", "", ""]
V2_ROW: list[Any] = [*V1_ROW, "curl/8.5.0", "", "203.0.113.5:40000"]


def ends_of(lines: list[bytes]) -> list[int]:
    out, pos = [], 0
    for line in lines:
        pos += len(line) + 1
        out.append(pos)
    return out


def message(version: int, events: list[Any]) -> bytes:
    body = {"v": version, "n": "node-a", "f": "1:2:ab", "p": "/a.log", "e": events, "s": []}
    return orjson.dumps(body)


def reason_of(data: bytes) -> Reason:
    with pytest.raises(DeadLetter) as info:
        decode_chunk(data)
    return info.value.reason


def with_field(row: list[Any], index: int, value: Any) -> list[Any]:
    out = list(row)
    out[index] = value
    return out


def test_v2_rows_carry_what_the_parser_read() -> None:
    lines = [
        traefik_json_line(
            "81.2.0.5",
            client_addr="10.42.0.9:30000",
            user_agent="Mozilla/5.0 (X11)",
            when=WHEN,
            extra={"request_X-Forwarded-For": "81.2.0.5", "request_X-Real-Ip": "10.42.0.9"},
        ).encode(),
        traefik_json_line("93.184.0.1", user_agent="curl/8.5.0", when=WHEN).encode(),
    ]
    rows, skips = BatchEncoder("n1").entries("k", lines, ends_of(lines))
    assert not skips
    [(_, data)] = BatchEncoder("n1").encode("k", "/a", lines, ends_of(lines), Partitioner(1))[0]
    chunk = decode_chunk(data)
    assert chunk.version == 2 == orjson.loads(data)["v"]
    assert chunk.events == rows
    assert all(len(r) == 12 for r in rows)
    assert rows[0][ev.CLIENT_HOST] == ""  # ClientHost repeats X-Forwarded-For: sent once
    local = TraefikParser().parse(lines, ParseStats())
    for row, want in zip(chunk.events, local, strict=True):
        got = record_of(row)
        assert got[: PEER + 1] == want[: PEER + 1]  # status and duration do not travel
        assert (got[USER_AGENT], got[CLIENT_HOST_RAW], got[PEER]) == (
            want[USER_AGENT],
            want[CLIENT_HOST_RAW],
            want[PEER],
        )
    assert records_of(chunk.events) == [record_of(r) for r in chunk.events]


def test_a_v1_message_from_an_older_sidecar_decodes_without_the_new_fields() -> None:
    chunk = decode_chunk(message(1, [V1_ROW]))
    assert chunk.version == 1
    assert record_of(chunk.events[0]) == (*V1_ROW[ev.TS :], "", "", "", 0, 0)
    assert records_of(chunk.events) == [record_of(V1_ROW)]
    assert orjson.loads(encode_chunk(chunk))["v"] == 1  # the same rows re-encode as they came


def test_one_file_switching_from_v1_to_v2_mid_stream_counts_every_line_once() -> None:
    """A sidecar upgraded mid-file: its watermark carries over, nothing is counted twice."""
    state = PartitionState(0, 1, 900, 60)
    v1 = decode_chunk(message(1, [V1_ROW, with_field(V1_ROW, ev.END, 200)]))
    v2_rows = [with_field(V2_ROW, ev.END, 200), with_field(V2_ROW, ev.END, 300)]
    v2 = decode_chunk(message(2, v2_rows))
    assert state.apply(0, v1, CLASSIFY, NOW) == (2, 0)
    assert state.apply(1, v2, CLASSIFY, NOW) == (1, 1)  # the line at 200 was in v1 already
    assert state.timeline.whole().total == 3


@pytest.mark.parametrize(
    ("version", "row", "reason"),
    [
        (2, with_field(V2_ROW, ev.USER_AGENT, 7), Reason.SCHEMA),
        (2, with_field(V2_ROW, ev.USER_AGENT, None), Reason.SCHEMA),
        (2, with_field(V2_ROW, ev.CLIENT_HOST, ["a"]), Reason.SCHEMA),
        (2, with_field(V2_ROW, ev.PEER, {"ip": "x"}), Reason.SCHEMA),
        (2, with_field(V2_ROW, ev.PEER, False), Reason.SCHEMA),
        (2, with_field(V2_ROW, ev.USER_AGENT, "x" * (MAX_FIELD_CHARS + 1)), Reason.RANGE),
        # each field small, all of them together past the bound
        (2, [*V2_ROW[:9], *(["x" * (MAX_FIELD_CHARS // 3)] * 3)], Reason.RANGE),
        (2, with_field(V2_ROW, ev.TS, "then"), Reason.TIMESTAMP),
        (2, with_field(V2_ROW, ev.END, -1), Reason.RANGE),
        (2, V1_ROW, Reason.SCHEMA),  # a version-1 row in a version-2 message
        (1, V2_ROW, Reason.SCHEMA),  # and the other way round
        (2, V2_ROW[:11], Reason.SCHEMA),
        (2, [*V2_ROW, "extra"], Reason.SCHEMA),
        (3, V2_ROW, Reason.VERSION),
        (0, V1_ROW, Reason.VERSION),
    ],
)
def test_a_hostile_row_dead_letters_its_message(
    version: int, row: list[Any], reason: Reason
) -> None:
    good = V2_ROW if version == 2 else V1_ROW
    assert reason_of(message(version, [good, row])) is reason


def test_v2_rows_out_of_order_dead_letter() -> None:
    rows = [with_field(V2_ROW, ev.END, 300), V2_ROW]
    assert reason_of(message(2, rows)) is Reason.SCHEMA


def test_long_user_agents_split_into_messages_under_the_limit_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ev, "MAX_MESSAGE_BYTES", 20_000)
    lines = [
        traefik_json_line(HOP, path=f"/{i}", user_agent=f"Agent/{i} " + "z" * 900).encode()
        for i in range(200)
    ]
    messages, n = BatchEncoder("n1").encode("k", "/a", lines, ends_of(lines), Partitioner(1))
    assert n == 200
    assert len(messages) > 1
    assert all(len(m) <= 20_000 for _, m in messages)
    chunks = [decode_chunk(m) for _, m in messages]
    assert [r[ev.END] for c in chunks for r in c.events] == ends_of(lines)
    assert {r[ev.USER_AGENT] for c in chunks for r in c.events} == {
        f"Agent/{i} " + "z" * 900 for i in range(200)
    }


def test_a_row_too_large_for_any_message_becomes_a_too_long_skip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else the broker refuses it on every retry and the sidecar's checkpoint never moves."""
    monkeypatch.setattr(ev, "MAX_MESSAGE_BYTES", 3000)
    lines = [
        traefik_json_line(HOP, path="/small").encode(),
        traefik_json_line(HOP, path="/big", user_agent="\x01" * 2000).encode(),  # escaped: 6x
        traefik_json_line(HOP, path="/small2").encode(),
    ]
    messages, _ = BatchEncoder("n1").encode("k", "/a", lines, ends_of(lines), Partitioner(1))
    assert all(len(m) <= 3000 for _, m in messages)
    chunks = [decode_chunk(m) for _, m in messages]
    ends = ends_of(lines)
    assert [r[ev.END] for c in chunks for r in c.events] == [ends[0], ends[2]]
    assert [s for c in chunks for s in c.skips] == [[ends[1], "too_long"]]


def _hop_lines(n: int, agents: int) -> list[bytes]:
    sites = [(f"s{i}.example", f"s{i}@kubernetescrd") for i in range(6)]
    out = []
    for i in range(n):
        host, router = sites[i % len(sites)]
        when = WHEN + dt.timedelta(seconds=i * 300 / n)
        out.append(
            traefik_json_line(
                HOP, user_agent=f"Browser/{i % agents}", when=when, host=host, router=router
            ).encode()
        )
    return out


def test_the_aggregator_sees_the_user_agents_the_local_audit_sees() -> None:
    lines = _hop_lines(300, agents=12)
    rows, _ = BatchEncoder("n1").entries("k", lines, ends_of(lines))
    wire = Timeline(900, 60)
    wire.add_runs(count_runs(records_of(rows), 60), CLASSIFY)
    local = Timeline(900, 60)
    local.add_runs(count_runs(TraefikParser().parse(lines, ParseStats()), 60), CLASSIFY)
    assert wire.whole().pub_ua == local.whole().pub_ua
    assert wire.whole().pub_ua[HOP]


def test_the_engine_on_the_cluster_view_counts_a_hops_user_agents() -> None:
    lines = _hop_lines(2000, agents=12)
    state = PartitionState(0, 1, 900, 60)
    state.apply(
        0,
        Chunk("n1", "k", "/a", *BatchEncoder("n1").entries("k", lines, ends_of(lines))),
        CLASSIFY,
        NOW,
    )
    view = ClusterView(900, 60, clock=lambda: NOW + 600)
    assert view.apply(state.encode(NOW))
    timeline = ClusterTimeline(view)
    engine, _ = make_engine(FakeClock(NOW + 600), timeline=timeline)
    timeline.sync()
    timeline.close_all()
    engine.tick()
    hop = only(engine, Kind.SUSPECTED_HOP)
    assert hop.target == HOP
    assert hop.evidence["user_agents"] is not None
    assert hop.evidence["user_agents"] >= 3
