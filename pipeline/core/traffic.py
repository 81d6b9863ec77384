"""Traffic tallies on the data's own time line: per-minute summaries, a window, a span total.

Batches are folded in with C-level counting over ``(entrypoint, client, ...)`` keys; the Python
loop runs once per distinct key, not per line. Every structure is capped so memory stays flat
whatever the input size (top clients are pruned, distinct-value sets stop growing at a cap).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import compress, count, islice, repeat
from operator import itemgetter, le
from typing import Protocol

from parsers.records import KEY, TS, AccessRecord
from pipeline.core.addresses import INTERNAL_CLASSES, AddrClass, Classification
from pipeline.core.diversity import PUBLIC_CAP, UA_BITS, key_mask, ua_bit

SET_CAP = 4096
# Distinct internal addresses tracked per summary; a whole /16 of pods fits with room to spare.
INTERNAL_CAP = 1 << 17
CLIENTS_CAP = 8192  # top-client table is pruned back to half of this when full
# Distinct keys of the open bucket counted ahead of folding (Timeline.add_records): ~2 MB.
PENDING_CAP = 4096
# Public keys a summary that defers its diversity masks keeps before it works them out anyway.
DEFERRED_CAP = 2 * PENDING_CAP
# Runs at the start of a parallel replay chunk that keep every diversity mask (RunTally).
KEEP_LEADING_RUNS = 2
# Closed buckets a lean timeline merges into its span at a time (``Timeline._merge_closed``).
SPAN_BATCH = 8

_key = itemgetter(KEY)
_ts = itemgetter(TS)
_client = itemgetter(1)  # of a Key
_host = itemgetter(2)
_router = itemgetter(3)

Key = tuple[str, str, str, str, str, str, str]  # entrypoint, client, host, router, xff, real_ip, ua

Classify = Callable[[str], Classification]

# diversity.key_mask of a key's (host, router, xff): a few hosts and routers make most keys,
# and three cached ``bit`` calls per public key cost more than one lookup here.
_MASKS: dict[tuple[str, str, str], int] = {}
_MASKS_CAP = 1 << 16


def _mask_of(tail: tuple[str, str, str]) -> int:
    if len(_MASKS) >= _MASKS_CAP:
        _MASKS.clear()
    mask = _MASKS[tail] = key_mask(*tail)
    return mask


def _add_capped(target: set[str], values: Collection[str]) -> None:
    """Add until the set holds ``SET_CAP`` values, exactly as adding one at a time would."""
    room = SET_CAP - len(target)
    if room <= 0:
        return
    if len(values) <= room:
        target.update(values)
        return
    for v in values:
        if len(target) >= SET_CAP:
            return
        target.add(v)


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
        "_borrowed",
        "_deferred",
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
        "pub_count",
        "pub_mask",
        "pub_ua",
        "routers",
        "total",
    )

    def __init__(
        self, *, defer_diversity: bool = False, clients: dict[str, int] | None = None
    ) -> None:
        """``defer_diversity``: ``add_counts`` keeps the public clients' keys (those of
        ``pub_count``, at most ``DEFERRED_CAP`` before it settles) instead of working out their
        diversity masks (``pub_mask``, ``pub_ua``; ~0.3 µs a key, a third of the fold), and
        ``heavy_diversity`` works them out for the few clients that can be hops. For the
        engine's own buckets, whose masks nothing else reads; anything that reads the tables
        (``merge``, a snapshot) calls ``settle`` first.

        ``clients``: count requests per client into this table (a timeline span's, borrowed)
        instead of one of this summary's own. The span then holds them already when the bucket
        closes, and merging a bucket's table into it was a loop per client at every close
        (a sixth of the cost of a close on quiet traffic). A summary with a borrowed table adds
        no clients to any merge (the table's owner counts them), prunes it only past twice
        ``CLIENTS_CAP`` (its owner prunes it back when the bucket closes, as merging would), and
        its own ``clients`` are not its alone: for the engine's buckets, whose clients nothing
        reads but the span (``Timeline(lean=True)``).

        The span's table is the one merging tables of their own gives unless a bucket has more
        than ``CLIENTS_CAP`` distinct clients (a flood from many addresses in one minute). A
        table of its own then pruned itself, and a lighter client it dropped counted again
        from 0; the shared one is pruned only past twice the cap, ranked over the span, so its
        counts are then nearer the truth. A parallel replay worker's buckets keep tables of
        their own, so in such a minute ``--jobs 2`` can keep other light clients than
        ``--jobs 1`` (as before: ``--jobs 1`` folded a bucket ``PENDING_CAP`` keys at a time,
        a worker in one go, and each pruned at other moments)."""
        self._deferred: list[Key] | None = [] if defer_diversity else None
        self._borrowed = clients is not None
        self.total = 0
        self.ep_total: dict[str, int] = {}
        self.ep_internal: dict[str, int] = {}
        self.ep_clients: dict[str, set[str]] = {}
        self.ep_visible: dict[str, int] = {}
        self.by_class: dict[tuple[str, AddrClass], int] = {}
        self.clients: dict[str, int] = {} if clients is None else clients
        self.internal: dict[str, InternalClient] = {}
        self.internal_overflow = 0  # requests from internal addresses past INTERNAL_CAP
        self.hosts: set[str] = set()
        self.routers: set[str] = set()
        self.ep_hops: dict[str, dict[str, int]] = {}  # internal clients per entrypoint
        self.ep_headers: dict[str, int] = {}  # internal-client lines with XFF/X-Real-Ip kept
        self.ep_example: dict[str, str] = {}  # a real client those headers revealed
        # Public clients (first PUBLIC_CAP): requests, and a diversity mask (core/diversity).
        self.pub_count: dict[str, int] = {}
        self.pub_mask: dict[str, int] = {}
        self.pub_ua: dict[str, int] = {}  # their User-Agents' mask, when the log keeps them

    def add_counts(self, counts: Mapping[Key, int], classify: Classify) -> None:
        """Fold counted keys in; the loop runs once per distinct key, and does per key only
        what needs its client (its count, its entrypoint's set, its class). Totals and the
        host and router sets are taken over all keys at once."""
        if not counts:
            return
        deferred = self._deferred
        self.total += sum(counts.values())
        for values, get in ((self.hosts, _host), (self.routers, _router)):
            if len(values) + len(counts) <= SET_CAP:
                values.update(map(get, counts))
            else:
                _add_capped(values, list(map(get, counts)))
        clients = self.clients
        clients_get = clients.get
        # Per entrypoint met: how to add a client to its set, and its requests per class (one
        # lookup a key; a (entrypoint, class) tuple key cost a tuple and its hash a key), and
        # the order the pairs first came in, which ``by_class`` keeps however keys are split.
        eps: dict[str, tuple[Callable[[str], object], dict[AddrClass, int]]] = {}
        order: list[tuple[str, AddrClass]] = []
        internal_classes = INTERNAL_CLASSES
        public = AddrClass.PUBLIC
        pub_count = self.pub_count
        pub_mask = self.pub_mask
        pub_mask_get = pub_mask.get
        pub_ua = self.pub_ua
        ua_bits_get = UA_BITS.get
        masks_get = _MASKS.get
        for key, n in counts.items():
            ep, client = key[0], key[1]
            clients[client] = clients_get(client, 0) + n
            add, per_class = eps.get(ep) or eps.setdefault(
                ep, (self._ep_adder(ep, len(counts)), {})
            )
            add(client)
            cls = classify(client).cls
            seen = per_class.get(cls)
            if seen is None:
                per_class[cls] = n
                order.append((ep, cls))
            else:
                per_class[cls] = seen + n
            if cls is public:
                # A public client's requests and diversity mask (``suspected_hop``), the first
                # PUBLIC_CAP clients only; inline, as most keys are public.
                if client in pub_count:
                    pub_count[client] += n
                elif len(pub_count) < PUBLIC_CAP:
                    pub_count[client] = n
                else:
                    continue
                if deferred is not None:  # its masks: ``settle`` or ``heavy_diversity``
                    deferred.append(key)
                    continue
                tail = key[2:5]
                mask = masks_get(tail)
                if mask is None:
                    mask = _mask_of(tail)
                pub_mask[client] = pub_mask_get(client, 0) | mask
                ua = key[6]
                if ua:  # not logged: "" (Traefik drops headers unless told to keep them)
                    b = ua_bits_get(ua)
                    pub_ua[client] = pub_ua.get(client, 0) | (ua_bit(ua) if b is None else b)
            elif cls in internal_classes:
                self._add_internal(key, n, cls, classify)
        by_class = self.by_class
        ep_total = self.ep_total
        for k in order:
            n = eps[k[0]][1][k[1]]
            by_class[k] = by_class.get(k, 0) + n
            ep_total[k[0]] = ep_total.get(k[0], 0) + n
        self.bound_clients()
        if deferred is not None and len(deferred) > DEFERRED_CAP:
            self.settle()  # exact at any point: a client joins pub_count at its first key

    def _ep_adder(self, ep: str, most: int) -> Callable[[str], object]:
        """How to add a client to ``ep``'s set during one ``add_counts``: the set's own ``add``
        when ``most`` more cannot reach the cap, else one that checks the cap each time."""
        ep_set = self.ep_clients.get(ep)
        if ep_set is None:
            ep_set = self.ep_clients[ep] = set()
        if len(ep_set) + most <= SET_CAP:
            return ep_set.add

        def capped(client: str) -> None:
            if len(ep_set) < SET_CAP:
                ep_set.add(client)

        return capped

    def _add_internal(self, key: Key, n: int, cls: AddrClass, classify: Classify) -> None:
        """The rest of a key whose client is internal: hops, forwarding headers, its table."""
        ep, client, host, router, xff, rip, _ = key
        self.ep_internal[ep] = self.ep_internal.get(ep, 0) + n
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
        internal = self.internal
        ic = internal.get(client)
        if ic is None:
            if len(internal) >= INTERNAL_CAP:
                self.internal_overflow += n
                return
            ic = internal[client] = InternalClient(cls)
        ic.count += n
        if len(ic.hosts) < SET_CAP:
            ic.hosts.add(host)
        if len(ic.routers) < SET_CAP:
            ic.routers.add(router)
        if hint:
            ic.forwarded += n
        if visible:
            ic.visible += n

    def settle(self) -> None:
        """Work out the diversity masks ``add_counts`` deferred, for every public client it
        counted, in the order it met them: the tables an eager fold would hold."""
        deferred = self._deferred
        if deferred:
            self._deferred = []
            self._add_diversity(deferred, self.pub_count)

    def heavy_diversity(self, least: float) -> list[tuple[str, int, int, int]]:
        """(client, requests, mask, User-Agent mask) of the public clients with at least
        ``least`` requests, in their order. A deferring summary works out the masks of these
        clients only, keeps them, and drops its kept keys: it must be final (a closed bucket),
        and from then on holds no masks of lighter clients, which no reader of a closed bucket
        asks for."""
        counts = self.pub_count
        # Requests are whole: ``n >= least`` exactly when ``n >= ceil(least)``, an int compare
        # (a float one converts every count).
        at_least: float = math.ceil(least) if 0 < least < math.inf else least
        heavy = dict(compress(counts.items(), map(le, repeat(at_least), counts.values())))
        deferred = self._deferred
        if deferred:
            self._deferred = []
            if heavy:
                self._add_diversity(deferred, heavy)
        masks, uas = self.pub_mask, self.pub_ua
        return [(c, n, masks.get(c, 0), uas.get(c, 0)) for c, n in heavy.items()]

    def _add_diversity(self, deferred: list[Key], wanted: Collection[str]) -> None:
        """The masks of the deferred keys whose client is in ``wanted``, as ``add_counts``
        would have set them key by key."""
        pub_mask, pub_ua = self.pub_mask, self.pub_ua
        masks_get = _MASKS.get
        ua_bits_get = UA_BITS.get
        for key in compress(deferred, map(wanted.__contains__, map(_client, deferred))):
            client = key[1]
            tail = key[2:5]
            mask = masks_get(tail)
            if mask is None:
                mask = _mask_of(tail)
            pub_mask[client] = pub_mask.get(client, 0) | mask
            ua = key[6]
            if ua:
                b = ua_bits_get(ua)
                pub_ua[client] = pub_ua.get(client, 0) | (ua_bit(ua) if b is None else b)

    def _merge_public(self, other: Summary) -> None:
        counts, masks, uas = self.pub_count, self.pub_mask, self.pub_ua
        for client, n in other.pub_count.items():
            if client in counts:
                counts[client] += n
            elif len(counts) < PUBLIC_CAP:
                counts[client] = n
            else:
                continue
            masks[client] = masks.get(client, 0) | other.pub_mask.get(client, 0)
            ua = other.pub_ua.get(client)
            if ua:
                uas[client] = uas.get(client, 0) | ua

    def bound_clients(self) -> None:
        """Prune the top-client table once it holds more than ``CLIENTS_CAP`` clients (twice
        that when borrowed), as adding and merging do: a timeline whose buckets count into
        its span's table checks at every close, as merging the bucket there would."""
        if len(self.clients) > (2 * CLIENTS_CAP if self._borrowed else CLIENTS_CAP):
            self._prune_clients()

    def _prune_clients(self) -> None:
        """Keep the top half of ``CLIENTS_CAP``, in place: a bucket may be counting into it."""
        keep = sorted(self.clients.items(), key=itemgetter(1), reverse=True)[: CLIENTS_CAP // 2]
        self.clients.clear()
        self.clients.update(keep)

    def merge(self, other: Summary, *, full: bool = True, public: bool = True) -> None:
        """Add ``other`` in, as if its keys had been added here.

        ``full=False`` merges the counters only (totals per entrypoint and class), which is what
        judging the window and the metrics read on every bucket; the per-client tables and the
        distinct-value sets serve evidence and reports, and cost a loop per client.
        ``public=False`` leaves out the public clients' diversity tables (``pub_*``): the engine
        reads only a closed bucket's (``suspected_hop``, drift), never its timeline's span, and
        merging them into the span took a third of the work per closed bucket on quiet traffic.
        """
        self.total += other.total
        self.internal_overflow += other.internal_overflow
        for src, dst in (
            (other.ep_total, self.ep_total),
            (other.ep_internal, self.ep_internal),
            (other.ep_visible, self.ep_visible),
            (other.ep_headers, self.ep_headers),
        ):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        by_class = self.by_class
        for k2, v2 in other.by_class.items():
            by_class[k2] = by_class.get(k2, 0) + v2
        for ep, example in other.ep_example.items():
            self.ep_example.setdefault(ep, example)
        if not full:
            return
        if public:
            self.settle()
            other.settle()
            self._merge_public(other)
        if not other._borrowed:  # else its owner, maybe self, counts them (and prunes them)
            clients = self.clients
            clients_get = clients.get
            for client, n in other.clients.items():
                clients[client] = clients_get(client, 0) + n
            self.bound_clients()
        for ep, ep_set in other.ep_clients.items():
            _add_capped(self.ep_clients.setdefault(ep, set()), ep_set)
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
        for ep, hops in other.ep_hops.items():
            mine_hops = self.ep_hops.setdefault(ep, {})
            for addr, n in hops.items():
                if addr in mine_hops or len(mine_hops) < SET_CAP:
                    mine_hops[addr] = mine_hops.get(addr, 0) + n

    def top_clients(self, k: int) -> list[tuple[str, int]]:
        return sorted(self.clients.items(), key=itemgetter(1), reverse=True)[:k]


# A run's tally: its key counts, or a Summary already folded from them (parallel replay's
# workers fold their chunk's buckets themselves, so the parent only merges).
Tally = Counter[Key] | Summary
Run = tuple[int, Tally, float, float]  # bucket id, tally, first ts, last ts
Bounds = list[tuple[int, int, int]]  # bucket id, start, end of each run of a batch


def _bounds(times: Sequence[float], bucket_s: int, current: int) -> Bounds:
    """Where a batch splits into runs: a run ends at the first line whose time passes every
    bucket seen (``current`` and later ones). Older lines (stragglers) stay in the run.

    Times are never negative (0.0 is "no time"), so "passes bucket b" is ``t >= (b + 1) *
    bucket_s``, which C-level iterators find without a Python step per line: a batch of quiet
    traffic crosses several buckets. An empty run (the first line already passes) is left out.
    """
    out: Bounds = []
    rest = iter(times)  # read once, up to and including each split point in turn
    start = pos = 0
    while True:
        edge = float((current + 1) * bucket_s)
        found = next(compress(count(pos), map(le, repeat(edge), rest)), None)
        if found is None:
            out.append((current, start, len(times)))
            return out
        if found > start:
            out.append((current, start, found))
        current = int(times[found]) // bucket_s
        start, pos = found, found + 1


def _span(times: Sequence[float]) -> tuple[float, float]:
    """Smallest known and largest timestamp (0.0 marks a line without one)."""
    return min(filter(None, times), default=0.0), max(times)


def clamp_future(runs: Sequence[Run], edge: float, bucket_s: int) -> list[Run]:
    """Runs with nothing past ``edge``: later buckets and times are placed at the edge, so one
    line from a node with a skewed clock cannot push the window past everyone else's traffic
    (``run``'s engine and the aggregator's partitions apply the same rule)."""
    edge_bucket = int(edge) // bucket_s
    return [
        (min(b, edge_bucket), counts, min(first, edge), min(last, edge))
        for b, counts, first, last in runs
    ]


def count_runs(records: Sequence[AccessRecord], bucket_s: int) -> list[Run]:
    """The per-line part of tallying: split a batch into time-bucket runs and count their keys.

    A batch usually falls inside one bucket, so the common case is a single C-level ``Counter``
    pass. Lines are logged in order of request *end*, so a slow request lands late with an
    older timestamp: such stragglers stay in the current run (the timeline would put them in
    its open bucket anyway), and a new run starts only when time moves past every bucket seen.
    """
    if not records:
        return []
    times = list(map(_ts, records))
    first = int(times[0]) // bucket_s
    lo, hi = _span(times)
    if first == int(hi) // bucket_s:
        return [(first, Counter(map(_key, records)), lo, hi)]
    runs: list[Run] = []
    for bucket, a, b in _bounds(times, bucket_s, first):
        lo, hi = _span(times[a:b])
        runs.append((bucket, Counter(map(_key, records[a:b])), lo, hi))
    return runs


class RunTally:
    """Counted runs of many batches in a row, one per bucket: what a parallel replay worker
    counts in its chunk, each bucket folded into a Summary.

    Lines join the open run until time passes its bucket, exactly as ``count_runs`` splits one
    batch, so a bucket's keys are counted (in C) into one ``Counter`` however many batches it
    spans: the per-key Python work in ``Summary.add_counts`` then runs once per distinct key of
    a bucket, not of each batch. With ``classify``, a bucket is folded as soon as a later one
    opens, while its keys are still in the CPU cache: folded at the end of an 8 MB chunk, a
    chunk's keys (and the strings they hold) had fallen out of it, and the workers needed more
    CPU per line than a whole single-process replay (bench/RESULTS.md).
    """

    __slots__ = ("_classify", "_heavy_share", "bucket_s", "runs")

    def __init__(
        self, bucket_s: int, classify: Classify | None = None, heavy_share: float | None = None
    ) -> None:
        """``heavy_share`` (with ``classify``): a run after the second and before the last is
        a whole bucket unless the engine holds that bucket already (the caller checks,
        ``parallel._joins_held``), so its public clients' diversity masks are worked out only
        for those with at least this share of its requests (half the engine's ``hop_share``:
        what ``HopTracker.note`` reads, ``Summary.heavy_diversity``). The first and the last
        run may be merged with another chunk's part, so they keep every mask, and so does the
        second: a chunk that begins with a late line (a slow request, logged when it ended)
        opens a run for that line's older bucket, and its second run is then the bucket the
        previous chunk ended in."""
        self.bucket_s = bucket_s
        self._classify = classify
        self._heavy_share = heavy_share
        # bucket, its counts (a Summary once folded), [lo, hi]
        self.runs: list[tuple[int, Counter[Key] | Summary, list[float]]] = []

    def add(self, records: Sequence[AccessRecord]) -> None:
        if not records:
            return
        bucket_s = self.bucket_s
        runs = self.runs
        times = list(map(_ts, records))
        current = runs[-1][0] if runs else int(times[0]) // bucket_s
        if int(max(times)) // bucket_s <= current:
            bounds = [(current, 0, len(times))]
        else:
            bounds = _bounds(times, bucket_s, current)
        for bucket, a, b in bounds:
            if runs and runs[-1][0] == bucket:
                _, counts, span = runs[-1]
            else:
                if runs and self._classify is not None:
                    self._fold_last(self._classify)
                counts, span = Counter(), [0.0, 0.0]
                runs.append((bucket, counts, span))
            whole = b - a == len(times)
            lo, hi = _span(times if whole else times[a:b])
            if lo and (not span[0] or lo < span[0]):
                span[0] = lo
            span[1] = max(span[1], hi)
            assert isinstance(counts, Counter)  # only the newest run is counted into
            counts.update(map(_key, records if whole else records[a:b]))

    def _fold_last(self, classify: Classify) -> None:
        """Fold the newest run: a later one opens, so it is complete (the chunk's first two
        runs keep every mask; see ``heavy_share``)."""
        bucket, counts, span = self.runs[-1]
        if isinstance(counts, Counter):
            share = self._heavy_share
            inner = share is not None and len(self.runs) > KEEP_LEADING_RUNS
            summary = Summary(defer_diversity=inner)
            summary.add_counts(counts, classify)
            if inner:
                assert share is not None
                summary.heavy_diversity(share * summary.total)  # HopTracker.note's floor
            self.runs[-1] = (bucket, summary, span)

    def fold(self, classify: Classify) -> list[Run]:
        """The runs with each bucket's counts folded into a Summary (``Summary.add_counts``)."""
        out: list[Run] = []
        for bucket, counts, (lo, hi) in self.runs:
            if isinstance(counts, Summary):
                out.append((bucket, counts, lo, hi))
                continue
            summary = Summary()
            summary.add_counts(counts, classify)
            out.append((bucket, summary, lo, hi))
        return out


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

    @property
    def newest_bucket(self) -> int | None: ...


class _ClosedCounters:
    """The counters (``Summary.merge(full=False)``) of a timeline's closed buckets that are
    still in its window, so that ``window()`` merges three summaries instead of every bucket:
    live, the metrics read the window at every scrape, and a window may hold a week of buckets.

    Two stacks, in window order: ``front`` holds merges of every suffix of the older buckets
    (``front[0]`` covers them all), ``back`` the merge of the buckets closed since. The oldest
    bucket leaves from the front; an empty front is refilled from the back's buckets. Merging
    front, back and the open bucket in that order gives the same sums, and the same keys in the
    same order, as merging every bucket oldest first.

    They catch up when read (``sync``), not as each bucket closes: a replay closes a bucket
    every ~300 lines of quiet traffic and reads the window only at the end.
    """

    __slots__ = ("_back", "_back_parts", "_front", "_ids", "source")

    def __init__(self) -> None:
        self.source: object = None  # the bucket deque these counters describe
        self._ids: deque[int] = deque()  # the buckets covered, oldest first
        self._front: deque[Summary] = deque()
        self._back = Summary()
        self._back_parts: list[Summary] = []

    def sync(self, buckets: deque[tuple[int, Summary]]) -> None:
        """Cover the closed buckets of ``buckets`` (all but the newest): drop those that left
        the window, add those closed since. A bucket is never changed once closed, but a
        Kafka partition's timeline replaces the whole deque (``source``): then start over."""
        ids = self._ids
        if self.source is not buckets:
            self._reset(buckets)
            return
        oldest = buckets[0][0] if len(buckets) > 1 else None
        while ids and (oldest is None or ids[0] < oldest):
            ids.popleft()
            self._pop()
        new: list[tuple[int, Summary]] = []
        for bucket, closed in islice(reversed(buckets), 1, None):
            if ids and bucket <= ids[-1]:
                break
            new.append((bucket, closed))
        for bucket, closed in reversed(new):
            ids.append(bucket)
            self._push(closed)

    def _reset(self, buckets: deque[tuple[int, Summary]]) -> None:
        self.source = buckets
        self._ids.clear()
        self._front.clear()
        self._back, self._back_parts = Summary(), []
        for bucket, closed in list(buckets)[:-1]:
            self._ids.append(bucket)
            self._push(closed)

    def _push(self, closed: Summary) -> None:
        """The newest bucket closed."""
        self._back.merge(closed, full=False)
        self._back_parts.append(closed)

    def _pop(self) -> None:
        """The oldest closed bucket left the window."""
        if not self._front:
            after: Summary | None = None
            for part in reversed(self._back_parts):
                merged = Summary()
                merged.merge(part, full=False)
                if after is not None:
                    merged.merge(after, full=False)
                self._front.appendleft(merged)
                after = merged
            self._back, self._back_parts = Summary(), []
        self._front.popleft()

    def into(self, out: Summary) -> None:
        if self._front:
            out.merge(self._front[0], full=False)
        out.merge(self._back, full=False)


class _WindowShares:
    """Requests and internal-client requests per entrypoint over a timeline's closed buckets in
    the window, added as a bucket closes and taken off as it leaves: what judging the masked
    share reads at every close, for two additions instead of a merge of the window."""

    __slots__ = ("internal", "source", "total")

    def __init__(self) -> None:
        self.source: object = None  # the bucket deque these sums describe
        self.total: dict[str, int] = {}
        self.internal: dict[str, int] = {}

    def add(self, s: Summary, sign: int = 1) -> None:
        """Add a bucket that closed (``sign`` 1) or take off one that left (-1)."""
        _add_sums(self.total, s.ep_total, sign)
        _add_sums(self.internal, s.ep_internal, sign)

    def sync(self, buckets: deque[tuple[int, Summary]]) -> None:
        """Start over from the closed buckets (all but the newest) if the deque was replaced
        (a Kafka partition's timeline loads its buckets from a snapshot)."""
        if self.source is not buckets:
            self.source = buckets
            self.total, self.internal = {}, {}
            for _, closed in list(buckets)[:-1]:
                self.add(closed)

    def plus(self, s: Summary) -> tuple[dict[str, int], dict[str, int]]:
        """The sums with ``s`` (the open bucket) added, in new dicts."""
        total, internal = dict(self.total), dict(self.internal)
        _add_sums(total, s.ep_total, 1)
        _add_sums(internal, s.ep_internal, 1)
        return total, internal


def _add_sums(dst: dict[str, int], src: Mapping[str, int], sign: int) -> None:
    """``sign`` times ``src`` into ``dst``. An entrypoint whose sum comes back to 0 is dropped,
    as a merge of the window would not have it: a log with an entrypoint a minute would
    otherwise be judged on all of them at every close."""
    for ep, n in src.items():
        left = dst.get(ep, 0) + sign * n
        if left:
            dst[ep] = left
        else:
            dst.pop(ep, None)


class Timeline:
    """Per-bucket summaries on the data's time line, a sliding window over them, a span total.

    Closed buckets fold into ``span`` as they close (a lean timeline's a few at a time, see
    ``_merge_closed``); the window keeps the last ``window_s`` worth.
    Data that arrives late (older than the newest bucket) joins the newest bucket: logs are close
    to time-ordered and exact placement of stragglers is not worth a per-line cost.
    """

    __slots__ = (
        "_buckets",
        "_closed",
        "_lean",
        "_pending",
        "_pending_classify",
        "_shares",
        "_span",
        "_unmerged",
        "bucket_s",
        "first_ts",
        "last_ts",
        "window_s",
    )

    def __init__(self, window_s: int, bucket_s: int, *, lean: bool = False) -> None:
        """``lean``: the engine's own timeline, which reads the public clients' diversity
        tables only from closed buckets, and only of the clients that can be hops, and the
        clients' requests only from the span. So the span (and ``whole()``) keeps no diversity
        tables (``pub_*``, see ``Summary.merge``), the buckets defer their masks
        (``Summary(defer_diversity=True)``) and count their clients straight into the span's
        table (``Summary(clients=...)``): a window merged from them (``window(full=True)``)
        has no ``clients``; and the span takes closed buckets ``SPAN_BATCH`` at a time
        (``_merge_closed``)."""
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._span = Summary()  # everything folded so far except the open bucket
        self._unmerged: list[Summary] = []  # lean: closed buckets not in ``_span`` yet
        self._lean = lean
        self._buckets: deque[tuple[int, Summary]] = deque()
        self._closed = _ClosedCounters()
        self._shares = _WindowShares()
        self.first_ts = 0.0
        self.last_ts = 0.0
        # The open bucket's keys counted by ``add_records`` and not yet folded into its summary.
        self._pending: Counter[Key] | None = None
        self._pending_classify: Classify | None = None

    def add_records(
        self,
        records: Sequence[AccessRecord],
        classify: Classify,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """``add_runs(count_runs(records, bucket_s))``, with the open bucket's keys counted (in
        C) into one ``Counter`` across batches and folded (``Summary.add_counts``) only when the
        bucket closes, something reads the timeline, or ``PENDING_CAP`` keys wait: a busy
        minute spans several batches, and the per-key Python work then runs once per distinct
        key of the bucket instead of once per batch.

        Buckets open (and ``on_close`` runs) as ``add_runs`` would open them, with the same
        ``first_ts``/``last_ts``: a new run starts at the first line past the newest bucket
        (``count_runs`` splits earlier only at lines that join the newest bucket anyway).
        """
        if not records:
            return
        bucket_s = self.bucket_s
        times = list(map(_ts, records))
        buckets = self._buckets
        current = buckets[-1][0] if buckets else int(times[0]) // bucket_s
        if int(max(times)) // bucket_s <= current:
            bounds = [(current, 0, len(times))]
        else:
            bounds = _bounds(times, bucket_s, current)
        whole = len(bounds) == 1
        self._pending_classify = classify
        for bucket, a, b in bounds:
            lo, hi = _span(times if whole else times[a:b])
            if lo and (self.first_ts == 0.0 or lo < self.first_ts):
                self.first_ts = lo
            if not buckets or bucket > buckets[-1][0]:
                self._open(bucket, on_close)  # folds what waits for the bucket it closes
            pending = self._pending
            if pending is None:
                pending = self._pending = Counter()
            pending.update(map(_key, records if whole else records[a:b]))
            self.last_ts = max(self.last_ts, hi)
            if len(pending) >= PENDING_CAP:
                self.fold_pending()

    def fold_pending(self) -> None:
        """Fold the keys ``add_records`` counted into the open bucket (every read does)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        classify = self._pending_classify
        if pending and classify is not None and self._buckets:
            # Through add_runs, which a subclass may watch (html_report.ShareHistory files
            # every run's shares for the chart).
            self.add_runs([(self._buckets[-1][0], pending, 0.0, 0.0)], classify)

    def add_runs(
        self,
        runs: Sequence[Run],
        classify: Classify,
        on_close: Callable[[], None] | None = None,
    ) -> list[int]:
        """Fold counted runs in (``count_runs``; parallel replay workers send folded ones).

        A run folded into a Summary is taken over as its bucket when it opens the bucket (the
        caller gives it up), else merged: either way the same as adding its counts here.
        ``on_close`` runs when a bucket closes, before the window slides past it, so data-driven
        evaluation sees every bucket inside a window even across a gap in the data.
        """
        if self._pending is not None:
            self.fold_pending()
        closed: list[int] = []
        for bucket, tally, first, last in runs:
            if first and (self.first_ts == 0.0 or first < self.first_ts):
                self.first_ts = first
            if isinstance(tally, Summary):
                summary, just_closed = self._open(bucket, on_close, tally)
                if summary is not tally:
                    summary.merge(tally)
            else:
                summary, just_closed = self._open(bucket, on_close)
                summary.add_counts(tally, classify)
            self.last_ts = max(self.last_ts, last)
            closed += just_closed
        return closed

    def advance(self, ts: float, on_close: Callable[[], None] | None = None) -> None:
        """Move the time line to ``ts`` without data (a quiet period in live mode), so the
        window empties as time passes instead of freezing on the last traffic seen."""
        if self._buckets and int(ts) // self.bucket_s > self._buckets[-1][0]:
            self._open(int(ts) // self.bucket_s, on_close)

    def _open(
        self,
        bucket: int,
        on_close: Callable[[], None] | None = None,
        fresh: Summary | None = None,
    ) -> tuple[Summary, list[int]]:
        """The summary of the newest bucket, opening ``bucket`` (with ``fresh`` as its summary,
        if given) when it is newer."""
        closed: list[int] = []
        if self._buckets and bucket <= self._buckets[-1][0]:
            return self._buckets[-1][1], closed
        if self._pending is not None:
            self.fold_pending()
        self._shares.sync(self._buckets)
        if self._buckets:
            if on_close is not None:
                on_close()
            closing = self._buckets[-1][1]
            closed.append(self._buckets[-1][0])
            if self._lean:
                self._unmerged.append(closing)
                # A bucket with a client table of its own (a parallel replay worker's) merges
                # now: the span's table is pruned at each close, with every closed bucket in.
                if closing.clients is not self._span.clients or len(self._unmerged) >= SPAN_BATCH:
                    self._merge_closed()
                self._span.bound_clients()  # shared with the bucket: as merging it would
            else:
                self._span.merge(closing)
            self._shares.add(closing)
        if fresh is None:
            fresh = (
                Summary(defer_diversity=True, clients=self._span.clients)
                if self._lean
                else Summary()
            )
        self._buckets.append((bucket, fresh))
        horizon = bucket - max(1, self.window_s // self.bucket_s)
        while self._buckets and self._buckets[0][0] <= horizon:
            left = self._buckets.popleft()[1]
            if self._unmerged and self._unmerged[0] is left:  # none is kept past the window
                self._merge_closed()
            self._shares.add(left, -1)
        return self._buckets[-1][1], closed

    def _merge_closed(self) -> None:
        """Merge the closed buckets a lean timeline holds back into its span, oldest first: the
        same span as merging each as it closes. A merge per close ran with the span's tables
        out of the CPU caches (a close every ~300 lines of quiet traffic, parsing in between),
        a few in a row find them warm: ~0.05 µs a quiet line (bench/RESULTS.md)."""
        for closed in self._unmerged:
            self._span.merge(closed, public=False)
        self._unmerged.clear()

    @property
    def span(self) -> Summary:
        """Everything folded so far except the open bucket (``whole()`` adds it)."""
        if self._unmerged:
            self._merge_closed()
        return self._span

    @span.setter
    def span(self, summary: Summary) -> None:
        """Replace the span (a Kafka partition's timeline loading a snapshot). Not for a lean
        timeline: its open bucket counts its clients into the span's table."""
        assert not self._lean, "a lean timeline's buckets count into its span's table"
        self._unmerged.clear()
        self._span = summary

    def window_shares(self) -> tuple[dict[str, int], dict[str, int]]:
        """Requests and internal-client requests per entrypoint in the window, as ``window()``
        has them in ``ep_total`` and ``ep_internal``: what the masked share is judged on at
        every close."""
        if self._pending is not None:
            self.fold_pending()
        self._shares.sync(self._buckets)
        if not self._buckets:
            return {}, {}
        return self._shares.plus(self._buckets[-1][1])

    @property
    def newest_bucket(self) -> int | None:
        """The newest bucket's id (None before any): a run no newer joins that bucket."""
        return self._buckets[-1][0] if self._buckets else None

    def newest(self) -> tuple[int, Summary] | None:
        """The newest bucket (id, summary); in ``on_close``, the bucket that is closing."""
        if self._pending is not None:
            self.fold_pending()
        return self._buckets[-1] if self._buckets else None

    def closed_since(self, bucket: int) -> list[tuple[int, Summary]]:
        """Buckets newer than ``bucket`` that closed without ``on_close`` (none here: a local
        timeline calls it; the aggregator's cluster timeline, fed by snapshots, overrides)."""
        return []

    def revised(self, noted: int) -> list[tuple[int, Summary]]:
        """Buckets up to ``noted`` that changed after they closed (none here: a local bucket
        closes once; a cluster timeline's can change when a partition's lines come late)."""
        return []

    def window(self, *, full: bool = False) -> Summary:
        """A fresh merge of the buckets in the sliding window (evaluation time, not per line).

        ``full=False`` merges the counters only (see ``Summary.merge``): the per-client tables
        and distinct-value sets are left empty, as only evidence of a raised finding needs them.
        """
        if self._pending is not None:
            self.fold_pending()
        out = Summary()
        if not full:
            self._closed.sync(self._buckets)
            self._closed.into(out)
            if self._buckets:
                out.merge(self._buckets[-1][1], full=False)
            return out
        for _, s in self._buckets:
            out.merge(s)
        return out

    def by_class(self) -> dict[tuple[str, AddrClass], int]:
        """Cumulative requests per (entrypoint, client class), cheap enough for every scrape."""
        if self._pending is not None:
            self.fold_pending()
        out = dict(self.span.by_class)
        if self._buckets:
            for key, n in self._buckets[-1][1].by_class.items():
                out[key] = out.get(key, 0) + n
        return out

    def whole(self) -> Summary:
        """Span total including the open bucket (see ``lean``)."""
        if self._pending is not None:
            self.fold_pending()
        out = Summary()
        public = not self._lean
        out.merge(self.span, public=public)
        if self._buckets:
            out.merge(self._buckets[-1][1], public=public)
        return out
