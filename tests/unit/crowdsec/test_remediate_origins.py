"""``remediate_origins`` from the config reaches the remediator, and only those origins are
deleted by default (issue 12, item 3); the policy itself runs against a real LAPI in
tests/integration/crowdsec/test_remediate.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from parsers.crowdsec import Decision
from pipeline.config import RunConfig, validate
from pipeline.contracts import PluginContext
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.crowdsec.attach import attach_crowdsec
from pipeline.crowdsec.remediate import DEFAULT_ORIGINS, Remediator, policy_refusal
from pipeline.errors import ConfigError
from sinks.prometheus import Metrics


def remediator_for(tmp_path: Path, **keys: object) -> Remediator:
    creds = tmp_path / "creds.yaml"
    creds.write_text("url: http://127.0.0.1:1/\nlogin: m\npassword: pw\n")
    creds.chmod(0o600)
    config = RunConfig(remediate=True, lapi_credentials_file=str(creds), **keys)  # type: ignore[arg-type]
    ctx = PluginContext(
        Classifier(k3s_defaults()),
        Metrics(CollectorRegistry()),
        asyncio.Event(),
        time.monotonic,
        "file",
    )
    (plugin,) = attach_crowdsec(config, ctx)
    (sink,) = plugin.sinks
    assert isinstance(sink, Remediator)
    return sink


def ban(origin: str, *, simulated: bool = False) -> Decision:
    return Decision(7, origin, "s", "Ip", "10.42.0.7", "ban", 60.0, simulated)


def test_default_is_the_agents_own_decisions(tmp_path: Path) -> None:
    r = remediator_for(tmp_path)
    assert r.origins == DEFAULT_ORIGINS == frozenset({"crowdsec"})
    assert policy_refusal(ban("crowdsec"), r.origins) is None
    for origin in ("cscli", "CAPI", "lists", "cscli-import", ""):
        assert policy_refusal(ban(origin), r.origins) is not None
    assert "simulated" in (policy_refusal(ban("crowdsec", simulated=True), r.origins) or "")


def test_configured_origins_reach_the_remediator(tmp_path: Path) -> None:
    r = remediator_for(tmp_path, remediate_origins=("crowdsec", "cscli"))
    assert r.origins == frozenset({"crowdsec", "cscli"})
    assert policy_refusal(ban("cscli"), r.origins) is None
    # Simulated decisions stay untouched whatever the origins.
    assert policy_refusal(ban("cscli", simulated=True), r.origins) is not None


@pytest.mark.parametrize("bad", ["crowdsec,cscli", "", "x" * 65, "bad\norigin"])
def test_bad_origins_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="remediate_origins"):
        validate(RunConfig(remediate_origins=(bad,)))
