"""Our Traefik values against the Traefik chart's own values.schema.json, which Helm checks
before it renders anything: each values file passes its chart's schema and fails the other
chart's (tests/data/traefik-chart/SOURCES.md says where the schemas come from)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.support.paths import DATA, ROOT

SCHEMAS = DATA / "traefik-chart"
V40 = SCHEMAS / "values.schema.v40.3.0.json"
V41 = SCHEMAS / "values.schema.v41.3.0.json"
HELM = ROOT / "deploy" / "helm"
K3S = ROOT / "deploy" / "k3s" / "traefik-helmchartconfig.yaml"


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _k3s_values() -> Any:
    return yaml.safe_load(_load(K3S)["spec"]["valuesContent"])


# (values, the schema it is written for, the schema of the other chart major)
VALUES = {
    "v40": (lambda: _load(HELM / "traefik-values-v40.yaml"), V40, V41),
    "v41": (lambda: _load(HELM / "traefik-values-v41.yaml"), V41, V40),
    # k3s' bundled chart predates v41 and takes the v40 spelling.
    "k3s": (_k3s_values, V40, V41),
}


@functools.cache
def _validator(schema: Path) -> Draft202012Validator:
    with schema.open(encoding="utf-8") as fh:
        document = json.load(fh)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def _errors(values: Any, schema: Path) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in _validator(schema).iter_errors(values)
    ]


def test_sources_name_every_schema() -> None:
    sources = (SCHEMAS / "SOURCES.md").read_text(encoding="utf-8")
    schemas = sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert schemas == sorted([V40.name, V41.name])
    for name in schemas:
        assert name in sources


@pytest.mark.parametrize("flavour", VALUES)
def test_values_pass_their_charts_schema(flavour: str) -> None:
    load, schema, _ = VALUES[flavour]
    assert _errors(load(), schema) == []


@pytest.mark.parametrize("flavour", VALUES)
def test_values_fail_the_other_charts_schema(flavour: str) -> None:
    """Helm refuses, rather than ignores, the other major's key names."""
    load, _, other = VALUES[flavour]
    errors = _errors(load(), other)
    assert len(errors) == 1, errors
    (error,) = errors
    assert error.startswith("(root): Additional properties are not allowed")
    renamed = ("'logs'",) if other == V41 else ("'accessLog'", "'log'")
    for key in renamed:
        assert key in error


def test_schema_checks_nested_values() -> None:
    """The check is deep, not only top-level: a wrong type under accessLog is reported. (It does
    not catch `defaultmode` for `defaultMode`: the headers object is open; test_manifests.py's
    key checks do.)"""
    values = _load(HELM / "traefik-values-v41.yaml")
    values["accessLog"]["format"] = 7
    errors = _errors(values, V41)
    assert errors
    assert all(e.startswith("accessLog/format") for e in errors), errors
