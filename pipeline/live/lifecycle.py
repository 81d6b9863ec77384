"""What ``auditor run`` and ``auditor aggregate`` share from start to exit.

Both serve ``/metrics``, ``/healthz`` and ``/readyz``, stop gracefully on SIGTERM/SIGINT, write
findings as JSON lines and log each finding event the same way; both report the LAPI stream's
health in the same metrics. Written once here, so the two commands cannot drift apart in how
they fail (an unusable ``metrics_listen`` or ``findings`` is a usage error naming the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipeline.config import RunConfig, listen_address
from pipeline.errors import UsageError
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
        self.config = config
        self.stop = stop
        host, port = listen_address(config)
        self.host = host
        self.server = MetricsServer(host, port, exposition, ready)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        """Listen and take over SIGTERM/SIGINT; a port that cannot be had is a usage error."""
        try:
            await self.server.start()
        except (OSError, OverflowError) as exc:
            msg = (
                f"config key 'metrics_listen': cannot listen on {self.config.metrics_listen}: {exc}"
            )
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
