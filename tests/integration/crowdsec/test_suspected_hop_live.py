"""suspected_hop live: ``auditor run`` (a real subprocess) against the real CrowdSec LAPI.

A node's public address carries 40 % of the traffic to every site: the auditor raises a
``suspected_hop`` finding at high. A ban on a *range* covering that address (a list that bans
the /24) arrives through the LAPI stream: the finding goes critical, naming the range and the
lockout, and the gauge follows; when the range ban is deleted it returns to high. A heavy client
on one site next to it is never flagged.

Every wait polls against a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.support.auditor_run import Auditor, append, wait_for
from tests.support.crowdsec import CrowdSecInstance, traefik_json_line

pytestmark = pytest.mark.slow

HOP = "198.51.100.7"  # a node's public address, SNAT for everyone
HOP_RANGE = "198.51.100.0/24"
CRAWLER = "192.0.2.80"  # heavy, but one site and one user agent
SITES = [(f"site{i}.example.test", f"site{i}@kubernetes") for i in range(6)]
MINUTES = 15


def traffic(now: dt.datetime) -> list[str]:
    """``MINUTES`` minutes ending a minute ago: per minute, 50 requests from 50 public
    visitors over every site, 40 from the hop over every site (15 browsers behind it), 12 from
    the crawler on one site with one User-Agent."""
    lines = []
    start = now - dt.timedelta(minutes=MINUTES + 1)
    for m in range(MINUTES):
        t0 = start + dt.timedelta(minutes=m)
        for i in range(50):
            host, router = SITES[i % len(SITES)]
            when = t0 + dt.timedelta(seconds=i)
            ip = f"93.184.{m}.{i + 1}"
            lines.append(traefik_json_line(ip, "/", host=host, router=router, when=when))
        for i in range(40):
            host, router = SITES[i % len(SITES)]
            when = t0 + dt.timedelta(seconds=i + 0.5)
            ua = f"Mozilla/5.0 (visitor {i % 15})"  # everyone behind the hop
            lines.append(
                traefik_json_line(HOP, "/feed", host=host, router=router, when=when, user_agent=ua)
            )
        for i in range(12):
            when = t0 + dt.timedelta(seconds=i + 0.25)
            host, router = SITES[0]
            lines.append(
                traefik_json_line(
                    CRAWLER, "/sitemap.xml", host=host, router=router, when=when,
                    user_agent="Googlebot/2.1",
                )
            )  # fmt: skip
    lines.sort(key=lambda ln: ln.split('"StartUTC":"', 1)[1][:26])
    return lines


def test_a_range_ban_on_a_suspected_hop_goes_critical_live_and_back(
    crowdsec_lapi: CrowdSecInstance, tmp_path: Path
) -> None:
    lapi = crowdsec_lapi
    key_file = tmp_path / "lapi-key"
    key_file.write_text(lapi.add_bouncer("hop-live") + "\n")
    log = tmp_path / "access.log"
    append(log, traffic(dt.datetime.now(dt.UTC)))

    auditor = Auditor(
        tmp_path,
        log,
        "--lapi-url",
        lapi.lapi_url,
        "--lapi-key-file",
        str(key_file),
    )
    try:
        high = wait_for(
            lambda: auditor.find(kind="suspected_hop", state="raised", target=HOP),
            "the suspected_hop finding",
            auditor.diag,
        )
        assert high["severity"] == "high"
        assert high["evidence"]["lockout"] is False
        assert 0.3 < high["evidence"]["request_share"] < 0.5
        assert high["evidence"]["user_agents"] >= 3
        wait_for(lambda: auditor.gauge("suspected_hop", "high"), "the high gauge", auditor.diag)

        lapi.add_decision(range=HOP_RANGE, reason="a list that bans the /24")
        critical = wait_for(
            lambda: auditor.find(
                kind="suspected_hop", state="updated", target=HOP, severity="critical"
            ),
            "the finding to go critical",
            auditor.diag,
        )
        assert critical["evidence"]["lockout"] is True
        assert critical["evidence"]["decision"]["value"] == HOP_RANGE
        assert f"cscli decisions delete --range {HOP_RANGE}" in critical["fix"]
        wait_for(
            lambda: auditor.gauge("suspected_hop", "critical"), "the critical gauge", auditor.diag
        )

        lapi.delete_decision(range=HOP_RANGE)
        wait_for(
            lambda: [
                e
                for e in auditor.events()
                if e.get("kind") == "suspected_hop"
                and e.get("severity") == "high"
                and e.get("state") == "updated"
            ],
            "the finding back at high once the range ban is gone",
            auditor.diag,
        )
        wait_for(
            lambda: auditor.gauge("suspected_hop", "high"), "the high gauge again", auditor.diag
        )
    finally:
        assert auditor.stop() == 0, auditor.diag()
    flagged = {e["target"] for e in auditor.events() if e.get("kind") == "suspected_hop"}
    assert flagged == {HOP}, "the one-site crawler must not be a suspected hop"
