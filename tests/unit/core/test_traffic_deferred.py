"""A summary that defers its public clients' diversity masks holds what an eager one holds.

``Summary(defer_diversity=True)`` keeps the counted keys instead of working out ``pub_mask`` and
``pub_ua`` key by key (a third of the fold on quiet traffic). Whatever reads them must get the
eager answer: ``settle`` (merges and snapshots call it) the whole tables in the same order,
``heavy_diversity`` the heavy clients' masks. The eager fold is the reference.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.records import KEY, AccessRecord
from pipeline.core import traffic
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.traffic import Summary
from pipeline.kafka.snapshot import summary_to_json
from tests.support.traffic import cut, ordered_state, traffic_lines

CLASSIFY = Classifier(k3s_defaults()).classify


def ordered(s: Summary) -> dict[str, Any]:
    """Every tally but the kept keys, in order: insertion order counts too."""
    return ordered_state(s, skip={"_deferred"})


def batches(records: list[AccessRecord], sizes: list[int]) -> list[Counter[Any]]:
    return [Counter(r[KEY] for r in part) for part in cut(records, sizes)]


@settings(max_examples=150, deadline=None)
@given(
    traffic_lines(max_size=200),
    st.lists(st.integers(1, 60), min_size=1, max_size=6),
    st.sampled_from([traffic.PUBLIC_CAP, 1, 2, 3]),
)
def test_settled_is_eager(records: list[AccessRecord], sizes: list[int], cap: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(traffic, "PUBLIC_CAP", cap)
        eager, deferred = Summary(), Summary(defer_diversity=True)
        for counts in batches(records, sizes):
            eager.add_counts(counts, CLASSIFY)
            deferred.add_counts(counts, CLASSIFY)
        if records and any(c for c in eager.pub_mask.values()):
            assert deferred.pub_mask == {}  # nothing worked out yet
        deferred.settle()
    assert ordered(deferred) == ordered(eager)


@settings(max_examples=150, deadline=None)
@given(
    traffic_lines(max_size=200),
    st.lists(st.integers(1, 60), min_size=1, max_size=6),
    st.sampled_from([0.0, 1.0, 3.0, 0.1, 10.0, 2.5, 0.1 * 30, 0.1 * 3]),
    st.sampled_from([traffic.PUBLIC_CAP, 1, 2]),
    st.integers(0, 6),
)
def test_heavy_diversity_is_eager(
    records: list[AccessRecord], sizes: list[int], least: float, cap: int, settle_at: int
) -> None:
    """At any PUBLIC_CAP, and after a ``settle`` part-way (a merge or a snapshot of the open
    bucket) followed by more keys."""
    eager, deferred = Summary(), Summary(defer_diversity=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(traffic, "PUBLIC_CAP", cap)
        for i, counts in enumerate(batches(records, sizes)):
            if i == settle_at:
                deferred.settle()
            eager.add_counts(counts, CLASSIFY)
            deferred.add_counts(counts, CLASSIFY)
    want = eager.heavy_diversity(least)
    assert deferred.heavy_diversity(least) == want
    assert all(n >= least for _, n, _, _ in want)
    assert [c for c, *_ in want] == [c for c, n in eager.pub_count.items() if n >= least]
    # asked again (the kept keys are gone), the same answer
    assert deferred.heavy_diversity(least) == want


@settings(max_examples=100, deadline=None)
@given(traffic_lines(max_size=150), traffic_lines(max_size=150))
def test_merges_and_snapshots_see_the_eager_tables(
    first: list[AccessRecord], second: list[AccessRecord]
) -> None:
    a_eager, b_eager = Summary(), Summary()
    a_deferred, b_deferred = Summary(defer_diversity=True), Summary(defer_diversity=True)
    for s, recs in ((a_eager, first), (a_deferred, first), (b_eager, second), (b_deferred, second)):
        s.add_counts(Counter(r[KEY] for r in recs), CLASSIFY)
    assert summary_to_json(b_deferred) == summary_to_json(b_eager)
    b_deferred = Summary(defer_diversity=True)
    b_deferred.add_counts(Counter(r[KEY] for r in second), CLASSIFY)
    a_eager.merge(b_eager)
    a_deferred.merge(b_deferred)
    assert ordered(a_deferred) == ordered(a_eager)


def test_kept_keys_are_bounded_and_settle_exactly() -> None:
    """A minute of 20,000 distinct keys of 1,000 clients (a flood of User-Agents) keeps at most
    DEFERRED_CAP of them: past it the summary works the masks out, as the eager fold does."""
    keys = [
        ("websecure", f"203.0.{i % 250}.{i // 250 % 4}", "a.example", "r@k8s", "", "", f"ua {i}")
        for i in range(20_000)
    ]
    eager, deferred = Summary(), Summary(defer_diversity=True)
    for part in (keys[:7_000], keys[7_000:]):
        counts = Counter(part)
        eager.add_counts(counts, CLASSIFY)
        deferred.add_counts(counts, CLASSIFY)
        assert deferred._deferred is not None
        assert len(deferred._deferred) <= traffic.DEFERRED_CAP
    assert len(deferred.pub_count) == 1_000
    deferred.settle()
    assert ordered(deferred) == ordered(eager)


@pytest.mark.parametrize(
    ("least", "want"),
    [
        (2.0, ["b", "c"]),
        (2.5, ["c"]),  # between two counts: the next whole number up
        (3.0, ["c"]),
        (math.nextafter(3.0, math.inf), []),  # a hair above a count leaves it out
        (0.0, ["a", "b", "c"]),
        (-1.0, ["a", "b", "c"]),
        (math.inf, []),
        (math.nan, []),  # compares false, as the float rule did
    ],
)
def test_heavy_clients_by_whole_counts(least: float, want: list[str]) -> None:
    """``heavy_diversity`` compares whole counts with ``ceil(least)``: the float rule's answer
    at every threshold, fractional, at a count, just above one, or not finite."""
    s = Summary(defer_diversity=True)
    s.pub_count.update({"a": 1, "b": 2, "c": 3})
    assert [c for c, *_ in s.heavy_diversity(least)] == want
    assert want == [c for c, n in s.pub_count.items() if n >= least]
