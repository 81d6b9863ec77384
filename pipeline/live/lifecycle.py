"""What ``auditor run`` and ``auditor aggregate`` share from start to exit.

Both serve ``/metrics``, ``/healthz`` and ``/readyz``, stop gracefully on SIGTERM/SIGINT, write
findings as JSON lines and log each finding event the same way; both report the LAPI stream's
health in the same metrics. Written once here, so the two commands cannot drift apart in how
they fail (an unusable ``metrics_listen`` or ``findings`` is a usage error naming the key).
``Supervisor`` keeps long-running tasks alive and tells readiness which one is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from pipeline.config import RunConfig
from pipeline.errors import FatalSourceError, UsageError
from pipeline.listen import host_port
from sinks.http import MetricsServer
from sinks.jsonl import JsonlFindings
from sinks.prometheus import SourceHealth

if TYPE_CHECKING:
    from pipeline.contracts import EventSink, SyncStatus
    from pipeline.core.findings import FindingEvent
    from pipeline.crowdsec.lapi import LapiStream

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Lifecycle:
    """The metrics server and the stop signals of one long-running command."""

    def __init__(
        self,
        config: RunConfig,
        exposition: Callable[[], bytes],
        ready: Callable[[], tuple[bool, str]],
        stop: asyncio.Event,
    ) -> None:
        self._init(config.metrics_listen, "config key 'metrics_listen'", exposition, ready, stop)

    @classmethod
    def at(
        cls,
        listen: str,
        name: str,
        exposition: Callable[[], bytes],
        ready: Callable[[], tuple[bool, str]],
        stop: asyncio.Event,
    ) -> Lifecycle:
        """For a command without a ``RunConfig`` (``auditor discover``): ``name`` is what a
        usage error names (``--metrics-listen``)."""
        self = cls.__new__(cls)
        self._init(listen, name, exposition, ready, stop)
        return self

    def _init(
        self,
        listen: str,
        name: str,
        exposition: Callable[[], bytes],
        ready: Callable[[], tuple[bool, str]],
        stop: asyncio.Event,
    ) -> None:
        address = host_port(listen)
        if address is None:
            msg = f"{name}: expected HOST:PORT, got {listen!r}"
            raise UsageError(msg)
        self.listen = listen
        self.name = name
        self.stop = stop
        self.host = address[0]
        self.server = MetricsServer(*address, exposition, ready)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        """Listen and take over SIGTERM/SIGINT; a port that cannot be had is a usage error."""
        try:
            await self.server.start()
        except (OSError, OverflowError) as exc:
            msg = f"{self.name}: cannot listen on {self.listen}: {exc}"
            raise UsageError(msg) from None
        self._loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.stop.set)

    async def close(self) -> None:
        """Stop serving. The signal handlers stay until ``release``: a second SIGTERM while the
        sinks drain must not kill the process before its checkpoint is written."""
        await self.server.close()

    def release(self) -> None:
        """Give SIGTERM/SIGINT back; call last, after everything else has closed."""
        if self._loop is not None:
            for sig in _SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    self._loop.remove_signal_handler(sig)
            self._loop = None


class Supervisor:
    """Runs named long-running tasks, restarts one that dies, and says which are down.

    A task that raises (or returns while its stop event is clear) is logged with the reason,
    marked down (``unready()`` names it, for ``/readyz``) and started again after a backoff
    that doubles up to ``backoff_max_s``; it is up again once a new run has lasted
    ``settle_s``. Without this a task that died left the process up and ready on stale data:
    the aggregator kept serving a cluster view nobody updated any more.

    ``UsageError`` and ``FatalSourceError`` are not retried (the config cannot work): the first
    is kept in ``fatal`` and ``stop`` is set, so the command exits 2 as before.
    """

    def __init__(
        self,
        stop: asyncio.Event,
        log: logging.Logger,
        *,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        settle_s: float = 5.0,
    ) -> None:
        self.stop = stop
        self.log = log
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.settle_s = settle_s
        self.fatal: BaseException | None = None
        self.restarts: dict[str, int] = {}
        self._down: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        stop: asyncio.Event | None = None,
    ) -> asyncio.Task[None]:
        """Start ``run()`` as task ``name``; ``stop`` (default: the supervisor's) ends it."""
        task = asyncio.create_task(self._keep(name, run, stop or self.stop), name=name)
        self._tasks.append(task)
        return task

    def down(self) -> dict[str, str]:
        """The tasks that are down now, with why."""
        return dict(self._down)

    def unready(self) -> str | None:
        if not self._down:
            return None
        return "task down: " + "; ".join(f"{n} ({why})" for n, why in sorted(self._down.items()))

    async def join(self) -> None:
        """Wait for every task (each ends when its stop event is set)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _keep(
        self, name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_s
        while True:
            started = loop.time()
            settle = loop.call_later(self.settle_s, self._up, name) if name in self._down else None
            failure: Exception | None = None
            try:
                await run()
            except (UsageError, FatalSourceError) as exc:
                self.fatal = self.fatal or exc
                self.stop.set()
                return
            except Exception as exc:  # noqa: BLE001 - any failure: log, mark down, restart
                failure = exc
            finally:
                if settle is not None:
                    settle.cancel()
            if stop.is_set():
                if failure is not None:
                    self.log.warning("task %s failed while stopping: %s", name, failure)
                return
            if loop.time() - started >= self.backoff_max_s:
                delay = self.backoff_s  # it had been running fine: not a crash loop
            what = "died" if failure is not None else "ended unexpectedly"
            self.log.error("task %s %s; restarting in %gs", name, what, delay, exc_info=failure)
            self._down[name] = f"{type(failure).__name__}: {failure}"[:200] if failure else what
            self.restarts[name] = self.restarts.get(name, 0) + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            delay = min(self.backoff_max_s, delay * 2)

    def _up(self, name: str) -> None:
        if self._down.pop(name, None) is not None:
            self.log.info("task %s is running again", name)


def open_findings(config: RunConfig) -> JsonlFindings:
    """The JSON-lines findings sink of ``findings``; an unwritable path names the key."""
    try:
        return JsonlFindings(config.findings)
    except OSError as exc:
        msg = f"config key 'findings': cannot open {config.findings}: {exc}"
        raise UsageError(msg) from None


def send(events: Sequence[FindingEvent], sinks: Sequence[EventSink], log: logging.Logger) -> None:
    """Hand finding events to every sink and log one line each."""
    if not events:
        return
    for sink in sinks:
        sink.emit(events)
    for e in events:
        log.info("finding %s: %s %s", e.state.value, e.finding.kind.value, e.finding.summary)


def lapi_unready(lapi: LapiStream | None) -> str | None:
    """Why the LAPI stream makes the command unready, or None when it does not."""
    if lapi is not None and not lapi.status.up:
        return f"lapi down: {lapi.status.last_error or 'no successful poll yet'}"
    return None


def source_health(
    lapi: LapiStream | None,
    *,
    tail_lag_bytes: int = 0,
    tail_rotations: int = 0,
    kube: SyncStatus | None = None,
) -> SourceHealth:
    """The numbers the sources own (the engine does not), for the metrics refresh."""
    status = lapi.status if lapi is not None else None
    return SourceHealth(
        lapi_configured=status is not None,
        lapi_up=bool(status and status.up),
        lapi_last_success=status.last_success if status else None,
        lapi_polls_ok=status.polls_ok if status else 0,
        lapi_polls_failed=status.polls_failed if status else 0,
        tail_lag_bytes=tail_lag_bytes,
        tail_rotations=tail_rotations,
        kube_configured=kube is not None,
        kube_up=bool(kube is not None and kube.up),
        kube_last_sync=kube.last_sync if kube is not None else None,
    )
