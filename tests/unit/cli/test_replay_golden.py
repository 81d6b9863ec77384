"""Golden replay reports: ``auditor replay --format json`` on fixed inputs, compared whole.

Each case is a directory tests/golden/<case>/ with
  input.log       the access log replayed (first input),
  decisions.json  the CrowdSec decisions (--decisions),
  args.txt        extra CLI arguments (shell words; may be empty),
  expected.json   the expected report (exactly what replay prints),
  exit_code.txt   the expected exit code.
The replay runs with the case directory as working directory, so every path in the report is
relative and stable. Nothing in the report depends on the wall clock (durations are parsed, the
time span is the data's); ``test_report_does_not_depend_on_wall_clock`` keeps it that way. The
only normalisation is the order among equal counts (top clients, entrypoints, internal hops),
which is not part of the contract.

Regenerate after an intended change, then review the diff by hand before committing:
    AUDITOR_REGEN_GOLDEN=1 .venv/bin/pytest tests/unit/cli/test_replay_golden.py
Cases listed in KNOWN_BUGS hold hand-corrected expected files and are not overwritten; when the
bug is fixed, drop the entry, regenerate, and check that the diff only reorders ties.
The ``test_golden_*_facts`` tests assert the key numbers of each expected file, so a regeneration
cannot silently bless a regression. Synthetic inputs come from tests/golden/make_inputs.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import types

import pytest

from pipeline.cli.main import main
from tests.support.paths import GOLDEN

CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.log").is_file())
REGEN = os.environ.get("AUDITOR_REGEN_GOLDEN") == "1"

KNOWN_BUGS: dict[str, str] = {}


def _case_params() -> list[object]:
    return [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c]))
        if c in KNOWN_BUGS
        else c
        for c in CASES
    ]


def _by_count(items: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return sorted(items, key=lambda d: (-int(d["requests"]), str(d[name])))  # type: ignore[call-overload]


def normalize(report: dict[str, object]) -> dict[str, object]:
    """Order among equal counts is unspecified: sort ties by address/name."""
    summary = report["summary"]
    assert isinstance(summary, dict)
    summary["top_clients"] = _by_count(summary["top_clients"], "address")
    summary["entrypoints"] = _by_count(summary["entrypoints"], "name")
    findings = report["findings"]
    assert isinstance(findings, list)
    for f in findings:
        hops = f["evidence"].get("internal_hops")
        if hops is not None:
            f["evidence"]["internal_hops"] = _by_count(hops, "address")
    return report


def run_case(
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str = "json",
) -> tuple[int, str]:
    case_dir = GOLDEN / case
    monkeypatch.chdir(case_dir)
    monkeypatch.setenv("COLUMNS", "80")  # the table's width when stdout is not a terminal
    extra = shlex.split((case_dir / "args.txt").read_text())
    argv = ["replay", "input.log", "--decisions", "decisions.json", "--format", fmt]
    rc = main([*argv, "--no-progress", "--color", "never", *extra])
    out, err = capsys.readouterr()
    assert err == ""
    return rc, out


def test_cases_present() -> None:
    assert set(CASES) >= {
        "k3s-masked-internal-ban",
        "mixed-corpus",
        "common-format-only",
        "ipv6-mapped",
        "cri-node-agent",
    }


@pytest.mark.parametrize("case", _case_params())
def test_golden(
    case: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out = run_case(case, capsys, monkeypatch)
    expected_path = GOLDEN / case / "expected.json"
    exit_path = GOLDEN / case / "exit_code.txt"
    if REGEN and case not in KNOWN_BUGS:
        expected_path.write_text(out)
        exit_path.write_text(f"{rc}\n")
    assert normalize(json.loads(out)) == normalize(json.loads(expected_path.read_text()))
    assert rc == int(exit_path.read_text())


# The human formats, compared as text: what a reader sees is the contract here.
TEXT_FORMATS = {"table": "expected.table.txt", "markdown": "expected.md", "html": "expected.html"}


@pytest.mark.parametrize("fmt", sorted(TEXT_FORMATS))
@pytest.mark.parametrize("case", CASES)
def test_golden_text(
    case: str, fmt: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out = run_case(case, capsys, monkeypatch, fmt)
    path = GOLDEN / case / TEXT_FORMATS[fmt]
    if REGEN:
        path.write_text(out)
    assert out == path.read_text()
    assert rc == int((GOLDEN / case / "exit_code.txt").read_text())


@pytest.mark.parametrize("case", CASES)
def test_report_does_not_depend_on_wall_clock(
    case: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.cli.replay  # patched below; main imports it anyway

    _, now = run_case(case, capsys, monkeypatch)
    monkeypatch.setattr(
        pipeline.cli.replay, "time", types.SimpleNamespace(time=lambda: 4_000_000_000.0)
    )
    _, later = run_case(case, capsys, monkeypatch)
    assert now == later


# -- what the goldens must say (checked on the expected files, so a regen cannot bless a regression)


def expected(case: str) -> dict[str, object]:
    report = json.loads((GOLDEN / case / "expected.json").read_text())
    assert isinstance(report, dict)
    return report


def by_target(report: dict[str, object], kind: str) -> dict[str, dict[str, object]]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return {f["target"]: f for f in findings if f["kind"] == kind}


def test_golden_k3s_masked_facts() -> None:
    r = expected("k3s-masked-internal-ban")
    bans = by_target(r, "internal_ban")
    assert set(bans) == {"10.42.0.9"}  # the public and list bans are not findings
    ban = bans["10.42.0.9"]
    assert ban["severity"] == "critical"
    blast = ban["evidence"]["blast_radius"]  # type: ignore[index]
    # 90 masked websecure requests + 10 plain-http ones from the hop, of 130.
    assert (blast["requests"], blast["total_requests"]) == (100, 130)
    assert blast["hosts"] == 3
    masked = by_target(r, "masked_client_ip")
    assert set(masked) == {"websecure"}  # web has only 10 requests (< 30)
    ev = masked["websecure"]["evidence"]
    assert isinstance(ev, dict)
    # Replay keeps the peak window: the first with >= 30 websecure requests (lines 0-35, 3 min).
    assert (ev["requests"], ev["internal_requests"], ev["internal_share"]) == (33, 28, 0.8485)
    assert ev["window_end"] == 1768032175.0  # 08:02:55Z, line 35
    # Per entrypoint: the hop's 3 plain-http requests of that window are on `web`, not here.
    assert ev["internal_hops"] == [
        {"address": "10.42.0.9", "requests": 25, "class": "pod"},
        {"address": "10.42.1.0", "requests": 3, "class": "pod"},
    ]
    assert sum(h["requests"] for h in ev["internal_hops"]) == ev["internal_requests"]
    assert int((GOLDEN / "k3s-masked-internal-ban" / "exit_code.txt").read_text()) == 1


def test_golden_ipv6_mapped_facts() -> None:
    r = expected("ipv6-mapped")
    bans = by_target(r, "internal_ban")
    assert set(bans) == {"10.42.0.5", "2001:cafe:42::/64", "fe80::1"}
    assert bans["10.42.0.5"]["evidence"]["blast_radius"]["requests"] == 40  # type: ignore[index]
    assert bans["2001:cafe:42::/64"]["evidence"]["blast_radius"]["requests"] == 10  # type: ignore[index]
    assert bans["fe80::1"]["severity"] == "high"
    assert bans["fe80::1"]["evidence"]["blast_radius"]["requests"] == 3  # type: ignore[index]
    assert {bans[t]["severity"] for t in ("10.42.0.5", "2001:cafe:42::/64")} == {"critical"}
    # Public bans (mapped and native IPv6) raise nothing.
    assert "::ffff:203.0.113.9" not in bans
    assert "2606:4700:4700::1111" not in bans
    summary = r["summary"]
    assert isinstance(summary, dict)
    assert summary["decisions"] == {"active": 5, "internal": 3, "by_scope": {"Ip": 4, "Range": 1}}
    ep = summary["entrypoints"][0]
    assert (ep["requests"], ep["internal_requests"]) == (65, 55)
    classes = {c["address"]: c["class"] for c in summary["top_clients"]}
    assert classes == {
        "::ffff:10.42.0.5": "pod",
        "2001:cafe:42::17": "pod",
        "fe80::1%eth0": "link_local",
        "2606:4700:4700::1111": "public",
        "::ffff:203.0.113.9": "public",
        "::1": "loopback",
    }
    # Peak window: the first two minutes, all 40 requests from the mapped pod address.
    ev = by_target(r, "masked_client_ip")["websecure"]["evidence"]
    assert isinstance(ev, dict)
    assert (ev["requests"], ev["internal_requests"], ev["internal_share"]) == (40, 40, 1.0)


def test_golden_common_format_facts() -> None:
    r = expected("common-format-only")
    assert set(by_target(r, "log_format")) == {"input.log"}
    bans = by_target(r, "internal_ban")
    assert set(bans) == {"10.32.0.1", "172.17.0.0/16"}
    assert bans["10.32.0.1"]["severity"] == "critical"  # pod with --pod-cidr 10.32.0.0/12
    assert bans["172.17.0.0/16"]["severity"] == "high"
    # 172.17.0.1 x4, 172.17.1.1, 172.17.1.2, 172.17.1.3
    assert bans["172.17.0.0/16"]["evidence"]["blast_radius"]["requests"] == 7  # type: ignore[index]
    assert int((GOLDEN / "common-format-only" / "exit_code.txt").read_text()) == 1


def test_golden_mixed_corpus_facts() -> None:
    r = expected("mixed-corpus")
    bans = by_target(r, "internal_ban")
    assert set(bans) == {"127.0.0.1", "192.168.1.1"}
    summary = r["summary"]
    assert isinstance(summary, dict)
    assert summary["lines"] == {
        "read": 49,
        "parsed": 41,
        "json": 13,
        "common": 28,
        "skipped": {"empty": 2, "not_access_log": 5, "unrecognized": 1},
    }
    # Alert-sample ids 2 and 3 ban 127.0.0.1 (id 1 is reused by the alerts response: 1.1.1.172).
    assert summary["decisions"] == {
        "active": 7,
        "internal": 3,
        "by_scope": {"Ip": 5, "Range": 1, "username": 1},
    }
    findings = r["findings"]
    assert isinstance(findings, list)
    loop = [f for f in findings if f["target"] == "127.0.0.1"]
    assert [f["evidence"]["decision"]["id"] for f in loop] == [2, 3]
    assert {f["severity"] for f in loop} == {"critical"}
    assert loop[0]["evidence"]["blast_radius"]["requests"] == 4  # elastic 1, CLF 16, 22, 24
    assert bans["192.168.1.1"]["evidence"]["blast_radius"]["requests"] == 0
    masked = by_target(r, "masked_client_ip")["-"]["evidence"]
    assert isinstance(masked, dict)
    assert (masked["requests"], masked["internal_requests"]) == (31, 19)
    hops = {h["address"]: h["requests"] for h in masked["internal_hops"]}
    assert hops["127.0.0.1"] == 4
    assert "10.10.10.20" not in hops  # 1 request on "-" (its other one is on `web`)
    fmt = by_target(r, "log_format")["input.log"]["evidence"]
    assert fmt == {"common_lines": 28, "json_lines": 13, "common_share": 0.6829}  # 28 of 41


def test_golden_cri_facts() -> None:
    r = expected("cri-node-agent")
    summary = r["summary"]
    assert isinstance(summary, dict)
    assert summary["requests"] == 45
    assert summary["lines"]["json"] == 45
    assert summary["lines"]["skipped"] == {"not_access_log": 12}  # interleaved stderr lines
    # The expired decision (id 9) of the second alert is dropped; id 11 stays.
    bans = by_target(r, "internal_ban")
    assert set(bans) == {"10.42.0.1"}
    assert bans["10.42.0.1"]["evidence"]["decision"]["id"] == 11  # type: ignore[index]
    assert bans["10.42.0.1"]["evidence"]["blast_radius"]["requests"] == 36  # type: ignore[index]
    ev = by_target(r, "masked_client_ip")["websecure"]["evidence"]
    assert isinstance(ev, dict)
    assert ev["internal_share"] == 0.8


# -- what the human formats must say (checked on the expected files) -----------------------------


@pytest.mark.parametrize("case", CASES)
def test_golden_table_fits_80_columns_and_prints_each_fix_once(case: str) -> None:
    table = (GOLDEN / case / "expected.table.txt").read_text()
    long = [line for line in table.splitlines() if len(line) > 80 and " " in line.strip()]
    assert long == []
    assert table.count("Make Traefik see the real client") <= 1
    assert table.count("Stop CrowdSec from banning cluster addresses") <= 1
    assert "\x1b[" not in table  # --color never


@pytest.mark.parametrize("case", CASES)
def test_golden_markdown_has_no_raw_json_and_iso_times(case: str) -> None:
    md = (GOLDEN / case / "expected.md").read_text()
    assert "```json" not in md
    assert "## Top clients" in md
    assert "- Findings: " in md
    assert re.search(r"\b1[0-9]{9}\.[0-9]\b", md) is None  # no epoch seconds


def test_golden_mixed_corpus_groups_identical_findings() -> None:
    """Decisions 2 and 3 both ban 127.0.0.1: one block naming both, not two identical ones."""
    table = (GOLDEN / "mixed-corpus" / "expected.table.txt").read_text()
    assert "internal_ban 127.0.0.1 (2 decisions: 2, 3)" in table
    assert table.count("internal_ban 127.0.0.1") == 1


def test_golden_k3s_masking_is_labelled_as_its_worst_window() -> None:
    table = (GOLDEN / "k3s-masked-internal-ban" / "expected.table.txt").read_text()
    assert "masked_client_ip websecure, worst 15 min window:" in table
    # window_end 1768032175.0 is 08:02:55Z; the window is the 15 minutes before it.
    assert "window 2026-01-10T07:47:55Z to 2026-01-10T08:02:55Z: 28/33 requests" in table
