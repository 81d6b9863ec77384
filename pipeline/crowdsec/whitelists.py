"""Whitelists that do not apply (``whitelist_gap``), judged from CrowdSec's own metrics.

CrowdSec's whitelist parser runs in each agent, a custom ``whitelists.yaml`` can shadow the hub
one, and the centralized allowlists of CrowdSec >= 1.6.6 (``cscli allowlists``) act elsewhere:
the LAPI drops an allowlisted alert after the agent's scenarios have already counted the events.
So "we have a whitelist" says little about what one agent does with one request. Its metrics
say more (``parsers.crowdsec_metrics`` describes the series), and the auditor knows from its own
access logs how much of the traffic comes from internal addresses. Three checks:

``internal_unwhitelisted`` (high), per agent, over the health window (10 min): the auditor saw
at least ``min_internal_requests`` (20) requests from internal addresses, the agent parsed
Traefik lines and poured them into scenarios, and it whitelisted almost none: no whitelist node
ran on those lines at all, or its whitelisted events are fewer than ``applied_share`` (10 %) of
the internal requests. 20 internal requests in 10 minutes is above what a few health checks or
monitoring probes through Traefik make and well under one masked client browsing; 10 % leaves
room for the auditor and the agent reading different slices of the traffic (one node's log,
sampling) while still catching a whitelist that matches nothing. CrowdSec >= 1.6.1 counts
whitelisted events (``cs_node_wl_hits_ok_total``). Older ones do not; there a whitelisted event
is known to be dropped before the buckets, so the scenario that took the most events in the
window gives a lower bound of the events that were not whitelisted, and ``lines parsed - that``
an upper bound of the whitelisted ones: the check only fires when even that bound is under 10 %,
which a whitelist that works never gives (static files or repeated pages, which a scenario's
filter or ``distinct`` skips, only raise the bound: the check stays quiet rather than guess).

``whitelist_masking`` (high), per agent, CrowdSec >= 1.6.1: a whitelist node whitelisted at
least ``masked_share`` (50 %) of the lines it checked in the window, and at least
``min_whitelisted`` (30) of them. A public entry point's internal traffic is health checks and
monitoring, a small share; when most of it is whitelisted, the client address in the lines is an
internal hop (servicelb, a pod, a node), and CrowdSec sees, and can ban, none of the real
clients. This is the auditor's ``masked_client_ip`` seen from CrowdSec's side, so it also works
for logs the auditor does not read. The evidence says since when, and the share before.

``whitelist_missing`` across agents (several ``crowdsec_metrics_url``): an agent that parses
lines but never ran a whitelist node that another agent ran. High when it runs none at all
(its node's internal hops reach its scenarios), medium when it runs some other whitelist.
Counters are only created when a node first sees an event, so an agent counts as lacking a node
only once it has parsed lines itself. Judged on totals since each agent started: it is a fact of
the agents' configuration, not of the last window.

``auditor check`` scrapes once (``one_look``): the comparison, masking on totals since start, and
``no_whitelist`` (medium) for an agent that scores Traefik lines with no whitelist node at all,
medium because without the auditor's traffic nothing says internal addresses are among them.
``auditor replay --crowdsec-metrics FILE`` (``with_traffic``) has the traffic: each saved
scrape's totals against the replayed logs' internal requests. Totals since the agent started
cover at least the logs' span when the agent read those logs, so its whitelisted count can only
be too high, never too low: ``internal_unwhitelisted`` then errs towards staying quiet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from parsers.crowdsec_metrics import CrowdSecMetrics
from pipeline.core.addresses import INTERNAL_CLASSES, AddrClass
from pipeline.core.findings import Finding, Kind, Severity

UNWHITELISTED_FIX = (
    "Whitelist the cluster's internal addresses in every CrowdSec agent: save `auditor allowlist "
    "--only whitelist` as /etc/crowdsec/parsers/s02-enrich/ban-auditor-cluster-whitelist.yaml "
    "(or `cscli parsers install crowdsecurity/whitelists` for the private ranges only) and "
    "reload CrowdSec; `cscli parsers list` shows it enabled and `cscli metrics` its hits. A "
    "custom whitelist with the hub one's `name:` replaces it. Centralized allowlists (`cscli "
    "allowlists`, CrowdSec >= 1.6.6) only drop the alert at the LAPI: the events still fill "
    "the agent's scenarios."
)
MASKING_FIX = (
    "CrowdSec whitelists most lines because their client address is an internal hop, so it "
    "cannot see or ban the real clients. Restore the client address: `externalTrafficPolicy: "
    "Local` on Traefik's Service, or trust the hop's forwarded headers or proxy protocol "
    "(`auditor check`, `auditor allowlist --only entrypoints`); `auditor replay` on the access "
    "log shows the hop and since when."
)
MISSING_FIX = (
    "Give this agent the same whitelist parsers as the others (`cscli parsers list` on each): "
    "with the CrowdSec Helm chart, put the whitelist in the agent's parsers (values "
    "`agent.parsers` or a ConfigMap mounted at /etc/crowdsec/parsers/s02-enrich/ on every agent "
    "pod), not on one node only; then reload the agent."
)
TOP = 5
T = TypeVar("T", str, tuple[str, str])


@dataclass(frozen=True, slots=True)
class WhitelistConfig:
    min_internal_requests: int = 20
    applied_share: float = 0.1
    min_whitelisted: int = 30
    masked_share: float = 0.5


@dataclass(frozen=True, slots=True)
class Traffic:
    """The auditor's own requests, cumulative: all of them and the internal ones by class."""

    requests: int = 0
    internal: Mapping[str, int] = field(default_factory=dict)

    @property
    def internal_total(self) -> int:
        return sum(self.internal.values())


def traffic_from(classes: Mapping[tuple[str, AddrClass], int]) -> Traffic:
    """``Engine.request_classes()`` (per entry point and class) to totals per class."""
    internal: dict[str, int] = {}
    total = 0
    for (_, cls), n in classes.items():
        total += n
        if cls in INTERNAL_CLASSES:
            internal[cls.value] = internal.get(cls.value, 0) + n
    return Traffic(total, internal)


def _delta(now: Mapping[T, float], base: Mapping[T, float], key: T) -> float:
    return max(0.0, now.get(key, 0.0) - base.get(key, 0.0))


def _per_node(
    now: Mapping[tuple[str, str], float],
    base: Mapping[tuple[str, str], float],
    sources: set[str],
) -> dict[str, float]:
    """Window increase of a (source, node) series, summed per node over ``sources``."""
    out: dict[str, float] = {}
    for key in now:
        if key[0] in sources:
            n = _delta(now, base, key)
            if n:
                out[key[1]] = out.get(key[1], 0.0) + n
    return out


@dataclass(slots=True)
class _Masking:
    since: float | None = None
    share_before: float | None = None


class WhitelistJudge:
    """Checks one agent's window (``internal_unwhitelisted``, ``whitelist_masking``)."""

    def __init__(self, shown_url: str, config: WhitelistConfig | None = None) -> None:
        self.shown_url = shown_url
        self.config = config or WhitelistConfig()
        self._masking = _Masking()

    def judge(
        self,
        now: float,
        span: float,
        m: CrowdSecMetrics,
        base: CrowdSecMetrics,
        traffic: Traffic,
        base_traffic: Traffic,
        sources: set[str],
    ) -> list[Finding]:
        out: list[Finding] = []
        gap = self._unwhitelisted(span, m, base, traffic, base_traffic, sources)
        if gap is not None:
            out.append(gap)
        masking = self._masked(now, span, m, base, sources)
        if masking is not None:
            out.append(masking)
        return out

    def reset(self) -> None:
        """CrowdSec restarted: a masking episode's start is no longer comparable."""
        self._masking = _Masking()

    # -- internal_unwhitelisted ------------------------------------------------------------
    def _unwhitelisted(
        self,
        span: float,
        m: CrowdSecMetrics,
        base: CrowdSecMetrics,
        traffic: Traffic,
        base_traffic: Traffic,
        sources: set[str],
    ) -> Finding | None:
        cfg = self.config
        by_class = {
            c: n - base_traffic.internal.get(c, 0)
            for c, n in traffic.internal.items()
            if n > base_traffic.internal.get(c, 0)
        }
        internal = sum(by_class.values())
        if internal < cfg.min_internal_requests:
            return None  # too little internal traffic to need (or judge) a whitelist
        lines = sum(_delta(m.parser_ok, base.parser_ok, s) for s in sources)
        poured = _per_node(m.poured, base.poured, sources)
        reached = max(poured.values(), default=0.0)
        if not lines or not reached:
            return None  # this agent did not see, or did not score, any of that traffic
        checked = _per_node(m.wl_checked, base.wl_checked, sources)
        checked_any = _per_node(m.wl_node_hits, base.wl_node_hits, sources)
        nodes = sorted(set(checked) | set(checked_any))
        evidence: dict[str, object] = {
            "internal_requests": internal,
            "internal_by_class": dict(sorted(by_class.items(), key=lambda kv: -kv[1])),
            "crowdsec_lines": lines,
            "poured": [
                {"scenario": s, "events": n}
                for s, n in sorted(poured.items(), key=lambda kv: -kv[1])[:TOP]
            ],
            "whitelist_nodes": nodes,
            "window_s": round(span, 1),
            "crowdsec_version": m.version,
            "metrics_url": self.shown_url,
        }
        if not nodes:
            summary = (
                "Internal traffic reaches CrowdSec's scenarios: this agent runs no whitelist "
                "parser on the Traefik lines"
            )
        else:
            counted = _per_node(m.wl_whitelisted, base.wl_whitelisted, sources)
            whitelisted = max(counted.values(), default=0.0)
            if m.wl_counted:
                evidence["whitelisted"] = whitelisted
            else:  # before 1.6.1: an upper bound from the busiest scenario
                whitelisted = max(0.0, lines - reached)
                evidence["whitelisted_at_most"] = whitelisted
            if whitelisted >= cfg.applied_share * internal:
                return None
            evidence["reasons"] = {n: m.wl_reasons[n] for n in nodes if m.wl_reasons.get(n)}
            summary = (
                "Internal traffic reaches CrowdSec's scenarios: this agent's whitelist does not "
                "cover the internal addresses"
            )
        return Finding(
            kind=Kind.WHITELIST_GAP,
            severity=Severity.HIGH,
            target=self.shown_url,
            summary=summary,
            evidence=evidence,
            fix=UNWHITELISTED_FIX,
            check="internal_unwhitelisted",
        )

    # -- whitelist_masking -----------------------------------------------------------------
    def _masked(
        self, now: float, span: float, m: CrowdSecMetrics, base: CrowdSecMetrics, sources: set[str]
    ) -> Finding | None:
        cfg = self.config
        checked = _per_node(m.wl_checked, base.wl_checked, sources)
        whitelisted = _per_node(m.wl_whitelisted, base.wl_whitelisted, sources)
        best = max(whitelisted, key=lambda n: whitelisted[n], default=None)
        state = self._masking
        if best is None or not checked.get(best):
            if checked:  # lines went through the whitelist, none were whitelisted
                state.since, state.share_before = None, 0.0
            return None  # no line checked in the window: nothing to judge
        ok, seen = whitelisted[best], checked[best]
        share = ok / seen
        if ok < cfg.min_whitelisted or share < cfg.masked_share:
            state.since, state.share_before = None, round(share, 4)
            return None
        if state.since is None:
            state.since = now
        return Finding(
            kind=Kind.WHITELIST_GAP,
            severity=Severity.HIGH,
            target=self.shown_url,
            summary=(
                "CrowdSec whitelists most Traefik lines: their client address is an internal "
                "hop, so it sees none of the real clients"
            ),
            evidence={
                "node": best,
                "reason": m.wl_reasons.get(best, ""),
                "whitelisted": ok,
                "checked": seen,
                "whitelisted_share": round(share, 4),
                "share_before": state.share_before,
                "since": state.since,
                "window_s": round(span, 1),
                "crowdsec_version": m.version,
                "metrics_url": self.shown_url,
            },
            fix=MASKING_FIX,
            check="whitelist_masking",
        )


# -- across agents ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Agent:
    shown_url: str
    metrics: CrowdSecMetrics


def compare_agents(agents: Sequence[Agent]) -> list[Finding]:
    """``whitelist_missing``: agents that parse lines without a whitelist node others run."""
    nodes = {a.shown_url: a.metrics.whitelist_nodes() for a in agents}
    out: list[Finding] = []
    for a in agents:
        lines = sum(a.metrics.parser_ok.values())
        if not lines:
            continue  # an idle agent has created no node counter yet: nothing to compare
        own = nodes[a.shown_url]
        elsewhere: dict[str, list[str]] = {}
        for other, theirs in nodes.items():
            for node in theirs - own if other != a.shown_url else ():
                elsewhere.setdefault(node, []).append(other)
        if not elsewhere:
            continue
        out.append(
            Finding(
                kind=Kind.WHITELIST_GAP,
                severity=Severity.MEDIUM if own else Severity.HIGH,
                target=a.shown_url,
                summary=(
                    "This CrowdSec agent lacks the whitelist parser other agents run"
                    + ("" if own else ": internal hops reach its scenarios")
                ),
                evidence={
                    "missing": [
                        {"node": n, "agents": sorted(urls)} for n, urls in sorted(elsewhere.items())
                    ],
                    "whitelist_nodes": sorted(own),
                    "lines_parsed": lines,
                    "agents": len(agents),
                    "crowdsec_version": a.metrics.version,
                    "metrics_url": a.shown_url,
                },
                fix=MISSING_FIX,
                check="whitelist_missing",
            )
        )
    return out


_WINDOWED = frozenset({"since", "share_before", "window_s"})  # meaningless on one scrape


def agent_traefik_sources(m: CrowdSecMetrics) -> set[str]:
    """The acquisition sources of an agent that carry Traefik lines, judged from its page
    alone: those its traefik parser read, and any whose name says traefik."""
    return set(m.traefik_ok) | {s for s in m.parser_ok if "traefik" in s.lower()}


def one_look(agents: Sequence[Agent], traefik_sources: Iterable[str] = ()) -> list[Finding]:
    """What one scrape of each agent shows (``auditor check``): the comparison, plus, on totals
    since each agent started, masking (CrowdSec >= 1.6.1) and an agent that scores Traefik
    lines with no whitelist node at all (medium: without the auditor's traffic nothing says
    internal addresses are among them)."""
    out = compare_agents(agents)
    flagged = {f.target for f in out}
    wanted = set(traefik_sources)
    empty = CrowdSecMetrics()
    for a in agents:
        m = a.metrics
        sources = wanted | agent_traefik_sources(m)
        masking = WhitelistJudge(a.shown_url)._masked(0.0, 0.0, m, empty, sources)
        if masking is not None:
            ev = {k: v for k, v in masking.evidence.items() if k not in _WINDOWED}
            out.append(replace(masking, evidence=ev))
        poured = sum(n for (s, _), n in m.poured.items() if s in sources)
        if a.shown_url in flagged or not poured or m.whitelist_nodes():
            continue
        out.append(
            Finding(
                kind=Kind.WHITELIST_GAP,
                severity=Severity.MEDIUM,
                target=a.shown_url,
                summary=(
                    "This CrowdSec agent scores Traefik lines with no whitelist parser: internal "
                    "hops would reach its scenarios"
                ),
                evidence={
                    "lines_parsed": sum(m.parser_ok.get(s, 0.0) for s in sources),
                    "poured": poured,
                    "whitelist_nodes": [],
                    "crowdsec_version": m.version,
                    "metrics_url": a.shown_url,
                },
                fix=UNWHITELISTED_FIX,
                check="no_whitelist",
            )
        )
    return out


def with_traffic(agents: Sequence[Agent], traffic: Traffic, span: float) -> list[Finding]:
    """``auditor replay``: ``one_look`` plus ``internal_unwhitelisted`` on each agent's totals
    against the replayed traffic (see the module docstring); an agent it flags needs no
    ``no_whitelist`` as well."""
    out: list[Finding] = []
    empty = CrowdSecMetrics()
    for a in agents:
        m = a.metrics
        sources = agent_traefik_sources(m)
        judge = WhitelistJudge(a.shown_url)
        gap = judge._unwhitelisted(span, m, empty, traffic, Traffic(), sources)
        if gap is not None:
            out.append(gap)
    flagged = {f.target for f in out}
    out += [f for f in one_look(agents) if not (f.check == "no_whitelist" and f.target in flagged)]
    return out
