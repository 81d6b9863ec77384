"""Masking that starts mid-stream: a step up in an entrypoint's internal share, and when.

Users report the client IP turning into the svclb address half an hour after a start, or after
an upgrade (Traefik 3.5 with Cilium 1.18; k3s servicelb changes across 1.26-1.31).
``masked_client_ip`` says the share is high now; this says *when* it changed, so the change can
be matched to a deploy. A share that is high from the first minute is no step (it is
``masked_client_ip`` alone).

Each entrypoint keeps, per closed minute bucket, its requests and internal requests over
``drift_history_s``. At each close the tracker looks for the best split of that history into
"before" and "after" (the after part runs to the newest bucket) and raises when all hold:

- each part spans ``drift_min_buckets`` buckets (5 minutes) and ``drift_min_requests`` requests,
  and that many buckets after the split are above the step's midpoint on their own: a burst of
  a few minutes (a cron job, a probe from inside the cluster) is no step, and a share of a
  handful of requests says nothing;
- the after share is at least ``drift_share`` (0.5, as ``masked_share``) and at least
  ``drift_step`` (0.4) above the before share: the step the reports describe is ~0% to most;
- the step is ``drift_z`` (5) standard errors of a difference of two proportions: noise in a
  stable share never gets there, a real step of 0.4 on 30+ requests a side does;
- internal requests per bucket at least doubled: when public traffic falls at night while the
  cluster's own probes go on, the share rises but nothing was masked.

Raised once per step; its "after" numbers then grow with each bucket while the share stays up.
Live, it clears when the share of the last ``drift_min_buckets`` buckets
falls back below the midpoint of the step (before + step/2), and looking starts afresh from
those buckets; replay keeps it and notes when the share came back (``returned_at``).
Cost: one pass over at most ``drift_history_s / bucket_s`` rows per entrypoint per closed bucket.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline.core import fixes
from pipeline.core.findings import Finding, Kind, Severity
from pipeline.core.traffic import Summary


class DriftConfig(Protocol):
    @property
    def bucket_s(self) -> int: ...
    @property
    def drift_history_s(self) -> int: ...
    @property
    def drift_min_buckets(self) -> int: ...
    @property
    def drift_min_requests(self) -> int: ...
    @property
    def drift_share(self) -> float: ...
    @property
    def drift_step(self) -> float: ...
    @property
    def drift_z(self) -> float: ...


Row = tuple[int, int, int]  # bucket, requests, internal requests


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Step:
    """A step up in one entrypoint's internal share."""

    entrypoint: str
    changed_at: float  # start of the first bucket after the change
    requests_before: int
    internal_before: int
    buckets_before: int
    since: float  # start of the first bucket of the "before" part
    requests_after: int
    internal_after: int
    buckets_after: int
    detected_at: float  # end of the bucket that confirmed it
    returned_at: float | None = None  # replay: start of the buckets where the share came back

    @property
    def share_before(self) -> float:
        return _share(self.internal_before, self.requests_before)

    @property
    def share_after(self) -> float:
        return _share(self.internal_after, self.requests_after)

    def evidence(self, bucket_s: int) -> dict[str, Any]:
        return {
            "entrypoint": self.entrypoint,
            "changed_at": self.changed_at,
            "changed_at_utc": _iso(self.changed_at),
            "bucket_s": bucket_s,
            "share_before": self.share_before,
            "share_after": self.share_after,
            "requests_before": self.requests_before,
            "internal_before": self.internal_before,
            "minutes_before": round(self.buckets_before * bucket_s / 60, 1),
            "before_since": self.since,
            "requests_after": self.requests_after,
            "internal_after": self.internal_after,
            "minutes_after": round(self.buckets_after * bucket_s / 60, 1),
            "detected_at": self.detected_at,
            "returned_at": self.returned_at,
        }


def finding(step: Step, bucket_s: int) -> Finding:
    ep = step.entrypoint
    label = "(no entrypoint name)" if ep == "-" else ep
    summary = (
        f"the internal share on entrypoint {label} stepped from "
        f"{round(step.share_before * 100)}% to {round(step.share_after * 100)}% at "
        f"{_iso(step.changed_at)}: client IP masking started then (match it to a deploy or "
        "an upgrade)"
    )
    if step.returned_at is not None:
        summary += f"; the share came back at {_iso(step.returned_at)}"
    return Finding(
        kind=Kind.MASKING_STARTED,
        severity=Severity.HIGH,
        target=ep,
        summary=summary,
        evidence=step.evidence(bucket_s),
        fix=fixes.masking_started_fix(_iso(step.changed_at)),
        key=f"masking_started:{ep}",
    )


class DriftTracker:
    """See module docstring. Pure: fed closed buckets, holds the steps found.

    ``keep``: replay; a step stays after the share returns (with ``returned_at``)."""

    __slots__ = ("_cfg", "_hist", "_keep", "_last_noted", "steps")

    def __init__(self, cfg: DriftConfig, *, keep: bool) -> None:
        self._cfg = cfg
        self._keep = keep
        self._hist: dict[str, deque[Row]] = {}
        self._last_noted = -1
        self.steps: dict[str, Step] = {}

    def note(self, bucket: int, s: Summary) -> bool:
        """A bucket closed; True when a step was found, returned or dropped."""
        if bucket <= self._last_noted:
            return False
        self._last_noted = bucket
        cfg = self._cfg
        horizon = bucket - max(2 * cfg.drift_min_buckets, cfg.drift_history_s // cfg.bucket_s)
        changed = False
        for ep, total in s.ep_total.items():
            if total:
                self._hist.setdefault(ep, deque()).append((bucket, total, s.ep_internal.get(ep, 0)))
        for ep in list(self._hist):
            rows = self._hist[ep]
            while rows and rows[0][0] <= horizon:
                rows.popleft()
            if not rows:
                del self._hist[ep]
                if not self._keep and self.steps.pop(ep, None) is not None:
                    changed = True  # its traffic left the history: nothing to judge any more
                continue
            if rows[-1][0] == bucket:
                changed |= self._judge(ep, rows)
        return changed

    def _judge(self, ep: str, rows: deque[Row]) -> bool:
        step = self.steps.get(ep)
        if step is None:
            found = self._find(ep, rows)
            if found is not None:
                self.steps[ep] = found
                return True
            return False
        if step.returned_at is not None:
            return False
        if self._returned(ep, step, rows):
            return True
        _, t, i = rows[-1]  # still masked: the after part grows (evidence, not a new event)
        self.steps[ep] = replace(
            step,
            requests_after=step.requests_after + t,
            internal_after=step.internal_after + i,
            buckets_after=step.buckets_after + 1,
        )
        return True

    def _returned(self, ep: str, step: Step, rows: deque[Row]) -> bool:
        cfg = self._cfg
        recent = list(rows)[-cfg.drift_min_buckets :]
        total = sum(t for _, t, _ in recent)
        internal = sum(i for _, _, i in recent)
        if len(recent) < cfg.drift_min_buckets or total < cfg.drift_min_requests:
            return False
        midpoint = (step.share_before + step.share_after) / 2
        if internal / total >= midpoint:
            return False
        start = float(recent[0][0] * cfg.bucket_s)
        if self._keep:
            self.steps[ep] = replace(step, returned_at=start)
        else:
            del self.steps[ep]
            self._hist[ep] = deque(recent)  # look for the next step from here
        return True

    def _find(self, ep: str, rows: deque[Row]) -> Step | None:
        cfg = self._cfg
        n, least = len(rows), cfg.drift_min_buckets
        if n < 2 * least:
            return None
        all_t = sum(t for _, t, _ in rows)
        all_i = sum(i for _, _, i in rows)
        best: tuple[float, int, int, int] | None = None  # step, k, before requests, internal
        tb = ib = 0
        for k, (_, t, i) in enumerate(rows):
            if k >= least and n - k >= least:
                ta, ia = all_t - tb, all_i - ib
                step = self._step(tb, ib, ta, ia, k, n - k)
                if (
                    step is not None
                    and (best is None or step > best[0])
                    and self._held(rows, k, ib / tb + step / 2)
                ):
                    best = (step, k, tb, ib)
            tb += t
            ib += i
        if best is None:
            return None
        _, k, tb, ib = best
        bucket_s = cfg.bucket_s
        return Step(
            entrypoint=ep,
            changed_at=float(rows[k][0] * bucket_s),
            requests_before=tb,
            internal_before=ib,
            buckets_before=k,
            since=float(rows[0][0] * bucket_s),
            requests_after=all_t - tb,
            internal_after=all_i - ib,
            buckets_after=n - k,
            detected_at=float((rows[-1][0] + 1) * bucket_s),
        )

    def _held(self, rows: deque[Row], k: int, midpoint: float) -> bool:
        """At least ``drift_min_buckets`` buckets after the split are above the step's midpoint
        on their own: a burst of a few minutes, averaged with the quiet ones after it, is not."""
        need = self._cfg.drift_min_buckets
        for j in range(k, len(rows)):
            _, t, i = rows[j]
            if i >= midpoint * t:
                need -= 1
                if not need:
                    return True
        return False

    def _step(self, tb: int, ib: int, ta: int, ia: int, kb: int, ka: int) -> float | None:
        """The step up between the two parts, or None when it does not qualify."""
        cfg = self._cfg
        if tb < cfg.drift_min_requests or ta < cfg.drift_min_requests:
            return None
        before, after = ib / tb, ia / ta
        step = after - before
        if after < cfg.drift_share or step < cfg.drift_step:
            return None
        if ia / ka < 2 * ib / kb:  # internal requests per bucket did not double
            return None
        p = (ib + ia) / (tb + ta)
        se = math.sqrt(p * (1 - p) * (1 / tb + 1 / ta))
        if se and step / se < cfg.drift_z:
            return None
        return step
