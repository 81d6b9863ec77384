"""Suspected hops: public addresses whose traffic looks like many clients behind one address.

When Traefik runs on another node, or k3s nodes SNAT to their own public address, every request
arrives from that address; no default range calls it internal, so a ban on it locks everyone out
unnoticed. Such an address carries an outsized share of all requests *and* reaches most of the
cluster's sites (hosts, routers), or forwards many distinct X-Forwarded-For clients.

The tracker looks at each minute bucket once, when it closes (``note``): only public clients
with at least half the share threshold in that bucket are kept, so its cost is a pass over one
bucket's public-client table (at most ``diversity.PUBLIC_CAP``) per minute of data, and judging
reads a handful of candidates.

Why these thresholds (``EngineConfig.hop_*``; README "How findings are decided"):

- ``hop_share`` 0.2: one of up to five nodes carrying its share of everyone; a single real client
  (a crawler, a monitoring probe) rarely makes a fifth of a cluster's traffic.
- ``hop_min_requests`` 100 per window: below that a share says nothing.
- ``hop_min_sites`` 3 and ``hop_site_coverage`` 0.5: a hop carries every site's visitors, so it
  reaches most of the hosts (or routers, when the log has no host) seen in the window; a crawler
  or a probe aimed at one or two sites does not, however much it sends.
- ``hop_min_forwarded`` 5: distinct X-Forwarded-For clients behind it (headers kept): a client
  writing its own header repeats one value.
- ``hop_min_user_agents`` 3: when the log keeps User-Agents, an address that shows fewer than
  three is one client (a crawler, a probe, one person's browser and app), however many sites it
  reaches, unless it forwards ``hop_min_forwarded`` clients. A hop for a public service carries
  dozens of browsers; the cost is a hop that carries one or two people's traffic, which is not
  told from one heavy client. Traefik drops request headers unless told to keep them: without
  User-Agents the test is skipped (``user_agents`` is null in the evidence), and a single client
  reaching most sites at a fifth of all traffic is reported.

A CDN or load balancer given as internal (``--lb-ip``, ``--internal-cidr``) is not public, so
it is never a candidate here (``masked_client_ip`` covers it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import reduce
from operator import itemgetter, or_
from typing import Any, Protocol, TypeVar

from pipeline.core.diversity import (
    HOST_SHIFT,
    ROUTER_SHIFT,
    XFF_SHIFT,
    field_count,
    values_mask,
)
from pipeline.core.traffic import Summary


class HopConfig(Protocol):
    @property
    def window_s(self) -> int: ...
    @property
    def bucket_s(self) -> int: ...
    @property
    def hop_share(self) -> float: ...
    @property
    def hop_min_requests(self) -> int: ...
    @property
    def hop_min_sites(self) -> int: ...
    @property
    def hop_site_coverage(self) -> float: ...
    @property
    def hop_min_forwarded(self) -> int: ...
    @property
    def hop_min_user_agents(self) -> int: ...


def heavy_share(hop_share: float) -> float:
    """The share of a bucket's requests that makes a public client heavy there: what the hop
    tracker and drift keep of a bucket, and the only diversity masks a parallel replay chunk
    works out for its inner buckets (``RunTally``); one rule, so all three agree to the bit."""
    return hop_share / 2


def _ratio(part: int, whole: int) -> float:
    return round(min(part / whole, 1.0), 4) if whole else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    address: str
    suspected: bool
    requests: int
    total: int
    hosts: int
    all_hosts: int
    routers: int
    all_routers: int
    forwarded: int
    user_agents: int  # distinct User-Agents (a lower bound); 0 when the log keeps none
    first_seen: float
    last_seen: float
    buckets: int

    @property
    def share(self) -> float:
        return _ratio(self.requests, self.total)

    @property
    def sites(self) -> int:
        return max(self.hosts, self.routers)

    def evidence(self, cfg: HopConfig) -> dict[str, Any]:
        return {
            "address": self.address,
            "window_s": cfg.window_s,
            "requests": self.requests,
            "total_requests": self.total,
            "request_share": self.share,
            "hosts": self.hosts,
            "host_share": _ratio(self.hosts, self.all_hosts),
            "routers": self.routers,
            "router_share": _ratio(self.routers, self.all_routers),
            "forwarded_clients": self.forwarded,
            "user_agents": self.user_agents or None,
            "heavy_minutes": self.buckets,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "lockout": False,
        }


_total = itemgetter(1)  # of a kept bucket: (bucket, total, sites mask)
_requests = itemgetter(1)  # of a client's row: (bucket, requests, mask, User-Agent mask)
_sites = itemgetter(2)

Row = TypeVar("Row", bound=tuple[int, ...])  # a kept row; its first item is its bucket


def _insert(rows: deque[Row], row: Row) -> None:
    """Append in bucket order; an older bucket (noted again) goes in its place."""
    if not rows or rows[-1][0] < row[0]:
        rows.append(row)
        return
    i = len(rows)
    while i and rows[i - 1][0] > row[0]:
        i -= 1
    rows.insert(i, row)


class HopTracker:
    """See module docstring. Pure: fed closed buckets, asked for verdicts."""

    __slots__ = ("_buckets", "_cfg", "_first", "_last_noted", "_peak", "_seen")

    def __init__(self, cfg: HopConfig) -> None:
        self._cfg = cfg
        self._buckets: deque[tuple[int, int, int]] = deque()  # bucket, total, sites mask
        # bucket, requests, diversity mask, User-Agent mask
        self._seen: dict[str, deque[tuple[int, int, int, int]]] = {}
        self._first: dict[str, float] = {}
        self._peak: dict[str, Verdict] = {}
        self._last_noted = -1

    @property
    def active(self) -> bool:
        return bool(self._seen) or bool(self._peak)

    @property
    def last_noted(self) -> int:
        """The newest bucket noted (-1 before any): where the engine asks for closed ones."""
        return self._last_noted

    def note(self, bucket: int, s: Summary) -> dict[str, int]:
        """A bucket closed (or the replay ended): keep its total and its heavy public clients,
        and return those clients' requests (what drift keeps of the bucket too).

        A bucket noted before is replaced (``aggregate``: a partition whose first lines came
        late changed a bucket already judged, ``ClusterTimeline.revised``)."""
        if bucket <= self._last_noted:
            self._forget(bucket)
        elif s.total:
            self._last_noted = bucket
        if not s.total:
            return {}
        sites = values_mask(s.hosts, HOST_SHIFT) | values_mask(s.routers, ROUTER_SHIFT)
        _insert(self._buckets, (bucket, s.total, sites))
        floor = heavy_share(self._cfg.hop_share) * s.total
        start = float(bucket * self._cfg.bucket_s)
        heavy = {}
        for client, n, mask, ua_mask in s.heavy_diversity(floor):
            _insert(self._seen.setdefault(client, deque()), (bucket, n, mask, ua_mask))
            first = self._first.get(client)
            self._first[client] = start if first is None else min(first, start)
            heavy[client] = n
        self._expire(self._last_noted)
        return heavy

    def _forget(self, bucket: int) -> None:
        """Drop what was kept of ``bucket`` (it is noted again)."""
        self._buckets = deque(r for r in self._buckets if r[0] != bucket)
        for client in list(self._seen):
            rows = self._seen[client]
            if any(r[0] == bucket for r in rows):
                rows = self._seen[client] = deque(r for r in rows if r[0] != bucket)
                if not rows:
                    del self._seen[client]
                    self._first.pop(client, None)

    def _expire(self, newest: int) -> None:
        horizon = newest - max(1, self._cfg.window_s // self._cfg.bucket_s)
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        for client in list(self._seen):
            rows = self._seen[client]
            while rows and rows[0][0] <= horizon:
                rows.popleft()
            if not rows:
                del self._seen[client]
                self._first.pop(client, None)

    def window_total(self, last_ts: float) -> int:
        """Requests in the noted buckets of the window (``last_ts`` slides it when quiet)."""
        if last_ts and self._buckets:
            self._expire(max(self._last_noted, int(last_ts) // self._cfg.bucket_s))
        return sum(map(_total, self._buckets))

    def judge(self, last_ts: float, total: int, *, keep_peak: bool) -> list[Verdict]:
        """A verdict per tracked address; with ``keep_peak`` (replay) a suspected address keeps
        its strongest verdict even after it calms down, and an address below the request
        thresholds that never was suspected gets none: with a peak kept, nothing clears, so
        such a verdict says nothing, and replay judges at every closed bucket."""
        cfg = self._cfg
        # The sites of the window, worked out for the first address that needs them: in replay
        # most closes judge none (a close every ~300 lines of quiet traffic).
        all_sites: tuple[int, int] | None = None
        out: list[Verdict] = []
        for client, rows in self._seen.items():
            requests = sum(map(_requests, rows))
            if keep_peak and not (
                requests >= cfg.hop_min_requests and total > 0 and requests / total >= cfg.hop_share
            ):  # not suspected now, whatever its sites: its peak, if it had one (``_peaked``)
                peak = self._peak.get(client)
                if peak is not None:
                    out.append(peak)
                continue
            if all_sites is None:
                sites = reduce(or_, map(_sites, self._buckets), 0)
                all_sites = field_count(sites, HOST_SHIFT), field_count(sites, ROUTER_SHIFT)
            all_hosts, all_routers = all_sites
            mask = ua_mask = 0
            for _, _, m, u in rows:
                mask |= m
                ua_mask |= u
            hosts, routers = field_count(mask, HOST_SHIFT), field_count(mask, ROUTER_SHIFT)
            forwarded = field_count(mask, XFF_SHIFT)
            user_agents = field_count(ua_mask, 0)
            wide = any(
                n >= cfg.hop_min_sites and _ratio(n, whole) >= cfg.hop_site_coverage
                for n, whole in ((hosts, all_hosts), (routers, all_routers))
            ) and not (0 < user_agents < cfg.hop_min_user_agents)
            suspected = (
                requests >= cfg.hop_min_requests
                and total > 0
                and requests / total >= cfg.hop_share
                and (wide or forwarded >= cfg.hop_min_forwarded)
            )
            last_bucket = rows[-1][0]
            v = Verdict(
                address=client,
                suspected=suspected,
                requests=requests,
                total=total,
                hosts=hosts,
                all_hosts=all_hosts,
                routers=routers,
                all_routers=all_routers,
                forwarded=forwarded,
                user_agents=user_agents,
                first_seen=self._first.get(client, 0.0),
                last_seen=min(float((last_bucket + 1) * cfg.bucket_s), last_ts or 0.0)
                or float((last_bucket + 1) * cfg.bucket_s),
                buckets=len(rows),
            )
            out.append(self._peaked(v) if keep_peak else v)
        if keep_peak:
            seen = {v.address for v in out}
            out += [v for a, v in self._peak.items() if a not in seen]
        return out

    def _peaked(self, v: Verdict) -> Verdict:
        peak = self._peak.get(v.address)
        if v.suspected and (peak is None or v.share >= peak.share):
            self._peak[v.address] = v
            return v
        return peak if peak is not None else v
