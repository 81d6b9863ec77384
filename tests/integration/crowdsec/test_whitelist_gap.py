"""``whitelist_gap`` live: two real CrowdSec 1.4.6 agents tail the same Traefik access log, one
with the hub's whitelist parser and one without, and ``auditor run`` (a real subprocess) reads
the log and polls both agents' metrics (``--crowdsec-metrics-url a,b``).

Lines from the servicelb hop (10.42.0.7) reach the second agent's scenarios un-whitelisted: the
auditor raises ``internal_unwhitelisted`` and ``whitelist_missing`` for that agent, exports them
as ``auditor_findings_active{kind="whitelist_gap"}``, and raises nothing for the first agent,
which was polled in the same rounds on the same lines. Given the same whitelist and restarted,
the second agent's findings clear.

Every wait polls against a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.auditor_run import Auditor as AuditorRun
from tests.support.auditor_run import wait_for as wait_until
from tests.support.crowdsec import HUB_DIR, CrowdSecInstance, traefik_json_line
from tests.support.crowdsec_fixtures import CrowdSecFactory, start_or_fail

pytestmark = pytest.mark.slow

HOP = "10.42.0.7"  # k3s pod range: internal by default, the masked client of every hop line
PUBLIC = [f"198.51.100.{i}" for i in range(1, 60)]
DEADLINE = 60.0


class Feeder:
    """Keeps Traefik traffic coming, as it would: hop lines on distinct pages (so the crawl
    scenario takes each one that is not whitelisted) and a few public clients."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            lines = [traefik_json_line(HOP, f"/videos/{self.n + i}-clip") for i in range(4)]
            lines.append(traefik_json_line(PUBLIC[self.n % len(PUBLIC)], f"/feed/{self.n}"))
            with self.log.open("a", encoding="utf-8") as f:
                f.write("".join(ln + "\n" for ln in lines))
            self.n += 5
            self._stop.wait(0.25)


class Auditor(AuditorRun):
    """``auditor run`` polling the given agents' metrics."""

    def __init__(self, tmp: Path, log: Path, metrics_urls: list[str]) -> None:
        super().__init__(tmp, log, "--crowdsec-metrics-url", ",".join(metrics_urls))

    def active(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """whitelist_gap findings currently raised, by (check, target, severity)."""
        out: dict[tuple[str, str, str], dict[str, Any]] = {}
        for e in self.events():
            if e["kind"] != "whitelist_gap":
                continue
            key = (e["check"], e["target"], e["severity"])
            if e["state"] == "cleared":
                out.pop(key, None)
            else:
                out[key] = e
        return out

    def gauge(self) -> float | None:
        """Sum of auditor_findings_active{kind="whitelist_gap"}; None before the first scrape."""
        text = self.metrics()
        if not text:
            return None
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "auditor_findings_active" and s.labels.get("kind") == "whitelist_gap"
        )

    def diag(self) -> str:
        self.proc.poll()
        return (
            f"auditor exit code: {self.proc.returncode}\n--- stderr ---\n"
            + self.stderr_path.read_text(errors="replace")[-4000:]
            + "\n--- whitelist_gap events ---\n"
            + "\n".join(json.dumps(e)[:600] for e in self.events() if e["kind"] == "whitelist_gap")
        )


def wait_for(pred: Callable[[], Any], what: str, diag: Callable[[], str]) -> Any:
    return wait_until(pred, what, diag, deadline=DEADLINE)  # CrowdSec restarts in between


def enable_hub_whitelist(inst: CrowdSecInstance) -> None:
    dest = inst.config_dir / "parsers" / "s02-enrich" / "whitelists.yaml"
    dest.symlink_to(HUB_DIR / "parsers" / "s02-enrich" / "crowdsecurity" / "whitelists.yaml")


def test_agent_without_the_whitelist(crowdsec_factory: CrowdSecFactory, tmp_path: Path) -> None:
    log = tmp_path / "traefik" / "access.log"
    guarded = crowdsec_factory(whitelists=True)
    bare = crowdsec_factory()
    start_or_fail(lambda: guarded.start_agent([log]))
    start_or_fail(lambda: bare.start_agent([log]))
    auditor = Auditor(tmp_path, log, [guarded.metrics_url, bare.metrics_url])
    try:
        with Feeder(log):
            found = wait_for(
                lambda: len(auditor.active()) >= 2 and auditor.gauge() == 2 and auditor.active(),
                "internal_unwhitelisted and whitelist_missing on the bare agent",
                auditor.diag,
            )
            assert {(c, t) for c, t, _ in found} == {
                ("internal_unwhitelisted", bare.metrics_url),
                ("whitelist_missing", bare.metrics_url),
            }, auditor.diag()
            gap = found[("internal_unwhitelisted", bare.metrics_url, "high")]
            missing = found[("whitelist_missing", bare.metrics_url, "high")]

            # The fix: the same whitelist on the bare agent. It restarts (counters from zero)
            # and its findings clear while traffic keeps coming.
            bare.stop()
            enable_hub_whitelist(bare)
            start_or_fail(lambda: bare.start_agent([log]))
            wait_for(
                lambda: not auditor.active() and auditor.gauge() == 0,
                "the whitelist_gap findings to clear",
                auditor.diag,
            )
    finally:
        code = auditor.stop()
    assert code == 0, auditor.diag()
    # Nothing was ever raised for the agent that had the whitelist all along.
    assert all(
        e["target"] != guarded.metrics_url for e in auditor.events() if e["kind"] == "whitelist_gap"
    )

    ev = gap["evidence"]
    assert ev["internal_requests"] >= 20
    assert set(ev["internal_by_class"]) == {"pod"}
    assert ev["crowdsec_lines"] >= 20
    assert ev["whitelist_nodes"] == []
    assert ev["poured"][0]["scenario"] == "crowdsecurity/http-crawl-non_statics"
    assert ev["crowdsec_version"].startswith("v1.4.6")
    assert "auditor allowlist --only whitelist" in gap["fix"]
    assert missing["evidence"]["missing"] == [
        {"node": "crowdsecurity/whitelists", "agents": [guarded.metrics_url]}
    ]

    print("\n--- live whitelist_gap ---")
    print(json.dumps(gap, separators=(",", ":")))
    print(json.dumps(missing, separators=(",", ":")))
