"""Waiting for something a real component does in its own time (a broker, a LAPI, a runner).

One poll loop for every integration test, so a timeout always fails the test the same way
and names what it waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest


async def until(
    pred: Callable[[], bool],
    what: str,
    *,
    timeout: float,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``pred`` every ``interval`` seconds; fail the test after ``timeout`` seconds,
    naming ``what`` (and ``detail()``, when given, for the state at that moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            extra = f"; {detail()}" if detail is not None else ""
            pytest.fail(f"timed out waiting for {what}{extra}")
        await asyncio.sleep(interval)
