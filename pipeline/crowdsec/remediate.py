"""Opt-in remediation: delete CrowdSec decisions that ban internal addresses, through the LAPI.

A ban on the servicelb hop blocks every user until someone runs ``cscli decisions delete``; with
``remediate`` on, the auditor does that itself the moment the ban shows up. It logs in as a
watcher (CrowdSec's own ``local_api_credentials.yaml``: bouncer keys cannot delete).

What it deletes, exactly: one decision at a time, by its id (``DELETE /v1/decisions/{id}``),
never by value or range: a range delete removes every decision nested in the range, of any
type and origin. Before deleting it reads the decisions on that exact value back from the LAPI
(``GET /v1/alerts?scope=S&value=V``, as ``cscli decisions list`` does) and acts only when the
LAPI still lists that id with the same scope, value, origin and simulation flag; afterwards it
reads them again and forgets in the engine only the id the LAPI no longer lists. Other
decisions still on the value (CrowdSec 1.4 streams only one per value) are fed back to the
engine, so they are judged and deleted (or reported) one by one, on their own ids.

Who made it matters: by default only decisions by the local agent (``origin=crowdsec``) that are
not simulated are deleted. A manual ``cscli`` ban, CAPI and blocklist decisions are reported
(``skipped``) and left alone unless their origin is listed in ``remediate_origins``; simulated
decisions are never deleted (bouncers do not enforce them).

Safety: ``remediate_dry_run`` (the default) only reports what it would do; the target's class is
checked again with the engine's classifier right before acting, and a value that is not entirely
inside an internal network is refused (a mapped-IPv6 range such as ``::ffff:10.0.0.0/8`` is the
IPv6 ``::/8`` to CrowdSec, so it is not internal). Deletions are rate-limited by a token bucket
(``remediate_max_per_minute``). Every action becomes a ``remediation`` finding event (posted to
the consumer) and a count in ``auditor_remediations_total{action,result}``. Any doubt (the LAPI
cannot be read, lists the id differently, still lists it after the delete) fails closed: nothing
more is deleted for that job until a later attempt verifies again.
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

from parsers.crowdsec import Decision, DecisionDelta, DecisionFormatError
from pipeline.core import fixes
from pipeline.core.addresses import INTERNAL_CLASSES, ClassifierView, parse_network
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
DEFAULT_ORIGINS = frozenset({"crowdsec"})  # the local agent's own decisions
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
        simulated=reported.get("simulated") is True,
    )


def policy_refusal(decision: Decision, origins: frozenset[str]) -> str | None:
    """Why the decision is not ours to delete by who made it, or None when it is."""
    if decision.simulated:
        return "it is a simulated decision (bouncers do not enforce it)"
    if decision.origin not in origins:
        allowed = ", ".join(sorted(origins)) or "none"
        return f"its origin is {decision.origin or 'unknown'!r}; remediate_origins allows {allowed}"
    return None


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
    """One remediation result, reported as a finding event and a metric increment.

    ``forget``: decisions the LAPI verifiably no longer lists (drop them from the engine);
    ``remaining``: other decisions the LAPI still lists on the same value (feed them to it).
    """

    result: str  # done / gone / dry_run / error / rate_limited / skipped / refused
    job_key: str
    decision: Decision
    reported: Mapping[str, object]  # the decision as the internal_ban evidence had it
    target_class: str
    detail: Mapping[str, object] = field(default_factory=dict)
    forget: tuple[Decision, ...] = ()
    remaining: tuple[Decision, ...] = ()

    @classmethod
    def of(
        cls,
        result: str,
        job: _Job,
        *,
        forget: tuple[Decision, ...] = (),
        remaining: tuple[Decision, ...] = (),
        **detail: object,
    ) -> Outcome:
        return cls(
            result, job.key, job.decision, job.reported, job.target_class, detail, forget, remaining
        )

    def finding(self, lapi_url: str, max_per_minute: int) -> Finding:
        value, cls = self.decision.value, self.target_class
        what = f"CrowdSec decision {self.decision.id} on {value} ({cls})"
        summaries = {
            "done": f"Deleted {what} through the LAPI",
            "gone": f"Did not delete {what}: the LAPI no longer lists it",
            "dry_run": f"Dry run: would delete {what} through the LAPI",
            "rate_limited": f"Deferred deleting {what}: more than {max_per_minute} "
            "deletions per minute",
            "error": f"Could not delete {what}: {self.detail.get('error', '')}",
            "skipped": f"Left {what} alone: {self.detail.get('why', '')}",
            "refused": f"Refused to delete the decision on {value}: "
            f"{self.detail.get('why', 'not an internal target')}",
        }
        severity = {
            "done": Severity.INFO,
            "gone": Severity.INFO,
            "dry_run": Severity.INFO,
            "rate_limited": Severity.LOW,
            "error": Severity.MEDIUM,
            "skipped": Severity.LOW,
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
        origins: frozenset[str] = DEFAULT_ORIGINS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.classifier = classifier
        self.dry_run = dry_run
        self.max_per_minute = max_per_minute
        self.origins = origins
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

    def _screen(self, job: _Job) -> tuple[str, str] | str:
        """``(result, why)`` when the job must not go ahead, else the internal network."""
        d = job.decision
        network = internal_network_of(self.classifier, d.scope, d.value)
        if network is None:
            why = (
                f"scope {d.scope} is not an address"
                if d.scope not in ("Ip", "Range")
                else "it is not entirely inside an internal network"
            )
            return "refused", why
        if d.id is None:
            return "refused", "the decision has no id, and only deletion by id is exact"
        why_not = policy_refusal(d, self.origins)
        if why_not is not None:
            return "skipped", why_not
        return network

    async def _work(self, job: _Job, stop: asyncio.Event) -> Outcome | None:
        screened = self._screen(job)
        if isinstance(screened, tuple):
            self._jobs.pop(job.key, None)
            result, why = screened
            if result == "skipped":
                log.warning("not deleting CrowdSec decision on %s: %s", job.decision.value, why)
            return Outcome.of(result, job, why=why)
        network = screened
        if not self.bucket.take():
            job.not_before = self.clock() + self.bucket.wait_s()
            if job.told_rate_limited:
                return None
            job.told_rate_limited = True
            return Outcome.of("rate_limited", job, network=network)
        if self.dry_run:
            self._jobs.pop(job.key, None)
            log.warning(
                "dry run: would delete CrowdSec decision %s on %s",
                job.decision.id,
                job.decision.value,
            )
            return Outcome.of("dry_run", job, network=network, decision_id=job.decision.id)
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

    def _failed(self, job: _Job, network: str, error: str) -> Outcome:
        job.attempts += 1
        job.not_before = self.clock() + RETRY.delay(job.attempts)
        job.last_error = error
        log.warning(
            "remediation of %s failed (attempt %d): %s", job.decision.value, job.attempts, error
        )
        return Outcome.of("error", job, error=error, attempt=job.attempts, network=network)

    async def _delete(self, job: _Job, network: str) -> Outcome:
        """Verify, delete one id, verify again; see the module docstring."""
        d = job.decision
        assert d.id is not None  # _screen refused id-less jobs
        try:
            before = await self.client.decisions_on(d.scope, d.value)
        except (CrowdSecError, DecisionFormatError) as exc:
            return self._failed(job, network, f"could not read the decisions on {d.value}: {exc}")
        listed = next((b for b in before if b.id == d.id), None)
        if listed is None:
            # Already gone (expired, deleted by hand): nothing to delete, and the engine may
            # forget it; the others on the value are judged on their own.
            self._jobs.pop(job.key, None)
            return Outcome.of(
                "gone", job, forget=(d,), remaining=before, network=network, decision_id=d.id
            )
        mismatch = _mismatch(d, listed)
        if mismatch:
            self._jobs.pop(job.key, None)
            return Outcome.of("refused", job, why=f"the LAPI lists decision {d.id} {mismatch}")
        why_not = policy_refusal(listed, self.origins)
        if why_not is not None:
            self._jobs.pop(job.key, None)
            return Outcome.of("skipped", job, why=why_not, remaining=before)
        try:
            deleted = await self.client.delete_decision(d.id)
        except CrowdSecError as exc:
            return self._failed(job, network, str(exc))
        try:
            after = await self.client.decisions_on(d.scope, d.value)
        except (CrowdSecError, DecisionFormatError) as exc:
            # The LAPI's own answer to a delete by id is exact: forget that id only; the rest
            # of the value is checked on the next event.
            self._jobs.pop(job.key, None)
            log.warning("could not re-read the decisions on %s after deleting: %s", d.value, exc)
            if deleted == 1:
                return Outcome.of(
                    "done", job, forget=(d,), network=network, decision_id=d.id, deleted=1
                )
            return self._failed(job, network, f"could not verify the delete: {exc}")
        if any(a.id == d.id for a in after):
            return self._failed(
                job, network, f"the LAPI still lists decision {d.id} after deleting it"
            )
        self._jobs.pop(job.key, None)
        others = tuple(a for a in after if a.id != d.id)
        return Outcome.of(
            "done" if deleted == 1 else "gone",
            job,
            forget=(d,),
            remaining=others,
            network=network,
            decision_id=d.id,
            deleted=deleted,
            still_on_value=len(others),
        )

    def _report(self, outcome: Outcome, state: LiveState) -> None:
        state.engine.note(outcome.finding(self.client.url, self.max_per_minute))
        if outcome.result != "refused":
            state.metrics.remediations.labels(ACTION, outcome.result).inc()
        self._reconcile(state.engine, outcome)

    @staticmethod
    def _reconcile(engine: Engine, outcome: Outcome) -> None:
        """Bring the engine in line with what the LAPI verifiably lists on the value.

        Only ids the LAPI no longer lists are dropped (by their own key, never by value: the
        engine's by-value match is for stream deletions); decisions it still lists but the
        engine does not know (CrowdSec 1.4 streams one per value) are added, so they are judged,
        counted and remediated on their own ids.
        """
        known = engine.decisions
        gone = tuple(d for d in outcome.forget if d.key in known)
        new = tuple(d for d in outcome.remaining if d.key not in known)
        if gone or new:
            engine.apply(DecisionDelta(new=new, deleted=gone))


def _mismatch(ours: Decision, listed: Decision) -> str:
    """How the LAPI's copy of an id differs from what was judged ('' when it does not)."""
    for name in ("scope", "value", "origin", "type"):
        mine, theirs = getattr(ours, name), getattr(listed, name)
        if mine != theirs:
            return f"with {name} {theirs!r}, not {mine!r}"
    return ""
