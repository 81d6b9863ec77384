"""End to end with the real thing: CrowdSec 1.4.6 (agent + LAPI) tails a Traefik access log, bans
the servicelb hop for a probing burst, and ``auditor run`` (a real subprocess) flags the ban with
its blast radius, exports it, lifts it through the LAPI and clears the finding. A second run feeds
lines CrowdSec's traefik parser rejects and gets the log-format and CrowdSec-health findings.

Every wait polls against a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.auditor_run import Auditor, append, wait_for
from tests.support.crowdsec import (
    CrowdSecInstance,
    traefik_json_line,
    write_probing_burst,
)
from tests.support.crowdsec_fixtures import CrowdSecFactory, start_or_fail

pytestmark = pytest.mark.slow


HOP = "10.42.0.7"  # the servicelb hop every masked request comes through
EXTERNAL = "203.0.113.50"  # a legitimately banned outsider: must stay banned
PUBLIC = [f"198.51.100.{i}" for i in range(1, 13)] + ["2001:db8:1::5", "2001:db8:2::9"]
INVIDIOUS_PATHS = (
    "/feed/popular",
    "/watch?v=dQw4w9WgXcQ",
    "/api/v1/videos/dQw4w9WgXcQ",
    "/vi/dQw4w9WgXcQ/mqdefault.jpg",
    "/search?q=lofi",
    "/channel/UCsBjURrPoezykLs9EqgamOA",
)
HOST = "invidious.example.test"
ROUTER = "websecure-invidious-invidious-443@kubernetes"
POD_BANS = 'auditor_internal_bans_active{target_class="pod"}'
DONE_PREFIX = 'auditor_remediations_total{action="delete_decision",result="done"} '


def done_count(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(DONE_PREFIX):
            return float(line.removeprefix(DONE_PREFIX))
    return 0.0


def invidious_lines() -> list[str]:
    """Normal traffic: public clients reaching Traefik directly (a few requests each), and the
    same kind of requests masked behind the hop."""
    lines = []
    for i, ip in enumerate(PUBLIC):
        for j in range(3):
            path = INVIDIOUS_PATHS[(i + j) % len(INVIDIOUS_PATHS)]
            lines.append(traefik_json_line(ip, path, host=HOST, router=ROUTER))
    for j in range(12):
        path = INVIDIOUS_PATHS[j % len(INVIDIOUS_PATHS)]
        lines.append(traefik_json_line(HOP, path, host=HOST, router=ROUTER))
    return lines


def combined_line(ip: str, path: str) -> str:
    """Common format cut after the user agent (a log shipper's "combined"): the auditor reads it
    as common format; CrowdSec's traefik parser wants Traefik's trailing fields and rejects it."""
    now = dt.datetime.now(dt.UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    return f'{ip} - - [{now}] "GET {path} HTTP/1.1" 200 5120 "-" "Mozilla/5.0"'


@pytest.fixture
def agent(crowdsec_factory: CrowdSecFactory, tmp_path: Path) -> tuple[CrowdSecInstance, Path]:
    inst = crowdsec_factory()
    log = tmp_path / "traefik" / "access.log"
    start_or_fail(lambda: inst.start_agent([log]))
    return inst, log


def test_crowdsec_bans_the_hop_and_the_auditor_lifts_it(
    agent: tuple[CrowdSecInstance, Path], tmp_path: Path
) -> None:
    inst, log = agent
    key_file = tmp_path / "lapi-key"
    key_file.write_text(inst.add_bouncer("ban-auditor") + "\n")
    inst.add_decision(ip=EXTERNAL, reason="manual ban of an outsider")

    append(log, invidious_lines())
    write_probing_burst(log, HOP, 20, host=HOST)
    banned = inst.wait_for_decision(HOP)  # CrowdSec itself bans the hop
    assert banned["origin"] == "crowdsec"
    lapi = ["--lapi-url", inst.lapi_url, "--lapi-key-file", str(key_file)]

    # 1. Watching only: the ban is a finding and a gauge for as long as it lasts.
    (tmp_path / "watch").mkdir()
    watcher = Auditor(tmp_path / "watch", log, *lapi)
    try:
        raised = wait_for(
            lambda: watcher.find(kind="internal_ban", state="raised", target=HOP),
            "the internal_ban finding",
            watcher.diag,
        )
        gauge = wait_for(
            lambda: next(
                (
                    ln
                    for ln in watcher.metrics().splitlines()
                    if ln.startswith(POD_BANS + " ") and ln.endswith(" 1.0")
                ),
                None,
            ),
            "auditor_internal_bans_active 1",
            watcher.diag,
        )
    finally:
        assert watcher.stop() == 0, watcher.diag()
    blast = raised["evidence"]["blast_radius"]
    assert raised["severity"] == "critical"
    assert raised["evidence"]["class"] == "pod"
    assert blast["request_share"] > 0
    assert blast["requests"] == 12 + 20
    assert HOP in blast["addresses"]

    # 2. Remediating: the agent's decisions on the hop (1.4.6 streams one of them) are deleted
    # one by one, by id, through the LAPI, and the finding clears.
    hop_ids = {int(d["id"]) for d in inst.active_decisions() if d["value"] == HOP}
    (tmp_path / "fix").mkdir()
    fixer = Auditor(
        tmp_path / "fix",
        log,
        *lapi,
        "--remediate",
        "--no-remediate-dry-run",
        "--lapi-credentials-file",
        str(inst.credentials_path),
        "--crowdsec-metrics-url",
        inst.metrics_url,
    )
    try:
        remediation = wait_for(
            lambda: fixer.find(kind="remediation", target=HOP),
            "the remediation event",
            fixer.diag,
        )
        cleared = wait_for(
            lambda: fixer.find(kind="internal_ban", state="cleared", target=HOP),
            "the internal_ban finding to clear",
            fixer.diag,
        )

        def settled() -> str | None:
            m = fixer.metrics()
            if f"{POD_BANS} 0.0" not in m or not done_count(m):
                return None
            # The agent may still be adding decisions on the hop; each is deleted on its own id.
            left = [d for d in inst.active_decisions() if d["value"] == HOP]
            return None if left else m

        metrics = wait_for(settled, "every decision on the hop deleted", fixer.diag)
    finally:
        assert fixer.stop() == 0, fixer.diag()
    assert remediation["evidence"]["result"] == "done"
    assert remediation["evidence"]["deleted"] == 1
    assert remediation["evidence"]["decision_id"] in hop_ids
    assert done_count(metrics) >= len(hop_ids)  # one deletion per decision id
    assert cleared["at"] >= remediation["at"]
    assert fixer.find(kind="crowdsec_health") is None  # CrowdSec parsed every line

    listed = inst.decisions_list_json()
    values = [d["value"] for alert in listed for d in alert.get("decisions") or []]
    assert HOP not in values
    assert EXTERNAL in values  # the outsider's ban is untouched
    # Nothing re-banned the hop: a later startup sync agrees.
    assert inst.cscli("decisions", "list", "--ip", HOP, "-o", "json").stdout.strip() in (
        "null",
        "[]",
    )

    print("\n--- e2e remediation ---")  # the README quotes these lines
    print(json.dumps(raised, separators=(",", ":")))
    print(gauge)
    print(json.dumps(remediation, separators=(",", ":")))
    print(json.dumps(cleared, separators=(",", ":"))[:300])
    print([ln for ln in metrics.splitlines() if ln.startswith("auditor_remediations_total")])
    print("cscli decisions list -o json values:", values)


def test_lines_crowdsec_cannot_parse(agent: tuple[CrowdSecInstance, Path], tmp_path: Path) -> None:
    inst, log = agent
    append(log, invidious_lines()[:10])  # CrowdSec parses these
    auditor = Auditor(tmp_path, log, "--crowdsec-metrics-url", inst.metrics_url)
    written = 0

    def health_finding() -> dict[str, Any] | None:
        nonlocal written
        # Traffic keeps coming, as it would: the health check judges increases between polls.
        append(
            log,
            [
                combined_line(PUBLIC[(written + i) % 12], f"/watch?v={written + i}")
                for i in range(5)
            ],
        )
        written += 5
        return auditor.find(kind="crowdsec_health", check="traefik_parse_failures", state="raised")

    try:
        health = wait_for(health_finding, "the crowdsec_health finding", auditor.diag)
        log_format = wait_for(
            lambda: auditor.find(kind="log_format", state="raised"),
            "the log_format finding",
            auditor.diag,
        )
    finally:
        code = auditor.stop()
    assert code == 0, auditor.diag()

    assert health["severity"] == "high"
    assert health["target"] == str(log.resolve())
    assert health["evidence"]["lines_failed"] >= 10
    assert health["evidence"]["failed_share"] >= 0.5
    assert health["evidence"]["traefik_parser_lines"] >= 10  # labelled right, format wrong
    assert "accessLog.format: json" in health["fix"]
    assert log_format["target"] == str(log)
    assert log_format["severity"] == "medium"

    print("\n--- e2e parse failures ---")
    print(json.dumps(health, separators=(",", ":")))
    print(json.dumps(log_format, separators=(",", ":")))
