"""Masking that starts mid-stream: a step up in an entrypoint's internal share, or in a
suspected hop's share, and when.

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

**Suspected hops.** When k3s nodes begin to SNAT to their own *public* address (an upgrade), or
Traefik is rescheduled to a node whose address is then in front of everyone, the internal share
does not move: the new hop is public. ``suspected_hop`` (core/hops.py) tells such an address
from a heavy client; this finds *when* it began to carry everyone. Per closed bucket the tracker
keeps the bucket's total and each public client's requests (``Summary.pub_count``) at or above
half of ``hop_share`` of that total: at most ``2 / hop_share`` (10) addresses a bucket, over
``drift_history_s``. At each close the engine passes the addresses judged suspected hops now
(their ``suspected_hop`` findings; replay keeps a hop's peak), and the same search runs on each
one's share of *all* requests, back over the whole history: ``changed_at`` is when its share
stepped up, not when it was first judged a hop. It is raised per address
(``masking_started:hop:<address>``, target the address). Differences from the internal step,
and why:

- the share after the step must be at least ``hop_share`` (0.2), and the step at least
  ``hop_share``, instead of ``drift_share``/``drift_step``: the internal share adds up every hop
  of an entrypoint, so "most requests" is what masking looks like there; a node's public address
  carries its own node's share, a third with three HA servers, and ``hop_share`` is the share
  at which ``suspected_hop`` already calls it a hop. Everything else (``drift_min_buckets``,
  ``drift_min_requests``, ``drift_z``, the doubling, the held buckets, the return) is the same;
- minutes where the address sent less than the floor (``hop_share / 2`` of the bucket) count
  as 0 requests from it: the before share is a lower bound, never more than the floor too low;
- ``pub_count`` is not kept per entrypoint, so the share is of all requests and the
  entrypoints it reached are unknown (the evidence says so); the hop's ``suspected_hop``
  finding has its hosts and routers;
- only an address suspected now is searched, so a crawler or a probe aimed at one site that
  appears mid-stream (heavy, but no hop) gives no step; once raised, the step is followed until
  its share returns even if the address stops being judged a hop.

Cost: the floor filter is one pass over a closed bucket's public-client table (at most
``diversity.PUBLIC_CAP``), and each suspected hop one pass over the history rows per closed
bucket; nothing per line or per key.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from operator import itemgetter
from typing import Any, Protocol

from pipeline.core import fixes
from pipeline.core.findings import Finding, Kind, Severity
from pipeline.core.hops import heavy_share
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
    @property
    def hop_share(self) -> float: ...


Row = tuple[int, int, int]  # bucket, requests, internal (or the hop's) requests
PubRow = tuple[int, int, Mapping[str, int]]  # bucket, requests, heavy public clients' requests
_requests = itemgetter(1)  # of a Row
_internal = itemgetter(2)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Step:
    """A step up in one entrypoint's internal share, or (``address``) in a suspected hop's
    share of all requests: then ``internal_*`` count the hop's requests."""

    entrypoint: str  # "" for a hop (its requests are not tallied per entrypoint)
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
    address: str | None = None  # a suspected hop's address
    floor_share: float = 0.0  # hop: per-bucket share below which its requests count as 0

    @property
    def share_before(self) -> float:
        return _share(self.internal_before, self.requests_before)

    @property
    def share_after(self) -> float:
        return _share(self.internal_after, self.requests_after)

    @property
    def key(self) -> str:
        if self.address is not None:
            return f"masking_started:hop:{self.address}"
        return f"masking_started:{self.entrypoint}"

    def evidence(self, bucket_s: int) -> dict[str, Any]:
        """The same fields for both kinds of step; a hop's share is of all requests (its
        entrypoints are unknown), and its counts are the hop's requests, not internal ones."""
        if self.address is None:
            head: dict[str, Any] = {"entrypoint": self.entrypoint}
            part = "internal"
        else:
            head = {
                "share_of": "suspected_hop",
                "address": self.address,
                "entrypoint": None,
                "entrypoints_known": False,
            }
            part = "hop_requests"
        out = {
            **head,
            "changed_at": self.changed_at,
            "changed_at_utc": _iso(self.changed_at),
            "bucket_s": bucket_s,
            "share_before": self.share_before,
            "share_after": self.share_after,
            "requests_before": self.requests_before,
            f"{part}_before": self.internal_before,
            "minutes_before": round(self.buckets_before * bucket_s / 60, 1),
            "before_since": self.since,
            "requests_after": self.requests_after,
            f"{part}_after": self.internal_after,
            "minutes_after": round(self.buckets_after * bucket_s / 60, 1),
            "detected_at": self.detected_at,
            "returned_at": self.returned_at,
        }
        if self.address is not None:
            out["floor_share"] = self.floor_share
            out["note"] = (
                "share of all requests: public clients are not tallied per entrypoint, so the "
                "entrypoints it reached are unknown (its suspected_hop finding lists its hosts "
                "and routers); minutes where it sent less than floor_share of the requests "
                "count as 0"
            )
        return out


def finding(step: Step, bucket_s: int) -> Finding:
    when = _iso(step.changed_at)
    before, after = round(step.share_before * 100), round(step.share_after * 100)
    if step.address is not None:
        target = step.address
        summary = (
            f"the share of all requests from {target}, a suspected hop (a public address "
            f"carrying many clients), stepped from {before}% to {after}% at {when}: client IP "
            "masking started then (a node began to SNAT to its public address, or Traefik moved "
            "behind it; match it to a deploy or an upgrade)"
        )
        fix = fixes.masking_started_hop_fix(target, when)
    else:
        target = step.entrypoint
        label = "(no entrypoint name)" if target == "-" else target
        summary = (
            f"the internal share on entrypoint {label} stepped from {before}% to {after}% at "
            f"{when}: client IP masking started then (match it to a deploy or an upgrade)"
        )
        fix = fixes.masking_started_fix(when)
    if step.returned_at is not None:
        summary += f"; the share came back at {_iso(step.returned_at)}"
    return Finding(
        kind=Kind.MASKING_STARTED,
        severity=Severity.HIGH,
        target=target,
        summary=summary,
        evidence=step.evidence(bucket_s),
        fix=fix,
        key=step.key,
    )


@dataclass(frozen=True, slots=True)
class _Rule:
    """What a qualifying step needs besides the shared rules (see the module docstring)."""

    share: float  # the share after the step is at least this
    step: float  # ... and this much above the share before it


class _History:
    """One entrypoint's (or suspected hop's) rows over the history, with what
    ``DriftTracker._no_step`` reads of them kept up to date as rows arrive and leave: every
    close tests every history, and working it out again each time was most of drift's cost on
    quiet traffic (a close every ~300 lines). So each row's flag (does it reach the smallest
    midpoint a step can have), their count, and the highest and lowest share, each from a
    deque of the rows that can still be the highest (lowest) once older ones leave. Every row
    has requests (buckets without any are not kept), and rows come in bucket order. It is
    judged by its ``rule``, the one its flags were worked out for."""

    __slots__ = ("_half", "_highest", "_lowest", "high", "highs", "rows", "rule")

    def __init__(self, rule: _Rule, rows: Iterable[Row] = ()) -> None:
        self.rule = rule
        self._half = rule.step / 2
        self.rows: deque[Row] = deque()
        self.high: deque[bool] = deque()
        self.highs = 0  # rows whose flag is set
        # (bucket, share), shares falling (rising) from the front: the front is the highest
        # (lowest) share of the rows kept.
        self._highest: deque[tuple[int, float]] = deque()
        self._lowest: deque[tuple[int, float]] = deque()
        for row in rows:
            self.append(row)

    def append(self, row: Row) -> None:
        b, t, i = row
        assert not self.rows or self.rows[-1][0] < b, "rows come in bucket order"
        share = i / t
        self.rows.append(row)
        flag = i >= self._half * t
        self.high.append(flag)
        self.highs += flag
        highest, lowest = self._highest, self._lowest
        while highest and highest[-1][1] <= share:
            highest.pop()
        highest.append((b, share))
        while lowest and lowest[-1][1] >= share:
            lowest.pop()
        lowest.append((b, share))

    def expire(self, horizon: int) -> None:
        """Drop the rows of buckets at or before ``horizon``."""
        rows = self.rows
        while rows and rows[0][0] <= horizon:
            rows.popleft()
            self.highs -= self.high.popleft()
        for extreme in (self._highest, self._lowest):
            while extreme and extreme[0][0] <= horizon:
                extreme.popleft()

    def spread(self) -> float:
        """The highest share less the lowest (0.0 without rows)."""
        if not self.rows:
            return 0.0
        return self._highest[0][1] - self._lowest[0][1]

    def since(self, bucket: int) -> _History:
        """A history of the rows from ``bucket`` on (live: look for the next step from there)."""
        return _History(self.rule, (r for r in self.rows if r[0] >= bucket))


class DriftTracker:
    """See module docstring. Pure: fed closed buckets, holds the steps found.

    ``keep``: replay; a step stays after the share returns (with ``returned_at``)."""

    __slots__ = (
        "_cfg",
        "_hist",
        "_hop_from",
        "_hop_hist",
        "_hop_rule",
        "_internal_rule",
        "_keep",
        "_last_noted",
        "_pub",
        "hop_steps",
        "steps",
    )

    def __init__(self, cfg: DriftConfig, *, keep: bool) -> None:
        self._cfg = cfg
        self._keep = keep
        self._hist: dict[str, _History] = {}
        self._pub: deque[PubRow] = deque()
        self._hop_from: dict[str, int] = {}  # live: look for a hop's next step from here
        # The rows of each address judged at the last close, from its ``_hop_from`` on, kept
        # as they grow: rebuilt from ``_pub`` at every close they cost a pass over the history
        # and ``_no_step`` another, for each suspected hop.
        self._hop_hist: dict[str, tuple[int, _History]] = {}
        self._last_noted = -1
        self._internal_rule = _Rule(cfg.drift_share, cfg.drift_step)
        self._hop_rule = _Rule(cfg.hop_share, cfg.hop_share)
        self.steps: dict[str, Step] = {}  # by entrypoint
        self.hop_steps: dict[str, Step] = {}  # by suspected hop address

    def all_steps(self) -> list[Step]:
        return [*self.steps.values(), *self.hop_steps.values()]

    def note(
        self, bucket: int, s: Summary, hops: Collection[str], heavy: Mapping[str, int]
    ) -> bool:
        """A bucket closed; True when a step was found, grew, returned or dropped.

        ``hops``: the addresses judged suspected hops now; their share is searched for a step.
        ``heavy``: the bucket's heavy public clients' requests, in order, as ``HopTracker.note``
        found them (``hops.heavy_share``)."""
        if bucket <= self._last_noted:
            return False
        self._last_noted = bucket
        cfg = self._cfg
        horizon = bucket - max(2 * cfg.drift_min_buckets, cfg.drift_history_s // cfg.bucket_s)
        changed = False
        hist = self._hist
        rule = self._internal_rule
        for ep, total in s.ep_total.items():
            if total:
                h = hist.get(ep)
                if h is None:
                    h = hist[ep] = _History(rule)
                h.append((bucket, total, s.ep_internal.get(ep, 0)))
        for ep in list(hist):
            h = hist[ep]
            h.expire(horizon)
            rows = h.rows
            if not rows:
                del hist[ep]
                if not self._keep and self.steps.pop(ep, None) is not None:
                    changed = True  # its traffic left the history: nothing to judge any more
                continue
            if rows[-1][0] == bucket:
                changed |= self._judge(ep, h, self.steps)
        return self._note_hops(bucket, s, horizon, hops, heavy) or changed

    def _note_hops(
        self,
        bucket: int,
        s: Summary,
        horizon: int,
        hops: Collection[str],
        heavy: Mapping[str, int],
    ) -> bool:
        pub = self._pub
        if s.total:
            pub.append((bucket, s.total, heavy))
        while pub and pub[0][0] <= horizon:
            pub.popleft()
        for addr in [a for a, b in self._hop_from.items() if b <= horizon]:
            del self._hop_from[addr]
        if not pub:
            if not self._keep and self.hop_steps:
                self.hop_steps.clear()  # no traffic left in the history
                return True
            return False
        if pub[-1][0] != bucket:
            return False
        changed = False
        kept = self._hop_hist
        rule = self._hop_rule
        judged = sorted({*hops, *self.hop_steps})
        for addr in judged:
            start = self._hop_from.get(addr, -1)
            cached = kept.get(addr)
            if cached is None or cached[0] != start:  # newly judged, or live looks afresh
                h = _History(rule, ((b, t, n.get(addr, 0)) for b, t, n in pub if b >= start))
                kept[addr] = (start, h)
            else:
                h = cached[1]
                h.append((bucket, s.total, heavy.get(addr, 0)))
                h.expire(horizon)
            changed |= self._judge(addr, h, self.hop_steps, hop=True)
        for addr in kept.keys() - set(judged):
            del kept[addr]
        return changed

    def _judge(self, key: str, h: _History, steps: dict[str, Step], *, hop: bool = False) -> bool:
        rows = h.rows
        step = steps.get(key)
        if step is None:
            found = self._find(key, h, hop=hop)
            if found is not None:
                steps[key] = found
                return True
            return False
        if step.returned_at is not None:
            return False
        back = self._returned(step, rows)
        if back is not None:
            if self._keep:
                steps[key] = replace(step, returned_at=float(back * self._cfg.bucket_s))
            else:
                del steps[key]  # look for the next step from here
                if hop:
                    self._hop_from[key] = back
                else:
                    self._hist[key] = self._hist[key].since(back)
            return True
        _, t, i = rows[-1]  # still masked: the after part grows (evidence, not a new event)
        steps[key] = replace(
            step,
            requests_after=step.requests_after + t,
            internal_after=step.internal_after + i,
            buckets_after=step.buckets_after + 1,
        )
        return True

    def _returned(self, step: Step, rows: Sequence[Row]) -> int | None:
        """The first of the last ``drift_min_buckets`` buckets when their share fell back below
        the step's midpoint, else None."""
        cfg = self._cfg
        recent = list(rows)[-cfg.drift_min_buckets :]
        total = sum(t for _, t, _ in recent)
        internal = sum(i for _, _, i in recent)
        if len(recent) < cfg.drift_min_buckets or total < cfg.drift_min_requests:
            return None
        midpoint = (step.share_before + step.share_after) / 2
        if internal / total >= midpoint:
            return None
        return recent[0][0]

    def _find(self, key: str, h: _History, *, hop: bool) -> Step | None:
        cfg = self._cfg
        rows, rule = h.rows, h.rule
        n, least = len(rows), cfg.drift_min_buckets
        if n < 2 * least or self._no_step(h):
            return None
        all_t = sum(map(_requests, rows))
        all_i = sum(map(_internal, rows))
        best: tuple[float, int, int, int] | None = None  # step, k, before requests, internal
        least_requests, least_share = cfg.drift_min_requests, rule.share
        tb = ib = 0
        for k, (_, t, i) in enumerate(rows):
            if k >= least and n - k >= least:
                ta, ia = all_t - tb, all_i - ib
                # ``_step``'s first two tests, inline: most splits fail them.
                if tb < least_requests or ta < least_requests or ia / ta < least_share:
                    tb += t
                    ib += i
                    continue
                step = self._step(tb, ib, ta, ia, k, n - k, rule)
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
            entrypoint="" if hop else key,
            changed_at=float(rows[k][0] * bucket_s),
            requests_before=tb,
            internal_before=ib,
            buckets_before=k,
            since=float(rows[0][0] * bucket_s),
            requests_after=all_t - tb,
            internal_after=all_i - ib,
            buckets_after=n - k,
            detected_at=float((rows[-1][0] + 1) * bucket_s),
            address=key if hop else None,
            floor_share=round(heavy_share(cfg.hop_share), 4) if hop else 0.0,
        )

    def _no_step(self, h: _History) -> bool:
        """Exact early "no"s from what ``_History`` keeps up to date as rows arrive and leave
        (a count, a look at its first ``drift_min_buckets`` flags, two extremes), instead of a
        ``_step`` per split, at every closed bucket, for every entrypoint:

        - ``_held`` needs ``drift_min_buckets`` rows at or after the split (itself at that
          index or later) at or above the step's midpoint, which is never below
          ``rule.step / 2`` (the same float operations, so rounding cannot let one through):
          a share that stays low fails here.
        - A part's share is an average of its rows' shares weighted by their requests, so it
          lies between their lowest and highest (a correctly rounded division keeps that
          order), and no step exceeds the difference: a share that stays high (an
          entrypoint masked all along) fails here. Every row has requests (buckets without
          any are not kept).
        """
        least = self._cfg.drift_min_buckets
        if h.highs - sum(islice(h.high, least)) < least:  # the flags set after the first least
            return True
        return h.spread() < h.rule.step

    def _held(self, rows: Sequence[Row], k: int, midpoint: float) -> bool:
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

    def _step(
        self, tb: int, ib: int, ta: int, ia: int, kb: int, ka: int, rule: _Rule
    ) -> float | None:
        """The step up between the two parts, or None when it does not qualify."""
        cfg = self._cfg
        if tb < cfg.drift_min_requests or ta < cfg.drift_min_requests:
            return None
        before, after = ib / tb, ia / ta
        step = after - before
        if after < rule.share or step < rule.step:
            return None
        if ia / ka < 2 * ib / kb:  # internal requests per bucket did not double
            return None
        p = (ib + ia) / (tb + ta)
        se = math.sqrt(p * (1 - p) * (1 / tb + 1 / ta))
        if se and step / se < cfg.drift_z:
            return None
        return step
