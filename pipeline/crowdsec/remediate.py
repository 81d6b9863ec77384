"""Opt-in remediation: delete CrowdSec decisions that ban internal addresses, through the LAPI.

A ban on the servicelb hop blocks every user until someone runs ``cscli decisions delete``; with
``remediate`` on, the auditor does that itself the moment the ban shows up. It logs in as a
watcher (CrowdSec's own ``local_api_credentials.yaml``: bouncer keys cannot delete) and removes
every decision on exactly that value (``DELETE /v1/decisions?ip=V&contains=false``; a
``Range`` uses ``range=``), so several scenarios' bans on one hop all go, while a wider range
that merely contains it is left alone.

Safety: ``remediate_dry_run`` (the default) only reports what it would do; the target's class is
checked again with the engine's classifier right before acting and a value that is not entirely
inside an internal network is refused; deletions are rate-limited by a token bucket
(``remediate_max_per_minute``). Every action becomes a ``remediation`` finding event (posted to
the consumer) and a count in ``auditor_remediations_total{action,result}``; a deletion also
drops the decisions from the engine at once, which clears the internal_ban finding.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from parsers.crowdsec import Decision, DecisionDelta
from pipeline.core import fixes
from pipeline.core.addresses import (
    INTERNAL_CLASSES,
    ClassifierView,
    network_contains,
    parse_network,
)
from pipeline.core.findings import Finding, FindingEvent, Kind, Severity, State
from pipeline.crowdsec.client import (
    DEFAULT_TIMEOUT_S,
    CrowdSecClient,
    CrowdSecError,
    MachineCredentials,
    RetryPolicy,
)
from pipeline.errors import ConfigError
from pipeline.secrets import Secret, read_private_file

if TYPE_CHECKING:
    from pipeline.contracts import LiveState, Post
    from pipeline.core.engine import Engine

log = logging.getLogger("auditor.crowdsec")

ACTION = "delete_decision"
DRAIN_TIMEOUT_S = 5.0  # an in-flight deletion may finish this long after stop
# A failed deletion waits before its job is tried again (the client itself already retried).
RETRY = RetryPolicy(initial_s=2.0, max_s=60.0)

FIX = (
    "Deleting the decision only lasts until CrowdSec bans the address again. "
    + fixes.ALLOWLIST
    + " "
    + fixes.PRESERVE_CLIENT_IP
)


# -- credentials ------------------------------------------------------------------------------
def load_credentials(path: str, *, fallback_url: str | None = None) -> MachineCredentials:
    """Read the credentials file; problems are ConfigErrors naming the file, never the password."""
    import yaml  # type: ignore[import-untyped]

    what = "config key 'lapi_credentials_file'"
    text, source = read_private_file(path, what=what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        msg = f"{what}: {source} is not valid YAML"
        raise ConfigError(msg) from None
    if not isinstance(data, Mapping):
        msg = f"{what}: {source} is not a mapping with url, login and password"
        raise ConfigError(msg)
    values: dict[str, str] = {}
    for key in ("url", "login", "password"):
        value = data.get(key) or (fallback_url if key == "url" else None)
        if not isinstance(value, str) or not value.strip():
            msg = f"{what}: {source} has no '{key}'"
            raise ConfigError(msg)
        values[key] = value.strip()
    return MachineCredentials(values["url"], values["login"], Secret(values["password"]), source)


# -- rate limit -------------------------------------------------------------------------------
class TokenBucket:
    """``per_minute`` actions per minute, in bursts of at most ``per_minute``."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            msg = "config key 'remediate_max_per_minute': must be at least 1"
            raise ConfigError(msg)
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._tokens = self.capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate)


# -- the LAPI as a watcher --------------------------------------------------------------------
class WatcherClient(CrowdSecClient):
    """The CrowdSec client logged in as a machine: bouncer keys cannot delete decisions."""

    def __init__(self, creds: MachineCredentials, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(creds.url, machine=creds, timeout=timeout)


# -- safety -----------------------------------------------------------------------------------
def internal_network_of(classifier: ClassifierView, scope: str, value: str) -> str | None:
    """The internal network that holds all of ``value`` (an address or CIDR), else None.

    A range is deletable only when it lies entirely inside one internal network: ``0.0.0.0/1``
    overlaps the pod CIDR but also bans the internet, and that is not ours to lift.
    """
    if scope not in ("Ip", "Range"):
        return None
    parsed = parse_network(value)
    if parsed is None:
        return None
    for net in classifier.networks:  # most specific first
        if net.covers(parsed):
            return net.cidr if net.cls in INTERNAL_CLASSES else None
    return None


def _decision_of(reported: Mapping[str, object]) -> Decision:
    """The decision back from a finding's evidence (``Decision.as_dict``), as a record."""
    raw_id, duration = reported.get("id"), reported.get("duration_s")
    return Decision(
        id=raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None,
        origin=str(reported.get("origin") or ""),
        scenario=str(reported.get("scenario") or ""),
        scope=str(reported.get("scope", "")),
        value=str(reported.get("value", "")),
        type=str(reported.get("type") or "ban"),
        duration_s=float(duration) if isinstance(duration, int | float) else None,
    )


# -- the remediator ---------------------------------------------------------------------------
@dataclass(slots=True)
class _Job:
    key: str  # the internal_ban finding key
    decision: Decision
    reported: Mapping[str, object]  # the decision as the finding's evidence has it
    target_class: str
    not_before: float = 0.0
    attempts: int = 0
    told_rate_limited: bool = False
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One remediation result, reported as a finding event and a metric increment."""

    result: str  # done / dry_run / error / rate_limited / refused
    job_key: str
    decision: Decision
    reported: Mapping[str, object]  # the decision as the internal_ban evidence had it
    target_class: str
    detail: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, result: str, job: _Job, **detail: object) -> Outcome:
        return cls(result, job.key, job.decision, job.reported, job.target_class, detail)

    def finding(self, lapi_url: str, max_per_minute: int) -> Finding:
        value, cls = self.decision.value, self.target_class
        what = f"the CrowdSec decisions on {value} ({cls})"
        summaries = {
            "done": f"Deleted {what} through the LAPI ({self.detail.get('deleted', 0)} removed)",
            "dry_run": f"Dry run: would delete {what} through the LAPI",
            "rate_limited": f"Deferred deleting {what}: more than {max_per_minute} "
            "deletions per minute",
            "error": f"Could not delete {what}: {self.detail.get('error', '')}",
            "refused": f"Refused to delete the decision on {value}: "
            f"{self.detail.get('why', 'not an internal target')}",
        }
        severity = {
            "done": Severity.INFO,
            "dry_run": Severity.INFO,
            "rate_limited": Severity.LOW,
            "error": Severity.MEDIUM,
            "refused": Severity.LOW,
        }[self.result]
        return Finding(
            kind=Kind.REMEDIATION,
            severity=severity,
            target=value,
            summary=summaries[self.result],
            evidence={
                "action": ACTION,
                "result": self.result,
                "decision": dict(self.reported),
                "target_class": cls,
                "lapi_url": lapi_url,
                **self.detail,
            },
            fix=FIX,
            check=ACTION,
        )


class Remediator:
    """An EventSink (it sees internal_ban findings) and a Service (its worker loop).

    ``emit`` only queues: the consumer must never wait on the LAPI. ``run`` works the queue and
    posts each outcome back to the consumer, which notes it in the engine and counts it.
    """

    def __init__(
        self,
        client: CrowdSecClient,
        classifier: ClassifierView,
        *,
        dry_run: bool = True,
        max_per_minute: int = 6,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.classifier = classifier
        self.dry_run = dry_run
        self.max_per_minute = max_per_minute
        self.bucket = TokenBucket(max_per_minute, clock)
        self.clock = clock
        self._jobs: dict[str, _Job] = {}
        self._wake = asyncio.Event()
        self._inflight: asyncio.Task[Outcome] | None = None

    # -- EventSink ------------------------------------------------------------------------
    def emit(self, events: Sequence[FindingEvent]) -> None:
        for e in events:
            f = e.finding
            if f.kind is not Kind.INTERNAL_BAN:
                continue
            if e.state is State.CLEARED:
                self._jobs.pop(f.key, None)  # gone already (expired, deleted by hand, by us)
            elif e.state is State.RAISED and f.key not in self._jobs:
                reported = f.evidence.get("decision")
                if isinstance(reported, Mapping):
                    cls = str(f.evidence.get("class", ""))
                    self._jobs[f.key] = _Job(f.key, _decision_of(reported), dict(reported), cls)
                    self._wake.set()

    async def aclose(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, DRAIN_TIMEOUT_S)
        await self.client.aclose()

    @property
    def pending(self) -> int:
        return len(self._jobs)

    # -- Service --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, post: Post) -> None:
        while not stop.is_set():
            job = self._ready_job()
            if job is None:
                await self._sleep(stop)
                continue
            outcome = await self._work(job, stop)
            if outcome is not None:
                await post(functools.partial(self._report, outcome))
        if self._jobs:
            log.warning(
                "stopping with %d remediation(s) not done: %s",
                len(self._jobs),
                ", ".join(j.decision.value for j in self._jobs.values()),
            )

    def _ready_job(self) -> _Job | None:
        now = self.clock()
        ready = [j for j in self._jobs.values() if j.not_before <= now]
        return min(ready, key=lambda j: j.not_before) if ready else None

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until new work, the next deferred job is due, or stop."""
        self._wake.clear()
        now = self.clock()
        due = [j.not_before - now for j in self._jobs.values()]
        timeout = max(0.01, min(due)) if due else None
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _work(self, job: _Job, stop: asyncio.Event) -> Outcome | None:
        scope, value = job.decision.scope, job.decision.value
        network = internal_network_of(self.classifier, scope, value)
        if network is None:
            self._jobs.pop(job.key, None)
            why = (
                f"scope {scope} is not an address"
                if scope not in ("Ip", "Range")
                else "it is not entirely inside an internal network"
            )
            return Outcome.of("refused", job, why=why)
        if not self.bucket.take():
            job.not_before = self.clock() + self.bucket.wait_s()
            if job.told_rate_limited:
                return None
            job.told_rate_limited = True
            return Outcome.of("rate_limited", job, network=network)
        if self.dry_run:
            self._jobs.pop(job.key, None)
            log.warning("dry run: would delete the CrowdSec decisions on %s", value)
            return Outcome.of("dry_run", job, network=network)
        task = self._inflight = asyncio.ensure_future(self._delete(job, network))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # stopping: give the in-flight call a bounded grace
                await asyncio.wait({task}, timeout=DRAIN_TIMEOUT_S)
        finally:
            stopper.cancel()
        self._inflight = None
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()

    async def _delete(self, job: _Job, network: str) -> Outcome:
        value = job.decision.value
        try:
            deleted = await self.client.delete_decisions(job.decision)
        except CrowdSecError as exc:
            job.attempts += 1
            job.not_before = self.clock() + RETRY.delay(job.attempts)
            job.last_error = str(exc)
            log.warning("remediation of %s failed (attempt %d): %s", value, job.attempts, exc)
            return Outcome.of("error", job, error=str(exc), attempt=job.attempts, network=network)
        self._jobs.pop(job.key, None)
        return Outcome.of("done", job, deleted=deleted, attempt=job.attempts + 1, network=network)

    def _report(self, outcome: Outcome, state: LiveState) -> None:
        state.engine.note(outcome.finding(self.client.url, self.max_per_minute))
        if outcome.result != "refused":
            state.metrics.remediations.labels(ACTION, outcome.result).inc()
        if outcome.result == "done":
            self._forget(state.engine, outcome.decision)

    def _forget(self, engine: Engine, decision: Decision) -> None:
        """Drop the engine's copies of what the LAPI just deleted, so the finding clears now.

        Waiting for the stream is not enough: with several decisions on one value CrowdSec 1.4.6
        streams the longest one as new but reports the deletion under another id, which the
        engine (keyed by id) would not match until the original duration ran out.
        """
        value, ranged = decision.value, decision.is_range
        gone = tuple(
            a.decision
            for a in engine.decisions.values()
            if a.decision.value == value
            or (ranged and a.decision.scope == "Ip" and network_contains(value, a.decision.value))
        )
        if gone:
            engine.apply(DecisionDelta(new=(), deleted=gone))
