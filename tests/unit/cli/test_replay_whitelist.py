"""``auditor replay --crowdsec-metrics FILE``: whitelist_gap from saved CrowdSec metrics pages
(captured from the real CrowdSec 1.4.6 agent, tests/data/crowdsec_metrics) against the replayed
traffic; a file that is no metrics page exits 2 naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.paths import DATA, GOLDEN

MASKED = GOLDEN / "k3s-masked-internal-ban" / "input.log"  # most requests via servicelb hops
CAPTURES = DATA / "crowdsec_metrics"
BARE = str(CAPTURES / "wl-none-internal.prom")  # an agent without the whitelist parser
HUB = str(CAPTURES / "wl-hub-internal.prom")  # one with crowdsecurity/whitelists


def gaps(auditor: Run, log: Path, *metrics: str) -> list[dict[str, Any]]:
    args = [a for m in metrics for a in ("--crowdsec-metrics", m)]
    code, out, err = auditor("replay", str(log), *args, "-o", "json", "--fail-on", "never")
    assert code == 0, err
    return [f for f in json.loads(out)["findings"] if f["kind"] == "whitelist_gap"]


def test_internal_traffic_an_agent_did_not_whitelist(auditor: Run) -> None:
    (gap,) = gaps(auditor, MASKED, BARE)
    assert (gap["check"], gap["target"], gap["severity"]) == (
        "internal_unwhitelisted",
        BARE,
        "high",
    )
    assert gap["evidence"]["internal_requests"] >= 20
    assert gap["evidence"]["whitelist_nodes"] == []


def test_an_agent_with_the_whitelist_raises_nothing(auditor: Run) -> None:
    assert gaps(auditor, MASKED, HUB) == []


def test_two_agents_name_the_one_without_the_whitelist(auditor: Run) -> None:
    found = {(f["check"], f["target"]) for f in gaps(auditor, MASKED, BARE, HUB)}
    assert found == {("internal_unwhitelisted", BARE), ("whitelist_missing", BARE)}


def test_public_traffic_needs_no_whitelist(auditor: Run, tmp_path: Path) -> None:
    """The same agent page against logs with no internal client: nothing to whitelist, so no
    internal_unwhitelisted; the page alone still says the agent scores Traefik lines with no
    whitelist at all (medium)."""
    log = tmp_path / "public.log"
    lines = [
        line
        for line in MASKED.read_text().splitlines()
        if '"ClientHost":"10.' not in line and '"ClientHost":"127.' not in line
    ]
    log.write_text("\n".join(lines) + "\n")
    found = gaps(auditor, log, BARE)
    assert [(f["check"], f["severity"]) for f in found] == [("no_whitelist", "medium")]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe not text", "not Prometheus text"),
        (b"# HELP go_goroutines x\n# TYPE go_goroutines gauge\ngo_goroutines 7\n", "no CrowdSec"),
        (b'{"not": "metrics"}\n', "not Prometheus text"),
    ],
)
def test_a_file_that_is_no_metrics_page_exits_2_naming_it(
    auditor: Run, tmp_path: Path, content: bytes, why: str
) -> None:
    bad = tmp_path / "agent.prom"
    bad.write_bytes(content)
    code, out, err = auditor("replay", str(MASKED), "--crowdsec-metrics", str(bad))
    assert code == 2, (out, err)
    assert f"--crowdsec-metrics {bad}" in err and why in err
    assert out == ""


def test_a_missing_metrics_file_exits_2(auditor: Run, tmp_path: Path) -> None:
    code, _, err = auditor("replay", str(MASKED), "--crowdsec-metrics", str(tmp_path / "no"))
    assert code == 2
    assert "not found" in err
