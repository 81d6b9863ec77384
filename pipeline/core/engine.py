"""The audit engine: a pure, synchronous state machine.

Access-record batches and decision deltas go in; finding events and counters come out. No I/O, no
wall clock of its own (``clock`` is injected), so ``run``, ``replay`` and the Kafka aggregator
drive the same code and tests can step time by hand.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal

from parsers.crowdsec import Decision, DecisionDelta
from parsers.crowdsec_stream import DeltaPart
from parsers.records import AccessRecord, ParseStats
from pipeline.core import bouncer, drift, fixes
from pipeline.core.addresses import (
    CRITICAL_CLASSES,
    INTERNAL_CLASSES,
    AddrClass,
    Classification,
    Classifier,
    ClassifierView,
    Network,
    addresses_in,
    parse_address,
)
from pipeline.core.decision_table import KEPT, UNSEEN, DecisionTable
from pipeline.core.findings import Finding, FindingEvent, Kind, Severity, State
from pipeline.core.hops import HopTracker
from pipeline.core.traffic import (
    Run,
    Summary,
    Timeline,
    TrafficView,
    clamp_future,
    count_runs,
)

BAN_TYPES = frozenset({"ban", "captcha"})
# Address classes as the one-byte numbers the decision table keeps per row.
_CLASSES = tuple(AddrClass)
_CLASS_IX = {c: i for i, c in enumerate(_CLASSES)}
_INTERNAL_IX = frozenset(_CLASS_IX[c] for c in INTERNAL_CLASSES)
# Share of a hop's requests that must carry a forwarding header naming a public client before
# the hop counts as a proxy that adds it (and may be trusted): see Engine._forwarding_hops.
FORWARDED_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Tuning of the audit. Defaults are documented in the README ("How findings are decided")."""

    window_s: int = 900  # sliding window for the masked-client share and live blast radius
    bucket_s: int = 60
    blast_scope: Literal["window", "span"] = "window"  # replay measures on the whole input
    masked_share: float = 0.5  # raise when this share of an entrypoint's requests is internal
    masked_min_requests: int = 30  # ... and the window holds at least this many requests
    masked_clear_share: float = 0.3  # hysteresis: clear only below this share
    clear_recovered: bool = True  # live: clear masked findings on recovery; replay keeps the peak
    expect_json: bool = True
    format_share: float = 0.01  # common-format share of parsed lines that raises log_format
    top_k: int = 10
    # suspected_hop (a public address that carries many clients): see core/hops.py and the
    # README ("How findings are decided") for why these values.
    hop_share: float = 0.2  # of the window's requests, from one public address
    hop_min_requests: int = 100  # ... and at least this many
    hop_min_sites: int = 3  # distinct hosts (or routers) it reached
    hop_site_coverage: float = 0.5  # ... and this share of all hosts (or routers) in the window
    hop_min_forwarded: int = 5  # or: this many distinct X-Forwarded-For clients behind it
    hop_min_user_agents: int = 3  # fewer distinct User-Agents (when logged): one client
    # masking_started (a step up in an entrypoint's internal share, or in a suspected hop's
    # share of all requests, with hop_share as its share and step): see core/drift.py.
    drift_history_s: int = 3600  # history searched for the step
    drift_min_buckets: int = 5  # each side of the step spans at least this many buckets
    drift_min_requests: int = 30  # ... and this many requests
    drift_share: float = 0.5  # the share after the step is at least this
    drift_step: float = 0.4  # ... and this much above the share before it
    drift_z: float = 5.0  # ... by this many standard errors
    # Live: data stamped further ahead of the clock than this is placed at the clock's edge,
    # so one line from a skewed node cannot freeze the window. Replay: None (no clock to trust).
    max_future_s: float | None = None
    # ban_mismatch: the bouncer plugin's settings (core/bouncer.py); None: not judged, and the
    # per-batch tally is not even made.
    bouncer: bouncer.BouncerSettings | None = None


@dataclass(frozen=True, slots=True)
class ActiveDecision:
    decision: Decision
    target: Classification
    expires_at: float | None


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


class DecisionsView(Mapping[str, ActiveDecision]):
    """Every active decision by ``Decision.key``, read-only.

    Decisions on internal targets are held whole; the rest live compactly in the engine's
    decision table and are rebuilt here one at a time when read. Lookups and ``len`` are cheap;
    iterating 100,000 of them is not: prefer ``Engine.internal_decisions``,
    ``Engine.decision_counts`` or ``Engine.decisions_active``.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __len__(self) -> int:
        return len(self._engine._table)

    def __iter__(self) -> Iterator[str]:
        table = self._engine._table
        return (table.key(row) for row in table.rows())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return key in self._engine._full or self._engine._table.find_key(key) >= 0

    def __getitem__(self, key: str) -> ActiveDecision:
        engine = self._engine
        full = engine._full.get(key)
        if full is not None:
            return full
        row = engine._table.find_key(key)
        if row < 0:
            raise KeyError(key)
        d = engine._table.decision(row, engine.clock())
        return ActiveDecision(d, engine._classify_target(d), engine._table.expires_at(row))


class Engine:
    """See module docstring. Call ``ingest``/``apply``/``tick``; read ``drain_events``.

    State is read through views (``findings``, ``decisions``, ``stats``, ``traffic``...) that
    cannot be written: every change goes through an input method, so sinks and integrations
    cannot put the engine in a state its own evaluation would not reach.
    """

    def __init__(
        self,
        config: EngineConfig,
        classifier: Classifier,
        clock: Callable[[], float],
        timeline: Timeline | None = None,
        mismatch: bouncer.MismatchTally | None = None,
    ) -> None:
        """``timeline``: the traffic tallies to evaluate; the Kafka aggregator passes the
        cluster-wide view, everyone else gets a local one. ``mismatch``: likewise for the
        bouncer's verdicts (``ban_mismatch``, with ``config.bouncer``)."""
        self.config = config
        self._classifier = classifier
        self.clock = clock
        # Its span needs no public clients' tables: nothing here reads them but closed buckets'.
        self._timeline = timeline or Timeline(config.window_s, config.bucket_s, lean=True)
        self._stats: dict[str, ParseStats] = {}
        self._table = DecisionTable()  # every active decision, compactly
        self._judge: Classifier | None = None  # see _judging
        self._full: dict[str, ActiveDecision] = {}  # those on internal targets, whole
        self._findings: dict[str, Finding] = {}
        # The same findings by kind: each close judges some kinds, and a scan of every finding
        # per close grows with the findings (an internal_ban per decision on an internal target).
        self._of_kind: dict[Kind, dict[str, Finding]] = {}
        self._raised_total: dict[tuple[Kind, Severity], int] = {}
        self._events: list[FindingEvent] = []
        self._masked_peak: dict[str, float] = {}
        self._hops = HopTracker(config)
        self._drift = drift.DriftTracker(config, keep=not config.clear_recovered)
        self._last_ingest = 0.0  # clock time of the last batch (live window sliding)
        self._notes = 0
        self._data_now = 0.0  # data-time estimate while no data arrives
        self._material: dict[str, object] = {}
        self.decisions_seen = 0
        # (scope, type, target class) -> active decisions, kept current for the metrics.
        self._decision_counts: dict[tuple[str, str, AddrClass], int] = {}
        self._bouncer: bouncer.MismatchTally | None = None
        self._exempt: dict[str, Decision] | None = None  # bans in clientTrustedIPs, by key
        self._exempt_total = 0
        if config.bouncer is not None:
            keep = None if config.blast_scope == "span" else config.window_s // config.bucket_s + 2
            model = bouncer.BouncerModel(config.bouncer)
            self._bouncer = mismatch or bouncer.MismatchTally(model, config.bucket_s, keep)
            if config.bouncer.client_trusted:
                self._exempt = {}

    # -- read-only views ------------------------------------------------------------------
    @property
    def findings(self) -> Mapping[str, Finding]:
        """Active findings by key."""
        return MappingProxyType(self._findings)

    @property
    def decisions(self) -> Mapping[str, ActiveDecision]:
        """Every active decision by ``Decision.key`` (see ``DecisionsView`` for the cost)."""
        return DecisionsView(self)

    @property
    def internal_decisions(self) -> Mapping[str, ActiveDecision]:
        """Active decisions on internal targets (the ones findings and remediation act on)."""
        return MappingProxyType(self._full)

    @property
    def decisions_active(self) -> int:
        """How many decisions are active, whatever their target."""
        return len(self._table)

    @property
    def stats(self) -> Mapping[str, ParseStats]:
        """Parse counters per source (file path or Kafka source name)."""
        return MappingProxyType(self._stats)

    @property
    def decision_counts(self) -> Mapping[tuple[str, str, AddrClass], int]:
        """Active decisions per (scope, type, target class), kept current for the metrics."""
        return MappingProxyType(self._decision_counts)

    @property
    def raised_total(self) -> Mapping[tuple[Kind, Severity], int]:
        return MappingProxyType(self._raised_total)

    @property
    def traffic(self) -> TrafficView:
        return self._timeline

    @property
    def classifier(self) -> ClassifierView:
        return self._classifier

    # -- inputs ---------------------------------------------------------------------------
    def ingest(self, records: Sequence[AccessRecord], stats: ParseStats, source: str) -> None:
        """Fold a parsed batch in. Evaluation happens when a data-time bucket closes."""
        if self._bouncer is not None:
            self._bouncer.add(records)
        if self.config.max_future_s is not None:  # live: runs are clamped to the clock first
            self.ingest_runs(count_runs(records, self.config.bucket_s), stats, source)
            return
        # Replay: the timeline counts the open bucket's keys across batches (add_records).
        self._merge_stats(stats, source)
        self._timeline.add_records(records, self._classifier.classify, self._on_close)
        self._ingested(stats, source)

    def ingest_mismatch(self, counts: bouncer.ModeCounts) -> None:
        """Fold the whole-input bouncer verdicts a parallel replay worker counted."""
        if self._bouncer is not None:
            self._bouncer.span.merge(counts)

    def ingest_runs(self, runs: Sequence[Run], stats: ParseStats, source: str) -> None:
        """Fold pre-counted runs in (``count_runs`` output, possibly from another process)."""
        self._merge_stats(stats, source)
        limit = self.config.max_future_s
        if limit is not None and runs:
            runs = clamp_future(runs, self.clock() + limit, self.config.bucket_s)
        self._timeline.add_runs(runs, self._classifier.classify, self._on_close)
        self._ingested(stats, source)

    def _merge_stats(self, stats: ParseStats, source: str) -> None:
        mine = self._stats.get(source)
        if mine is None:
            mine = self._stats[source] = ParseStats()
        mine.merge(stats)

    def _ingested(self, stats: ParseStats, source: str) -> None:
        self._last_ingest = self.clock()
        if stats.common or f"log_format:{source}" in self._findings:
            self._evaluate_format(source)

    @property
    def _format_sources(self) -> set[str]:
        return {f.target for f in self._kind(Kind.LOG_FORMAT).values()}

    def apply(self, delta: DecisionDelta) -> None:
        """Apply a decision delta; a startup delta replaces the whole state (LAPI resync).

        A ``DeltaPart`` is one piece of a poll's answer: pieces applied in order leave the same
        state as the whole answer would (deletions count before additions, as in one delta), and
        a startup poll drops what it did not list only at its ``last`` piece. A whole delta that
        is no startup (remediation's read-back) may come between two pieces: it leaves the
        poll's bookkeeping alone.
        """
        with self._judging():
            self._apply(delta)

    @contextlib.contextmanager
    def _judging(self) -> Iterator[None]:
        """Classify decisions with a classifier of their own for this call: its cache goes with
        it. Tens of thousands of one-off values in the shared cache would evict the traffic's
        addresses (it is emptied when full) and hold ~10 MB."""
        self._judge = Classifier(self._classifier.networks)
        try:
            yield
        finally:
            self._judge = None

    def _apply(self, delta: DecisionDelta) -> None:
        piece = isinstance(delta, DeltaPart)
        first, last = (delta.first, delta.last) if isinstance(delta, DeltaPart) else (True, True)
        table = self._table
        if first and (piece or delta.startup):
            table.begin_poll()
        now = self.clock()
        if not delta.startup:  # in a startup answer every listed decision is re-added anyway
            for d in delta.deleted:
                self._delete(d, in_poll=piece)
        store = self._store_decision
        for d in delta.new:
            left = d.duration_s
            if left is not None and left <= 0:  # ``d.expired``, once per decision of a sync
                row = table.find(d)
                if row >= 0:
                    self._drop_row(row)
                continue
            self.decisions_seen += 1
            store(d, now)
        if delta.startup and last:
            for row in table.unseen():
                self._drop_row(row)
        if last:
            table.compact()
            if self._hops.active:  # a ban on a suspected hop makes it critical at once
                self._evaluate_hops()

    def _delete(self, d: Decision, *, in_poll: bool) -> None:
        """A deletion. Within a poll that comes in pieces, what the poll has already (re-)added
        stays: in one delta, deletions are applied first."""
        table = self._table
        row = table.find(d)
        if row >= 0:
            mark = table.mark(row) if in_poll else UNSEEN
            if mark == UNSEEN:
                self._drop_row(row)
                return
            if mark == KEPT:
                return
        # CrowdSec 1.4.6 streams one decision per value (the longest) under `new` but reports
        # the deletion under another decision's id, and only once none is left on the value.
        for row in table.like(d.scope, d.value, d.type):
            if not in_poll or table.mark(row) == UNSEEN:
                self._drop_row(row)

    def _store_decision(self, d: Decision, now: float) -> None:
        table = self._table
        left = d.duration_s
        expires = now + left if left is not None else None
        ident = d.id
        row = table.find(d) if ident is None else table.find_id(ident)
        if row >= 0 and table.same(row, d):
            # A resync lists it again with less time left. Its target was judged against the
            # current networks (set_networks re-judges every row): only the expiry moves.
            table.set_expiry(row, expires)
            table.set_mark(row, table.mark(row) or KEPT)
            if table.cls(row) in _INTERNAL_IX:
                key = d.key
                self._full[key] = ActiveDecision(d, self._full[key].target, expires)
                self._evaluate_decision(key)
            return
        target = self._classify_value(d.scope, d.value)
        cls = _CLASS_IX[target.cls]
        was_internal = False
        if row < 0:
            table.add(d, cls, expires)
        else:
            was_internal = table.cls(row) in _INTERNAL_IX
            self._uncount(row)
            mark = table.mark(row) or KEPT
            table.remove(row)
            table.set_mark(table.add(d, cls, expires), mark)
        label = (d.scope, d.type, target.cls)
        counts = self._decision_counts
        counts[label] = counts.get(label, 0) + 1
        if self._exempt is not None:
            self._note_exempt(d)
        if cls in _INTERNAL_IX:  # target.internal
            key = d.key
            self._full[key] = ActiveDecision(d, target, expires)
            self._evaluate_decision(key)
        elif was_internal:
            key = d.key
            self._full.pop(key, None)
            self._clear(f"internal_ban:{key}")

    def _uncount(self, row: int) -> None:
        scope, dtype = self._table.profile(row)[:2]
        label = (scope, dtype, _CLASSES[self._table.cls(row)])
        left = self._decision_counts.get(label, 0) - 1
        if left > 0:
            self._decision_counts[label] = left
        else:
            self._decision_counts.pop(label, None)

    def tick(self) -> None:
        """Live mode, about once a second: expire decisions by the clock, slide the window
        through quiet periods, and re-evaluate what depends on the window."""
        now = self.clock()
        expired = self._table.expired(now)
        for row in expired:
            self._drop_row(row)
        if expired:
            self._table.compact()
        quiet = now - self._last_ingest if self._last_ingest else 0.0
        if quiet > self.config.bucket_s and self._timeline.last_ts:
            # No data for a while: time still passes on the data's time line.
            self._data_now = max(self._data_now, self._timeline.last_ts) + quiet
            self._timeline.advance(self._data_now, self._on_close)
            self._last_ingest = now
        for closed in self._timeline.revised(self._hops.last_noted):  # aggregator: late lines
            self._hops.note(*closed)
        for closed in self._timeline.closed_since(self._hops.last_noted):  # aggregator
            self._note_closed(*closed)
        self._evaluate_masked()
        self._evaluate_hops()
        for source in self._format_sources:
            self._evaluate_format(source)
        self._evaluate_mismatch()
        # Only internal targets have a finding (and a blast radius) to keep current; CAPI
        # lists bring tens of thousands of external ones.
        for key in list(self._full):
            self._evaluate_decision(key)

    def finish(self) -> None:
        """End of a replay: evaluate everything once more on the full input."""
        for source, st in self._stats.items():
            if st.common:
                self._evaluate_format(source)
        self._evaluate_masked()
        newest = self._timeline.newest()
        if newest is not None:  # the last bucket never closes in a replay
            self._note_closed(*newest)
        self._evaluate_hops()
        self._evaluate_mismatch()
        for key in list(self._full):
            self._evaluate_decision(key)

    def set_networks(self, networks: Iterable[Network]) -> None:
        """The cluster's internal networks changed (discovery): swap them and re-judge every
        active decision against the new set."""
        self._timeline.fold_pending()  # keys counted so far are classified as they came in
        self._classifier.replace_networks(networks)
        self.reclassify()

    def reclassify(self) -> None:
        """Re-judge every active decision against the classifier's current networks.

        A decision kept compactly is rebuilt whole when its target turns internal, so its
        finding is the one it would have raised had it arrived after the change.
        """
        with self._judging():
            self._reclassify()

    def _reclassify(self) -> None:
        table = self._table
        counts = self._decision_counts
        for row in table.rows():
            scope, dtype = table.profile(row)[:2]
            target = self._classify_value(scope, table.value(row))
            old = _CLASSES[table.cls(row)]
            if target.cls is not old:
                label = (scope, dtype, old)
                counts[label] -= 1
                if not counts[label]:
                    del counts[label]
                label = (scope, dtype, target.cls)
                counts[label] = counts.get(label, 0) + 1
                table.set_cls(row, _CLASS_IX[target.cls])
            if target.internal:
                key = table.key(row)
                full = self._full.get(key)
                d = full.decision if full is not None else table.decision(row, self.clock())
                self._full[key] = ActiveDecision(d, target, table.expires_at(row))
                self._evaluate_decision(key)
            elif old in INTERNAL_CLASSES:
                key = table.key(row)
                self._full.pop(key, None)
                self._clear(f"internal_ban:{key}")

    def replace_findings(self, group: str, findings: Sequence[Finding]) -> None:
        """Set the findings an outside checker owns (config audit, CrowdSec health...).

        Findings of ``group`` not in ``findings`` are cleared; new ones raised, changed ones
        updated. Keys are prefixed with the group so checkers cannot clash.
        """
        prefix = f"{group}:"
        wanted = {prefix + (f.key or f"{f.kind.value}:{f.check}:{f.target}"): f for f in findings}
        for key in [k for k in self._findings if k.startswith(prefix) and k not in wanted]:
            self._clear(key)
        for key, f in wanted.items():
            self._emit(replace(f, key=key))

    def note(self, finding: Finding) -> None:
        """A one-off event (e.g. a remediation action): raised and cleared at once, so it is
        logged and counted without staying active."""
        self._notes += 1
        f = replace(finding, key=f"note:{self._notes}:{finding.kind.value}:{finding.target}")
        k = (f.kind, f.severity)
        self._raised_total[k] = self._raised_total.get(k, 0) + 1
        now = self.clock()
        self._events.append(FindingEvent(State.RAISED, f, now))
        self._events.append(FindingEvent(State.CLEARED, f, now))

    def request_classes(self) -> dict[tuple[str, AddrClass], int]:
        return self._timeline.by_class()

    def drain_events(self) -> list[FindingEvent]:
        events, self._events = self._events, []
        return events

    # -- findings plumbing ------------------------------------------------------------------
    def _emit(self, finding: Finding, material: object = None) -> None:
        """Raise, update or silently refresh a finding.

        An ``updated`` event goes out only when the severity or ``material`` (by default the
        summary) changes: shares drift with every batch, and a line per drift would drown the
        findings stream. Callers pass a coarse form of their numbers as ``material``.
        """
        old = self._findings.get(finding.key)
        mark = finding.summary if material is None else material
        self._file(finding, old)
        if old is None:
            self._material[finding.key] = mark
            k = (finding.kind, finding.severity)
            self._raised_total[k] = self._raised_total.get(k, 0) + 1
            self._events.append(FindingEvent(State.RAISED, finding, self.clock()))
        elif old.severity != finding.severity or self._material.get(finding.key) != mark:
            self._material[finding.key] = mark
            self._events.append(FindingEvent(State.UPDATED, finding, self.clock()))
        # else: the evidence is refreshed silently

    def _file(self, finding: Finding, old: Finding | None) -> None:
        """Keep ``finding`` under its key, and in its kind's index (a key may change kind)."""
        key = finding.key
        self._findings[key] = finding
        if old is not None and old.kind is not finding.kind:
            self._of_kind[old.kind].pop(key, None)
        self._of_kind.setdefault(finding.kind, {})[key] = finding

    def _kind(self, kind: Kind) -> Mapping[str, Finding]:
        """The active findings of one kind, by key."""
        return self._of_kind.get(kind, {})

    def _clear(self, key: str) -> None:
        old = self._findings.pop(key, None)
        self._material.pop(key, None)
        if old is not None:
            self._of_kind[old.kind].pop(key, None)
            self._events.append(FindingEvent(State.CLEARED, old, self.clock()))

    # -- decisions --------------------------------------------------------------------------
    def _classify_target(self, d: Decision) -> Classification:
        return self._classify_value(d.scope, d.value)

    def _classify_value(self, scope: str, value: str) -> Classification:
        # As ``Decision.is_range``: cscli and some bouncers send ``--ip 10.0.0.0/8``.
        classifier = self._judge or self._classifier
        if scope == "Ip":
            return classifier.classify_range(value) if "/" in value else classifier.classify(value)
        if scope == "Range":
            return classifier.classify_range(value)
        return Classification(AddrClass.INVALID, None)  # Country, AS, username...: not addresses

    def _drop_row(self, row: int) -> None:
        table = self._table
        self._uncount(row)
        if self._exempt is not None and self._exempt.pop(table.key(row), None) is not None:
            self._exempt_total -= 1
        if table.cls(row) in _INTERNAL_IX:
            key = table.key(row)
            self._full.pop(key, None)
            self._clear(f"internal_ban:{key}")
        table.remove(row)

    def _evaluate_decision(self, key: str) -> None:
        active = self._full.get(key)
        if active is None:
            return
        d, target = active.decision, active.target
        fkey = f"internal_ban:{key}"
        if not target.internal or d.type.lower() not in BAN_TYPES:
            self._clear(fkey)
            return
        severity = Severity.CRITICAL if target.cls in CRITICAL_CLASSES else Severity.HIGH
        if d.simulated:
            severity = Severity.MEDIUM
        blast = self.blast_radius(d)
        pct = round(blast["request_share"] * 100)
        summary = (
            f"CrowdSec {d.type}s {d.value} ({target.cls.value}); it sent {pct}% of recent "
            f"requests, so this {d.type} blocks them"
            if blast["requests"]
            else f"CrowdSec {d.type}s {d.value}, an internal {target.cls.value} address"
        )
        evidence: dict[str, Any] = {
            "decision": d.as_dict(),
            **target.as_dict(),
            "blast_radius": blast,
        }
        self._emit(
            Finding(
                kind=Kind.INTERNAL_BAN,
                severity=severity,
                target=d.value,
                summary=summary,
                evidence=evidence,
                fix=fixes.internal_ban_fix(d.value, ranged=d.is_range),
                key=fkey,
            ),
            material=pct // 10,
        )

    def blast_radius(self, d: Decision) -> dict[str, Any]:
        """Share of recent traffic (and of distinct hosts/routers) that came from the target."""
        summary = (
            self._timeline.whole()
            if self.config.blast_scope == "span"
            else self._timeline.window(full=True)
        )
        matches = self._matching_clients(d, summary)
        requests = sum(summary.internal[a].count for a in matches)
        hosts: set[str] = set()
        routers: set[str] = set()
        for a in matches:
            hosts |= summary.internal[a].hosts
            routers |= summary.internal[a].routers
        hosts.discard("-")
        routers.discard("-")
        all_hosts = summary.hosts - {"-"}
        all_routers = summary.routers - {"-"}
        return {
            "scope": self.config.blast_scope,
            "window_s": self.config.window_s if self.config.blast_scope == "window" else None,
            "requests": requests,
            "total_requests": summary.total,
            "request_share": _share(requests, summary.total),
            "hosts": len(hosts),
            "host_share": _share(len(hosts), len(all_hosts)),
            "routers": len(routers),
            "router_share": _share(len(routers), len(all_routers)),
            "addresses": sorted(matches)[:10],
        }

    def _matching_clients(self, d: Decision, summary: Summary) -> list[str]:
        if d.is_range:
            return addresses_in(d.value, summary.internal)
        want = parse_address(d.value)
        return [a for a in summary.internal if want is not None and parse_address(a) == want]

    # -- suspected hop (a public address carrying many clients) ------------------------------
    def _on_close(self) -> None:
        """A bucket closes: judge the masked share, and note its heavy public clients."""
        self._evaluate_masked()
        newest = self._timeline.newest()
        if newest is not None:
            self._note_closed(*newest)

    def _note_closed(self, bucket: int, summary: Summary) -> None:
        """A closed bucket's tallies: heavy public clients (hops), entrypoint shares (drift)."""
        heavy = self._hops.note(bucket, summary)
        self._evaluate_hops()
        if self._drift.note(bucket, summary, self._suspected_hops(), heavy):
            self._evaluate_drift()

    def _suspected_hops(self) -> list[str]:
        """The addresses ``_evaluate_hops`` judges suspected hops now (replay: at their peak),
        whose share of all requests drift searches for a step."""
        if not self._hops.active:
            return []
        return [f.target for f in self._kind(Kind.SUSPECTED_HOP).values()]

    def _evaluate_drift(self) -> None:
        wanted = set()
        for step in self._drift.all_steps():
            f = drift.finding(step, self.config.bucket_s)
            wanted.add(f.key)
            self._emit(f, material=(step.changed_at, step.returned_at))
        for key in list(self._kind(Kind.MASKING_STARTED)):
            if key.startswith("masking_") and key not in wanted:
                self._clear(key)

    def bans_on(self, value: str) -> list[Decision]:
        """Active ban/captcha decisions on this address (any target class): on exactly it (a
        lookup by value, not a walk over every decision), then on any range that covers it
        (the few range rows; a list that bans a /24 bans the hop inside it too)."""
        table = self._table
        now = self.clock()
        out = []
        for row in table.on_value(value):
            scope, dtype = table.profile(row)[:2]
            if scope == "Ip" and dtype.lower() in BAN_TYPES:
                out.append(table.decision(row, now))
        for row in table.range_rows():
            dtype = table.profile(row)[1]
            if dtype.lower() in BAN_TYPES and addresses_in(table.value(row), (value,)):
                out.append(table.decision(row, now))
        return out

    def _evaluate_hops(self) -> None:
        cfg = self.config
        last = self._timeline.last_ts
        total = self._hops.window_total(last)
        open_keys = set(self._kind(Kind.SUSPECTED_HOP))
        for verdict in self._hops.judge(last, total, keep_peak=not cfg.clear_recovered):
            key = f"suspected_hop:{verdict.address}"
            open_keys.discard(key)
            if not verdict.suspected:
                if cfg.clear_recovered and key in self._findings:
                    self._clear(key)
                continue
            bans = [d for d in self.bans_on(verdict.address) if not d.simulated]
            evidence = verdict.evidence(cfg)
            pct = round(verdict.share * 100)
            summary = (
                f"{verdict.address} sent {pct}% of recent requests, to "
                f"{verdict.sites} sites, like many clients behind one address: a hop "
                "(node SNAT, a proxy) outside every internal range"
            )
            if bans:
                d = bans[0]
                evidence["decision"] = d.as_dict()
                if d.duration_s is not None:  # time left, whole seconds: stable across a run
                    evidence["decision"]["duration_s"] = float(math.ceil(d.duration_s))
                evidence["lockout"] = True
                summary = (
                    f"CrowdSec {d.type}s {verdict.address}, a suspected hop that sent {pct}% of "
                    "recent requests: everyone behind it is locked out (an internal_ban-grade "
                    "lockout, though the address is public)"
                )
            self._emit(
                Finding(
                    kind=Kind.SUSPECTED_HOP,
                    severity=Severity.CRITICAL if bans else Severity.HIGH,
                    target=verdict.address,
                    summary=summary,
                    evidence=evidence,
                    fix=fixes.suspected_hop_fix(
                        verdict.address,
                        banned=bool(bans),
                        ban_range=bans[0].value if bans and "/" in bans[0].value else "",
                    ),
                    key=key,
                ),
                material=(pct // 10, bool(bans)),
            )
        if cfg.clear_recovered:
            for key in open_keys:  # its address left the window
                self._clear(key)

    # -- ban mismatch (the bouncer checks another address than CrowdSec bans) ---------------
    def _note_exempt(self, d: Decision) -> None:
        """A ban on an address in clientTrustedIPs: the bouncer never looks it up."""
        assert self._bouncer is not None
        assert self._exempt is not None
        if d.scope != "Ip" or "/" in d.value or d.type.lower() not in BAN_TYPES:
            return
        if not self._bouncer.model.client_trusted(d.value):
            return
        if d.key not in self._exempt:
            self._exempt_total += 1
            if len(self._exempt) >= bouncer.ADDRESSES_CAP:
                return  # counted, not kept
        self._exempt[d.key] = d

    def _evaluate_mismatch(self) -> None:
        tally = self._bouncer
        if tally is None:
            return
        cfg = self.config
        if cfg.blast_scope == "span":
            counts = tally.span
            scope: dict[str, Any] = {"scope": "span", "window_s": None}
        else:
            counts = tally.window(self._timeline.last_ts, cfg.window_s)
            scope = {"scope": "window", "window_s": cfg.window_s}
        settings = tally.model.settings
        for mode in bouncer.PROBLEMS:
            key = f"ban_mismatch:{mode.value}"
            active = key in self._findings
            if bouncer.over_threshold(counts, mode, clearing=active and cfg.clear_recovered):
                bans: list[Decision] = []
                if mode is bouncer.Mode.HOP:
                    for addr in bouncer.top_checked(counts, mode)[:10]:
                        bans += [d for d in self.bans_on(addr) if not d.simulated]
                f = bouncer.mismatch_finding(mode, counts, settings, scope, bans)
                pct = round(100 * f.evidence["share"])
                self._emit(f, material=(pct // 10, bool(bans)))
            elif active and cfg.clear_recovered:
                self._clear(key)
        unchecked: list[Decision] = []
        for addr in counts.never_checked()[:256]:
            unchecked += [d for d in self.bans_on(addr) if not d.simulated]
        self._unseen("unchecked", unchecked, len(unchecked), settings)
        exempt = [d for d in (self._exempt or {}).values() if not d.simulated]
        self._unseen("exempt", exempt, max(len(exempt), self._exempt_total), settings)

    def _unseen(
        self, reason: str, found: list[Decision], total: int, settings: bouncer.BouncerSettings
    ) -> None:
        key = f"ban_mismatch:decisions:{reason}"
        if not found:
            self._clear(key)
            return
        found.sort(key=lambda d: (d.value, d.key))
        f = bouncer.unseen_finding(reason, found, total, settings)
        self._emit(f, material=total)

    # -- masked client IP -------------------------------------------------------------------
    def _evaluate_masked(self) -> None:
        cfg = self.config
        totals, internals = self._timeline.window_shares()
        # Entrypoints with an open finding are judged even when they left the window (share 0).
        judged = set(totals)
        judged |= {f.target for f in self._kind(Kind.MASKED_CLIENT_IP).values()}
        for ep in judged:
            total = totals.get(ep, 0)
            key = f"masked_client_ip:{ep}"
            internal = internals.get(ep, 0)
            share = internal / total if total else 0.0
            active = key in self._findings
            if total >= cfg.masked_min_requests and share >= cfg.masked_share:
                if cfg.clear_recovered or share >= self._masked_peak.get(ep, 0.0):
                    self._masked_peak[ep] = share
                    self._raise_masked(ep)
            elif active and cfg.clear_recovered and share < cfg.masked_clear_share:
                self._clear(key)

    def _raise_masked(self, ep: str) -> None:
        window = self._timeline.window(full=True)
        total = window.ep_total.get(ep, 0)
        internal = window.ep_internal.get(ep, 0)
        share = _share(internal, total)
        hops = sorted(window.ep_hops.get(ep, {}).items(), key=lambda t: (-t[1], t[0]))[:5]
        visible = window.ep_visible.get(ep, 0)
        headers_kept = window.ep_headers.get(ep, 0) > 0
        # Traefik itself sets X-Real-Ip to the hop's address: only a header naming a public
        # client says anything about forwarding.
        forwarded_share = _share(visible, internal)
        forwarding = self._forwarding_hops(window, [a for a, _ in hops])
        pct = round(share * 100)
        label = "(no entrypoint name)" if ep == "-" else ep
        evidence = {
            "entrypoint": ep,
            "window_s": self.config.window_s,
            "requests": total,
            "internal_requests": internal,
            "internal_share": share,
            "distinct_clients": len(window.ep_clients.get(ep, ())),
            "internal_hops": [
                {"address": a, "requests": n, "class": self._classifier.classify(a).cls.value}
                for a, n in hops
            ],
            "headers_kept": headers_kept,
            "real_client_visible": visible,
            "real_client_example": window.ep_example.get(ep),
            "forwarded_share": forwarded_share,
            "forwarding_hops": forwarding,
            "window_end": self._timeline.last_ts,
        }
        summary = (
            f"{pct}% of requests on entrypoint {label} come from internal addresses: "
            "the real client IP is masked"
        )
        if forwarding:
            summary += " (the hop adds X-Forwarded-For/X-Real-Ip: the real client is visible)"
        elif 0 < forwarded_share < FORWARDED_SHARE:
            summary += (
                f" (X-Forwarded-For/X-Real-Ip name a public client on "
                f"{max(1, round(forwarded_share * 100))}% of them: written by clients, "
                "not added by the hop)"
            )
        self._emit(
            Finding(
                kind=Kind.MASKED_CLIENT_IP,
                severity=Severity.HIGH,
                target=ep,
                summary=summary,
                evidence=evidence,
                fix=fixes.masked_fix(headers_kept, forwarding, client_written=forwarded_share > 0),
                key=f"masked_client_ip:{ep}",
            ),
            material=(pct // 10, tuple(forwarding), headers_kept),
        )

    def _forwarding_hops(self, window: Summary, hops: Sequence[str]) -> list[str]:
        """Hops that add a forwarding header themselves, so trusting them is safe.

        A layer-4 hop (servicelb, a NAT) adds nothing; whatever X-Forwarded-For comes through
        it was written by the client, and trusting the hop would let any client pick the
        address CrowdSec bans. A proxy that forwards adds the header to every request, so a
        hop qualifies only with enough requests, nearly all of them carrying a header that
        names a public client.
        """
        cfg = self.config
        out = []
        for addr in hops:
            ic = window.internal.get(addr)
            if ic is None or ic.count < cfg.masked_min_requests:
                continue
            need = FORWARDED_SHARE * ic.count
            if ic.forwarded >= need and ic.visible >= need:
                out.append(addr)
        return out

    # -- log format -------------------------------------------------------------------------
    def _evaluate_format(self, source: str) -> None:
        """Common-format lines where JSON is expected: raised above ``format_share`` of the
        source's parsed lines (a stray line is not a misconfiguration), cleared below half."""
        if not self.config.expect_json:
            return
        st = self._stats[source]
        share = st.common / st.parsed if st.parsed else 0.0
        key = f"log_format:{source}"
        if share < self.config.format_share:
            if share < self.config.format_share / 2:
                self._clear(key)
            return
        self._emit(
            Finding(
                kind=Kind.LOG_FORMAT,
                severity=Severity.MEDIUM,
                target=source,
                summary=f"access lines from {source} are in common log format, not JSON",
                evidence={
                    "common_lines": st.common,
                    "json_lines": st.json,
                    "common_share": round(share, 4),
                },
                fix=fixes.JSON_FORMAT,
                key=key,
            )
        )
