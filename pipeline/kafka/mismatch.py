"""``ban_mismatch`` on the aggregator: per-bucket bouncer verdicts in partition snapshots, and the
engine's tally read from the cluster view.

The owner of an events partition judges its events with the same ``MismatchTally`` as ``run``
(``pipeline.core.bouncer``: one ``ModeCounts`` per data-time bucket) and writes the buckets into
the partition's snapshot (``"mm"``). Every aggregator merges the partitions' buckets of the window
(``ClusterView.mismatch``) and its engine judges that merge through ``ClusterMismatch``
(``pipeline.kafka.totals``), so all of
them raise, keep and clear the same findings as ``run`` would on all nodes' traffic.

Partitions split requests by client, so the counts add up exactly; the examples and address
maps are capped on merge as in ``run``. The addresses the bouncer checked are only needed to claim
"a ban the bouncer never checks", which ``run`` gives up past ``ADDRESSES_CAP`` distinct
addresses (``saturated``). A partition whose buckets hold more than that leaves them out of its
snapshot and marks its buckets saturated: the cluster-wide merge would saturate anyway.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.bouncer import (
    ADDRESSES_CAP,
    PROBLEMS,
    MismatchTally,
    Mode,
    ModeCounts,
)
from pipeline.kafka.validate import (
    MAX_FIELD_CHARS,
    Reason,
    fail,
    need_count,
    need_count_map,
    need_dict,
    need_list,
    need_str,
    need_tuple,
)

_MODES = {m.value: m for m in Mode if m is not Mode.UNKNOWN}
_PROBLEMS = {m.value: m for m in PROBLEMS}


def counts_to_json(c: ModeCounts, *, addresses: bool = True) -> dict[str, Any]:
    """``addresses=False`` leaves out the checked/unchecked maps and marks the counts saturated
    (nothing can then be claimed "never checked")."""
    out: dict[str, Any] = {
        "j": c.judged,
        "u": c.unknown,
        "m": {m.value: n for m, n in c.modes.items()},
        "x": {m.value: [[*k, n] for k, n in ex.items()] for m, ex in c.examples.items()},
        "s": c.saturated or not addresses,
    }
    if addresses:
        out["c"] = c.checked
        out["n"] = c.unchecked
    return out


def counts_from_json(v: Any, what: str) -> ModeCounts:
    """Strict: one bad type here would crash every aggregator's engine at its next tick."""
    body = need_dict(v, what, 16)
    c = ModeCounts()
    c.judged = need_count(body.get("j", 0), f"{what}.j")
    c.unknown = need_count(body.get("u", 0), f"{what}.u")
    for key, n in need_dict(body.get("m", {}), f"{what}.m", len(_MODES)).items():
        mode = _MODES.get(key)
        if mode is None:
            fail(Reason.SCHEMA, f"{what}.m: unknown mode")
        c.modes[mode] = need_count(n, f"{what}.m")
    for key, rows in need_dict(body.get("x", {}), f"{what}.x", len(_PROBLEMS)).items():
        problem = _PROBLEMS.get(key)
        if problem is None:
            fail(Reason.SCHEMA, f"{what}.x: unknown mode")
        ex: dict[tuple[str, str, str, str], int] = {}
        for row in need_list(rows, f"{what}.x"):
            b, ch, p, h, n = need_tuple(row, 5, f"{what}.x")
            key4 = (
                need_str(b, MAX_FIELD_CHARS, f"{what}.x"),
                need_str(ch, MAX_FIELD_CHARS, f"{what}.x"),
                need_str(p, MAX_FIELD_CHARS, f"{what}.x"),
                need_str(h, MAX_FIELD_CHARS, f"{what}.x"),
            )
            ex[key4] = need_count(n, f"{what}.x")
        c.examples[problem] = ex
    c.checked = need_count_map(body.get("c", {}), f"{what}.c")
    c.unchecked = need_count_map(body.get("n", {}), f"{what}.n")
    saturated = body.get("s", False)
    if type(saturated) is not bool:
        fail(Reason.SCHEMA, f"{what}.s: not a boolean")
    c.saturated = saturated
    return c


def buckets_to_json(tally: MismatchTally, *, addresses: bool = True) -> list[list[Any]]:
    """The tally's buckets, oldest first; the address maps only while the partition's distinct
    checked addresses stay under ``ADDRESSES_CAP`` (module docstring)."""
    items = sorted(tally.buckets.items(), key=lambda kv: kv[0])
    if addresses:
        seen: set[str] = set()
        for _, c in items:
            seen.update(c.checked)
            if len(seen) > ADDRESSES_CAP:
                addresses = False
                break
    return [[b, counts_to_json(c, addresses=addresses)] for b, c in items]


def buckets_from_json(v: Any, max_bucket: int) -> list[tuple[int, ModeCounts]]:
    out: list[tuple[int, ModeCounts]] = []
    last = -1
    for i, entry in enumerate(need_list(v, "mismatch")):
        bucket, body = need_tuple(entry, 2, f"mismatch {i}")
        if type(bucket) is not int:
            fail(Reason.SCHEMA, f"mismatch {i}: bucket not an integer")
        if not 0 <= bucket <= max_bucket:
            fail(Reason.RANGE, f"mismatch {i}: bucket out of range")
        if bucket <= last:
            fail(Reason.SCHEMA, f"mismatch {i}: not in increasing order")
        last = bucket
        out.append((bucket, counts_from_json(body, f"mismatch {i}")))
    return out
