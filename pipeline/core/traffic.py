"""Traffic tallies on the data's own time line: per-minute summaries, a window, a span total.

Batches are folded in with C-level counting over ``(entrypoint, client)`` pairs; the Python loop
runs once per distinct pair, not per line. Every structure is capped so memory stays flat whatever
the input size (top clients are pruned, distinct-value sets stop growing at a cap and say so).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Protocol

from parsers.records import KEY, TS, AccessRecord
from pipeline.core.addresses import AddrClass, Classification

SET_CAP = 4096
# Distinct internal addresses tracked per summary; a whole /16 of pods fits with room to spare.
INTERNAL_CAP = 1 << 17
CLIENTS_CAP = 8192  # top-client table is pruned back to half of this when full

_key = itemgetter(KEY)
_ts = itemgetter(TS)

Key = tuple[str, str, str, str, str, str]  # entrypoint, client, host, router, xff, real_ip
Run = tuple[int, Counter[Key], float, float]  # bucket id, key counts, first ts, last ts

Classify = Callable[[str], Classification]


def _add_capped(target: set[str], values: Iterable[str]) -> None:
    if len(target) < SET_CAP:
        target.update(values)


class InternalClient:
    """What one internal address did: how much traffic, to which hosts and routers."""

    __slots__ = ("cls", "count", "forwarded", "hosts", "routers", "visible")

    def __init__(self, cls: AddrClass) -> None:
        self.cls = cls
        self.count = 0
        self.hosts: set[str] = set()
        self.routers: set[str] = set()
        self.forwarded = 0  # lines that carried a kept XFF/X-Real-Ip header at all
        self.visible = 0  # ... whose header named a public client

    def merge(self, other: InternalClient) -> None:
        self.count += other.count
        _add_capped(self.hosts, other.hosts)
        _add_capped(self.routers, other.routers)
        self.forwarded += other.forwarded
        self.visible += other.visible


class Summary:
    """Tallies of one stretch of traffic; mergeable."""

    __slots__ = (
        "by_class",
        "clients",
        "ep_clients",
        "ep_example",
        "ep_headers",
        "ep_hops",
        "ep_internal",
        "ep_total",
        "ep_visible",
        "hosts",
        "internal",
        "internal_overflow",
        "routers",
        "total",
    )

    def __init__(self) -> None:
        self.total = 0
        self.ep_total: dict[str, int] = {}
        self.ep_internal: dict[str, int] = {}
        self.ep_clients: dict[str, set[str]] = {}
        self.ep_visible: dict[str, int] = {}
        self.by_class: dict[tuple[str, AddrClass], int] = {}
        self.clients: dict[str, int] = {}
        self.internal: dict[str, InternalClient] = {}
        self.internal_overflow = 0  # requests from internal addresses past INTERNAL_CAP
        self.hosts: set[str] = set()
        self.routers: set[str] = set()
        self.ep_hops: dict[str, dict[str, int]] = {}  # internal clients per entrypoint
        self.ep_headers: dict[str, int] = {}  # internal-client lines with XFF/X-Real-Ip kept
        self.ep_example: dict[str, str] = {}  # a real client those headers revealed

    def add_counts(self, counts: Mapping[Key, int], classify: Classify) -> None:
        """Fold counted keys in; runs once per distinct (ep, client, host, router, xff, real_ip)."""
        ep_total = self.ep_total
        ep_internal = self.ep_internal
        ep_clients = self.ep_clients
        clients = self.clients
        by_class = self.by_class
        internal = self.internal
        hosts = self.hosts
        routers = self.routers
        for (ep, client, host, router, xff, rip), n in counts.items():
            self.total += n
            ep_total[ep] = ep_total.get(ep, 0) + n
            clients[client] = clients.get(client, 0) + n
            ep_set = ep_clients.get(ep)
            if ep_set is None:
                ep_set = ep_clients[ep] = set()
            if len(ep_set) < SET_CAP:
                ep_set.add(client)
            if len(hosts) < SET_CAP:
                hosts.add(host)
            if len(routers) < SET_CAP:
                routers.add(router)
            c = classify(client)
            key = (ep, c.cls)
            by_class[key] = by_class.get(key, 0) + n
            if not c.internal:
                continue
            ep_internal[ep] = ep_internal.get(ep, 0) + n
            hops = self.ep_hops.get(ep)
            if hops is None:
                hops = self.ep_hops[ep] = {}
            if client in hops or len(hops) < SET_CAP:
                hops[client] = hops.get(client, 0) + n
            hint = xff or rip
            visible = False
            if hint:
                self.ep_headers[ep] = self.ep_headers.get(ep, 0) + n
                # The original client is the leftmost X-Forwarded-For entry.
                first = hint.partition(",")[0].strip()
                if classify(first).cls is AddrClass.PUBLIC:
                    visible = True
                    self.ep_visible[ep] = self.ep_visible.get(ep, 0) + n
                    self.ep_example.setdefault(ep, first)
            ic = internal.get(client)
            if ic is None:
                if len(internal) >= INTERNAL_CAP:
                    self.internal_overflow += n
                    continue
                ic = internal[client] = InternalClient(c.cls)
            ic.count += n
            if len(ic.hosts) < SET_CAP:
                ic.hosts.add(host)
            if len(ic.routers) < SET_CAP:
                ic.routers.add(router)
            if hint:
                ic.forwarded += n
            if visible:
                ic.visible += n
        if len(clients) > CLIENTS_CAP:
            self._prune_clients()

    def _prune_clients(self) -> None:
        keep = sorted(self.clients.items(), key=itemgetter(1), reverse=True)[: CLIENTS_CAP // 2]
        self.clients = dict(keep)

    def merge(self, other: Summary, *, full: bool = True) -> None:
        self.total += other.total
        pairs = [
            (other.ep_total, self.ep_total),
            (other.ep_internal, self.ep_internal),
            (other.ep_visible, self.ep_visible),
            (other.ep_headers, self.ep_headers),
        ]
        if full:
            pairs.append((other.clients, self.clients))
        for src, dst in pairs:
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        for k2, v2 in other.by_class.items():
            self.by_class[k2] = self.by_class.get(k2, 0) + v2
        if full:
            for ep, clients in other.ep_clients.items():
                _add_capped(self.ep_clients.setdefault(ep, set()), clients)
        self.internal_overflow += other.internal_overflow
        for addr, ic in other.internal.items():
            mine = self.internal.get(addr)
            if mine is None:
                if len(self.internal) >= INTERNAL_CAP:
                    self.internal_overflow += ic.count
                    continue
                mine = self.internal[addr] = InternalClient(ic.cls)
            mine.merge(ic)
        _add_capped(self.hosts, other.hosts)
        _add_capped(self.routers, other.routers)
        for ep, example in other.ep_example.items():
            self.ep_example.setdefault(ep, example)
        if full:
            for ep, hops in other.ep_hops.items():
                mine_hops = self.ep_hops.setdefault(ep, {})
                for addr, n in hops.items():
                    if addr in mine_hops or len(mine_hops) < SET_CAP:
                        mine_hops[addr] = mine_hops.get(addr, 0) + n
        if len(self.clients) > CLIENTS_CAP:
            self._prune_clients()

    def top_clients(self, k: int) -> list[tuple[str, int]]:
        return sorted(self.clients.items(), key=itemgetter(1), reverse=True)[:k]


def _earliest(records: Sequence[AccessRecord]) -> float:
    """Smallest known timestamp (0.0 marks a line without one)."""
    return min(filter(None, map(_ts, records)), default=0.0)


def count_runs(records: Sequence[AccessRecord], bucket_s: int) -> list[Run]:
    """The per-line part of tallying: split a batch into time-bucket runs and count their keys.

    A batch usually falls inside one bucket, so the common case is a single C-level ``Counter``
    pass. Lines are logged in order of request *end*, so a slow request lands late with an
    older timestamp: such stragglers stay in the current run (the timeline would put them in
    its open bucket anyway), and a new run starts only when time moves past every bucket seen.
    """
    if not records:
        return []
    lo = _earliest(records)
    hi = max(map(_ts, records))
    first_bucket = int(records[0][TS]) // bucket_s
    if first_bucket == int(hi) // bucket_s:
        return [(first_bucket, Counter(map(_key, records)), lo, hi)]
    runs: list[Run] = []
    start = 0
    current = first_bucket
    for i, r in enumerate(records):
        b = int(r[TS]) // bucket_s
        if b > current:
            run = records[start:i]
            runs.append((current, Counter(map(_key, run)), _earliest(run), max(map(_ts, run))))
            start, current = i, b
    run = records[start:]
    runs.append((current, Counter(map(_key, run)), _earliest(run), max(map(_ts, run))))
    return runs


class TrafficView(Protocol):
    """The read-only face of a timeline: what sinks and reports may ask of the engine's tallies."""

    @property
    def window_s(self) -> int: ...

    @property
    def bucket_s(self) -> int: ...

    @property
    def first_ts(self) -> float: ...

    @property
    def last_ts(self) -> float: ...

    def window(self, *, full: bool = False) -> Summary: ...

    def whole(self) -> Summary: ...

    def by_class(self) -> dict[tuple[str, AddrClass], int]: ...


class Timeline:
    """Per-bucket summaries on the data's time line, a sliding window over them, a span total.

    Closed buckets fold into ``span`` immediately; the window keeps the last ``window_s`` worth.
    Data that arrives late (older than the newest bucket) joins the newest bucket: logs are close
    to time-ordered and exact placement of stragglers is not worth a per-line cost.
    """

    __slots__ = ("_buckets", "bucket_s", "first_ts", "last_ts", "span", "window_s")

    def __init__(self, window_s: int, bucket_s: int) -> None:
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.span = Summary()  # everything folded so far except the open bucket
        self._buckets: deque[tuple[int, Summary]] = deque()
        self.first_ts = 0.0
        self.last_ts = 0.0

    def add_runs(
        self,
        runs: Sequence[Run],
        classify: Classify,
        on_close: Callable[[], None] | None = None,
    ) -> list[int]:
        """Fold pre-counted runs in (what parallel replay workers send back).

        ``on_close`` runs when a bucket closes, before the window slides past it, so data-driven
        evaluation sees every bucket inside a window even across a gap in the data.
        """
        closed: list[int] = []
        for bucket, counts, first, last in runs:
            if first and (self.first_ts == 0.0 or first < self.first_ts):
                self.first_ts = first
            summary, just_closed = self._open(bucket, on_close)
            self.last_ts = max(self.last_ts, last)
            closed += just_closed
            summary.add_counts(counts, classify)
        return closed

    def advance(self, ts: float, on_close: Callable[[], None] | None = None) -> None:
        """Move the time line to ``ts`` without data (a quiet period in live mode), so the
        window empties as time passes instead of freezing on the last traffic seen."""
        if self._buckets and int(ts) // self.bucket_s > self._buckets[-1][0]:
            self._open(int(ts) // self.bucket_s, on_close)

    def _open(
        self, bucket: int, on_close: Callable[[], None] | None = None
    ) -> tuple[Summary, list[int]]:
        closed: list[int] = []
        if self._buckets and bucket <= self._buckets[-1][0]:
            return self._buckets[-1][1], closed
        if self._buckets:
            if on_close is not None:
                on_close()
            closed.append(self._buckets[-1][0])
            self.span.merge(self._buckets[-1][1])
        self._buckets.append((bucket, Summary()))
        horizon = bucket - max(1, self.window_s // self.bucket_s)
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        return self._buckets[-1][1], closed

    def window(self, *, full: bool = False) -> Summary:
        """A fresh merge of the buckets in the sliding window (evaluation time, not per line).

        ``full=False`` skips the per-client tables, which only evidence of a raised finding needs.
        """
        out = Summary()
        for _, s in self._buckets:
            out.merge(s, full=full)
        return out

    def by_class(self) -> dict[tuple[str, AddrClass], int]:
        """Cumulative requests per (entrypoint, client class), cheap enough for every scrape."""
        out = dict(self.span.by_class)
        if self._buckets:
            for key, n in self._buckets[-1][1].by_class.items():
                out[key] = out.get(key, 0) + n
        return out

    def whole(self) -> Summary:
        """Span total including the open bucket."""
        out = Summary()
        out.merge(self.span)
        if self._buckets:
            out.merge(self._buckets[-1][1])
        return out
