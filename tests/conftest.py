"""Shared fixtures. Real-component fixtures live in their own plugin modules listed here."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins: list[str] = ["tests.crowdsec_fixture", "tests.kafka_fixture"]

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"


@pytest.fixture(name="corpus")
def _corpus() -> Path:
    return CORPUS
