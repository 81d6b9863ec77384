"""Alert rules: promtool accepts and unit-tests them, every alert is documented and tested both
ways, the PrometheusRule copy matches, and every expression uses only exported metrics."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metric_names import contract_errors
from tests.support.paths import ROOT

PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules.yaml"
PROM_TESTS = sorted((PROM / "tests").glob("*.yaml"))
PROMETHEUS_RULE = (
    ROOT / "deploy" / "kustomize" / "components" / "prometheus-operator" / "prometheusrule.yaml"
)
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/ban-auditor/ban-auditor/blob/main/docs/runbooks/"
SEVERITIES = {"critical", "warning", "info"}
TIMEOUT = 120


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


ALERTS = _alerts()
ALERT_NAMES = [rule["alert"] for rule in ALERTS]


@pytest.fixture(name="promtool", scope="module")
def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install the Debian package `prometheus`")
    return path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_promtool_check_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", str(RULES)], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert PROM_TESTS, "no promtool tests in deploy/prometheus/tests"
    result = _run([promtool, "test", "rules", *(str(p) for p in PROM_TESTS)], PROM / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(PROM_TESTS), result.stdout


def test_promtool_unit_tests_catch_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    """The suite can fail: a test expecting the critical alert at the wrong time is rejected."""
    bad = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'auditor_internal_bans_active{target_class="node"}', "values": "1x5"}
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "BanAuditorInternalIPBanned", "exp_alerts": []}
                ],
            }
        ],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    result = _run([promtool, "test", "rules", str(path)], tmp_path)
    assert result.returncode != 0
    assert "BanAuditorInternalIPBanned" in result.stdout + result.stderr


def test_alert_names_unique_and_prefixed() -> None:
    assert len(set(ALERT_NAMES)) == len(ALERT_NAMES)
    assert all(name.startswith("BanAuditor") for name in ALERT_NAMES)


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_alert_is_documented(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{name}: missing {key}"
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}{name}.md"
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text(encoding="utf-8")
    assert text.startswith(f"# {name}\n")
    for section in ("## Meaning", "## Impact", "## Diagnosis", "## Fix"):
        assert section in text, f"{runbook.name}: missing {section}"
    # `for:` is explicit everywhere, zero only where paging at once is the point.
    assert "for" in rule, f"{name}: set `for:` explicitly"
    if rule["labels"]["severity"] != "critical":
        assert rule["for"] not in ("0", "0s", "0m"), f"{name}: non-paging alerts need a `for:`"


def test_every_runbook_belongs_to_an_alert() -> None:
    assert {p.stem for p in RUNBOOKS.glob("*.md")} == set(ALERT_NAMES)


def test_every_alert_has_firing_and_quiet_promtool_cases() -> None:
    cases: dict[str, set[str]] = defaultdict(set)
    for path in PROM_TESTS:
        doc = _load(path)
        assert doc["rule_files"] == ["../rules.yaml"], f"{path.name}: test the real rules file"
        for test in doc["tests"]:
            for check in test.get("alert_rule_test", []):
                kind = "firing" if check.get("exp_alerts") else "quiet"
                cases[check["alertname"]].add(kind)
    unknown = set(cases) - set(ALERT_NAMES)
    assert not unknown, f"promtool tests name alerts that do not exist: {sorted(unknown)}"
    missing = {
        name: sorted({"firing", "quiet"} - cases[name])
        for name in ALERT_NAMES
        if cases[name] != {"firing", "quiet"}
    }
    assert not missing, f"alerts without a firing and a not-firing promtool case: {missing}"


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_alert_uses_only_exported_metrics(rule: dict[str, Any]) -> None:
    assert contract_errors(rule["expr"]) == []


def test_contract_check_rejects_unknown_names() -> None:
    errors = contract_errors(
        'sum by (pod_ip) (rate(auditor_lines_total{result="commmon"}[5m])) + auditor_nope'
    )
    assert len(errors) == 3, errors


def test_prometheusrule_matches_rules_file() -> None:
    sync = PROM / "sync_prometheusrule.py"
    result = subprocess.run(
        [sys.executable, str(sync), "--check"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    wrapped = _load(PROMETHEUS_RULE)
    assert wrapped["apiVersion"] == "monitoring.coreos.com/v1"
    assert wrapped["kind"] == "PrometheusRule"
    assert wrapped["spec"]["groups"] == _load(RULES)["groups"]
