"""Grafana dashboard: loads in the sidecar-provisioned setup, every query parses with promtool,
and every metric, label and label value it uses is one the exporter provides."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metric_names import METRICS, TARGET_LABELS, contract_errors, metrics_in
from tests.support.paths import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "ban-auditor.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
TIMEOUT = 120
# Grafana expands these before the query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${job}": ".+",
    "$job": ".+",
}


def _dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest panels


DASH = _dashboard()
PANELS = list(_panels(DASH["panels"]))
TARGETS = [
    (f"{panel['title']}/{target['refId']}", target)
    for panel in PANELS
    for target in panel.get("targets", [])
]


def _expand(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def _legend_labels(fmt: str) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", fmt))


@pytest.fixture(name="promtool", scope="module")
def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install the Debian package `prometheus`")
    return path


def _check_exprs(
    promtool: str, exprs: list[str], directory: Path
) -> subprocess.CompletedProcess[str]:
    """promtool has no expression linter; a recording rule per expression gets it parsed."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}:check", "expr": expr}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = directory / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_provisionable_by_the_grafana_sidecar() -> None:
    assert "__inputs" not in DASH
    assert "__requires" not in DASH
    assert DASH["uid"] == "ban-auditor"
    assert DASH["schemaVersion"] == SCHEMA_VERSION
    assert DASH["tags"]
    assert DASH["title"]
    assert DASH.get("id") is None
    assert "${DS_" not in DASHBOARD.read_text(encoding="utf-8")


def test_datasource_variable() -> None:
    variables = {v["name"]: v for v in DASH["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE


def test_variable_queries_use_exported_metrics() -> None:
    for var in DASH["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert m, f"unexpected variable query {query!r}"
        metric, label = m.groups()
        assert metric in METRICS
        assert label in METRICS[metric][1] | TARGET_LABELS


def test_panels_use_the_datasource_variable() -> None:
    assert PANELS
    for panel in PANELS:
        if panel.get("type") == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip()


def test_panel_layout() -> None:
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in PANELS:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_parses(promtool: str, tmp_path: Path) -> None:
    exprs = [_expand(target["expr"]) for _, target in TARGETS]
    result = _check_exprs(promtool, exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_expression_check_rejects_bad_promql(promtool: str, tmp_path: Path) -> None:
    result = _check_exprs(promtool, ["sum by (entrypoint (auditor_lapi_up)"], tmp_path)
    assert result.returncode != 0


@pytest.mark.parametrize(("where", "target"), TARGETS, ids=[name for name, _ in TARGETS])
def test_query_uses_only_exported_metrics(where: str, target: dict[str, Any]) -> None:
    expr = _expand(target["expr"])
    assert contract_errors(expr) == [], where
    # Legend labels must survive the query's aggregation, i.e. come from its grouping.
    grouping = set(re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr))
    kept = {label.strip() for group in grouping for label in group.split(",")}
    for label in _legend_labels(target.get("legendFormat", "")):
        assert label in kept, f"{where}: legend uses {label!r}, not kept by {expr!r}"


def test_dashboard_covers_every_metric() -> None:
    used = set().union(*(metrics_in(_expand(t["expr"])) for _, t in TARGETS))
    missing = set(METRICS) - used
    assert not missing, f"metrics without a panel: {sorted(missing)}"


def test_key_panels_present() -> None:
    exprs = " ".join(t["expr"] for _, t in TARGETS)
    for needle in (
        "auditor_internal_client_ratio",
        "auditor_internal_bans_active",
        "by (target_class) (max by (scope, type, target_class) (auditor_decisions_active",
        "by (result) (rate(auditor_lines_total",
        "by (client_class) (rate(auditor_requests_total",
        "auditor_tail_lag_bytes",
        "auditor_lapi_up",
        "auditor_lapi_last_success_timestamp_seconds",
        "by (kind, severity) (auditor_findings_active",
    ):
        assert needle in exprs, needle


def test_configmap_carries_the_dashboard() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: it renders the kustomize packaging")
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "grafana")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (cm,) = list(yaml.safe_load_all(result.stdout))
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ban-auditor.json"]) == DASH
