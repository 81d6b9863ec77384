"""The CrowdSec fixture runs the real thing: its agent bans an internal hop from Traefik logs."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.crowdsec import (
    CrowdSecInstance,
    CrowdSecUnavailable,
    probing_burst_lines,
    traefik_json_line,
    write_probing_burst,
)
from tests.support.crowdsec_fixtures import CrowdSecFactory, make_instance

INTERNAL_HOP = "10.42.0.7"
EXTERNAL = "203.0.113.50"  # TEST-NET-3: only ever a string in a log line
PROBING_SCENARIOS = {
    "crowdsecurity/http-probing",
    "crowdsecurity/http-sensitive-files",
    "crowdsecurity/http-bad-user-agent",
    "crowdsecurity/http-crawl-non_statics",
    "crowdsecurity/http-open-proxy",
    "crowdsecurity/http-backdoors-attempts",
}


def bouncer_get(inst: CrowdSecInstance, key: str, query: str) -> Any:
    req = urllib.request.Request(f"{inst.lapi_url}v1/decisions?{query}", headers={"X-Api-Key": key})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def poll_decisions(inst: CrowdSecInstance, key: str, ip: str, timeout: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = bouncer_get(inst, key, f"ip={ip}")
        if found:
            return list(found)
        time.sleep(0.25)
    pytest.fail(f"no decision for {ip} within {timeout:.0f}s\n{inst.log_text()[-4000:]}")


def metric_sum(text: str, metric: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((metric + "{", metric + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_agent_bans_internal_hop_from_traefik_json(
    crowdsec_factory: CrowdSecFactory, tmp_path: Path
) -> None:
    inst = crowdsec_factory()
    access_log = tmp_path / "traefik" / "access.log"
    inst.start_agent([access_log])
    key = inst.add_bouncer("fixture-test")

    write_probing_burst(access_log, INTERNAL_HOP, 20)

    decisions = poll_decisions(inst, key, INTERNAL_HOP)
    assert {d["value"] for d in decisions} == {INTERNAL_HOP}
    assert all(d["scope"] == "Ip" and d["type"] == "ban" for d in decisions)
    assert all(d["origin"] == "crowdsec" for d in decisions)
    assert {d["scenario"] for d in decisions} <= PROBING_SCENARIOS
    # The traefik parser really read the JSON lines from our file.
    metrics = inst.metrics_text()
    ok = metric_sum(
        metrics, "cs_node_hits_ok_total", name="crowdsecurity/traefik-logs", source=str(access_log)
    )
    assert ok >= 1


def test_whitelists_flag_drops_internal_sources(
    crowdsec_factory: CrowdSecFactory, tmp_path: Path
) -> None:
    inst = crowdsec_factory(whitelists=True)
    access_log = tmp_path / "access.log"
    inst.start_agent([access_log])
    key = inst.add_bouncer("whitelist-test")
    write_probing_burst(access_log, INTERNAL_HOP, 20)
    write_probing_burst(access_log, EXTERNAL, 20)

    # One parser and one bucket routine handle lines in order: once the external burst (written
    # second) is banned, the internal burst has been through the buckets too.
    assert {d["value"] for d in poll_decisions(inst, key, EXTERNAL)} == {EXTERNAL}
    assert bouncer_get(inst, key, f"ip={INTERNAL_HOP}") is None
    assert {d["value"] for d in inst.active_decisions()} == {EXTERNAL}


def test_lapi_instance_cscli_and_metrics(crowdsec_lapi: CrowdSecInstance) -> None:
    inst = crowdsec_lapi
    creds = inst.machine_credentials()
    assert creds["url"] == inst.lapi_url == f"http://127.0.0.1:{inst.lapi_port}/"
    assert creds["login"]
    assert creds["password"]
    assert inst.config_path.is_relative_to(inst.root)

    inst.add_decision(ip=INTERNAL_HOP, duration="1h", reason="fixture test")
    inst.add_decision(range="10.42.0.0/24", duration="1h", reason="fixture test")
    values = {(d["scope"], d["value"]) for d in inst.active_decisions()}
    assert values == {("Ip", INTERNAL_HOP), ("Range", "10.42.0.0/24")}

    # CrowdSec deletes by containment: --ip also removes ranges that contain the address.
    inst.delete_decision(range="10.42.0.0/24")
    assert {d["value"] for d in inst.active_decisions()} == {INTERNAL_HOP}
    inst.delete_decision(ip=INTERNAL_HOP)
    assert inst.active_decisions() == []

    assert re.search(r'^cs_info\{version="v1\.4\.6', inst.metrics_text(), re.MULTILINE)


def test_stop_leaves_no_process_and_restart_keeps_state(crowdsec_lapi: CrowdSecInstance) -> None:
    inst = crowdsec_lapi
    inst.add_decision(ip="203.0.113.9", duration="1h")
    pid = inst.pid
    assert pid is not None
    inst.restart_lapi()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert inst.running
    assert inst.lapi_answers()
    assert {d["value"] for d in inst.active_decisions()} == {"203.0.113.9"}


def test_missing_binary_fails_with_install_hint(tmp_path: Path) -> None:
    with pytest.raises(CrowdSecUnavailable, match="apt-get install -y crowdsec"):
        CrowdSecInstance(tmp_path, crowdsec_bin=str(tmp_path / "no-crowdsec"))
    # The fixtures turn that into a failure, not a skip.
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        make_instance(tmp_path, crowdsec_bin=str(tmp_path / "no-crowdsec"))


def test_traefik_line_has_the_v2_key_set(corpus: Path) -> None:
    reference = json.loads((corpus / "traefik-json-v2.jsonl").read_text().splitlines()[0])
    line = json.loads(traefik_json_line(INTERNAL_HOP, "/.env", 404, user_agent="Nikto"))
    assert list(line) == list(reference)
    assert line["ClientHost"] == INTERNAL_HOP
    assert line["ClientAddr"].startswith(INTERNAL_HOP + ":")
    burst = [json.loads(x) for x in probing_burst_lines(INTERNAL_HOP, 25)]
    assert len({x["RequestPath"] for x in burst}) == 25
    assert {x["DownstreamStatus"] for x in burst} == {404}
