"""CrowdSec's own health, read from its Prometheus endpoint (``crowdsec_metrics_url``).

A CrowdSec that cannot parse the Traefik lines it tails, or that detects attacks but never
decides anything, fails silently: no ban, no error, no alert. Its metrics show both, so the
auditor polls them and raises ``crowdsec_health`` findings:

- ``traefik_parse_failures`` (high): lines from a Traefik source reach CrowdSec but most fail to
  parse (``cs_parser_hits_ko_total`` rising while ``..._ok_total`` stays flat), e.g. a format
  the ``crowdsecurity/traefik-logs`` parser does not know, or a wrong acquisition label;
- ``no_decisions_while_probed`` (medium): scenarios overflow (``cs_bucket_overflowed_total``
  rises) but no decision follows (``cs_active_decisions`` stays empty and the LAPI stream brings
  none), e.g. simulation mode or a profile without ``decisions``;
- ``metrics_unreachable`` (low): the endpoint does not answer, or is not CrowdSec's.

The same polls feed the ``whitelist_gap`` findings (``pipeline.crowdsec.whitelists``): internal
traffic the agent does not whitelist, most lines whitelisted (masking seen from CrowdSec), and,
when ``crowdsec_metrics_url`` lists several agents (comma-separated), an agent lacking a
whitelist parser the others run. All of them share the group, so one poll replaces them all.

Judgements use increases over a sliding window, never totals since CrowdSec started, so a problem
fixed hours ago does not keep a finding up. Fetching runs in the service (through the shared
CrowdSec client; the text format is ``parsers.crowdsec_metrics``); judging runs in the runner's
consumer (posted callables), next to the engine state it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from parsers.crowdsec_metrics import CrowdSecMetrics, parse_metrics
from pipeline.core.findings import Finding, Kind, Severity
from pipeline.crowdsec.client import CrowdSecClient, CrowdSecError
from pipeline.crowdsec.whitelists import (
    Agent,
    Traffic,
    WhitelistConfig,
    WhitelistJudge,
    compare_agents,
    traffic_from,
)
from pipeline.listen import split_urls
from pipeline.secrets import redact_url

if TYPE_CHECKING:
    from pipeline.contracts import LiveState, Post

log = logging.getLogger("auditor.crowdsec")

GROUP = "crowdsec_health"
HISTORY_MAX = 720

PARSE_FIX = (
    "Make the lines parseable by CrowdSec's crowdsecurity/traefik-logs parser: set Traefik's "
    "`accessLog.format: json` (or keep Traefik's full common format, untouched by log "
    "shippers), and label the acquisition `type: traefik` (a file source: `labels: {type: "
    "traefik}`; container logs: `type: containerd` or `docker` plus `program: traefik`). "
    "`cscli explain --file <sample line file> --type traefik` shows which parser rejects a line."
)
DECISION_FIX = (
    "CrowdSec detects attacks but makes no decisions: check `cscli simulation status` "
    "(simulation mode turns decisions off) and that profiles.yaml has a profile whose filter "
    "matches these alerts and that lists `decisions:` (`cscli alerts list` shows alerts without "
    "decisions)."
)
UNREACHABLE_FIX = (
    "Enable CrowdSec's Prometheus endpoint (`prometheus: {enabled: true, level: full, "
    "listen_addr, listen_port: 6060}` in config.yaml), make it reachable from the auditor (in "
    "Kubernetes: the agent/LAPI pod's metrics port) and point crowdsec_metrics_url at its "
    "/metrics."
)


# -- the checks -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HealthConfig:
    window_s: float = 600.0  # increases are measured over this much wall time
    min_failed_lines: int = 10  # fewer failures than this in the window are noise
    failed_share: float = 0.5  # ... and at least this share of the source's lines failed
    overflow_grace_s: float = 120.0  # overflows without any decision for this long
    whitelist: WhitelistConfig = field(default_factory=WhitelistConfig)


@dataclass(frozen=True, slots=True)
class AuditorView:
    """What the checks read from the engine (taken in the consumer)."""

    decisions_active: int = 0
    decisions_seen: int = 0
    lapi_configured: bool = False
    traffic: Traffic = field(default_factory=Traffic)  # requests read, cumulative


def _delta(now: Mapping[str, float], base: Mapping[str, float], key: str) -> float:
    return max(0.0, now.get(key, 0.0) - base.get(key, 0.0))


class HealthChecker:
    """Turns successive metric snapshots into findings; pure apart from its own history."""

    def __init__(
        self, url: str, config: HealthConfig | None = None, access_logs: Sequence[str] = ()
    ) -> None:
        self.url = url
        self.shown_url = redact_url(url)  # what findings and logs say: no user:password@
        self.config = config or HealthConfig()
        self.access_logs = tuple(access_logs)
        self._own_sources = {p for a in access_logs for p in (a, os.path.realpath(a))}
        self._history: deque[tuple[float, CrowdSecMetrics, Traffic]] = deque(maxlen=HISTORY_MAX)
        self._whitelists = WhitelistJudge(self.shown_url, self.config.whitelist)
        self._gaps: list[Finding] = []
        self.latest: CrowdSecMetrics | None = None  # the last good poll's metrics
        self._parse: dict[str, Finding] = {}
        self._undecided_since: float | None = None  # first overflow not followed by a decision
        self._undecided_last = 0.0  # latest such overflow
        self._undecided_now = 0.0
        self._undecided_active: float | None = None
        self._undecided_overflows: dict[str, float] = {}
        self._decisions_seen = 0
        self._unreachable: Finding | None = None

    # -- inputs ----------------------------------------------------------------------------
    def observe(self, now: float, m: CrowdSecMetrics, view: AuditorView) -> list[Finding]:
        """A successful poll: update every check and return the group's findings."""
        if not m.crowdsec:
            return self.failed(now, "it answers, but exposes no CrowdSec (cs_*) metrics")
        self._unreachable = None
        self.latest = m
        prev = self._history[-1][1] if self._history else None
        if prev is not None and m.restarted_since(prev):
            self._history.clear()
            self._whitelists.reset()
            prev = None
        while self._history and self._history[0][0] < now - self.config.window_s:
            self._history.popleft()
        if self._history:
            base_t, base, base_traffic = self._history[0]
            self._check_parsing(now - base_t, m, base)
            self._gaps = self._whitelists.judge(
                now, now - base_t, m, base, view.traffic, base_traffic, self._traefik_sources(m)
            )
        self._check_decisions(now, m, prev, view)
        self._history.append((now, m, view.traffic))
        return self.findings()

    def failed(self, now: float, error: str) -> list[Finding]:
        """A failed poll: other verdicts stay as they were (nothing new is known)."""
        self._unreachable = Finding(
            kind=Kind.CROWDSEC_HEALTH,
            severity=Severity.LOW,
            target=self.shown_url,
            summary=f"CrowdSec metrics endpoint {self.shown_url} is unusable: {error}",
            evidence={"url": self.shown_url, "error": error, "since": now},
            fix=UNREACHABLE_FIX,
            check="metrics_unreachable",
        )
        return self.findings()

    def findings(self) -> list[Finding]:
        out = [*self._parse.values(), *self._gaps]
        undecided = self._undecided_finding()
        if undecided is not None:
            out.append(undecided)
        if self._unreachable is not None:
            out.append(self._unreachable)
        return out

    # -- traefik_parse_failures ------------------------------------------------------------
    def _traefik_sources(self, m: CrowdSecMetrics) -> set[str]:
        sources = set(m.traefik_ok) | set(m.traefik_ko)
        for s in (*m.parser_ok, *m.parser_ko):
            if s in self._own_sources or "traefik" in s.lower():
                sources.add(s)
        return sources

    def _check_parsing(self, span: float, m: CrowdSecMetrics, base: CrowdSecMetrics) -> None:
        cfg = self.config
        for source in self._traefik_sources(m):
            ok = _delta(m.parser_ok, base.parser_ok, source)
            ko = _delta(m.parser_ko, base.parser_ko, source)
            if ok + ko == 0:
                continue  # no new lines: the last verdict stands
            share = ko / (ok + ko)
            if ko < cfg.min_failed_lines or share < cfg.failed_share:
                self._parse.pop(source, None)
                continue
            reached = _delta(m.traefik_ok, base.traefik_ok, source) + _delta(
                m.traefik_ko, base.traefik_ko, source
            )
            # Counts live in the evidence: a summary that changed every poll would turn each
            # poll into an "updated" event.
            summary = (
                f"CrowdSec fails to parse the Traefik lines from {source}, so it cannot detect "
                "attacks in them"
            )
            if not reached:
                summary += "; none reach the traefik parser (check the acquisition labels)"
            self._parse[source] = Finding(
                kind=Kind.CROWDSEC_HEALTH,
                severity=Severity.HIGH,
                target=source,
                summary=summary,
                evidence={
                    "source": source,
                    "window_s": round(span, 1),
                    "lines_parsed": ok,
                    "lines_failed": ko,
                    "failed_share": round(share, 4),
                    "traefik_parser_lines": reached,
                    "crowdsec_version": m.version,
                    "metrics_url": self.shown_url,
                },
                fix=PARSE_FIX,
                check="traefik_parse_failures",
            )

    # -- no_decisions_while_probed ---------------------------------------------------------
    def _check_decisions(
        self, now: float, m: CrowdSecMetrics, prev: CrowdSecMetrics | None, view: AuditorView
    ) -> None:
        seen_new = view.decisions_seen > self._decisions_seen
        self._decisions_seen = view.decisions_seen
        if m.active_decisions is None and not view.lapi_configured:
            self._undecided_since = None  # nothing here tells whether decisions exist
            return
        decided = (m.active_decisions or 0) > 0 or view.decisions_active > 0 or seen_new
        if decided:
            self._undecided_since = None
            self._undecided_overflows = {}
            return
        if prev is None:
            return  # overflows since CrowdSec started may be long past: judge increases only
        grew = {
            name: _delta(m.overflowed, prev.overflowed, name)
            for name in m.overflowed
            if _delta(m.overflowed, prev.overflowed, name) > 0
        }
        if grew:
            if self._undecided_since is None:
                self._undecided_since = now
                self._undecided_overflows = {}
            self._undecided_last = now
            for name, n in grew.items():
                self._undecided_overflows[name] = self._undecided_overflows.get(name, 0.0) + n
        elif (
            self._undecided_since is not None and now - self._undecided_last > self.config.window_s
        ):
            self._undecided_since = None  # quiet for a whole window: nothing left to judge
        self._undecided_now = now
        self._undecided_active = m.active_decisions

    def _undecided_finding(self) -> Finding | None:
        since = self._undecided_since
        if since is None:
            return None
        now = self._undecided_now
        if now - since < self.config.overflow_grace_s:
            return None
        overflows = sum(self._undecided_overflows.values())
        top = sorted(self._undecided_overflows.items(), key=lambda kv: -kv[1])[:5]
        return Finding(
            kind=Kind.CROWDSEC_HEALTH,
            severity=Severity.MEDIUM,
            target=self.shown_url,
            summary="CrowdSec scenarios overflow (attacks detected) but it makes no decisions",
            evidence={
                "overflows": overflows,
                "seconds": round(now - since, 1),
                "scenarios": [{"scenario": n, "overflows": c} for n, c in top],
                "since": since,
                "active_decisions": self._undecided_active,
                "metrics_url": self.shown_url,
            },
            fix=DECISION_FIX,
            check="no_decisions_while_probed",
        )


# -- the service ------------------------------------------------------------------------------
class HealthService:
    """Polls each endpoint every ``interval`` seconds and posts the verdicts to the consumer.

    A checker whose URL lists several endpoints is split into one checker per endpoint (same
    settings); all of them are polled together and posted as one replacement of the group, so
    the comparison across agents sees one round.
    """

    def __init__(
        self,
        checker: HealthChecker,
        interval: float,
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        urls = split_urls(checker.url)
        if len(urls) > 1:
            self.checkers = [
                HealthChecker(u, checker.config, access_logs=checker.access_logs) for u in urls
            ]
        else:
            self.checkers = [checker]
        self.checker = self.checkers[0]
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.clients = [CrowdSecClient(c.url, timeout=timeout) for c in self.checkers]
        self.client = self.clients[0]
        self.polls_ok = 0
        self.polls_failed = 0
        self._last_ok = [False] * len(self.checkers)
        self._failed_once = [False] * len(self.checkers)

    async def run(self, stop: asyncio.Event, post: Post) -> None:
        try:
            while not stop.is_set():
                now = self.clock()
                texts = await asyncio.gather(
                    *(self._fetch(c) for c in self.clients), return_exceptions=True
                )
                results: list[CrowdSecMetrics | str] = []
                for i, got in enumerate(texts):
                    results.append(self._read(i, got))
                await post(functools.partial(self._apply_round, now, results))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
        finally:
            for client in self.clients:
                await client.aclose()  # the sessions belong to this loop's task

    def _read(self, i: int, got: str | BaseException) -> CrowdSecMetrics | str:
        """Metrics, or the error (a string) that says why there are none."""
        error = ""
        if isinstance(got, CrowdSecError):
            error = str(got)
        elif isinstance(got, BaseException):
            raise got
        else:
            try:
                metrics = parse_metrics(got)
            except ValueError as exc:
                error = f"bad text: {exc}"
        if error:
            if not self._failed_once[i] or self._last_ok[i]:
                log.warning("CrowdSec metrics %s: %s", self.checkers[i].shown_url, error)
            self._failed_once[i] = True
            self.polls_failed += 1
            self._last_ok[i] = False
            return error
        self.polls_ok += 1
        self._last_ok[i] = True
        return metrics

    async def _fetch(self, client: CrowdSecClient) -> str:
        return await client.metrics_text()

    async def fetch(self) -> str:
        """The first endpoint's text; ``CrowdSecError`` says why there is none."""
        return await self.client.metrics_text()

    def verdicts(
        self, now: float, results: Sequence[CrowdSecMetrics | str], view: AuditorView
    ) -> list[Finding]:
        """Every checker's findings for one round, plus the comparison across agents."""
        out: list[Finding] = []
        for checker, got in zip(self.checkers, results, strict=True):
            if isinstance(got, str):
                out += checker.failed(now, got)
            else:
                out += checker.observe(now, got, view)
        if len(self.checkers) > 1:
            agents = [Agent(c.shown_url, c.latest) for c in self.checkers if c.latest is not None]
            out += compare_agents(agents)
        return out

    def _apply_round(
        self, now: float, results: Sequence[CrowdSecMetrics | str], state: LiveState
    ) -> None:
        engine = state.engine
        view = AuditorView(
            decisions_active=engine.decisions_active,
            decisions_seen=engine.decisions_seen,
            lapi_configured=state.lapi_configured,
            traffic=traffic_from(engine.request_classes()),
        )
        engine.replace_findings(GROUP, self.verdicts(now, results, view))


# -- one look (auditor check) -----------------------------------------------------------------
async def look_once(urls: Sequence[str], *, call_timeout: float = 5.0) -> list[Finding]:
    """Scrape each agent once and judge what totals can tell (``whitelists.one_look``); an
    endpoint that does not answer is a ``metrics_unreachable`` finding, as in ``run``."""
    from pipeline.crowdsec.whitelists import one_look

    async def scrape(url: str) -> CrowdSecMetrics | str:
        client = CrowdSecClient(url, timeout=call_timeout)
        try:
            metrics = parse_metrics(await client.metrics_text())
        except CrowdSecError as exc:
            return str(exc)
        except ValueError as exc:
            return f"bad text: {exc}"
        finally:
            await client.aclose()
        return metrics if metrics.crowdsec else "it answers, but exposes no CrowdSec metrics"

    got = await asyncio.gather(*(scrape(u) for u in urls))
    out: list[Finding] = []
    agents: list[Agent] = []
    now = time.time()
    for url, result in zip(urls, got, strict=True):
        if isinstance(result, str):
            out += HealthChecker(url).failed(now, result)
        else:
            agents.append(Agent(redact_url(url), result))
    return out + one_look(agents)
