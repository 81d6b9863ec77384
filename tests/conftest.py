"""Shared fixtures. Real-component fixtures live in their own plugin modules listed here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import DATA

pytest_plugins: list[str] = ["tests.support.crowdsec_fixtures", "tests.support.kafka"]

CORPUS = DATA / "corpus"


@pytest.fixture(name="corpus")
def _corpus() -> Path:
    return CORPUS
