"""The public-client diversity tallies (suspected_hop) travel in partition snapshots."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.diversity import HOST_SHIFT, MASK_LIMIT, field_count
from pipeline.core.traffic import Summary
from pipeline.kafka.snapshot import summary_from_json, summary_to_json
from pipeline.kafka.validate import DeadLetter


def _summary() -> Summary:
    s = Summary()
    keys = {
        ("web", "198.51.100.7", f"s{i}.example", f"r{i}@k8s", "81.2.3.4", "", f"UA/{i}"): 3
        for i in range(5)
    }
    s.add_counts(keys, Classifier(k3s_defaults()).classify)
    return s


def test_public_tallies_round_trip() -> None:
    s = _summary()
    again = summary_from_json(orjson.loads(orjson.dumps(summary_to_json(s))))
    assert again.pub_count == {"198.51.100.7": 15}
    assert again.pub_mask == s.pub_mask
    assert again.pub_ua == s.pub_ua
    assert field_count(again.pub_mask["198.51.100.7"], HOST_SHIFT) >= 3
    assert field_count(again.pub_ua["198.51.100.7"], 0) >= 3


def test_a_snapshot_without_user_agents_from_an_older_writer_decodes() -> None:
    body = orjson.loads(orjson.dumps(summary_to_json(_summary())))
    del body["pub_ua"]
    again = summary_from_json(body)
    assert again.pub_ua == {}
    assert again.pub_count == {"198.51.100.7": 15}


@pytest.mark.parametrize("slot", ["pub_mask", "pub_ua"])
@pytest.mark.parametrize("mask", [-1, MASK_LIMIT, "7", 1.5])
def test_a_bad_diversity_mask_is_a_dead_letter(slot: str, mask: Any) -> None:
    body = orjson.loads(orjson.dumps(summary_to_json(_summary())))
    body[slot] = {"$d": {"198.51.100.7": mask}}
    with pytest.raises(DeadLetter):
        summary_from_json(body)
