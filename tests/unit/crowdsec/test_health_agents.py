"""Several CrowdSec agents behind one ``crowdsec_metrics_url`` (comma-separated): polled in one
round, judged as one group; and ``look_once`` for ``auditor check``. The agents are real HTTP
endpoints on loopback serving text captured from the real CrowdSec 1.4.6 agent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from pipeline.config import RunConfig
from pipeline.core.findings import Finding, Kind, Severity
from pipeline.crowdsec.health import GROUP, HealthChecker, HealthService, look_once
from pipeline.listen import split_urls
from pipeline.live.runner import Runner
from tests.support.crowdsec import free_port
from tests.support.crowdsec_agents import Agents, _agents  # noqa: F401 - the fixture
from tests.support.paths import DATA
from tests.support.waiting import until

CAPTURES = DATA / "crowdsec_metrics"


def make_runner(tmp_path: Path) -> Runner:
    config = RunConfig(
        access_log=(str(tmp_path / "access.log"),),
        metrics_listen="127.0.0.1:0",
        checkpoint_dir=str(tmp_path / "ckpt"),
        findings=str(tmp_path / "findings.jsonl"),
    )
    return Runner(config, registry=CollectorRegistry(), attach=None)


def group(runner: Runner) -> dict[tuple[str, str], Finding]:
    return {
        (f.check, f.target): f
        for key, f in runner.engine.findings.items()
        if key.startswith(f"{GROUP}:")
    }


async def drive(
    service: HealthService, runner: Runner, pred: Callable[[], bool], what: str
) -> None:
    stop = asyncio.Event()

    async def post(fn: Callable[[Runner], None]) -> None:
        fn(runner)

    task = asyncio.create_task(service.run(stop, post))
    try:
        await until(pred, what, timeout=20, detail=lambda: repr(group(runner)))
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def test_split_urls() -> None:
    assert split_urls("http://a:6060/metrics") == ["http://a:6060/metrics"]
    assert split_urls(" http://a/m , http://b/m,,") == ["http://a/m", "http://b/m"]


async def test_several_agents_one_group(agents: Agents, tmp_path: Path) -> None:
    agents.serve("a", "wl-hub-internal")
    agents.serve("b", "wl-none-internal")
    a, b = agents.url("a"), agents.url("b", "scraper:s3cret@")
    shown_b = agents.url("b")  # what findings show: the URL without its user:password@
    down = f"http://127.0.0.1:{free_port()}/metrics"
    service = HealthService(HealthChecker(f"{a},{b},{down}"), interval=0.1, timeout=2)
    assert [c.url for c in service.checkers] == [a, b, down]
    runner = make_runner(tmp_path)
    await drive(
        service,
        runner,
        lambda: (
            ("whitelist_missing", shown_b) in group(runner)
            and ("metrics_unreachable", down) in group(runner)
        ),
        "whitelist_missing for b and metrics_unreachable for the third",
    )
    found = group(runner)
    missing = found[("whitelist_missing", shown_b)]
    assert missing.kind is Kind.WHITELIST_GAP and missing.severity is Severity.HIGH
    assert missing.evidence["missing"] == [{"node": "crowdsecurity/whitelists", "agents": [a]}]
    assert "s3cret" not in repr(found)  # only redacted URLs in findings
    assert not any(t == a for _, t in found)  # nothing about the agent that has it
    # b gets the whitelist: the next round clears the comparison, the other finding stays.
    agents.serve("b", "wl-hub-internal")
    await drive(
        service, runner, lambda: ("whitelist_missing", shown_b) not in group(runner), "clearing"
    )
    assert ("metrics_unreachable", down) in group(runner)


async def test_single_url_keeps_the_given_checker(agents: Agents) -> None:
    checker = HealthChecker(agents.url("a"))
    assert HealthService(checker, interval=1).checkers == [checker]


async def test_look_once(agents: Agents) -> None:
    agents.serve("a", "wl-hub-internal")
    agents.serve("b", "wl-none-internal")
    agents.texts["plain"] = "process_cpu_seconds_total 1.5\n"
    a, b, plain = agents.url("a"), agents.url("b"), agents.url("plain")
    found = {(f.check, f.target): f for f in await look_once([a, b, plain], call_timeout=2)}
    assert set(found) == {("whitelist_missing", b), ("metrics_unreachable", plain)}
    assert found[("whitelist_missing", b)].severity is Severity.HIGH
    alone = await look_once([b], call_timeout=2)
    assert [(f.check, f.severity) for f in alone] == [("no_whitelist", Severity.MEDIUM)]
    assert await look_once([a], call_timeout=2) == []
