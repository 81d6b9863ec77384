"""What the aggregator reads from Kafka is checked field by field: a bad message is a dead letter
with a bounded reason, never an exception that kills a reader, and whatever passes the checks
can be folded into the tallies and the engine without one."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from parsers.records import ParseStats
from parsers.traefik import _MAX_TS as PARSER_MAX_TS
from pipeline.core.addresses import Classifier
from pipeline.core.bouncer import BouncerModel, BouncerSettings
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.networks import build_networks
from pipeline.core.traffic import InternalClient, Summary
from pipeline.kafka import events as ev
from pipeline.kafka.client import KafkaSettings
from pipeline.kafka.consumer import EventsConsumer, TotalsReader
from pipeline.kafka.events import BatchEncoder, Chunk, decode_chunk
from pipeline.kafka.snapshot import INTERNAL_FIELDS, SUMMARY_FIELDS
from pipeline.kafka.totals import (
    ClusterMismatch,
    ClusterTimeline,
    ClusterView,
    PartitionState,
    decode_snapshot,
)
from pipeline.kafka.validate import (
    MAX_FIELD_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_TS,
    DeadLetter,
    Reason,
    Topic,
    need_ts,
)
from sinks.prometheus import DEAD_LETTER_REASONS, DEAD_LETTER_TOPICS, Metrics
from tests.support.crowdsec import traefik_json_line
from tests.support.metric_names import METRIC_LABEL_VALUES

CLASSIFY = Classifier(build_networks({}, k3s=True, origin="test")).classify
SETTINGS = BouncerSettings(header="X-Real-Ip")
BOUNCER = BouncerModel(SETTINGS)
NOW = 1_741_939_200.0  # 2025-03-14T08:00:00Z
WHEN = dt.datetime.fromtimestamp(NOW, dt.UTC)
GOOD_ROW: list[Any] = [120, 0, NOW, "web", "10.42.0.7", "a.example", "r@docker", "", ""]


def chunk_bytes(events: Any = None, skips: Any = None, **header: Any) -> bytes:
    body = {"v": 1, "n": "node-a", "f": "1:2:ab", "p": "/var/log/a.log"}
    body.update(header)
    body["e"] = [GOOD_ROW] if events is None else events
    body["s"] = [] if skips is None else skips
    return orjson.dumps(body)


def row_with(index: int, value: Any) -> list[Any]:
    row = list(GOOD_ROW)
    row[index] = value
    return row


def reason_of(data: bytes) -> Reason:
    with pytest.raises(DeadLetter) as info:
        decode_chunk(data)
    return info.value.reason


# -- event chunks ----------------------------------------------------------------------------


def test_a_good_chunk_passes() -> None:
    chunk = decode_chunk(chunk_bytes(skips=[[130, "empty"]]))
    assert chunk.events == [GOOD_ROW]
    assert chunk.skips == [[130, "empty"]]
    assert chunk.source == "node-a:/var/log/a.log"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (row_with(ev.TS, "notatime"), Reason.TIMESTAMP),
        (row_with(ev.TS, True), Reason.TIMESTAMP),
        (row_with(ev.TS, None), Reason.TIMESTAMP),
        (row_with(ev.TS, [NOW]), Reason.TIMESTAMP),
        (row_with(ev.TS, -1.0), Reason.TIMESTAMP),
        (row_with(ev.TS, 1e300), Reason.TIMESTAMP),
        (row_with(ev.TS, 2**64 - 1), Reason.TIMESTAMP),
        (row_with(ev.END, "120"), Reason.SCHEMA),
        (row_with(ev.END, True), Reason.SCHEMA),
        (row_with(ev.END, 1.5), Reason.SCHEMA),
        (row_with(ev.END, -1), Reason.RANGE),
        (row_with(ev.END, 2**64 - 1), Reason.RANGE),
        (row_with(ev.FMT, 2), Reason.SCHEMA),
        (row_with(ev.FMT, "0"), Reason.SCHEMA),
        (row_with(ev.FMT, False), Reason.SCHEMA),
        (row_with(ev.CLIENT, 10), Reason.SCHEMA),
        (row_with(ev.CLIENT, None), Reason.SCHEMA),
        (row_with(ev.HOST, {"a": 1}), Reason.SCHEMA),
        (row_with(ev.REAL_IP, "x" * (MAX_FIELD_CHARS + 1)), Reason.RANGE),
        (GOOD_ROW[:8], Reason.SCHEMA),
        ([*GOOD_ROW, "extra"], Reason.SCHEMA),
        ({"end": 1}, Reason.SCHEMA),
        ("row", Reason.SCHEMA),
    ],
)
def test_a_bad_event_row_dead_letters_the_message(row: Any, reason: Reason) -> None:
    assert reason_of(chunk_bytes(events=[GOOD_ROW, row])) is reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", Reason.EMPTY),
        (b"{not json", Reason.NOT_JSON),
        # orjson refuses these literals, so a non-finite time never gets past the JSON decoder
        (chunk_bytes().replace(str(NOW).encode(), b"NaN"), Reason.NOT_JSON),
        (chunk_bytes().replace(str(NOW).encode(), b"Infinity"), Reason.NOT_JSON),
        (chunk_bytes().replace(str(NOW).encode(), b"1e999"), Reason.NOT_JSON),
        (b"[]", Reason.SCHEMA),
        (b'"chunk"', Reason.SCHEMA),
        (b"{}", Reason.VERSION),
        (b'{"v":3}', Reason.VERSION),
        (chunk_bytes(v=True), Reason.VERSION),
        (chunk_bytes(v="1"), Reason.VERSION),
        (chunk_bytes(n=7), Reason.SCHEMA),
        (chunk_bytes(f=None), Reason.SCHEMA),
        (chunk_bytes(p="/" * 5000), Reason.RANGE),
        (chunk_bytes(events={"0": GOOD_ROW}), Reason.SCHEMA),
        (chunk_bytes(skips=[[1, "nope"]]), Reason.SCHEMA),
        (chunk_bytes(skips=[[1, []]]), Reason.SCHEMA),
        (chunk_bytes(skips=[[1]]), Reason.SCHEMA),
        (chunk_bytes(skips=[["1", "empty"]]), Reason.SCHEMA),
        (chunk_bytes(skips=[[9, "empty"], [3, "empty"]]), Reason.SCHEMA),
        (chunk_bytes(events=[row_with(ev.END, 200), GOOD_ROW]), Reason.SCHEMA),
        (orjson.dumps({"v": 1, "f": "k", "p": "/a", "e": [], "s": []}), Reason.SCHEMA),
        (b" " * (MAX_MESSAGE_BYTES + 1), Reason.TOO_LARGE),
    ],
)
def test_a_bad_message_is_a_dead_letter_with_its_reason(data: bytes, reason: Reason) -> None:
    assert reason_of(data) is reason


def test_row_and_entry_counts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "MAX_ITEMS", 3)
    assert decode_chunk(chunk_bytes(events=[GOOD_ROW] * 2, skips=[[130, "empty"]]))
    assert reason_of(chunk_bytes(events=[GOOD_ROW] * 3, skips=[[130, "empty"]])) is Reason.RANGE


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -0.5, MAX_TS + 1])
def test_times_must_be_finite_epoch_seconds(value: float) -> None:
    with pytest.raises(DeadLetter) as info:
        need_ts(value, "ts")
    assert info.value.reason is Reason.TIMESTAMP


def test_the_time_bound_is_the_parsers() -> None:
    assert MAX_TS == PARSER_MAX_TS
    assert need_ts(0, "ts") == 0.0  # a line without a time: the parser writes 0.0
    assert need_ts(MAX_TS, "ts") == MAX_TS


# -- snapshots -------------------------------------------------------------------------------


def rich_state(partition: int = 0, when: float = NOW) -> PartitionState:
    """A partition state using every tally: internal hops with kept headers, public clients,
    common-format lines and skips, and bouncer verdicts with an example."""
    xff = {"request_X-Forwarded-For": "198.51.100.4"}
    lines = [
        traefik_json_line("10.42.0.9", when=WHEN, extra=xff).encode(),
        traefik_json_line("10.42.0.9", when=WHEN).encode(),
        # checked by a X-Real-Ip bouncer on the hop it came through: a ban_mismatch verdict
        traefik_json_line(
            "203.0.113.5",
            path="/x",
            when=WHEN,
            client_addr="10.42.0.9:1000",
            extra={"request_X-Real-Ip": "10.42.0.9"},
        ).encode(),
        b'10.42.0.3 - - [14/Mar/2025:08:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "c" 1 "r" "u" 1ms',
        b"",
        b"{not json",
    ]
    ends, pos = [], 0
    for line in lines:
        pos += len(line) + 1
        ends.append(pos)
    rows, skips = BatchEncoder("node-a").entries("k", lines, ends)
    state = PartitionState(partition, 7, 900, 60, bouncer=BOUNCER)
    state.apply(0, Chunk("node-a", "k", "/a.log", rows, skips), CLASSIFY, when)
    return state


def snapshot_body(state: PartitionState | None = None) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads((state or rich_state()).encode(NOW))
    return body


def snapshot_reason(body: dict[str, Any]) -> Reason:
    with pytest.raises(DeadLetter) as info:
        decode_snapshot(orjson.dumps(body))
    return info.value.reason


def test_the_decoder_knows_every_tally() -> None:
    """A new tally in pipeline.core.traffic needs a decoder in pipeline.kafka.snapshot, or it
    silently stops travelling between aggregators."""
    assert set(SUMMARY_FIELDS) == set(Summary.__slots__) - {"clients", "_deferred", "_borrowed"}
    assert set(INTERNAL_FIELDS) == set(InternalClient.__slots__)


def _norm(v: Any) -> Any:
    """A snapshot body with its sets sorted (their order on the wire is arbitrary)."""
    if isinstance(v, dict):
        if set(v) == {"$s"}:
            return {"$s": sorted(v["$s"])}
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_norm(x) for x in v]
    return v


def test_a_rich_snapshot_round_trips() -> None:
    state = rich_state()
    snap = decode_snapshot(state.encode(NOW))
    again = PartitionState.restore(snap, state.epoch, 900, 60, BOUNCER).encode(NOW)
    assert _norm(orjson.loads(again)) == _norm(orjson.loads(state.encode(NOW)))
    whole = snap.buckets[-1][1]
    assert whole.total == 4
    assert whole.internal["10.42.0.9"].count == 2
    assert whole.ep_headers
    assert snap.mismatch[-1][1].examples  # the fuzzer below mutates a verdict with an example


def _mutate(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("st",), [], Reason.SCHEMA),  # the one that killed the totals reader
        (("st",), {"node-a:/a.log": [1, 2]}, Reason.SCHEMA),
        (("st",), {"node-a:/a.log": [1, 1, 0, {"nope": 1}]}, Reason.SCHEMA),
        (("st",), {"node-a:/a.log": [-1, 0, 0, {}]}, Reason.RANGE),
        (("st",), {"node-a:/a.log": [1.5, 0, 0, {}]}, Reason.SCHEMA),
        (("v",), True, Reason.VERSION),
        (("p",), "0", Reason.SCHEMA),
        (("p",), -1, Reason.RANGE),
        (("e",), 2**64 - 1, Reason.RANGE),
        (("o",), None, Reason.SCHEMA),
        (("f",), "notatime", Reason.TIMESTAMP),
        (("l",), float("inf"), Reason.TIMESTAMP),  # orjson writes null
        (("w",), "now", Reason.TIMESTAMP),
        (("sb",), [], Reason.SCHEMA),
        (("sb",), {"$t": [["web", {"$c": "nope"}, 1]]}, Reason.SCHEMA),
        (("sb",), {"$d": {"web": 1}}, Reason.SCHEMA),
        (("b",), {}, Reason.SCHEMA),
        (("b",), [[1, {}], [1, {}]], Reason.SCHEMA),
        (("b",), [["1", {}]], Reason.SCHEMA),
        (("b", 0, 1, "total"), "many", Reason.SCHEMA),
        (("b", 0, 1, "ep_total"), {"$d": {"web": 1, "websecure": {"$d": {}}}}, Reason.SCHEMA),
        (("b", 0, 1, "ep_total"), {"$s": ["web"]}, Reason.SCHEMA),
        (("b", 0, 1, "hosts"), {"$s": ["a", 1]}, Reason.SCHEMA),
        (("b", 0, 1, "internal"), {"$d": {"10.42.0.9": {"$i": {"count": 1}}}}, Reason.SCHEMA),
        (("b", 0, 1, "ep_hops"), {"$d": {"web": {"$d": {"10.42.0.9": -3}}}}, Reason.RANGE),
        (("wm",), [["node-a", "k", "12", 1.0]], Reason.SCHEMA),
        (("wm",), [["node-a", "k", 12, "then"]], Reason.TIMESTAMP),
        (("wm",), "none", Reason.SCHEMA),
    ],
)
def test_a_bad_snapshot_is_a_dead_letter(path: tuple[Any, ...], value: Any, reason: Reason) -> None:
    assert snapshot_reason(_mutate(snapshot_body(), path, value)) is reason


@pytest.mark.parametrize("key", ["p", "e", "o", "f", "l", "sb", "b", "st", "wm"])
def test_a_snapshot_missing_a_field_is_a_dead_letter(key: str) -> None:
    body = snapshot_body()
    del body[key]
    assert snapshot_reason(body) is Reason.SCHEMA


def test_unknown_fields_of_a_newer_writer_are_ignored() -> None:
    body = snapshot_body()
    body["x"] = {"anything": [1]}
    body["b"][0][1]["a_new_tally"] = {"$d": {"web": 1}}
    body["b"][0][1]["internal"]["$d"]["10.42.0.9"]["$i"]["a_new_field"] = 3
    assert decode_snapshot(orjson.dumps(body)).buckets[-1][1].total == 4


def test_a_snapshot_epoch_far_ahead_of_the_clock_is_a_dead_letter() -> None:
    view = ClusterView(900, 60, clock=lambda: NOW)
    body = snapshot_body()
    body["e"] = int((NOW + 7 * 86400) * 1000)
    with pytest.raises(DeadLetter) as info:
        view.apply(orjson.dumps(body))
    assert info.value.reason is Reason.RANGE
    body["e"] = int(NOW * 1000)
    assert view.apply(orjson.dumps(body))


# -- future-dated events ---------------------------------------------------------------------


def test_a_future_dated_event_is_clamped_to_the_edge() -> None:
    """One node stamped in 2100 must not slide the window past everyone's traffic."""
    state = rich_state(when=NOW)
    before = state.timeline.whole().total
    future = row_with(ev.TS, 4_102_444_800.0)  # 2100-01-01
    future[ev.END] = 10_000
    state.apply(1, Chunk("node-a", "k", "/a.log", [future], []), CLASSIFY, NOW, 300.0)
    buckets = [b for b, _ in state.timeline.buckets()]
    assert buckets[-1] == int(NOW + 300) // 60
    assert state.timeline.last_ts == NOW + 300
    assert state.timeline.window().total == before + 1  # nothing slid out of the window


def test_the_cluster_view_reads_a_future_bucket_at_the_edge() -> None:
    """A snapshot from a writer that did not clamp (an older version) cannot empty the
    cluster-wide window either."""
    view = ClusterView(900, 60, clock=lambda: NOW, max_future_s=300.0)
    assert view.apply(rich_state(0).encode(NOW))
    body = snapshot_body(rich_state(1))
    future = 4_102_444_800 // 60
    body["b"] = [[future, body["b"][0][1]]]
    body["l"] = 4_102_444_800.0
    assert view.apply(orjson.dumps(body))
    assert view.newest_bucket() == int(NOW + 300) // 60
    assert view.window().total == 8  # both partitions
    assert view.last_ts() == NOW + 300


# -- the readers skip, count and move on ----------------------------------------------------


def record(topic: str, partition: int, offset: int, value: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic, partition, offset, 0, 0, None, value, None, len(value), len(value), ()
    )


def test_the_events_consumer_skips_counts_and_moves_past_a_dead_letter() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    settings_ = KafkaSettings(bootstrap=("127.0.0.1:9",))
    view = ClusterView(900, 60)
    consumer = EventsConsumer(
        settings_,
        events_topic="ev",
        totals_topic="tot",
        group="g",
        view=view,
        reader=TotalsReader(settings_, "tot", view, metrics),
        classify=CLASSIFY,
        metrics=metrics,
        window_s=900,
        bucket_s=60,
        clock=lambda: NOW,
    )
    state = consumer.owned[0] = PartitionState(0, 1, 900, 60)
    good = chunk_bytes()
    later = chunk_bytes(events=[row_with(ev.END, 500)])
    bad = [chunk_bytes(events=[row_with(ev.TS, "notatime")]), b"\xff", b""]
    msgs = [record("ev", 0, 0, good)] + [record("ev", 0, i + 1, b) for i, b in enumerate(bad)]
    msgs.append(record("ev", 0, 4, later))
    consumer._process({TopicPartition("ev", 0): msgs})
    assert state.offset == 5  # the next snapshot and commit pass the bad messages
    assert state.timeline.whole().total == 2
    assert consumer.dead_letters.count == 3
    sample = registry.get_sample_value
    labels = {"topic": "events", "reason": "bad_timestamp"}
    assert sample("auditor_kafka_dead_letters_total", labels) == 1
    assert sample("auditor_kafka_dead_letters_total", {**labels, "reason": "not_json"}) == 1
    assert sample("auditor_kafka_dead_letters_total", {**labels, "reason": "empty"}) == 1
    assert sample("auditor_kafka_events_consumed_total") == 2


def test_the_label_sets_match_the_metric_contract() -> None:
    assert {r.value for r in Reason} == set(DEAD_LETTER_REASONS)
    assert {t.value for t in Topic} == set(DEAD_LETTER_TOPICS)
    name = "auditor_kafka_dead_letters_total"
    assert METRIC_LABEL_VALUES[(name, "reason")] == set(DEAD_LETTER_REASONS)
    assert METRIC_LABEL_VALUES[(name, "topic")] == set(DEAD_LETTER_TOPICS)
    with pytest.raises(ValueError, match="dead-letter label"):
        Metrics(CollectorRegistry()).dead_letter("events", "10.0.0.1")


# -- fuzzing: never an exception other than DeadLetter; what passes can be used --------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


CHUNK = orjson.loads(chunk_bytes(events=[GOOD_ROW, row_with(ev.END, 300)], skips=[[130, "empty"]]))
CHUNK_PATHS = _paths(CHUNK)
SNAPSHOT = snapshot_body()
SNAPSHOT_PATHS = _paths(SNAPSHOT)


def _use_chunk(data: bytes) -> None:
    try:
        chunk = decode_chunk(data)
    except DeadLetter:
        return
    state = PartitionState(0, 1, 900, 60, bouncer=BOUNCER)
    state.apply(0, chunk, CLASSIFY, NOW, 300.0)
    decode_snapshot(state.encode(NOW))


def _use_snapshot(data: bytes) -> None:
    view = ClusterView(900, 60, clock=lambda: NOW, max_future_s=300.0)
    try:
        view.apply(data)
    except DeadLetter:
        return
    config = EngineConfig(max_future_s=300.0, bouncer=SETTINGS, clear_recovered=True)
    mismatch = ClusterMismatch(BOUNCER, view)
    engine = Engine(config, Classifier(), lambda: NOW, ClusterTimeline(view), mismatch)
    timeline = engine.traffic
    assert isinstance(timeline, ClusterTimeline)
    timeline.sync()
    engine.ingest_runs([], ParseStats(), "src")
    for source, stats in view.source_stats().items():
        engine.ingest_runs([], stats, source)
    engine.tick()
    view.whole()
    view.by_class()
    view.lines()
    snap = view.restore_point(next(iter(view.parts)))
    assert snap is not None
    PartitionState.restore(snap, 9, 900, 60).encode(NOW)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=64) | JSON.map(orjson.dumps))
def test_any_message_decodes_or_is_a_dead_letter(data: bytes) -> None:
    _use_chunk(data)
    _use_snapshot(data)


@FUZZ
@given(st.sampled_from(CHUNK_PATHS), JSON)
def test_a_chunk_with_any_field_replaced_decodes_or_is_a_dead_letter(
    path: tuple[Any, ...], value: Any
) -> None:
    _use_chunk(orjson.dumps(_mutate(orjson.loads(orjson.dumps(CHUNK)), path, value)))


@FUZZ
@given(st.sampled_from(SNAPSHOT_PATHS), JSON)
def test_a_snapshot_with_any_field_replaced_decodes_or_is_a_dead_letter(
    path: tuple[Any, ...], value: Any
) -> None:
    _use_snapshot(orjson.dumps(_mutate(orjson.loads(orjson.dumps(SNAPSHOT)), path, value)))


def test_the_fuzzed_snapshot_exercises_every_tally() -> None:
    """The template the fuzzer mutates carries every slot, so every decoder is reached."""
    tallies = {p[3] for p in SNAPSHOT_PATHS if len(p) > 3 and p[0] == "b"}
    assert tallies >= set(SUMMARY_FIELDS)
