"""``Supervisor``: a long-running task that dies is restarted with backoff and named by
``/readyz`` (a real metrics socket) until it runs again; a config error still ends the command."""

from __future__ import annotations

import asyncio
import logging

from pipeline.config import RunConfig
from pipeline.errors import UsageError
from pipeline.live.lifecycle import Lifecycle, Supervisor
from tests.support.kafka import readiness
from tests.support.waiting import until

log = logging.getLogger("auditor.test")


async def test_a_dead_task_is_named_by_readyz_restarted_and_then_up_again() -> None:
    stop = asyncio.Event()
    tasks = Supervisor(stop, log, backoff_s=0.2, backoff_max_s=1.0, settle_s=0.5)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"boom {runs}")
        await stop.wait()

    def ready() -> tuple[bool, str]:
        why = tasks.unready()
        return (False, why) if why else (True, "ready")

    lifecycle = Lifecycle(RunConfig(metrics_listen="127.0.0.1:0"), lambda: b"", ready, stop)
    await lifecycle.start()
    url = f"http://127.0.0.1:{lifecycle.port}/readyz"
    try:
        task = tasks.spawn("totals reader", flaky)
        await until(lambda: runs >= 1 and bool(tasks.down()), "the first failure", timeout=5)
        status, body = await asyncio.to_thread(readiness, url)
        assert status == 503
        assert "totals reader" in body
        assert "RuntimeError: boom" in body
        await until(lambda: runs == 3, "two restarts", timeout=5)
        assert tasks.down()  # down until the new run has lasted settle_s
        await until(lambda: not tasks.down(), "the task to count as up again", timeout=5)
        assert await asyncio.to_thread(readiness, url) == (200, "ready\n")
        assert tasks.restarts == {"totals reader": 2}
        stop.set()
        await asyncio.wait_for(task, 5)
        assert tasks.fatal is None
    finally:
        stop.set()
        await lifecycle.close()
        lifecycle.release()


async def test_a_task_that_returns_early_is_restarted_too() -> None:
    stop = asyncio.Event()
    tasks = Supervisor(stop, log, backoff_s=0.05, backoff_max_s=0.2, settle_s=10.0)
    runs = 0

    async def quits() -> None:
        nonlocal runs
        runs += 1

    tasks.spawn("ticker", quits)
    await until(lambda: runs >= 4, "restarts with backoff", timeout=5)
    assert tasks.down() == {"ticker": "ended unexpectedly"}
    stop.set()
    await asyncio.wait_for(tasks.join(), 5)


async def test_a_config_error_stops_everything_instead_of_retrying() -> None:
    stop = asyncio.Event()
    tasks = Supervisor(stop, log, backoff_s=0.05)

    async def misconfigured() -> None:
        raise UsageError("config key 'x': nope")

    other = tasks.spawn("other", stop.wait)
    tasks.spawn("decisions", misconfigured)
    await asyncio.wait_for(other, 5)
    assert stop.is_set()
    assert isinstance(tasks.fatal, UsageError)
    assert tasks.down() == {}


async def test_each_task_ends_with_its_own_stop_event() -> None:
    stop, later = asyncio.Event(), asyncio.Event()
    tasks = Supervisor(stop, log)
    first = tasks.spawn("events consumer", stop.wait)
    last = tasks.spawn("totals reader", later.wait, later)
    stop.set()
    await asyncio.wait_for(first, 5)
    assert not last.done()
    later.set()
    await asyncio.wait_for(last, 5)
    assert tasks.down() == {}
    assert tasks.restarts == {}
