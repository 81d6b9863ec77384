"""The audit engine: a pure, synchronous state machine.

Access-record batches and decision deltas go in; finding events and counters come out. No I/O, no
wall clock of its own (``clock`` is injected), so ``run``, ``replay`` and the Kafka aggregator
drive the same code and tests can step time by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from parsers.crowdsec import Decision, DecisionDelta
from parsers.records import AccessRecord, ParseStats
from pipeline import fixes
from pipeline.addresses import (
    CRITICAL_CLASSES,
    AddrClass,
    Classification,
    Classifier,
    parse_address,
    parse_network,
)
from pipeline.findings import Finding, FindingEvent, Kind, Severity, State
from pipeline.traffic import Run, Summary, Timeline, count_runs

BAN_TYPES = frozenset({"ban", "captcha"})


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
    top_k: int = 10


@dataclass(frozen=True, slots=True)
class ActiveDecision:
    decision: Decision
    target: Classification
    expires_at: float | None


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


class Engine:
    """See module docstring. Call ``ingest``/``apply``/``tick``; read ``drain_events``."""

    def __init__(
        self,
        config: EngineConfig,
        classifier: Classifier,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.classifier = classifier
        self.clock = clock
        self.timeline = Timeline(config.window_s, config.bucket_s)
        self.stats: dict[str, ParseStats] = {}
        self.decisions: dict[str, ActiveDecision] = {}
        self.findings: dict[str, Finding] = {}
        self.raised_total: dict[tuple[Kind, Severity], int] = {}
        self._events: list[FindingEvent] = []
        self._masked_peak: dict[str, float] = {}
        self.decisions_seen = 0

    # -- inputs ---------------------------------------------------------------------------
    def ingest(self, records: Sequence[AccessRecord], stats: ParseStats, source: str) -> None:
        """Fold a parsed batch in. Evaluation happens when a data-time bucket closes."""
        self.ingest_runs(count_runs(records, self.config.bucket_s), stats, source)

    def ingest_runs(self, runs: Sequence[Run], stats: ParseStats, source: str) -> None:
        """Fold pre-counted runs in (``count_runs`` output, possibly from another process)."""
        mine = self.stats.get(source)
        if mine is None:
            mine = self.stats[source] = ParseStats()
        mine.merge(stats)
        self.timeline.add_runs(runs, self.classifier.classify, self._evaluate_masked)
        if stats.common:
            self._evaluate_format(source)

    def apply(self, delta: DecisionDelta) -> None:
        """Apply a decision delta; a startup delta replaces the whole state (LAPI resync)."""
        now = self.clock()
        if delta.startup:
            incoming = {d.key for d in delta.new if not d.expired}
            for key in list(self.decisions):
                if key not in incoming:
                    self._drop_decision(key)
        for d in delta.deleted:
            if d.key in self.decisions:
                self._drop_decision(d.key)
                continue
            # CrowdSec 1.4.6 streams one decision per value (the longest) under `new` but reports
            # the deletion under another decision's id, and only once none is left on the value.
            for key, active in list(self.decisions.items()):
                a = active.decision
                if (a.scope, a.value, a.type) == (d.scope, d.value, d.type):
                    self._drop_decision(key)
        for d in delta.new:
            if d.expired:
                self._drop_decision(d.key)
                continue
            self.decisions_seen += 1
            target = self._classify_target(d)
            expires = now + d.duration_s if d.duration_s is not None else None
            self.decisions[d.key] = ActiveDecision(d, target, expires)
            self._evaluate_decision(d.key)

    def tick(self) -> None:
        """Expire decisions by the clock and re-evaluate windowed findings (live mode)."""
        now = self.clock()
        for key, active in list(self.decisions.items()):
            if active.expires_at is not None and active.expires_at <= now:
                self._drop_decision(key)
        self._evaluate_masked()
        for key in list(self.decisions):
            self._evaluate_decision(key)

    def finish(self) -> None:
        """End of a replay: evaluate everything once more on the full input."""
        for source, st in self.stats.items():
            if st.common:
                self._evaluate_format(source)
        self._evaluate_masked()
        for key in list(self.decisions):
            self._evaluate_decision(key)

    def reclassify(self) -> None:
        """The classifier's networks changed (discovery): re-judge every active decision."""
        for key, active in list(self.decisions.items()):
            self.decisions[key] = ActiveDecision(
                active.decision, self._classify_target(active.decision), active.expires_at
            )
            self._evaluate_decision(key)

    def replace_findings(self, group: str, findings: Sequence[Finding]) -> None:
        """Set the findings an outside checker owns (config audit, CrowdSec health...).

        Findings of ``group`` not in ``findings`` are cleared; new ones raised, changed ones
        updated. Keys are prefixed with the group so checkers cannot clash.
        """
        prefix = f"{group}:"
        wanted = {prefix + (f.key or f"{f.kind.value}:{f.check}:{f.target}"): f for f in findings}
        for key in [k for k in self.findings if k.startswith(prefix) and k not in wanted]:
            self._clear(key)
        for key, f in wanted.items():
            self._emit(replace(f, key=key))

    def note(self, finding: Finding) -> None:
        """A one-off event (e.g. a remediation action): raised and cleared at once, so it is
        logged and counted without staying active."""
        key = f"note:{len(self._events)}:{finding.kind.value}:{finding.target}"
        f = replace(finding, key=key)
        k = (f.kind, f.severity)
        self.raised_total[k] = self.raised_total.get(k, 0) + 1
        self._events.append(FindingEvent(State.RAISED, f, self.clock()))

    def request_classes(self) -> dict[tuple[str, AddrClass], int]:
        return self.timeline.by_class()

    def drain_events(self) -> list[FindingEvent]:
        events, self._events = self._events, []
        return events

    # -- findings plumbing ------------------------------------------------------------------
    def _emit(self, finding: Finding) -> None:
        old = self.findings.get(finding.key)
        if old is None:
            self.findings[finding.key] = finding
            k = (finding.kind, finding.severity)
            self.raised_total[k] = self.raised_total.get(k, 0) + 1
            self._events.append(FindingEvent(State.RAISED, finding, self.clock()))
        elif old.severity != finding.severity or old.summary != finding.summary:
            self.findings[finding.key] = finding
            self._events.append(FindingEvent(State.UPDATED, finding, self.clock()))
        else:
            self.findings[finding.key] = finding  # refresh evidence silently

    def _clear(self, key: str) -> None:
        old = self.findings.pop(key, None)
        if old is not None:
            self._events.append(FindingEvent(State.CLEARED, old, self.clock()))

    # -- decisions --------------------------------------------------------------------------
    def _classify_target(self, d: Decision) -> Classification:
        if d.scope == "Range" or (d.scope == "Ip" and "/" in d.value):
            return self.classifier.classify_range(d.value)
        if d.scope == "Ip":
            return self.classifier.classify(d.value)
        return Classification(AddrClass.INVALID, None)  # Country, AS, username...: not addresses

    def _drop_decision(self, key: str) -> None:
        if self.decisions.pop(key, None) is not None:
            self._clear(f"internal_ban:{key}")

    def _evaluate_decision(self, key: str) -> None:
        active = self.decisions.get(key)
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
                fix=fixes.internal_ban_fix(d.value, d.scope),
                key=fkey,
            )
        )

    def blast_radius(self, d: Decision) -> dict[str, Any]:
        """Share of recent traffic (and of distinct hosts/routers) that came from the target."""
        summary = (
            self.timeline.whole()
            if self.config.blast_scope == "span"
            else self.timeline.window(full=True)
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
        if d.scope == "Range" or "/" in d.value:
            net = parse_network(d.value)
            if net is None:
                return []
            version, prefix, length = net
            bits = 32 if version == 4 else 128
            shift = bits - length
            out = []
            for addr in summary.internal:
                p = parse_address(addr)
                if p is not None and p[0] == version and p[1] >> shift == prefix >> shift:
                    out.append(addr)
            return out
        want = parse_address(d.value)
        return [a for a in summary.internal if want is not None and parse_address(a) == want]

    # -- masked client IP -------------------------------------------------------------------
    def _evaluate_masked(self) -> None:
        cfg = self.config
        window = self.timeline.window()
        for ep, total in window.ep_total.items():
            key = f"masked_client_ip:{ep}"
            internal = window.ep_internal.get(ep, 0)
            share = internal / total if total else 0.0
            active = key in self.findings
            if total >= cfg.masked_min_requests and share >= cfg.masked_share:
                if cfg.clear_recovered or share >= self._masked_peak.get(ep, 0.0):
                    self._masked_peak[ep] = share
                    self._raise_masked(ep)
            elif active and cfg.clear_recovered and share < cfg.masked_clear_share:
                self._clear(key)

    def _raise_masked(self, ep: str) -> None:
        window = self.timeline.window(full=True)
        total = window.ep_total.get(ep, 0)
        internal = window.ep_internal.get(ep, 0)
        share = _share(internal, total)
        hops = sorted(window.ep_hops.get(ep, {}).items(), key=lambda t: (-t[1], t[0]))[:5]
        visible = window.ep_visible.get(ep, 0)
        headers_kept = window.ep_headers.get(ep, 0) > 0
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
                {"address": a, "requests": n, "class": self.classifier.classify(a).cls.value}
                for a, n in hops
            ],
            "headers_kept": headers_kept,
            "real_client_visible": visible,
            "real_client_example": window.ep_example.get(ep),
            "window_end": self.timeline.last_ts,
        }
        summary = (
            f"{pct}% of requests on entrypoint {label} come from internal addresses: "
            "the real client IP is masked"
        )
        if visible:
            summary += " (kept X-Forwarded-For/X-Real-Ip headers show the real client)"
        self._emit(
            Finding(
                kind=Kind.MASKED_CLIENT_IP,
                severity=Severity.HIGH,
                target=ep,
                summary=summary,
                evidence=evidence,
                fix=fixes.masked_fix(headers_kept, bool(visible)),
                key=f"masked_client_ip:{ep}",
            )
        )

    # -- log format -------------------------------------------------------------------------
    def _evaluate_format(self, source: str) -> None:
        if not self.config.expect_json:
            return
        st = self.stats[source]
        pct = round(100 * st.common / st.parsed) if st.parsed else 0
        self._emit(
            Finding(
                kind=Kind.LOG_FORMAT,
                severity=Severity.MEDIUM,
                target=source,
                summary=f"{pct}% of access lines from {source} are in common log format, not JSON",
                evidence={
                    "common_lines": st.common,
                    "json_lines": st.json,
                    "common_share": pct / 100,
                },
                fix=fixes.JSON_FORMAT,
                key=f"log_format:{source}",
            )
        )
