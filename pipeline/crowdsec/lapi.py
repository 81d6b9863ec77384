"""CrowdSec Local API decisions stream (``GET /v1/decisions/stream``) as an async delta source.

The first poll (and the first poll after any failure) asks for ``startup=true``, the full state:
a restarted LAPI may have lost or reset this bouncer's cursor, so instead of trusting increments
across an outage, consumers replace their state with every startup poll.

A poll's answer comes as ``DeltaPart``s, each yielded as soon as its decisions are parsed: with
the community blocklist a startup answer lists ~100,000 decisions, and holding them all before
the engine saw the first cost hundreds of MB. ``Engine.apply`` takes the parts in order and
replaces the state only at a startup poll's ``last`` part; a poll that breaks off after some
parts is counted as failed and followed by a startup poll, as any failure is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from parsers.crowdsec import DecisionDelta, DecisionFormatError
from parsers.crowdsec_stream import DeltaPart
from pipeline.crowdsec.client import (
    BouncerKey,
    CrowdSecAuthError,
    CrowdSecClient,
    CrowdSecStatusError,
    CrowdSecUnavailable,
    RetryPolicy,
)
from pipeline.errors import FatalSourceError
from pipeline.secrets import Secret, redact_url

log = logging.getLogger("auditor.crowdsec")

T = TypeVar("T")


class LapiError(Exception):
    """A fatal LAPI answer (bad URL, rejected request): retrying would not help."""


class LapiAuthError(LapiError, FatalSourceError):
    """The LAPI rejected the bouncer key (401/403); the message names its source, never the key."""


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

    def client(self) -> CrowdSecClient:
        return CrowdSecClient(
            self.url,
            api_key=BouncerKey(self.key, self.key_source),
            timeout=self.timeout,
            retry=RetryPolicy(initial_s=self.backoff_initial, max_s=self.backoff_max),
        )


@dataclass(slots=True)
class LapiStatus:
    """Health of the stream, for metrics and the report (mutable: updated on every poll)."""

    up: bool = False
    last_success: float | None = None  # epoch seconds
    polls_ok: int = 0
    polls_failed: int = 0
    last_error: str = ""


class LapiStream:
    """Polls the decisions stream as a bouncer would (header ``X-Api-Key``)."""

    def __init__(self, config: LapiConfig, *, client: CrowdSecClient | None = None) -> None:
        self.config = config
        self.status = LapiStatus()
        self.client = client or config.client()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def deltas(self, stop: asyncio.Event) -> AsyncIterator[DecisionDelta]:
        """Yield ``DeltaPart``s (see the module docstring) until ``stop`` is set.

        A startup poll always ends with a ``last`` part (even empty: the state is empty); an
        increment yields parts only when something changed. A poll counts as a success once its
        whole answer is read, before its ``last`` part is yielded. Connection errors, 5xx,
        oversized or malformed answers mark the stream down and are retried with the client's
        jittered exponential backoff; 401/403 raise ``LapiAuthError`` at once. The HTTP session
        is closed when the iteration ends.
        """
        try:
            startup = True
            failures = 0
            while not stop.is_set():
                counted = False
                try:
                    async with contextlib.aclosing(self._poll(startup=startup)) as parts:
                        while True:
                            part = await _until_stopped(anext(parts, None), stop)
                            if part is None:
                                break
                            if part.last:
                                self._succeeded()
                                counted = True
                            yield part
                except LapiError as exc:
                    self._failed(str(exc))
                    raise
                except (CrowdSecUnavailable, DecisionFormatError) as exc:
                    self._failed(str(exc))
                    failures += 1
                    startup = True  # resync after any gap
                    delay = self.client.retry.delay(failures, self.client.rng)
                    log.debug("LAPI poll failed (%s); retrying in %.2fs", exc, delay)
                    if await _wait(stop, delay):
                        return
                    continue
                if stop.is_set():
                    return
                if not counted:  # an increment with nothing new
                    self._succeeded()
                failures = 0
                startup = False
                if await _wait(stop, self.config.poll_interval):
                    return
        finally:
            await self.aclose()  # the session belongs to this loop's task

    # ---- internals ----------------------------------------------------------------------------
    def _succeeded(self) -> None:
        st = self.status
        if not st.up:
            log.info("CrowdSec LAPI %s is reachable", redact_url(self.config.url))
        st.up = True
        st.last_success = time.time()
        st.polls_ok += 1

    def _failed(self, error: str) -> None:
        st = self.status
        if st.up or st.polls_failed == 0:
            log.warning("CrowdSec LAPI %s is down: %s", redact_url(self.config.url), error)
        st.up = False
        st.polls_failed += 1
        st.last_error = error

    async def _poll(self, *, startup: bool) -> AsyncGenerator[DeltaPart, None]:
        parts = self.client.stream_parts(startup=startup, scopes=self.config.scopes)
        try:
            async with contextlib.aclosing(parts):
                async for part in parts:
                    yield part
        except CrowdSecAuthError as exc:
            raise LapiAuthError(str(exc)) from None
        except CrowdSecStatusError as exc:
            raise LapiError(str(exc)) from None


async def _wait(stop: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds unless ``stop`` is set first; True if stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.0))
    return stop.is_set()


async def _until_stopped(work: Awaitable[T | None], stop: asyncio.Event) -> T | None:
    """Await ``work`` but give up (returning None) as soon as ``stop`` is set."""
    task = asyncio.ensure_future(work)
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
