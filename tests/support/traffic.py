"""Strategies and comparisons the traffic tally tests share (tests/unit/core/test_traffic_*)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from hypothesis import strategies as st

from parsers.records import AccessRecord
from pipeline.core.traffic import InternalClient, Summary
from tests.support.engine import T0, rec

CLIENTS = ["198.51.100.1", "203.0.113.9", "10.42.0.12", "10.42.0.1", "2001:db8::1", "fd00::5"]


@st.composite
def traffic_lines(draw: st.DrawFn, max_size: int = 300) -> list[AccessRecord]:
    """Lines mostly in time order, with stragglers, lines without a time and quiet gaps."""
    n = draw(st.integers(0, max_size))
    t = T0
    out = []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 0.3, 1.0, 7.0, 45.0, 200.0]))
        late = draw(st.sampled_from([0.0, 0.0, 0.0, 30.0, 90.0]))
        ts = 0.0 if draw(st.integers(0, 30)) == 0 else max(0.0, t - late)
        out.append(
            rec(
                draw(st.sampled_from(CLIENTS)),
                ts,
                ep=draw(st.sampled_from(["websecure", "web", "-"])),
                host=draw(st.sampled_from(["a.example", "b.example", "-"])),
                router=draw(st.sampled_from(["r1@k8s", "r2@k8s"])),
                xff=draw(st.sampled_from(["", "", "192.0.2.4", "10.0.0.3, 192.0.2.4"])),
                ua=draw(st.sampled_from(["", "curl/8", "Mozilla/5.0 (X11)"])),
            )
        )
    return out


def cut(items: list[AccessRecord], sizes: list[int]) -> list[list[AccessRecord]]:
    """``items`` in consecutive parts of ``sizes``, the rest in one last part."""
    out, i = [], 0
    for n in sizes:
        if i >= len(items):
            break
        out.append(items[i : i + n])
        i += n
    if i < len(items):
        out.append(items[i:])
    return out


def ordered_state(s: Summary, skip: Collection[str] = ()) -> dict[str, Any]:
    """Every slot but ``skip``, dicts as lists of items (their order decides ties and first
    examples), internal clients by their own slots, sets sorted."""

    def plain(v: Any) -> Any:
        if isinstance(v, InternalClient):
            return {k: plain(getattr(v, k)) for k in InternalClient.__slots__}
        if isinstance(v, dict):
            return [(k, plain(x)) for k, x in v.items()]
        if isinstance(v, set):
            return sorted(v)
        return v

    return {k: plain(getattr(s, k)) for k in Summary.__slots__ if k not in skip}
