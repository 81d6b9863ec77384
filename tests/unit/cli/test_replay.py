"""``auditor replay`` end to end: exit codes, inputs (-, .gz, CRI), formats, the JSON contract."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.errors import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE
from pipeline.sources.readfile import open_input
from tests.support.paths import CORPUS

V2 = str(CORPUS / "traefik-json-v2.jsonl")
V3 = str(CORPUS / "traefik-json-v3.jsonl")
CLF = str(CORPUS / "traefik-clf.log")


def write_decisions(tmp_path: Path, *values: str, name: str = "decisions.json") -> str:
    body = [
        {
            "duration": "3h59m55s",
            "id": i,
            "origin": "crowdsec",
            "scenario": "crowdsecurity/http-probing",
            "scope": "Range" if "/" in v else "Ip",
            "type": "ban",
            "value": v,
        }
        for i, v in enumerate(values, 1)
    ]
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return str(path)


def write_k3s_log(tmp_path: Path, n_internal: int = 40, n_public: int = 10) -> str:
    """Traefik JSON lines behind k3s servicelb: most requests arrive from the 10.42.0.9 hop."""
    lines = []
    for i in range(n_internal + n_public):
        client = "10.42.0.9" if i < n_internal else f"198.51.100.{i}"
        lines.append(
            json.dumps(
                {
                    "ClientAddr": f"{client}:{40000 + i}",
                    "ClientHost": client,
                    "DownstreamStatus": 200,
                    "Duration": 1_000_000,
                    "RequestHost": "app.example.com",
                    "RequestMethod": "GET",
                    "RouterName": "websecure-app@kubernetes",
                    "StartUTC": f"2026-01-01T10:00:{i % 60:02d}.25Z",
                    "entryPointName": "websecure",
                }
            )
        )
    path = tmp_path / "k3s.log"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["replay", "--no-progress", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def replay_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    rc, out, err = replay(capsys, "--format", "json", *args)
    assert err == ""
    return rc, json.loads(out)


def findings_of(report: dict[str, object]) -> list[dict[str, object]]:
    f = report["findings"]
    assert isinstance(f, list)
    return f


# -- exit codes -----------------------------------------------------------------------------------


def test_exit_0_clean_input(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = replay_json(capsys, V3)
    assert rc == EXIT_OK
    assert report["findings"] == []
    summary = report["summary"]
    assert isinstance(summary, dict)
    assert summary["requests"] == 4
    assert summary["lines"] == {"read": 4, "parsed": 4, "json": 4, "common": 0, "skipped": {}}
    assert summary["decisions"] == {"active": 0, "internal": 0, "by_scope": {}}
    assert summary["findings"] == {"critical": 0, "high": 0, "medium": 0, "low": 0, "info": 0}
    # The corpus lines are out of order: the span is still min..max.
    assert summary["time_span"] == {
        "first": "2025-11-28T09:21:55Z",
        "last": "2026-01-14T09:45:33Z",
        "seconds": 4062218.0,
    }


def test_corpus_lapi_responses_flag_the_rfc1918_ban(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = replay_json(
        capsys, V3, "--decisions", str(CORPUS / "crowdsec-lapi-responses.jsonl")
    )
    assert rc == EXIT_FINDINGS
    summary = report["summary"]
    assert isinstance(summary, dict)
    # ids 4, 2336, 2337, 2338: repeated ids replace each other.
    assert summary["decisions"] == {
        "active": 4,
        "internal": 1,
        "by_scope": {"Ip": 2, "Range": 1, "username": 1},
    }
    (f,) = findings_of(report)
    assert (f["kind"], f["severity"], f["target"]) == ("internal_ban", "high", "192.168.1.1")
    ev = f["evidence"]
    assert isinstance(ev, dict)
    assert (ev["class"], ev["network"]) == ("private", "192.168.0.0/16")
    assert ev["blast_radius"]["requests"] == 0  # not a client in the v3 lines


def test_exit_1_docker_bridge_ban_is_high(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    decisions = write_decisions(tmp_path, "172.17.0.1")
    rc, report = replay_json(capsys, V2, "--decisions", decisions)
    assert rc == EXIT_FINDINGS
    (f,) = findings_of(report)
    assert f["kind"] == "internal_ban"
    assert f["severity"] == "high"  # docker class, not one of the critical ones
    assert f["target"] == "172.17.0.1"
    ev = f["evidence"]
    assert isinstance(ev, dict)
    assert (ev["class"], ev["network"]) == ("docker", "172.17.0.0/16")
    # 2 of the 5 v2 lines come from 172.17.0.1, one of 4 hosts and one of 4 routers.
    assert ev["blast_radius"] == {
        "scope": "span",
        "window_s": None,
        "requests": 2,
        "total_requests": 5,
        "request_share": 0.4,
        "hosts": 1,
        "host_share": 0.25,
        "routers": 1,
        "router_share": 0.25,
        "addresses": ["172.17.0.1"],
    }


@pytest.mark.parametrize(
    ("fail_on", "rc"),
    [
        ("critical", EXIT_OK),
        ("high", EXIT_FINDINGS),
        ("medium", EXIT_FINDINGS),
        ("info", EXIT_FINDINGS),
    ],
)
def test_fail_on_threshold(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fail_on: str, rc: int
) -> None:
    decisions = write_decisions(tmp_path, "172.17.0.1")
    got, _ = replay_json(capsys, V2, "--decisions", decisions, "--fail-on", fail_on)
    assert got == rc


def test_pod_ban_is_critical_and_fails_on_critical(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    decisions = write_decisions(tmp_path, "10.42.0.0/16")
    rc, report = replay_json(capsys, CLF, "--decisions", decisions, "--fail-on", "critical")
    assert rc == EXIT_FINDINGS
    kinds = {(f["kind"], f["severity"]) for f in findings_of(report)}
    assert kinds == {("internal_ban", "critical"), ("log_format", "medium")}


def test_log_format_alone_is_medium(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = replay_json(capsys, CLF)
    assert rc == EXIT_OK
    (f,) = findings_of(report)
    assert (f["kind"], f["severity"], f["target"]) == ("log_format", "medium", CLF)
    rc2, _ = replay_json(capsys, CLF, "--fail-on", "medium")
    assert rc2 == EXIT_FINDINGS


def test_exit_2_missing_input_names_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "nope.log")
    rc, out, err = replay(capsys, missing)
    assert rc == EXIT_USAGE
    assert out == ""
    assert missing in err
    assert err.startswith("auditor: error:")


def test_exit_2_missing_decisions_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "decisions.json")
    rc, _, err = replay(capsys, V3, "--decisions", missing)
    assert rc == EXIT_USAGE
    assert missing in err


def test_exit_2_directory_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = replay(capsys, str(tmp_path))
    assert rc == EXIT_USAGE
    assert str(tmp_path) in err


@pytest.mark.parametrize(
    "payload",
    [b'{"foo": 1}', b"42", b"", b"not json at all", b'[{"scope": "Ip"}]'],
)
def test_exit_2_unknown_decisions_shape(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, payload: bytes
) -> None:
    path = tmp_path / "weird.json"
    path.write_bytes(payload)
    rc, out, err = replay(capsys, V3, "--decisions", str(path))
    assert rc == EXIT_USAGE
    assert out == ""
    assert str(path) in err
    assert "not a known CrowdSec decisions shape" in err


def test_exit_2_docs_startup_text_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(CORPUS / "crowdsec-decisions-stream-startup-docs.txt")
    rc, _, err = replay(capsys, V3, "--decisions", path)
    assert rc == EXIT_USAGE
    assert path in err
    assert "not JSON" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--pod-cidr", "10.42.0.0/99"),
        ("--service-cidr", "bogus"),
        ("--node-ip", "01.2.3.4"),
        ("--lb-ip", "1.2.3.4/33"),
        ("--internal-cidr", "x"),
    ],
)
def test_exit_2_bad_network_flag_names_it(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    rc, out, err = replay(capsys, V3, flag, value)
    assert rc == EXIT_USAGE
    assert out == ""
    assert flag.removeprefix("--") in err
    assert repr(value) in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-", "-"], "stdin (-) can be read only once"),
        (["-", "--decisions", "-"], "stdin (-) can be read only once"),
        (["--window", "0", V3], "--window"),
        (["--masked-share", "1.5", V3], "--masked-share"),
        (["--masked-min-requests", "0", V3], "--masked-min-requests"),
        (["--jobs", "0", V3], "--jobs"),
    ],
)
def test_exit_2_bad_arguments(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    rc, _, err = replay(capsys, *args)
    assert rc == EXIT_USAGE
    assert needle in err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--fail-on", "severe", V3],
        ["--format", "yaml", V3],
        ["--envelope", "zip", V3],
        ["--window", "ten", V3],
    ],
)
def test_exit_2_argparse_errors(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["replay", *args])
    assert exc.value.code == EXIT_USAGE
    assert "error:" in capsys.readouterr().err


# -- inputs ---------------------------------------------------------------------------------------


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_stdin_input(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, Path(V3).read_bytes())
    rc, report = replay_json(capsys, "-")
    assert rc == EXIT_OK
    summary = report["summary"]
    assert isinstance(summary, dict)
    assert summary["inputs"] == ["-"]
    assert summary["requests"] == 4


def test_stdin_decisions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(
        monkeypatch,
        b'{"new":[{"duration":"1h","id":3,"origin":"cscli","scenario":"x",'
        b'"scope":"Ip","type":"ban","value":"172.17.0.1"}],"deleted":null}',
    )
    rc, report = replay_json(capsys, V2, "--decisions", "-")
    assert rc == EXIT_FINDINGS
    assert [f["target"] for f in findings_of(report)] == ["172.17.0.1"]


def test_gz_input_closes_its_file(tmp_path: Path) -> None:
    """Closing a .gz input closes the file under it (no descriptor left for the GC)."""
    gz = tmp_path / "access.log.gz"
    gz.write_bytes(gzip.compress(b"line\n"))
    fh = open_input(str(gz))
    raw = getattr(fh, "fileobj", None) or fh
    with fh:
        assert fh.read() == b"line\n"
    closed = raw.closed
    raw.close()  # tidy up either way so no warning leaks into other tests
    assert closed


def test_gz_input_same_report_as_plain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    gz = tmp_path / "access.log.gz"
    gz.write_bytes(gzip.compress(Path(V2).read_bytes()))
    plain = tmp_path / "access.log"
    shutil.copy(V2, plain)
    decisions = write_decisions(tmp_path, "172.17.0.1")
    rc1, r1 = replay_json(capsys, str(plain), "--decisions", decisions)
    rc2, r2 = replay_json(capsys, str(gz), "--decisions", decisions)
    assert rc1 == rc2 == EXIT_FINDINGS
    assert r1["findings"] == r2["findings"]
    s1, s2 = r1["summary"], r2["summary"]
    assert isinstance(s1, dict)
    assert isinstance(s2, dict)
    assert s2.pop("inputs") == [str(gz)]
    s1.pop("inputs")
    assert s1 == s2


def test_gz_decisions(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = Path(write_decisions(tmp_path, "172.17.0.1"))
    gz = tmp_path / "decisions.json.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    rc, _ = replay_json(capsys, V2, "--decisions", str(gz))
    assert rc == EXIT_FINDINGS


def test_several_inputs_and_cri_envelope(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = replay_json(
        capsys, V2, str(CORPUS / "cri-lines.log"), str(CORPUS / "dockerjson-lines.log")
    )
    summary = report["summary"]
    assert isinstance(summary, dict)
    lines = summary["lines"]
    assert isinstance(lines, dict)
    assert lines["json"] == 5
    assert lines["common"] > 0  # ingress-nginx lines inside the envelopes
    assert "bad_envelope" not in lines["skipped"]
    assert rc == EXIT_OK
    targets = sorted(f["target"] for f in findings_of(report) if f["kind"] == "log_format")
    assert targets == sorted([str(CORPUS / "cri-lines.log"), str(CORPUS / "dockerjson-lines.log")])


def test_parallel_jobs_same_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lines = []
    for i in range(30_000):
        client = "10.42.0.9" if i % 3 else f"198.51.100.{i % 200 + 1}"
        lines.append(
            json.dumps(
                {
                    "ClientAddr": f"{client}:4{i % 10000:04d}",
                    "ClientHost": client,
                    "DownstreamStatus": 200,
                    "Duration": 1000 + i,
                    "RequestHost": f"app{i % 7}.example.com",
                    "RequestMethod": "GET",
                    "RouterName": f"r{i % 5}@kubernetes",
                    "StartUTC": f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}.5Z",
                    "entryPointName": "websecure",
                }
            )
        )
    log = tmp_path / "big.log"
    log.write_text("\n".join(lines) + "\n")
    decisions = write_decisions(tmp_path, "10.42.0.9")
    rc1, one = replay_json(capsys, str(log), "--decisions", decisions)
    rc2, two = replay_json(capsys, str(log), "--decisions", decisions, "--jobs", "2")
    assert rc1 == rc2 == EXIT_FINDINGS
    assert one == two
    summary = one["summary"]
    assert isinstance(summary, dict)
    assert summary["requests"] == 30_000


def test_envelope_raw_forced_on_cri_file(capsys: pytest.CaptureFixture[str]) -> None:
    _, report = replay_json(capsys, str(CORPUS / "cri-lines.log"), "--envelope", "cri")
    _, raw = replay_json(capsys, str(CORPUS / "cri-lines.log"), "--envelope", "raw")
    assert report["summary"] != raw["summary"]


def test_empty_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Nothing to audit is not a clean bill of health (tests/unit/cli/test_exit_codes.py)."""
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    rc, out, err = replay(capsys, "--format", "json", str(empty))
    assert (rc, out) == (EXIT_USAGE, "")
    assert f"{empty}: no lines to audit" in err


# -- formats --------------------------------------------------------------------------------------


def test_formats_table_markdown_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    decisions = write_decisions(tmp_path, "172.17.0.1")
    rc, table, err = replay(capsys, V2, "--decisions", decisions, "--format", "table")
    assert (rc, err) == (EXIT_FINDINGS, "")
    assert "Lines: 5 read, 5 parsed (5 JSON, 0 common format), 0 skipped" in table
    assert "Findings (1):" in table
    assert "[HIGH] internal_ban 172.17.0.1:" in table
    assert "blast radius: 2/5 requests (40.0%), 1 hosts (25.0%), 1 routers (25.0%)" in table
    assert "cscli decisions delete --ip 172.17.0.1" in table
    rc, md, _ = replay(capsys, V2, "--decisions", decisions, "--format", "markdown")
    assert rc == EXIT_FINDINGS
    assert md.startswith("# ban-auditor replay report\n")
    assert "### HIGH internal_ban: `172.17.0.1`" in md
    assert "| web | 3 | 2 | 66.7% |" in md
    assert "```json" not in md  # evidence as sentences; the JSON format carries all of it
    assert "- decision 1: ban on Ip `172.17.0.1` by crowdsec" in md
    assert "- Findings: 0 critical, 1 high, 0 medium, 0 low, 0 info" in md
    rc, js, _ = replay(capsys, V2, "--decisions", decisions, "--format", "json")
    assert rc == EXIT_FINDINGS
    assert json.loads(js)["findings"][0]["target"] == "172.17.0.1"


def test_default_format_is_json_when_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, _ = replay(capsys, V3)
    assert rc == EXIT_OK
    assert set(json.loads(out)) == {"schema_version", "summary", "findings"}


def test_clean_table_says_none(capsys: pytest.CaptureFixture[str]) -> None:
    _, table, _ = replay(capsys, V3, "--format", "table")
    assert "Findings (0): 0 critical, 0 high, 0 medium, 0 low, 0 info\n  none\n" in table
    _, md, _ = replay(capsys, V3, "--format", "markdown")
    assert "## Findings\n\nNone.\n" in md


# -- JSON contract ------------------------------------------------------------------------------


def test_json_contract(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    decisions = write_decisions(tmp_path, "172.17.0.1", "10.10.10.0/24", "1.2.3.4")
    k3s = write_k3s_log(tmp_path)
    _, report = replay_json(capsys, V2, CLF, k3s, "--decisions", decisions)
    assert set(report) == {"schema_version", "summary", "findings"}
    summary = report["summary"]
    assert isinstance(summary, dict)
    assert set(summary) == {
        "inputs",
        "lines",
        "time_span",
        "requests",
        "entrypoints",
        "top_clients",
        "decisions",
        "findings",
    }
    for ep in summary["entrypoints"]:
        assert set(ep) == {
            "name",
            "requests",
            "internal_requests",
            "internal_share",
            "distinct_clients",
        }
        assert 0.0 <= ep["internal_share"] <= 1.0
    for c in summary["top_clients"]:
        assert set(c) == {"address", "requests", "share", "class"}
    findings = findings_of(report)
    assert {f["kind"] for f in findings} == {"internal_ban", "masked_client_ip", "log_format"}
    severities = ["info", "low", "medium", "high", "critical"]
    ranks = [severities.index(str(f["severity"])) for f in findings]
    assert ranks == sorted(ranks, reverse=True)  # most severe first
    assert summary["findings"] == {
        s: sum(1 for f in findings if f["severity"] == s) for s in reversed(severities)
    }
    for f in findings:
        assert {"kind", "severity", "target", "summary", "evidence", "fix"} <= set(f)
        assert isinstance(f["evidence"], dict)
        assert isinstance(f["fix"], str)
        assert f["fix"]
        assert isinstance(f["target"], str)
        assert f["severity"] in severities
        if f["kind"] == "internal_ban":
            blast = f["evidence"]["blast_radius"]
            assert 0.0 <= blast["request_share"] <= 1.0
            assert 0.0 <= blast["host_share"] <= 1.0
            assert 0.0 <= blast["router_share"] <= 1.0
            assert blast["requests"] <= blast["total_requests"]
    bans = {f["target"]: f for f in findings if f["kind"] == "internal_ban"}
    assert set(bans) == {"172.17.0.1", "10.10.10.0/24"}
    assert bans["10.10.10.0/24"]["evidence"]["blast_radius"]["requests"] == 2


# -- the installed console script ---------------------------------------------------------------


def test_installed_console_script(tmp_path: Path) -> None:
    script = Path(sys.prefix) / "bin" / "auditor"
    assert script.is_file(), f"console script missing: {script} (pip install -e .)"
    decisions = write_decisions(tmp_path, "172.17.0.1")
    proc = subprocess.run(
        [str(script), "replay", V2, "--decisions", decisions, "--format", "json"],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == EXIT_FINDINGS, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["findings"][0]["severity"] == "high"
    bad = subprocess.run(
        [str(script), "replay", str(tmp_path / "missing.log")],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert bad.returncode == EXIT_USAGE
    assert b"missing.log" in bad.stderr
    assert bad.stdout == b""
