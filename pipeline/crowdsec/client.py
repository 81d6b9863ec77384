"""The one CrowdSec HTTP client: the LAPI as a bouncer and as a watcher, and CrowdSec's metrics.

CrowdSec has one ``apiclient``; so does the auditor. Every request to CrowdSec goes through
``CrowdSecClient``, so they all share one User-Agent, one time budget per call, body
caps, one reading of answers into errors and one retry policy, and a fix to any of them (a
timeout, a cap, what counts as transient) reaches every caller at once.

Errors say what the operator must fix: ``CrowdSecAuthError`` (the key or login was refused; the
message names where it came from, never its value), ``CrowdSecUnavailable`` (no answer, a
timeout, 5xx, 408/425/429, an oversized body: worth trying again later) and
``CrowdSecStatusError`` (any other answer, e.g. a wrong URL: retrying would not help).

Requests go through ``http1``, a small HTTP/1.1 client on asyncio streams, not aiohttp, which
cost every sidecar with a LAPI ~9.5 MB of its 40 MB budget (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import orjson

import pipeline
from parsers.crowdsec import Decision, DecisionDelta, DecisionFormatError, parse_decisions
from parsers.crowdsec_stream import Batch, DeltaPart, StreamParser
from pipeline.crowdsec import http1
from pipeline.errors import UsageError
from pipeline.secrets import Secret, redact_url

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("auditor.crowdsec")

USER_AGENT = f"ban-auditor/{pipeline.__version__}"
DEFAULT_TIMEOUT_S = 10.0
CHECK_TIMEOUT_S = 15.0  # `auditor check`: one look, a little more patience

STREAM_PATH = "v1/decisions/stream"
DECISIONS_PATH = "v1/decisions"
LOGIN_PATH = "v1/watchers/login"
ALERTS_PATH = "v1/alerts"

# Caps on what is read (bodies come uncompressed: see http1). A startup stream with the
# community blocklist and a few subscriptions is tens of MB; anything far beyond that is not a
# LAPI. The stream is parsed as it arrives, so its cap bounds time and the decisions kept, not a
# buffer.
DECISIONS_BODY_MAX = 64 * 1024 * 1024
METRICS_BODY_MAX = 8 * 1024 * 1024
SMALL_BODY_MAX = 1024 * 1024  # login and delete answers, and any error body
_CHUNK = 65536
# The decisions stream is parsed per chunk, and each chunk's decisions wait in the runner's
# queue (8 items) as one part: 16 KiB is ~100 decisions a part, ~0.4 MB of them queued.
_STREAM_CHUNK = 16384
_SNIPPET = 200

_AUTH = frozenset({401, 403})
_TRANSIENT_4XX = frozenset({408, 425, 429})


# -- errors -----------------------------------------------------------------------------------
class CrowdSecError(Exception):
    """A call to CrowdSec that gave no usable answer; the message names the endpoint."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, None when no answer came
        self.reason = reason or message  # what went wrong, without the request line


class CrowdSecUnavailable(CrowdSecError):
    """Worth trying again later: no answer, a timeout, 5xx, 408/425/429, an oversized body."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str = "", retry_now: bool = True
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        # False when an immediate retry would meet the same fate (a bad URL, a huge body).
        self.retry_now = retry_now


class ResponseTooLarge(CrowdSecUnavailable):
    """The body went past its cap: a later poll may find a smaller state, a retry now would not."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_now=False)


class CrowdSecAuthError(CrowdSecError):
    """CrowdSec refused the bouncer key or the machine login (401/403)."""


class CrowdSecStatusError(CrowdSecError):
    """Any other unexpected answer (a wrong path, a bad request): retrying would not help."""


# -- credentials and policy -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BouncerKey:
    """A bouncer API key (``cscli bouncers add``) and where it came from, for error messages."""

    key: Secret = field(repr=False)
    source: str  # e.g. "file /run/secrets/lapi-key"


@dataclass(frozen=True, slots=True)
class MachineCredentials:
    """A watcher login from CrowdSec's ``local_api_credentials.yaml`` (url, login, password)."""

    url: str
    login: str
    password: Secret = field(repr=False)
    source: str  # "file /etc/crowdsec/local_api_credentials.yaml", for error messages


_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with "equal jitter", and how many tries one call gets.

    Jitter keeps many auditors from hammering a LAPI that comes back in the same instant; the
    guaranteed half keeps a flapping LAPI from being polled in a tight loop.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    attempts: int = 3  # tries per call; loops that count every try (the stream) use one

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(max(failures, 1) - 1, 30))
        half = ceiling / 2
        return half + (rng or _RNG).uniform(0, half)


# -- answers ----------------------------------------------------------------------------------
StatusText = Callable[[int, bytes], str]  # (status, body) -> error message
AuthText = Callable[[int], str]  # status -> message naming the refused credentials


def _snippet(body: bytes) -> str:
    return body[:_SNIPPET].decode("utf-8", "replace").strip()


def _json_field(body: bytes, name: str) -> object:
    """``body[name]`` when the body is a JSON object, else None (error pages are often HTML)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc.get(name) if isinstance(doc, dict) else None


async def _read(resp: http1.Response, cap: int) -> bytes | None:
    """The body, or None once it is longer than ``cap`` bytes."""
    length = resp.content_length
    if length is not None and length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async with contextlib.aclosing(resp.iter_body(_CHUNK)) as body:
        async for chunk in body:
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


async def _error_body(resp: http1.Response) -> bytes:
    """The start of an error answer's body, to quote; empty when it is too big or broken (the
    status says enough). A timeout still ends the call."""
    try:
        return await _read(resp, SMALL_BODY_MAX) or b""
    except http1.HttpError:
        return b""


# -- the client -------------------------------------------------------------------------------
class CrowdSecClient:
    """One CrowdSec endpoint: the LAPI at ``url`` (as a bouncer with ``api_key``, as a watcher
    with ``machine``), or CrowdSec's Prometheus listener when ``url`` is its ``/metrics``.

    ``timeout`` bounds a whole call, retries and backoff included, so a caller's worst case is
    the same whether the LAPI hangs or refuses. Each request has its own connection (see
    ``http1``), so a client holds nothing between calls; ``tls`` verifies an https endpoint
    (default: the system's CA store).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: BouncerKey | None = None,
        machine: MachineCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.machine = machine
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.rng = random.Random()
        self.tls = tls
        self._token: Secret | None = None  # the watcher JWT, until the LAPI refuses it

    def endpoint(self, path: str) -> str:
        return self.url.rstrip("/") + "/" + path

    async def aclose(self) -> None:
        """Nothing to release (no connection outlives a call); kept for ``async with``."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- as a bouncer -------------------------------------------------------------------------
    async def stream_parts(
        self, *, startup: bool, scopes: Sequence[str] = ()
    ) -> AsyncGenerator[DeltaPart, None]:
        """One poll of ``GET /v1/decisions/stream``, parsed as it arrives: the full state with
        ``startup``, else what changed since this bouncer's last poll.

        Yields ``DeltaPart``s from ``first`` to ``last`` (a startup poll always ends with a
        ``last`` one, even empty; an increment yields nothing when nothing changed), each
        holding the decisions of about one chunk, so memory is bounded by a chunk however long
        the answer. A single try: the stream counts every poll in its status and backs off
        between polls with ``self.retry``, so retrying here would hide failures from its
        metrics. A body that is not a decisions stream raises ``DecisionFormatError``, one past
        ``DECISIONS_BODY_MAX`` ``ResponseTooLarge``, one not finished within ``timeout``
        ``CrowdSecUnavailable``, each possibly after some parts (never after a ``last`` one).
        """
        params = {"startup": "true" if startup else "false"}
        if scopes:
            params["scopes"] = ",".join(scopes)
        parser = StreamParser()
        pending = Batch()
        first = True
        body = self._body_chunks(
            "GET",
            self.endpoint(STREAM_PATH),
            params=params,
            headers=self._bouncer_headers(),
            max_body=DECISIONS_BODY_MAX,
            rejected=self._bouncer_rejected,
        )
        async with contextlib.aclosing(body) as chunks:
            async for chunk in chunks:
                batch = parser.feed(chunk)
                if not batch:
                    continue
                if pending:  # held back one chunk, so that the last part carries decisions
                    yield DeltaPart(
                        tuple(pending.new), tuple(pending.deleted), startup, first, last=False
                    )
                    first = False
                pending = batch
        tail = parser.close()
        new, deleted = pending.new + tail.new, pending.deleted + tail.deleted
        if startup or new or deleted:
            yield DeltaPart(tuple(new), tuple(deleted), startup, first, True)

    async def stream_decisions(self, *, startup: bool, scopes: Sequence[str] = ()) -> DecisionDelta:
        """``stream_parts`` gathered into one delta (for callers that want it whole)."""
        new: list[Decision] = []
        deleted: list[Decision] = []
        async with contextlib.aclosing(self.stream_parts(startup=startup, scopes=scopes)) as parts:
            async for part in parts:
                new += part.new
                deleted += part.deleted
        return DecisionDelta(tuple(new), tuple(deleted), startup)

    async def decisions(self) -> DecisionDelta:
        """``GET /v1/decisions`` once (with retries): every active decision, as one delta."""
        return parse_decisions(await self._bouncer_get(DECISIONS_PATH, None))

    async def _bouncer_get(
        self, path: str, params: Mapping[str, str] | None, *, attempts: int | None = None
    ) -> bytes:
        return await self._call(
            "GET",
            self.endpoint(path),
            params=params,
            headers=self._bouncer_headers(),
            max_body=DECISIONS_BODY_MAX,
            attempts=attempts,
            rejected=self._bouncer_rejected,
        )

    def _bouncer_key(self) -> BouncerKey:
        if self.api_key is None:
            msg = "this CrowdSecClient has no bouncer key"
            raise TypeError(msg)
        return self.api_key

    def _bouncer_headers(self) -> dict[str, str]:
        return {"X-Api-Key": self._bouncer_key().key.reveal(), "Accept": "application/json"}

    def _bouncer_rejected(self, status: int) -> str:
        return (
            f"CrowdSec LAPI {redact_url(self.url)} rejected the bouncer API key from "
            f"{self._bouncer_key().source} (HTTP {status}); check that the key was created with "
            "'cscli bouncers add' on this LAPI"
        )

    # -- as a watcher -------------------------------------------------------------------------
    async def login(self) -> Secret:
        """``POST /v1/watchers/login``: a JWT for the machine, kept for the next calls."""
        creds = self.machine
        if creds is None:
            msg = "this CrowdSecClient has no machine credentials"
            raise TypeError(msg)
        url = self.endpoint(LOGIN_PATH)

        def rejected(status: int) -> str:
            return (
                f"CrowdSec LAPI {redact_url(self.url)} rejected the machine login "
                f"'{creds.login}' from {creds.source} (HTTP {status})"
            )

        def unexpected(status: int, _body: bytes) -> str:
            return f"POST {redact_url(url)}: unexpected HTTP {status}"

        body = await self._call(
            "POST",
            url,
            json={
                "machine_id": creds.login,
                "password": creds.password.reveal(),
                "scenarios": [],
            },
            headers={"Accept": "application/json"},
            describe=unexpected,
            rejected=rejected,
        )
        token = _json_field(body, "token")
        if not isinstance(token, str) or not token:
            raise CrowdSecStatusError(unexpected(200, body), status=200)
        self._token = Secret(token)
        return self._token

    async def delete_decision(self, decision_id: int) -> int:
        """``DELETE /v1/decisions/{id}``: exactly one decision; returns how many the LAPI says
        it removed (1, or 0 when that id was already gone).

        There is deliberately no delete by value or range: ``DELETE /v1/decisions?range=R``
        removes every decision nested in R, whatever its type, origin or scope, and this client
        must only ever remove what the caller has checked.
        """
        if isinstance(decision_id, bool) or not isinstance(decision_id, int) or decision_id < 1:
            msg = f"not a decision id: {decision_id!r}"
            raise ValueError(msg)
        url = self.endpoint(f"{DECISIONS_PATH}/{decision_id}")
        body = await self._watcher_call("DELETE", url, None)
        raw = _json_field(body, "nbDeleted")  # CrowdSec 1.4 sends a string, later an int
        try:
            n = int(raw) if isinstance(raw, int | float | str) else -1
        except (ValueError, OverflowError):
            n = -1
        if n < 0:
            msg = f"DELETE {redact_url(url)}: answer without a usable nbDeleted: {_snippet(body)}"
            raise CrowdSecStatusError(msg, status=200)
        return n

    async def decisions_on(self, scope: str, value: str) -> tuple[Decision, ...]:
        """The active decisions on exactly ``scope:value``, every origin, simulated included.

        Read as the watcher (``GET /v1/alerts``, what ``cscli decisions list`` uses) rather than
        as a bouncer, which would not see simulated decisions. Only decisions on this exact
        value are returned: a wider range that contains it is another decision.
        """
        url = self.endpoint(ALERTS_PATH)
        params = {
            "scope": scope,
            "value": value,
            "has_active_decision": "true",
            "include_capi": "true",
            "limit": "0",
        }
        body = await self._watcher_call("GET", url, params, max_body=DECISIONS_BODY_MAX)
        delta = parse_decisions(body)
        return tuple(
            d
            for d in delta.new
            if d.scope == scope and d.value == value and not d.expired and d.id is not None
        )

    async def _watcher_call(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        *,
        max_body: int = SMALL_BODY_MAX,
    ) -> bytes:
        """One call with the machine's JWT; an expired or foreign JWT (401) means one new
        login, not an error."""

        def refused(status: int, body: bytes) -> str:
            detail = _json_field(body, "message")
            return f"{method} {redact_url(url)}: HTTP {status} {detail or ''}".strip()

        for attempt in range(2):
            token = self._token or await self.login()
            try:
                return await self._call(
                    method,
                    url,
                    params=params,
                    headers={
                        "Accept": "application/json",
                        "Authorization": f"Bearer {token.reveal()}",
                    },
                    max_body=max_body,
                    describe=refused,
                )
            except CrowdSecAuthError as exc:
                if exc.status == 401 and attempt == 0:
                    self._token = None
                    continue
                raise
        msg = f"CrowdSec LAPI {redact_url(self.url)} keeps rejecting the watcher token"
        raise CrowdSecAuthError(msg, status=401)

    # -- CrowdSec's Prometheus endpoint -------------------------------------------------------
    async def metrics_text(self) -> str:
        """``GET url`` of CrowdSec's own ``/metrics`` (Prometheus text), capped."""
        url = self.url

        def failed(status: int, _body: bytes) -> str:
            return f"GET {redact_url(url)}: HTTP {status}"

        body = await self._call("GET", url, max_body=METRICS_BODY_MAX, describe=failed)
        return body.decode("utf-8", "replace")

    # -- the one request path -----------------------------------------------------------------
    async def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: object = None,
        max_body: int = SMALL_BODY_MAX,
        attempts: int | None = None,
        describe: StatusText | None = None,
        rejected: AuthText | None = None,
    ) -> bytes:
        """The body of a 200 answer, trying again on transient failures within ``timeout``.

        ``describe`` words a failed status for this endpoint (default: the request line, the
        status and the start of the body); ``rejected`` words a 401/403 that means refused
        credentials (default: ``describe``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        tries = attempts or self.retry.attempts
        failures = 0
        while True:
            try:
                status, body = await self._once(
                    method, url, params, headers, json, max_body, deadline - loop.time()
                )
                if status == 200:
                    return body
                raise self._failure(method, url, status, body, describe, rejected)
            except CrowdSecUnavailable as exc:
                failures += 1
                delay = self.retry.delay(failures, self.rng)
                if not exc.retry_now or failures >= tries or loop.time() + delay >= deadline:
                    raise
                log.debug("%s; trying again in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    @staticmethod
    def _failure(
        method: str,
        url: str,
        status: int,
        body: bytes,
        describe: StatusText | None,
        rejected: AuthText | None,
    ) -> CrowdSecError:
        transient = status >= 500 or status in _TRANSIENT_4XX
        if describe is not None:
            message = describe(status, body)
        elif transient:
            message = f"{method} {redact_url(url)}: HTTP {status} {_snippet(body)}"
        else:
            message = f"{method} {redact_url(url)}: unexpected HTTP {status} {_snippet(body)}"
        if status in _AUTH:
            return CrowdSecAuthError(
                rejected(status) if rejected is not None else message, status=status
            )
        if transient:
            return CrowdSecUnavailable(message, status=status)
        return CrowdSecStatusError(message, status=status)

    async def _once(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        json: object,
        max_body: int,
        budget: float,
    ) -> tuple[int, bytes]:
        deadline = asyncio.get_running_loop().time() + max(budget, 0.001)
        try:
            async with http1.request(
                method,
                url,
                deadline=deadline,
                params=params,
                headers=self._headers(headers, json is not None),
                body=None if json is None else orjson.dumps(json),
                tls=self.tls,
            ) as resp:
                status = resp.status
                if status == 200:
                    body = await _read(resp, max_body)
                else:
                    body = await _error_body(resp)
        except TimeoutError as exc:
            raise self._no_answer(method, url, "no answer", exc) from None
        except (http1.HttpError, OSError, ValueError) as exc:
            raise self._no_answer(method, url, "", exc) from None
        if body is None:
            msg = f"{method} {redact_url(url)}: body larger than {max_body} bytes"
            raise ResponseTooLarge(msg)
        return status, body

    async def _body_chunks(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        max_body: int,
        rejected: AuthText,
    ) -> AsyncGenerator[bytes, None]:
        """One try, a 200 answer's body as it arrives (at most ``max_body`` bytes), within
        ``timeout`` for the whole body; errors as ``_call`` maps them."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with http1.request(
                method,
                url,
                deadline=deadline,
                params=params,
                headers=self._headers(headers, False),
                tls=self.tls,
            ) as resp:
                if resp.status != 200:
                    error = await _error_body(resp)
                    raise self._failure(method, url, resp.status, error, None, rejected)
                too_large = f"{method} {redact_url(url)}: body larger than {max_body} bytes"
                length = resp.content_length
                if length is not None and length > max_body:
                    raise ResponseTooLarge(too_large)
                size = 0
                async with contextlib.aclosing(resp.iter_body(_STREAM_CHUNK)) as body:
                    async for chunk in body:
                        size += len(chunk)
                        if size > max_body:
                            raise ResponseTooLarge(too_large)
                        yield chunk
        except TimeoutError as exc:
            raise self._no_answer(method, url, "no complete answer", exc) from None
        except (http1.HttpError, OSError, ValueError) as exc:
            raise self._no_answer(method, url, "", exc) from None

    @staticmethod
    def _headers(headers: Mapping[str, str] | None, json: bool) -> dict[str, str]:
        out = {"User-Agent": USER_AGENT, **(headers or {})}
        if json:
            out["Content-Type"] = "application/json"
        return out

    def _no_answer(
        self, method: str, url: str, timed_out: str, exc: BaseException
    ) -> CrowdSecUnavailable:
        """A call that got no (complete) answer. ``timed_out``: how to word a timeout, empty
        for any other failure. A URL or header that cannot be sent (a ValueError) stays
        unusable, so it is not retried at once; a refused connection may not be."""
        reason = str(exc) or type(exc).__name__
        if timed_out:
            msg = f"{method} {redact_url(url)}: {timed_out} within {self.timeout:g}s"
            return CrowdSecUnavailable(msg, reason=reason)
        msg = f"{method} {redact_url(url)}: {type(exc).__name__}: {exc}"
        return CrowdSecUnavailable(msg, reason=reason, retry_now=not isinstance(exc, ValueError))


# -- `auditor check` ---------------------------------------------------------------------------
async def fetch_decisions(url: str, key: str) -> list[Decision]:
    """``GET {url}/v1/decisions`` with a bouncer key; the active decisions, or a ``UsageError``
    naming the flag to fix (``--lapi-url`` or ``--lapi-key-file``), never the key."""
    client = CrowdSecClient(
        url, api_key=BouncerKey(Secret(key), "--lapi-key-file"), timeout=CHECK_TIMEOUT_S
    )
    try:
        async with client:
            delta = await client.decisions()
    except ResponseTooLarge as exc:
        msg = f"--lapi-url {redact_url(url)}: {exc.reason}"
        raise UsageError(msg) from None
    except CrowdSecError as exc:
        if isinstance(exc, CrowdSecAuthError) and exc.status == 403:
            msg = f"--lapi-key-file: the LAPI at {redact_url(url)} rejected the key (403)"
        elif exc.status is not None:
            msg = f"--lapi-url {redact_url(url)}: GET /{DECISIONS_PATH} answered HTTP {exc.status}"
        else:
            msg = f"--lapi-url {redact_url(url)}: cannot reach the LAPI: {exc.reason}"
        raise UsageError(msg) from None
    except DecisionFormatError as exc:
        msg = f"--lapi-url {redact_url(url)}: unexpected decisions payload: {exc}"
        raise UsageError(msg) from None
    return [d for d in delta.new if not d.expired]
