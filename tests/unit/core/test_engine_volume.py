"""What the engine holds per active decision: a CrowdSec with the community blocklist brings
~100,000 of them, nearly all on public addresses, into a sidecar limited to 96 Mi."""

from __future__ import annotations

import tracemalloc

from parsers.crowdsec import DecisionDelta
from tests.support.engine import ban, make_engine


def test_100k_public_decisions_cost_under_100_bytes_each() -> None:
    """The whole-record engine spent ~350 bytes per decision on top of the ``Decision`` itself
    (an ActiveDecision, a Classification, a key string, a dict slot), and kept the Decision."""
    ds = tuple(
        ban(f"{11 + i % 80}.{(i >> 8) & 255}.{i & 255}.{1 + i % 7}", i + 1, duration_s=9e5 - i)
        for i in range(100_000)
    )
    engine, _ = make_engine()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        engine.apply(DecisionDelta(ds, (), startup=True))
        per_decision = (tracemalloc.get_traced_memory()[0] - before) / len(ds)
    finally:
        tracemalloc.stop()
    assert len(engine.decisions) == 100_000
    assert engine.findings == {}  # all public
    assert per_decision < 100, per_decision
