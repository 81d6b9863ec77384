"""What the public-node-hop golden must say (checked on the expected files, so a regeneration
cannot bless a regression): both node addresses are suspected hops, the banned one critical;
the crawler with one User-Agent on one site is not a hop, though it is heavy and banned."""

from __future__ import annotations

import json
from typing import Any

from tests.support.paths import GOLDEN

CASE = GOLDEN / "public-node-hop"


def _findings() -> dict[str, dict[str, Any]]:
    report = json.loads((CASE / "expected.json").read_text())
    return {f["target"]: f for f in report["findings"]}


def test_golden_public_node_hop_facts() -> None:
    found = _findings()
    assert set(found) == {"203.0.113.21", "203.0.113.22"}
    banned, free = found["203.0.113.21"], found["203.0.113.22"]
    assert (banned["kind"], banned["severity"]) == ("suspected_hop", "critical")
    assert banned["evidence"]["lockout"] is True
    assert banned["evidence"]["decision"]["id"] == 11
    assert (free["kind"], free["severity"]) == ("suspected_hop", "high")
    for f in (banned, free):
        assert f["evidence"]["request_share"] == 0.3
        assert f["evidence"]["hosts"] == 5
        assert f["evidence"]["host_share"] == 1.0
    assert (CASE / "exit_code.txt").read_text() == "1\n"


def test_golden_public_node_hop_table_names_the_lockout() -> None:
    text = (CASE / "expected.table.txt").read_text()
    assert "[CRITICAL] suspected_hop 203.0.113.21" in text
    assert "locked out" in text
    assert "198.51.100.60:" not in text  # the crawler has no finding
