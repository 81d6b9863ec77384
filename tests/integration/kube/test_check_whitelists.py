"""``auditor check --crowdsec-metrics-url``: one scrape of each CrowdSec agent, served on loopback
from metrics captured off the real CrowdSec 1.4.6 agent (tests/data/crowdsec_metrics): an agent
that scores Traefik lines without the whitelist another agent runs is a ``whitelist_gap``; two
agents that both run it are not; an endpoint that does not answer is a health finding, not a
crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.crowdsec import free_port
from tests.support.crowdsec_agents import Agents, _agents  # noqa: F401 - the fixture
from tests.support.kube_api import FakeKubeApi
from tests.support.kube_facts import GOOD
from tests.support.schemas import validate_check


@pytest.fixture(name="setup")
def _setup(tmp_path: Path, agents: Agents) -> Iterator[tuple[Agents, Path]]:
    for name in ("wl-none-internal", "wl-hub-internal", "wl-hub-before"):
        agents.serve(name, name)
    fake = FakeKubeApi().start().load_cluster(GOOD)
    try:
        yield agents, fake.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        fake.stop()


def _gaps(auditor: Run, kubeconfig: Path, *urls: str) -> list[dict[str, Any]]:
    args = [a for u in urls for a in ("--crowdsec-metrics-url", u)]
    code, out, err = auditor("check", "--kubeconfig", str(kubeconfig), "-o", "json", *args)
    assert code in (0, 1), err
    doc = json.loads(out)
    validate_check(doc)
    return [f for f in doc["findings"] if f["kind"] in ("whitelist_gap", "crowdsec_health")]


def test_the_agent_without_the_whitelist_the_other_runs_is_named(
    auditor: Run, setup: tuple[Agents, Path]
) -> None:
    agents, kubeconfig = setup
    bare, hub = agents.url("wl-none-internal"), agents.url("wl-hub-internal")
    found = _gaps(auditor, kubeconfig, f"{bare},{hub}")
    assert found, "an agent without the hub whitelist must be reported"
    assert {f["kind"] for f in found} == {"whitelist_gap"}
    assert {f["target"] for f in found} == {bare}
    missing = [f for f in found if f["check"] == "whitelist_missing"]
    assert missing and missing[0]["evidence"]["missing"][0]["agents"] == [hub]


def test_agents_that_all_run_the_whitelist_raise_nothing(
    auditor: Run, setup: tuple[Agents, Path]
) -> None:
    agents, kubeconfig = setup
    assert (
        _gaps(auditor, kubeconfig, agents.url("wl-hub-internal"), agents.url("wl-hub-before")) == []
    )


def test_an_endpoint_that_does_not_answer_is_a_finding_not_a_crash(
    auditor: Run, setup: tuple[Agents, Path]
) -> None:
    agents, kubeconfig = setup
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    found = _gaps(auditor, kubeconfig, dead, agents.url("wl-hub-internal"))
    assert [(f["kind"], f["target"]) for f in found] == [("crowdsec_health", dead)]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--crowdsec-metrics-url", "nonsense"),
        ("--crowdsec-metrics-url", "http://127.0.0.1:6060/metrics,ftp://x/metrics"),
        ("--lapi-url", "crowdsec-service:8080"),
    ],
)
def test_a_url_that_is_no_url_exits_2_naming_the_flag(
    auditor: Run, setup: tuple[Agents, Path], flag: str, value: str
) -> None:
    _, kubeconfig = setup
    code, out, err = auditor("check", "--kubeconfig", str(kubeconfig), flag, value)
    assert code == 2, (out, err)
    assert flag in err and "http(s) URL" in err
    assert out == ""
