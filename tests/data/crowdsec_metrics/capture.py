"""Regenerate the CrowdSec 1.4.6 metrics captures in this directory from a real agent.

Run from the repository root: ``.venv/bin/python tests/data/crowdsec_metrics/capture.py`` (add
``whitelists`` to write only the ``wl-*`` files).
The temp access-log path in the ``source`` labels is rewritten to ``SOURCE`` so the files are
stable; everything else is CrowdSec's own exposition text.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.support.crowdsec import CrowdSecInstance, traefik_json_line, write_probing_burst

HERE = Path(__file__).parent
SOURCE = "/var/log/traefik/access.log"
PUBLIC = [f"198.51.100.{i}" for i in range(1, 11)]


def combined_line(ip: str, path: str) -> str:
    """Apache/nginx "combined" shape: common format without Traefik's trailing fields."""
    now = dt.datetime.now(dt.UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    return f'{ip} - - [{now}] "GET {path} HTTP/1.1" 200 5120 "-" "Mozilla/5.0"'


def append(log: Path, lines: list[str]) -> None:
    with log.open("a", encoding="utf-8") as f:
        f.write("".join(ln + "\n" for ln in lines))


def settle(inst: CrowdSecInstance, metric: str, want: float) -> str:
    """Poll the metrics until ``metric`` (summed) reaches ``want``; then one more second."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = inst.metrics_text()
        total = sum(
            float(ln.rsplit(" ", 1)[1])
            for ln in text.splitlines()
            if ln.startswith((metric + "{", metric + " "))
        )
        if total >= want:
            time.sleep(1.0)
            return inst.metrics_text()
        time.sleep(0.2)
    msg = f"{metric} did not reach {want}"
    raise RuntimeError(msg)


def save(name: str, text: str, log: Path) -> None:
    (HERE / name).write_text(text.replace(str(log), SOURCE))
    print("wrote", name)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log = root / "access.log"

        lapi = CrowdSecInstance(root / "lapi")
        lapi.start_lapi()
        save("lapi-only.prom", lapi.metrics_text(), log)
        lapi.stop()

        inst = CrowdSecInstance(root / "agent")
        inst.start_agent([log])
        save("agent-idle.prom", inst.metrics_text(), log)
        append(log, [traefik_json_line(ip, "/feed/popular") for ip in PUBLIC])
        save("json-ok.prom", settle(inst, "cs_parser_hits_ok_total", 10), log)
        write_probing_burst(log, "10.42.0.7", 20)
        inst.wait_for_decision("10.42.0.7")
        save("json-banned.prom", settle(inst, "cs_active_decisions", 1), log)
        append(log, [combined_line(PUBLIC[i % 10], f"/watch?v={i}") for i in range(30)])
        save("combined-failing.prom", settle(inst, "cs_parser_hits_ko_total", 30), log)
        inst.stop()

        sim = CrowdSecInstance(root / "simulation")
        sim.cscli("simulation", "enable", "--global")
        sim.start_agent([log])
        append(log, [traefik_json_line(ip, "/feed/popular") for ip in PUBLIC])
        save("simulation-before.prom", settle(sim, "cs_parser_hits_ok_total", 10), log)
        write_probing_burst(log, "10.42.0.7", 20)
        save("simulation-overflow.prom", settle(sim, "cs_alerts", 1), log)
        sim.stop()


HOP = "10.42.0.7"  # the servicelb hop: the client address of every masked line
NARROW = """name: local/narrow-whitelist
description: "A custom whitelist that covers the LAN, not the pod network"
whitelist:
  reason: "home LAN only"
  cidr:
    - "192.168.0.0/16"
"""


def whitelists(root: Path) -> None:
    """The wl-* captures: an agent with no whitelist, the hub's, and a custom one that misses
    the hop, each before and after 30 lines from the internal hop. The pages are distinct and
    not static, so crowdsecurity/http-crawl-non_statics (distinct on the file name) takes every
    line that is not whitelisted."""
    log = root / "wl-access.log"
    for name, hub, custom in (("none", False, ""), ("hub", True, ""), ("narrow", False, NARROW)):
        inst = CrowdSecInstance(root / f"wl-{name}", whitelists=hub)
        if custom:
            enrich = inst.config_dir / "parsers" / "s02-enrich"
            enrich.mkdir(parents=True, exist_ok=True)
            (enrich / "narrow-whitelist.yaml").write_text(custom)
        log.write_text("")
        inst.start_agent([log])
        append(log, [traefik_json_line(ip, "/feed/popular") for ip in PUBLIC])
        save(f"wl-{name}-before.prom", settle(inst, "cs_parser_hits_ok_total", 10), log)
        append(log, [traefik_json_line(HOP, f"/videos/{i}-clip") for i in range(30)])
        save(f"wl-{name}-internal.prom", settle(inst, "cs_parser_hits_ok_total", 40), log)
        inst.stop()


if __name__ == "__main__":
    if sys.argv[1:] == ["whitelists"]:  # only the wl-* files
        with tempfile.TemporaryDirectory() as tmp:
            whitelists(Path(tmp))
    else:
        main()
        with tempfile.TemporaryDirectory() as tmp:
            whitelists(Path(tmp))
