"""Counting and folding traffic gives the same tallies however the lines are cut up.

``count_runs`` splits a batch where time passes every bucket seen, with C-level iterators now
instead of a Python step per line; parallel replay's workers count whole buckets across batches
(``RunTally``) and fold them into summaries the timeline takes over or merges; ``add_counts``
takes totals and host and router sets over all keys at once. Each is checked against the plain
rule it replaces: the old per-line split, the serial timeline, one key at a time.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.records import (
    CLIENT,
    ENTRYPOINT,
    HOST,
    REAL_IP,
    ROUTER,
    TS,
    USER_AGENT,
    XFF,
    AccessRecord,
)
from pipeline.core import traffic
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.traffic import (
    InternalClient,
    Key,
    Run,
    RunTally,
    Summary,
    Timeline,
    count_runs,
)
from tests.support.engine import T0, rec
from tests.support.traffic import CLIENTS, cut, traffic_lines

BUCKET_S = 60


def key_of(r: AccessRecord) -> Key:
    return (r[ENTRYPOINT], r[CLIENT], r[HOST], r[ROUTER], r[XFF], r[REAL_IP], r[USER_AGENT])


def reference_runs(records: list[AccessRecord], bucket_s: int) -> list[Run]:
    """The per-line loop ``count_runs`` had (2f7a686), kept as its specification."""
    if not records:
        return []

    def span(rs: list[AccessRecord]) -> tuple[float, float]:
        return min(filter(None, (r[TS] for r in rs)), default=0.0), max(r[TS] for r in rs)

    runs: list[Run] = []
    start, current = 0, int(records[0][TS]) // bucket_s
    for i, r in enumerate(records):
        b = int(r[TS]) // bucket_s
        if b > current:
            runs.append(
                (current, Counter(key_of(x) for x in records[start:i]), *span(records[start:i]))
            )
            start, current = i, b
    runs.append((current, Counter(key_of(x) for x in records[start:]), *span(records[start:])))
    return runs


@settings(max_examples=200, deadline=None)
@given(traffic_lines())
def test_count_runs_splits_as_the_per_line_loop_did(records: list[AccessRecord]) -> None:
    assert count_runs(records, BUCKET_S) == reference_runs(records, BUCKET_S)


def state(s: Summary) -> dict[str, Any]:
    """Every slot, internal clients by their own slots, for equality."""

    def plain(v: Any) -> Any:
        if isinstance(v, InternalClient):
            return {k: getattr(v, k) for k in InternalClient.__slots__}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(getattr(s, k)) for k in Summary.__slots__}


@settings(max_examples=150, deadline=None)
@given(
    traffic_lines(),
    st.lists(st.integers(1, 120), min_size=1, max_size=20),
    st.lists(st.integers(1, 90), min_size=1, max_size=20),
    st.sampled_from([120, 900]),
)
def test_folded_chunks_tally_like_the_serial_timeline(
    records: list[AccessRecord], chunks: list[int], batches: list[int], window_s: int
) -> None:
    """Workers: chunks of the file, each read in batches from its own start, counted per bucket
    and folded; the parent takes the folded buckets over in order. Serial: batches of the whole
    file, counted per run and added. Same buckets closed, same evaluations, same tallies."""
    classify = Classifier(k3s_defaults()).classify
    serial, parallel = Timeline(window_s, BUCKET_S), Timeline(window_s, BUCKET_S)
    seen: dict[str, list[tuple[int, int]]] = {"serial": [], "parallel": []}

    def on_close(name: str, tl: Timeline) -> Any:
        return lambda: seen[name].append((tl.window().total, len(tl.window(full=True).clients)))

    closed_serial: list[int] = []
    for batch in cut(records, batches):
        closed_serial += serial.add_runs(
            count_runs(batch, BUCKET_S), classify, on_close("serial", serial)
        )
    closed_parallel: list[int] = []
    for chunk in cut(records, chunks):
        tally = RunTally(BUCKET_S)
        for batch in cut(chunk, batches):
            tally.add(batch)
        closed_parallel += parallel.add_runs(
            tally.fold(classify), classify, on_close("parallel", parallel)
        )
    assert closed_parallel == closed_serial
    assert seen["parallel"] == seen["serial"]
    assert (parallel.first_ts, parallel.last_ts) == (serial.first_ts, serial.last_ts)
    assert state(parallel.whole()) == state(serial.whole())
    assert state(parallel.window(full=True)) == state(serial.window(full=True))
    assert state(parallel.window()) == state(serial.window())


def test_light_window_keeps_every_counter() -> None:
    """``window()`` (no per-client tables) has the counters ``window(full=True)`` has."""
    classify = Classifier(k3s_defaults()).classify
    tl = Timeline(900, BUCKET_S)
    records = [rec(CLIENTS[i % len(CLIENTS)], T0 + i * 7.0, xff="192.0.2.4") for i in range(400)]
    tl.add_runs(count_runs(records, BUCKET_S), classify)
    light, full = tl.window(), tl.window(full=True)
    for slot in ("total", "ep_total", "ep_internal", "ep_visible", "ep_headers", "by_class"):
        assert getattr(light, slot) == getattr(full, slot), slot
    assert light.internal == {} and full.internal


@settings(max_examples=100, deadline=None)
@given(traffic_lines(max_size=120), st.integers(1, 6))
def test_add_counts_at_once_is_one_key_at_a_time(records: list[AccessRecord], cap: int) -> None:
    """Near the set caps too: the bulk host/router update and the per-entrypoint adders stop
    exactly where adding one key at a time stops."""
    counts = Counter(key_of(r) for r in records)
    classify = Classifier(k3s_defaults()).classify
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(traffic, "SET_CAP", cap)
        at_once, one_by_one = Summary(), Summary()
        at_once.add_counts(counts, classify)
        for key, n in counts.items():
            one_by_one.add_counts(Counter({key: n}), classify)
    assert state(at_once) == state(one_by_one)


def naive_window(tl: Timeline) -> Summary:
    out = Summary()
    for _, s in list(tl._buckets):
        out.merge(s, full=False)
    return out


def ordered(s: Summary) -> dict[str, Any]:
    """The light window's counters with their keys in order (order decides what is judged first)."""
    slots = ("total", "internal_overflow", "ep_total", "ep_internal", "ep_visible", "ep_headers")
    out: dict[str, Any] = {k: getattr(s, k) for k in slots}
    for k in ("ep_total", "ep_internal", "ep_visible", "ep_headers", "by_class", "ep_example"):
        out[k] = list(getattr(s, k).items())
    return out


@settings(max_examples=150, deadline=None)
@given(
    traffic_lines(),
    st.lists(st.integers(1, 90), min_size=1, max_size=20),
    st.sampled_from([60, 120, 300, 900]),
    st.integers(0, 400),
    st.integers(1, 12),
)
def test_light_window_is_the_merge_of_its_buckets(
    records: list[AccessRecord], batches: list[int], window_s: int, reload_at: int, every: int
) -> None:
    """``window()`` keeps its closed buckets' counters in two stacks that catch up when read,
    read at every ``every``-th bucket close and after every batch: it equals merging every
    bucket oldest first, keys in order, also after the buckets are replaced wholesale (a Kafka
    partition restoring a snapshot). ``window_shares()``, kept as buckets close and leave,
    has the same requests and internal-client requests per entrypoint at every close, and no
    entrypoint that left the window."""
    classify = Classifier(k3s_defaults()).classify
    tl = Timeline(window_s, BUCKET_S)
    seen: list[bool] = []
    closes = [0]

    def shares() -> bool:
        naive = naive_window(tl)
        total, internal = tl.window_shares()
        return total == naive.ep_total and internal == naive.ep_internal

    def check() -> None:
        seen.append(shares())
        closes[0] += 1
        if closes[0] % every == 0:
            seen.append(ordered(tl.window()) == ordered(naive_window(tl)))

    done = 0
    for batch in cut(records, batches):
        tl.add_runs(count_runs(batch, BUCKET_S), classify, check)
        done += len(batch)
        if done >= reload_at > done - len(batch):
            tl._buckets = type(tl._buckets)(list(tl._buckets))  # as PartitionTimeline.load
        seen.append(shares())
        seen.append(ordered(tl.window()) == ordered(naive_window(tl)))
    assert all(seen)
