"""Decisions with a chosen origin, made the way CrowdSec's own agent makes them.

``cscli decisions add`` always records ``origin=cscli``; remediation treats origins differently,
so tests need decisions that come from the agent (``crowdsec``), from lists or simulated. The
agent pushes them as alerts (``POST /v1/alerts``, logged in as the machine); so does this.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from tests.support.crowdsec import CrowdSecInstance


@dataclass(frozen=True, slots=True)
class Ban:
    value: str
    scope: str = "Ip"  # or "Range"
    origin: str = "crowdsec"
    simulated: bool = False
    scenario: str = "crowdsecurity/http-probing"
    duration: str = "4h"
    type: str = "ban"


def _alert(ban: Ban, now: str) -> dict[str, object]:
    source_key = "ip" if ban.scope == "Ip" else "range"
    return {
        "scenario": ban.scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": f"test ban on {ban.value}",
        "events_count": 1,
        "start_at": now,
        "stop_at": now,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": ban.simulated,
        "events": [],
        "source": {"scope": ban.scope, "value": ban.value, source_key: ban.value},
        "decisions": [
            {
                "duration": ban.duration,
                "origin": ban.origin,
                "scenario": ban.scenario,
                "scope": ban.scope,
                "type": ban.type,
                "value": ban.value,
                "simulated": ban.simulated,
            }
        ],
    }


def _call(url: str, body: object | None, token: str | None = None) -> bytes:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: bytes = resp.read()
        return answer


def _active_ids(inst: CrowdSecInstance, token: str) -> set[int]:
    """Every active decision id, every origin (CAPI and lists included), simulated too."""
    url = f"{inst.lapi_url}v1/alerts?has_active_decision=true&include_capi=true&limit=0"
    alerts = json.loads(_call(url, None, token)) or []
    return {
        int(d["id"])
        for a in alerts
        for d in a.get("decisions") or []
        if not str(d.get("duration", "")).startswith("-")
    }


def push_bans(inst: CrowdSecInstance, bans: Sequence[Ban]) -> list[int]:
    """Create one alert per ban; returns the new decision ids in the order of ``bans``."""
    creds = inst.machine_credentials()
    login = {"machine_id": creds["login"], "password": creds["password"], "scenarios": []}
    token = json.loads(_call(f"{inst.lapi_url}v1/watchers/login", login))["token"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    before = _active_ids(inst, token)
    ids: list[int] = []
    for ban in bans:  # one call each, so the ids come back in order
        _call(f"{inst.lapi_url}v1/alerts", [_alert(ban, now)], token)
        new = _active_ids(inst, token) - before - set(ids)
        if len(new) != 1:
            msg = f"pushing a ban on {ban.value} made {len(new)} active decisions, not 1"
            raise AssertionError(msg)
        ids.append(new.pop())
    return ids
