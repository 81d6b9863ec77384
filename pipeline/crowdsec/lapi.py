"""CrowdSec Local API decisions stream (``GET /v1/decisions/stream``) as an async delta source.

The first poll (and the first poll after any failure) asks for ``startup=true``, the full state:
a restarted LAPI may have lost or reset this bouncer's cursor, so instead of trusting increments
across an outage, consumers replace their state with every ``delta.startup`` delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

import pipeline
from parsers.crowdsec import DecisionDelta, DecisionFormatError, parse_decisions
from pipeline.errors import FatalSourceError
from pipeline.secrets import Secret

log = logging.getLogger(__name__)

STREAM_PATH = "v1/decisions/stream"
_RETRY_4XX = frozenset({408, 425, 429})
_BODY_SNIPPET = 200


class LapiError(Exception):
    """A fatal LAPI answer (bad URL, rejected request): retrying would not help."""


class LapiAuthError(LapiError, FatalSourceError):
    """The LAPI rejected the bouncer key (401/403); the message names its source, never the key."""


class _TransientError(Exception):
    """A failed poll worth retrying (connection error, timeout, 5xx, unreadable body)."""


@dataclass(frozen=True, slots=True)
class LapiConfig:
    url: str  # e.g. http://127.0.0.1:8080/
    key: Secret = field(repr=False)  # from a file or env var, never argv
    key_source: str  # e.g. "file /run/secrets/lapi-key"; used in error messages
    poll_interval: float = 10.0
    scopes: tuple[str, ...] = ("ip", "range")
    timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    @property
    def stream_url(self) -> str:
        return self.url.rstrip("/") + "/" + STREAM_PATH


@dataclass(slots=True)
class LapiStatus:
    """Health of the stream, for metrics and the report (mutable: updated on every poll)."""

    up: bool = False
    last_success: float | None = None  # epoch seconds
    polls_ok: int = 0
    polls_failed: int = 0
    last_error: str = ""


SessionFactory = Callable[[], aiohttp.ClientSession]


class LapiStream:
    """Polls the decisions stream as a bouncer would (header ``X-Api-Key``)."""

    def __init__(
        self, config: LapiConfig, *, session_factory: SessionFactory | None = None
    ) -> None:
        self.config = config
        self.status = LapiStatus()
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def deltas(self, stop: asyncio.Event) -> AsyncIterator[DecisionDelta]:
        """Yield decision deltas until ``stop`` is set.

        Always yields startup deltas (even empty: the state is empty); increments only when
        something changed. Connection errors and 5xx are retried with jittered exponential
        backoff and mark the stream down; 401/403 raise ``LapiAuthError`` at once. The HTTP
        session is closed when the iteration ends.
        """
        try:
            startup = True
            failures = 0
            while not stop.is_set():
                try:
                    body = await _until_stopped(self._poll(startup=startup), stop)
                    if body is None:
                        return
                    delta = parse_decisions(body, startup=startup)
                except LapiError as exc:
                    self._failed(str(exc))
                    raise
                except (_TransientError, DecisionFormatError) as exc:
                    self._failed(str(exc))
                    failures += 1
                    startup = True  # resync after any gap
                    delay = self._backoff(failures)
                    log.debug("LAPI poll failed (%s); retrying in %.2fs", exc, delay)
                    if await _wait(stop, delay):
                        return
                    continue
                self._succeeded()
                failures = 0
                was_startup, startup = startup, False
                if was_startup or delta.new or delta.deleted:
                    yield delta
                if await _wait(stop, self.config.poll_interval):
                    return
        finally:
            await self.aclose()  # the session belongs to this loop's task

    # ---- internals ----------------------------------------------------------------------------
    def _backoff(self, failures: int) -> float:
        cfg = self.config
        ceiling = min(cfg.backoff_max, cfg.backoff_initial * 2.0 ** min(failures - 1, 30))
        jitter: float = self._rng.uniform(0, ceiling / 2)
        return ceiling / 2 + jitter  # "equal jitter"

    def _succeeded(self) -> None:
        st = self.status
        if not st.up:
            log.info("CrowdSec LAPI %s is reachable", self.config.url)
        st.up = True
        st.last_success = time.time()
        st.polls_ok += 1

    def _failed(self, error: str) -> None:
        st = self.status
        if st.up or st.polls_failed == 0:
            log.warning("CrowdSec LAPI %s is down: %s", self.config.url, error)
        st.up = False
        st.polls_failed += 1
        st.last_error = error

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                    headers={"User-Agent": f"ban-auditor/{pipeline.__version__}"},
                )
        return self._session

    async def _poll(self, *, startup: bool) -> bytes:
        cfg = self.config
        params = {"startup": "true" if startup else "false"}
        if cfg.scopes:
            params["scopes"] = ",".join(cfg.scopes)
        headers = {"X-Api-Key": cfg.key.reveal(), "Accept": "application/json"}
        url = cfg.stream_url
        try:
            async with self._get_session().get(
                url,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                body = await resp.read()
        except TimeoutError:
            msg = f"GET {url}: no answer within {cfg.timeout:g}s"
            raise _TransientError(msg) from None
        except aiohttp.ClientError as exc:
            msg = f"GET {url}: {type(exc).__name__}: {exc}"
            raise _TransientError(msg) from None
        if status == 200:
            return body
        snippet = body[:_BODY_SNIPPET].decode("utf-8", "replace").strip()
        if status in (401, 403):
            msg = (
                f"CrowdSec LAPI {cfg.url} rejected the bouncer API key from {cfg.key_source} "
                f"(HTTP {status}); check that the key was created with "
                "'cscli bouncers add' on this LAPI"
            )
            raise LapiAuthError(msg)
        if status >= 500 or status in _RETRY_4XX:
            msg = f"GET {url}: HTTP {status} {snippet}"
            raise _TransientError(msg)
        msg = f"GET {url}: unexpected HTTP {status} {snippet}"
        raise LapiError(msg)


async def _wait(stop: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds unless ``stop`` is set first; True if stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.0))
    return stop.is_set()


async def _until_stopped(coro: Coroutine[Any, Any, bytes], stop: asyncio.Event) -> bytes | None:
    """Run ``coro`` but give up (returning None) as soon as ``stop`` is set."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()
