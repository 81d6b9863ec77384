"""The compact decision table: rows that give back what was stored (the duration as the time
left), lookups, chains, free rows, compaction, expiry, and what a row costs."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.crowdsec import Decision
from pipeline.core.decision_table import (
    ADDED,
    BLOCK,
    KEPT,
    UNSEEN,
    DecisionTable,
    pack_value,
    unpack_value,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dec(value: str, id_: int | None = 1, **kw: object) -> Decision:
    fields: dict[str, object] = {
        "id": id_,
        "origin": "CAPI",
        "scenario": "crowdsecurity/ssh-bf",
        "scope": "Ip",
        "value": value,
        "type": "ban",
        "duration_s": 3600.25,
        "simulated": False,
    }
    fields.update(kw)
    return Decision(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["10.42.0.7", "0.0.0.0", "10.0.0.0/8", "1.2.3.4/032", "1.2.3.4/", "::", "2001:db8::1",
     "2001:DB8::1", "::ffff:10.0.0.1", "::ffff:0:1.2.3.4", "fe80::1%eth0", "::1/128", "CN",
     "AS1234", "", "1.2.3", "01.2.3.4", "user:name", "1.2.3.4/999", "a\x00b"],
)  # fmt: skip
def test_values_come_back_as_given(value: str) -> None:
    packed = pack_value(value)
    if packed is not None:
        assert len(packed) in (6, 18)  # kind, prefix length, 4 or 16 address bytes
        assert unpack_value(packed) == value
    table = DecisionTable()
    row = table.add(dec(value), 3, 99.0)
    assert table.value(row) == value
    assert table.find(dec(value)) == row
    assert table.like("Ip", value, "ban") == [row]


ID = st.one_of(st.none(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 2**32 - 1, 2**32]))
DECISION = st.builds(
    Decision,
    id=ID,
    origin=st.sampled_from(["CAPI", "cscli", "lists:firehol", ""]),
    scenario=st.text(max_size=30),
    scope=st.sampled_from(["Ip", "Range", "Country", "username"]),
    value=st.one_of(
        st.ip_addresses().map(str),
        st.sampled_from(["10.0.0.0/8", "2001:db8::/32", "CN", "2001:DB8::1", "x" * 300]),
        st.text(max_size=20),
    ),
    type=st.sampled_from(["ban", "captcha", "throttle"]),
    duration_s=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    simulated=st.booleans(),
)


NOW = 1_767_225_600.0


def time_left(d: Decision) -> Decision:
    """``d`` as the table gives it back at ``NOW`` after storing it at ``NOW``."""
    left = None if d.duration_s is None else (NOW + d.duration_s) - NOW
    return dataclasses.replace(d, duration_s=left)


@FAST
@given(st.lists(DECISION, max_size=40), st.data())
def test_rows_give_back_what_was_stored_and_are_found_by_key(
    ds: list[Decision], data: st.DataObject
) -> None:
    """Against a dict by ``Decision.key``: add (replacing), remove, compact in any order."""
    table = DecisionTable()
    model: dict[str, Decision] = {}
    for d in ds:
        row = table.find(d)
        if row >= 0:
            table.remove(row)
        table.add(d, 1, None if d.duration_s is None else NOW + d.duration_s)
        model[d.key] = time_left(d)
        if model and data.draw(st.booleans()):
            gone = data.draw(st.sampled_from(sorted(model)))
            table.remove(table.find_key(gone))
            del model[gone]
    table.compact()
    assert len(table) == len(model)
    got = {table.key(r): table.decision(r, NOW) for r in table.rows()}
    assert got == model
    for key, d in model.items():
        assert table.find_key(key) == table.find(d) >= 0
        like = {table.key(r) for r in table.like(d.scope, d.value, d.type)}
        assert like == {
            k for k, m in model.items() if (m.scope, m.value, m.type) == (d.scope, d.value, d.type)
        }
    ranges = sorted(table.key(r) for r in table.range_rows())
    assert ranges == sorted(k for k, m in model.items() if "/" in m.value)


def test_range_rows_find_every_network_across_blocks_and_forget_removed_ones() -> None:
    """A range hidden among a block and more of plain addresses is found (the lookup that a
    ban on a range covering a suspected hop needs); a removed one is not."""
    table = DecisionTable()
    for i in range(BLOCK + 10):
        table.add(dec(f"1.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i + 1), 0, None)
    v4 = table.add(dec("203.0.113.0/24", 900_001, scope="Range"), 0, None)
    v6 = table.add(dec("2001:db8::/32", 900_002, scope="Range"), 0, None)
    text = table.add(dec("2001:DB8:1::/48", 900_003, scope="Range"), 0, None)
    assert sorted(table.range_rows()) == sorted([v4, v6, text])
    table.remove(v6)
    assert sorted(table.range_rows()) == sorted([v4, text])
    assert {table.value(r) for r in table.range_rows()} == {"203.0.113.0/24", "2001:DB8:1::/48"}


def test_expiry_is_kept_exactly_and_the_duration_is_the_time_left() -> None:
    table = DecisionTable()
    a = table.add(dec("1.1.1.1", 1, duration_s=14397.505722605), 0, 1000.5)
    b = table.add(dec("1.1.1.2", 2, duration_s=None), 0, None)
    assert table.decision(a, 900.25).duration_s == 100.25
    assert table.decision(b, 900.25).duration_s is None
    assert table.expires_at(a) == 1000.5
    assert table.expires_at(b) is None
    assert table.expired(1000.4) == []
    assert table.expired(1000.5) == [a]
    assert table.expired(math.inf) == []  # handed out once; the caller removes it
    table.remove(a)
    assert [table.key(r) for r in table.rows()] == ["id:2"]


def test_marks_find_what_a_poll_did_not_confirm() -> None:
    table = DecisionTable()
    rows = [table.add(dec(f"10.0.0.{i}", i + 1), 0, None) for i in range(5)]
    assert all(table.mark(r) == ADDED for r in rows)
    table.begin_poll()
    assert table.unseen() == rows
    table.set_mark(rows[1], KEPT)
    table.set_mark(rows[3], KEPT)
    assert table.unseen() == [rows[0], rows[2], rows[4]]
    table.remove(rows[0])
    assert table.mark(table.add(dec("10.0.0.9", 99), 0, None)) == ADDED
    assert UNSEEN == 0


def test_a_big_list_that_shrinks_is_compacted() -> None:
    table = DecisionTable()
    for i in range(3 * BLOCK):
        table.add(dec(f"203.0.{i >> 8}.{i & 255}", i + 1), 0, None)
    for i in range(3 * BLOCK - 10):
        table.remove(table.find_id(i + 1))
    table.compact()
    assert sorted(table.rows()) == list(range(10))
    assert sorted(table.key(r) for r in table.rows()) == sorted(
        f"id:{i + 1}" for i in range(3 * BLOCK - 10, 3 * BLOCK)
    )
    assert table.find(dec("203.0.47.255", 3 * BLOCK)) >= 0


def test_many_profiles_widen_the_column() -> None:
    table = DecisionTable()
    for i in range(70_000):
        table.add(dec("198.51.100.1", i + 1, scenario=f"s{i}"), 0, None)
    assert table.decision(table.find_id(70_000), 0.0).scenario == "s69999"
    assert table.decision(table.find_id(1), 0.0).scenario == "s0"
    assert len(table.like("Ip", "198.51.100.1", "ban")) == 70_000


def test_a_row_costs_under_60_bytes() -> None:
    """100,000 public decisions, as a CAPI blocklist brings: IPv4, IPv6 and ranges."""
    ds = []
    for i in range(100_000):
        if i % 10 < 7:
            value = f"{11 + i % 200}.{(i >> 8) & 255}.{i & 255}.{i % 7}"
        elif i % 10 < 9:
            value = f"2001:db8:{i:x}::{i % 97:x}"
        else:
            value = f"{11 + i % 200}.{(i >> 8) & 255}.{i & 255}.0/24"
        ds.append(dec(value, 100 + i, duration_s=86400.0 - i))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = DecisionTable()
        for d in ds:
            table.add(d, 10, 1e9 + d.duration_s)  # type: ignore[operator]
        per_row = (tracemalloc.get_traced_memory()[0] - before) / len(table)
    finally:
        tracemalloc.stop()
    assert len(table) == 100_000
    assert per_row < 60, per_row
