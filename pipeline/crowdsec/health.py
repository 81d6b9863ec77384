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

Judgements use increases over a sliding window, never totals since CrowdSec started, so a problem
fixed hours ago does not keep a finding up. Fetching runs in the service; judging runs in the
runner's consumer (posted callables), next to the engine state it reads.
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
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

import pipeline
from pipeline.core.findings import Finding, Kind, Severity

if TYPE_CHECKING:
    from pipeline.contracts import LiveState, Post

log = logging.getLogger(__name__)

GROUP = "crowdsec_health"
HISTORY_MAX = 720
_BODY_MAX = 8 * 1024 * 1024

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


# -- the metrics ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CrowdSecMetrics:
    """The few series the checks need, summed per source / scenario / bouncer."""

    parser_ok: Mapping[str, float] = field(default_factory=dict)  # by acquisition source
    parser_ko: Mapping[str, float] = field(default_factory=dict)
    traefik_ok: Mapping[str, float] = field(default_factory=dict)  # traefik parser node, by source
    traefik_ko: Mapping[str, float] = field(default_factory=dict)
    overflowed: Mapping[str, float] = field(default_factory=dict)  # by scenario
    active_decisions: float | None = None  # None: this endpoint has no LAPI metrics
    bouncer_requests: Mapping[str, float] = field(default_factory=dict)  # by bouncer name
    version: str = ""
    crowdsec: bool = False  # any cs_* series at all

    @property
    def overflow_total(self) -> float:
        return sum(self.overflowed.values())

    def counters(self) -> dict[tuple[str, str], float]:
        """Every monotonic value by series and key, to notice a CrowdSec restart."""
        out: dict[tuple[str, str], float] = {}
        for series, values in (
            ("parser_ok", self.parser_ok),
            ("parser_ko", self.parser_ko),
            ("traefik_ok", self.traefik_ok),
            ("traefik_ko", self.traefik_ko),
            ("overflowed", self.overflowed),
        ):
            for key, value in values.items():
                out[(series, key)] = value
        return out

    def restarted_since(self, earlier: CrowdSecMetrics) -> bool:
        """A counter went down or vanished: CrowdSec restarted and began again at zero."""
        now = self.counters()
        return any(now.get(k, -1.0) < v for k, v in earlier.counters().items())


def _is_traefik_node(name: str) -> bool:
    # The parser's own node counts one hit per line; its "child-" nodes count per-pattern tries.
    return "traefik" in name and not name.startswith("child-")


def _add(target: dict[str, float], key: str, value: float) -> None:
    target[key] = target.get(key, 0.0) + value


def parse_metrics(text: str) -> CrowdSecMetrics:
    """Read CrowdSec's exposition text (any version; unknown series are ignored)."""
    parser_ok: dict[str, float] = {}
    parser_ko: dict[str, float] = {}
    traefik_ok: dict[str, float] = {}
    traefik_ko: dict[str, float] = {}
    overflowed: dict[str, float] = {}
    bouncers: dict[str, float] = {}
    active: float | None = None
    lapi = False
    version = ""
    crowdsec = False
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if not name.startswith("cs_"):
                continue
            crowdsec = True
            source = labels.get("source", "")
            if name == "cs_parser_hits_ok_total":
                _add(parser_ok, source, value)
            elif name == "cs_parser_hits_ko_total":
                _add(parser_ko, source, value)
            elif name == "cs_node_hits_ok_total" and _is_traefik_node(labels.get("name", "")):
                _add(traefik_ok, source, value)
            elif name == "cs_node_hits_ko_total" and _is_traefik_node(labels.get("name", "")):
                _add(traefik_ko, source, value)
            elif name == "cs_bucket_overflowed_total":
                _add(overflowed, labels.get("name", ""), value)
            elif name == "cs_active_decisions":
                active = (active or 0.0) + value
            elif name == "cs_lapi_bouncer_requests_total":
                _add(bouncers, labels.get("bouncer", ""), value)
            elif name == "cs_info":
                version = labels.get("version", "")
            if name.startswith("cs_lapi_"):
                lapi = True
    if active is None and lapi:
        active = 0.0  # the LAPI is here and exports no decision gauge: there are none
    return CrowdSecMetrics(
        parser_ok=parser_ok,
        parser_ko=parser_ko,
        traefik_ok=traefik_ok,
        traefik_ko=traefik_ko,
        overflowed=overflowed,
        active_decisions=active,
        bouncer_requests=bouncers,
        version=version,
        crowdsec=crowdsec,
    )


# -- the checks -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HealthConfig:
    window_s: float = 600.0  # increases are measured over this much wall time
    min_failed_lines: int = 10  # fewer failures than this in the window are noise
    failed_share: float = 0.5  # ... and at least this share of the source's lines failed
    overflow_grace_s: float = 120.0  # overflows without any decision for this long


@dataclass(frozen=True, slots=True)
class AuditorView:
    """What the checks read from the engine (taken in the consumer)."""

    decisions_active: int = 0
    decisions_seen: int = 0
    lapi_configured: bool = False


def _delta(now: Mapping[str, float], base: Mapping[str, float], key: str) -> float:
    return max(0.0, now.get(key, 0.0) - base.get(key, 0.0))


class HealthChecker:
    """Turns successive metric snapshots into findings; pure apart from its own history."""

    def __init__(
        self, url: str, config: HealthConfig | None = None, access_logs: Sequence[str] = ()
    ) -> None:
        self.url = url
        self.config = config or HealthConfig()
        self._own_sources = {p for a in access_logs for p in (a, os.path.realpath(a))}
        self._history: deque[tuple[float, CrowdSecMetrics]] = deque(maxlen=HISTORY_MAX)
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
        prev = self._history[-1][1] if self._history else None
        if prev is not None and m.restarted_since(prev):
            self._history.clear()
            prev = None
        while self._history and self._history[0][0] < now - self.config.window_s:
            self._history.popleft()
        if self._history:
            base_t, base = self._history[0]
            self._check_parsing(now - base_t, m, base)
        self._check_decisions(now, m, prev, view)
        self._history.append((now, m))
        return self.findings()

    def failed(self, now: float, error: str) -> list[Finding]:
        """A failed poll: other verdicts stay as they were (nothing new is known)."""
        self._unreachable = Finding(
            kind=Kind.CROWDSEC_HEALTH,
            severity=Severity.LOW,
            target=self.url,
            summary=f"CrowdSec metrics endpoint {self.url} is unusable: {error}",
            evidence={"url": self.url, "error": error, "since": now},
            fix=UNREACHABLE_FIX,
            check="metrics_unreachable",
        )
        return self.findings()

    def findings(self) -> list[Finding]:
        out = list(self._parse.values())
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
                    "metrics_url": self.url,
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
                _add(self._undecided_overflows, name, n)
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
            target=self.url,
            summary="CrowdSec scenarios overflow (attacks detected) but it makes no decisions",
            evidence={
                "overflows": overflows,
                "seconds": round(now - since, 1),
                "scenarios": [{"scenario": n, "overflows": c} for n, c in top],
                "since": since,
                "active_decisions": self._undecided_active,
                "metrics_url": self.url,
            },
            fix=DECISION_FIX,
            check="no_decisions_while_probed",
        )


# -- the service ------------------------------------------------------------------------------
class MetricsFetchError(Exception):
    pass


class HealthService:
    """Polls the endpoint every ``interval`` seconds and posts the verdicts to the consumer."""

    def __init__(
        self,
        checker: HealthChecker,
        interval: float,
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.checker = checker
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.polls_ok = 0
        self.polls_failed = 0
        self._last_ok = False

    async def run(self, stop: asyncio.Event, post: Post) -> None:
        import aiohttp

        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": f"ban-auditor/{pipeline.__version__}"},
        ) as session:
            while not stop.is_set():
                now = self.clock()
                try:
                    metrics = parse_metrics(await self.fetch(session))
                except (MetricsFetchError, ValueError) as exc:
                    error = str(exc) if isinstance(exc, MetricsFetchError) else f"bad text: {exc}"
                    if self.polls_failed == 0 or self._last_ok:
                        log.warning("CrowdSec metrics %s: %s", self.checker.url, error)
                    self.polls_failed += 1
                    self._last_ok = False
                    await post(functools.partial(self._apply_failure, now, error))
                else:
                    self.polls_ok += 1
                    self._last_ok = True
                    await post(functools.partial(self._apply, now, metrics))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

    async def fetch(self, session: Any) -> str:
        import aiohttp

        url = self.checker.url
        try:
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    msg = f"GET {url}: HTTP {resp.status}"
                    raise MetricsFetchError(msg)
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > _BODY_MAX:
                        msg = f"GET {url}: body larger than {_BODY_MAX} bytes"
                        raise MetricsFetchError(msg)
                    chunks.append(chunk)
                body = b"".join(chunks)
        except TimeoutError:
            msg = f"GET {url}: no answer within {self.timeout:g}s"
            raise MetricsFetchError(msg) from None
        except aiohttp.ClientError as exc:
            msg = f"GET {url}: {type(exc).__name__}: {exc}"
            raise MetricsFetchError(msg) from None
        return body.decode("utf-8", "replace")

    def _apply(self, now: float, m: CrowdSecMetrics, state: LiveState) -> None:
        engine = state.engine
        view = AuditorView(
            decisions_active=len(engine.decisions),
            decisions_seen=engine.decisions_seen,
            lapi_configured=state.lapi_configured,
        )
        engine.replace_findings(GROUP, self.checker.observe(now, m, view))

    def _apply_failure(self, now: float, error: str, state: LiveState) -> None:
        state.engine.replace_findings(GROUP, self.checker.failed(now, error))
