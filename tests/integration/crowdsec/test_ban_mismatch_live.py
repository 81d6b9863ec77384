"""ban_mismatch live: ``auditor run`` (a real subprocess) against the real CrowdSec LAPI.

The bouncer reads ``X-Real-Ip`` (``plugin_forwarded_headers_custom_name``), which Traefik sets
to the TCP peer: every request through the servicelb hop is checked on the hop while CrowdSec
bans the client named in X-Forwarded-For. The auditor raises ``ban_mismatch`` (hop) once at
high; a ban on the hop arriving through the LAPI stream makes it critical (everyone is locked
out), and a ban on a client is reported as a decision the bouncer never checks. When the traffic
stops coming through the hop (newer lines, direct clients only) the findings clear.

Every wait polls against a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.auditor_run import Auditor, append, auditor_bin, wait_for
from tests.support.crowdsec import CrowdSecInstance, traefik_json_line

pytestmark = pytest.mark.slow

HOP = "10.42.0.9"  # servicelb
CLIENT = "81.2.0.5"


def through_hop(start: dt.datetime, n: int) -> list[str]:
    """``n`` requests from 40 public clients through the hop, one a second."""
    lines = []
    for i in range(n):
        client = f"81.2.0.{i % 40 + 1}"
        lines.append(
            traefik_json_line(
                client,
                "/",
                client_addr=f"{HOP}:{30000 + i}",
                when=start + dt.timedelta(seconds=i),
                extra={"request_X-Forwarded-For": client, "request_X-Real-Ip": HOP},
            )
        )
    return lines


def direct(start: dt.datetime, n: int) -> list[str]:
    """``n`` requests straight from public clients: the bouncer checks what CrowdSec bans."""
    when = [start + dt.timedelta(seconds=i) for i in range(n)]
    return [traefik_json_line(f"93.184.0.{i % 40 + 1}", "/", when=w) for i, w in enumerate(when)]


def test_bouncer_checks_the_hop_live_raised_critical_and_cleared(
    crowdsec_lapi: CrowdSecInstance, tmp_path: Path
) -> None:
    lapi = crowdsec_lapi
    key_file = tmp_path / "lapi-key"
    key_file.write_text(lapi.add_bouncer("mismatch-live") + "\n")
    log = tmp_path / "access.log"
    now = dt.datetime.now(dt.UTC)
    append(log, through_hop(now - dt.timedelta(minutes=10), 240))  # 10..6 minutes ago

    auditor = Auditor(
        tmp_path,
        log,
        "--lapi-url",
        lapi.lapi_url,
        "--lapi-key-file",
        str(key_file),
        "--window",
        "120",
        "--plugin-forwarded-headers-custom-name",
        "X-Real-Ip",
    )
    try:
        high = wait_for(
            lambda: auditor.find(kind="ban_mismatch", state="raised", target="hop"),
            "ban_mismatch hop",
            auditor.diag,
        )
        assert high["severity"] == "high"
        assert high["evidence"]["bouncer_checks"] == [HOP]
        assert high["evidence"]["scope"] == "window"
        assert high["evidence"]["bouncer"]["forwardedHeadersCustomName"] == "X-Real-Ip"
        wait_for(lambda: auditor.gauge("ban_mismatch", "high"), "the high gauge", auditor.diag)

        lapi.add_decision(ip=HOP, reason="CrowdSec banned the hop")
        lapi.add_decision(ip=CLIENT, reason="a client the bouncer never checks")
        critical = wait_for(
            lambda: auditor.find(kind="ban_mismatch", target="hop", severity="critical"),
            "the hop finding to go critical",
            auditor.diag,
        )
        assert critical["evidence"]["hop_bans"][0]["value"] == HOP
        unseen = wait_for(
            lambda: auditor.find(kind="ban_mismatch", state="raised", target="decisions:unchecked"),
            "the decision the bouncer never checks",
            auditor.diag,
        )
        assert [d["value"] for d in unseen["evidence"]["examples"]] == [CLIENT]

        append(log, direct(now - dt.timedelta(minutes=4), 200))  # the hop is gone
        wait_for(
            lambda: auditor.find(kind="ban_mismatch", state="cleared", target="hop"),
            "the hop finding to clear",
            auditor.diag,
        )
        wait_for(
            lambda: auditor.find(
                kind="ban_mismatch", state="cleared", target="decisions:unchecked"
            ),
            "the unchecked decisions to clear",
            auditor.diag,
        )
        wait_for(
            lambda: auditor.gauge("ban_mismatch", "critical", "0.0"),
            "the gauge back to 0",
            auditor.diag,
        )
    finally:
        assert auditor.stop() == 0, auditor.diag()
    raised = [
        e for e in auditor.events("ban_mismatch") if e["state"] == "raised" and e["target"] == "hop"
    ]
    assert len(raised) == 1  # raised once, updated to critical, then cleared


def test_run_refuses_a_header_the_log_does_not_carry(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    proc = subprocess.run(
        [
            auditor_bin(),
            "run",
            "--access-log",
            str(log),
            "--plugin-forwarded-headers-custom-name",
            "CF-Ray",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("AUDITOR_")},
    )
    assert proc.returncode == 2
    assert "config key 'plugin_forwarded_headers_custom_name'" in proc.stderr
    assert "Traceback" not in proc.stderr
