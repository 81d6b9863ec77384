"""The published JSON contracts (docs/schema/), for tests that check outputs against them."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tests.support.paths import ROOT

SCHEMAS = ROOT / "docs" / "schema"


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return doc


def _validator(name: str) -> Draft202012Validator:
    replay = _load("replay-report.schema.json")
    registry: Registry[Any] = Registry().with_resource(
        "replay-report.schema.json", Resource.from_contents(replay)
    )
    schema = _load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)


def validate_replay(doc: object) -> None:
    _validator("replay-report.schema.json").validate(doc)


def validate_check(doc: object) -> None:
    _validator("check-report.schema.json").validate(doc)
