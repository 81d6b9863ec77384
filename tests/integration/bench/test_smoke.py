"""The benchmark's generator and harness work, and every peer answers like the hot path.

No timing is asserted: only that each measurement ran, produced positive rates and agreed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.generate import GenConfig, decisions, generate, write_log
from bench.peers.common import INTERNAL_REGEX
from parsers.crowdsec import parse_decisions
from parsers.records import CLIENT, ParseStats
from parsers.traefik import TraefikParser
from pipeline.core.addresses import Classifier
from pipeline.core.networks import build_networks
from tests.support.paths import ROOT


def test_generator_is_deterministic(tmp_path: Path) -> None:
    cfg = GenConfig(lines=2000, seed=5, masked_share=0.2)
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    write_log(cfg, a)
    write_log(cfg, b)
    assert a.read_bytes() == b.read_bytes()
    other = b"".join(generate(GenConfig(lines=2000, seed=6, masked_share=0.2)))
    assert other != a.read_bytes()
    assert orjson.dumps(decisions(cfg)) == orjson.dumps(decisions(cfg))


def test_generated_lines_parse_with_requested_masked_share() -> None:
    cfg = GenConfig(lines=5000, seed=11, masked_share=0.3)
    lines = [ln.rstrip(b"\n") for ln in generate(cfg)]
    stats = ParseStats()
    records = TraefikParser().parse(lines, stats)
    assert stats.lines == stats.json == len(records) == 5000
    assert stats.skipped_total == 0
    masked = sum(1 for r in records if r[CLIENT].startswith("10.42."))
    assert abs(masked / len(records) - 0.3) < 0.03
    stamp = re.compile(rb'"StartUTC":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z"')
    for ln in lines[:500]:
        keys = list(orjson.loads(ln))
        assert keys == sorted(keys, key=str.encode)  # logrus: sorted bytewise
        assert b'": ' not in ln
        assert b'", "' not in ln
        assert stamp.search(ln)
        assert b"request_User-Agent" in ln
        assert b"&" not in ln  # Go escapes it as \u0026


def test_decisions_payload_has_the_internal_bans() -> None:
    cfg = GenConfig(lines=1000, seed=2, masked_share=0.5)
    body = orjson.dumps(decisions(cfg))
    assert body.startswith(b'{"deleted":null,"new":[')
    delta = parse_decisions(body)
    values = {(d.scope, d.value) for d in delta.new}
    assert ("Ip", "10.42.0.12") in values
    assert ("Range", "10.42.0.0/24") in values
    assert len(delta.new) > 20


def test_peer_regex_agrees_with_the_classifier() -> None:
    classify = Classifier(build_networks({})).classify
    rx = re.compile(INTERNAL_REGEX)
    samples = [
        "10.42.0.12",
        "10.0.0.1",
        "9.255.255.255",
        "11.0.0.1",
        "172.15.0.1",
        "172.16.0.1",
        "172.31.255.1",
        "172.32.0.1",
        "192.168.1.1",
        "192.169.0.1",
        "127.0.0.1",
        "169.254.3.4",
        "100.63.0.1",
        "100.64.0.1",
        "100.127.0.1",
        "100.128.0.1",
        "8.8.8.8",
        "::1",
        "fd00::1",
        "fc12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "2a01:4f8::1",
        "fc0::1",
        "2001:db8::1",
    ]
    for addr in samples:
        assert bool(rx.match(addr)) == classify(addr).internal, addr


def test_harness_quick_run_agrees_everywhere(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--lines",
            "2000",
            "--quick",
            "--hot-rounds",  # --quick alone runs none
            "1",
            "--no-live",
            "--data-dir",
            str(tmp_path),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = orjson.loads(out.read_bytes())
    rows = {m["name"]: m for m in res["measurements"]}
    expected = {
        "floor: read + orjson.loads",
        "parse: + TraefikParser",
        "hot path: audit_path",
        "auditor replay (end to end)",
        "peer: naive Python (json + ipaddress)",
        "peer: msgspec partial decode",
        "peer: jq",
        "peer: Miller (mlr)",
    }
    assert expected <= set(rows)
    extra = set(rows) - expected
    assert all(name.startswith("auditor replay --jobs ") for name in extra)  # replay has --jobs
    for m in rows.values():
        assert m["error"] is None, m
        assert m["lines"] == 2000, m["name"]
        assert m["lines_per_s"] > 0
        assert m["mb_per_s"] > 0
        assert m["peak_rss_mb"] > 0
    ref = res["reference_answer"]
    assert ref["lines"] == 2000
    assert ref["internal"] > 0
    for name, m in rows.items():
        if name.startswith("peer:"):
            assert m["answer"] == ref, name
    for name in set(rows) - expected | {"auditor replay (end to end)"}:
        assert rows[name]["answer"] == {"lines": ref["lines"], "internal": ref["internal"]}
    assert res["warnings"] == []
    names = {t["target"] for t in res["targets"]}
    for workload in ("busy", "quiet"):  # issue 16's targets, with a verdict on each workload
        assert f"hot path >= 0.60 x floor ({workload})" in names
        assert f"speed-up of 2 jobs over 1 >= 1.7 ({workload})" in names
        assert f"auditor replay, default jobs, >= 1.0 x floor ({workload})" in names
    assert all(t["met"] in (True, False, None) for t in res["targets"])  # None: not measured
    cores = res["cores"]["summary"]  # one full round and the in-process one asked for
    assert (cores["rounds"], cores["replay_rounds"]) == (2, 1)
    assert len(cores["quiet_vs_busy"]["wall"]["runs"]) == 2


@pytest.mark.parametrize("traefik", [2, 3])
def test_both_traefik_versions_parse(traefik: int) -> None:
    lines = [ln.rstrip(b"\n") for ln in generate(GenConfig(lines=300, seed=1, traefik=traefik))]
    stats = ParseStats()
    assert len(TraefikParser().parse(lines, stats)) == 300
    urls = [u for u in (orjson.loads(ln).get("ServiceURL") for ln in lines) if u is not None]
    assert urls
    assert all(isinstance(u, dict if traefik == 2 else str) for u in urls)


DEMO_ARGS = [
    "--lines",
    "2800",
    "--seed",
    "7",
    "--rate",
    "2",
    "--clients",
    "400",
    "--masked-share",
    "0.6",
    "--masked-span",
    "0.3:1",
    "--hops",
    "10.42.0.12",
]


def test_demo_sample_is_reproducible_and_flags_the_ban(tmp_path: Path) -> None:
    demo = ROOT / "examples" / "demo"
    readme = " ".join((demo / "README.md").read_text().replace("\\\n", " ").split())
    assert " ".join(DEMO_ARGS) in readme
    log, dec = tmp_path / "access.log", tmp_path / "decisions.json"
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.generate",
            *DEMO_ARGS,
            "--out",
            str(log),
            "--decisions-out",
            str(dec),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert gen.returncode == 0, gen.stderr
    assert log.read_bytes() == (demo / "access.log").read_bytes()
    assert dec.read_bytes() == (demo / "decisions.json").read_bytes()
    assert log.stat().st_size + dec.stat().st_size < 4_000_000
    auditor = Path(sys.executable).parent / "auditor"
    r = subprocess.run(
        [
            str(auditor),
            "replay",
            str(demo / "access.log"),
            "--decisions",
            str(demo / "decisions.json"),
            "--format",
            "json",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1, r.stderr
    findings = orjson.loads(r.stdout)["findings"]
    kinds = {f["kind"] for f in findings}
    assert kinds >= {"internal_ban", "masked_client_ip"}
    hop = next(f for f in findings if f["kind"] == "internal_ban" and f["target"] == "10.42.0.12")
    assert hop["evidence"]["blast_radius"]["request_share"] > 0.3
