"""``--print-config`` prints TOML that reads back, as ``--config``, to the same config; secrets
stay out, and features that are off show no secret placeholders."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from pipeline.config import RunConfig, add_config_args, load_config
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 (fixture)
from tests.support.paths import ROOT


def _load(path: Path) -> RunConfig:
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    return load_config(parser.parse_args(["--config", str(path)]), env={})


def _round_trip(auditor: Run, tmp_path: Path, *argv: str) -> tuple[RunConfig, str]:
    code, out, err = auditor(*argv, "--print-config")
    assert (code, err) == (0, "")
    pasted = tmp_path / "pasted.toml"
    pasted.write_text(out)
    return _load(pasted), out


def test_example_config_round_trips(auditor: Run, tmp_path: Path) -> None:
    example = ROOT / "examples" / "run.toml"
    config, out = _round_trip(auditor, tmp_path, "run", "--config", str(example))
    assert config == _load(example)
    assert tomllib.loads(out)["lapi_key_file"] == "/run/secrets/ban-auditor/api-key"


def test_every_kind_of_value_round_trips(
    auditor: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AUDITOR_LAPI_KEY", "AUDITOR_WINDOW"):
        monkeypatch.delenv(name, raising=False)
    argv = [
        "run",
        "--access-log", "/var/log/a b.log",
        "--access-log", '/var/log/"quoted"\\x.log',
        "--no-k3s-defaults",
        "--pod-cidr", "10.32.0.0/12",
        "--masked-share", "0.35",
        "--window", "600",
        "--kafka-bootstrap", "b1:9092,b2:9092",
        "--kafka-sasl-mechanism", "SCRAM-SHA-512",
        "--kafka-security-protocol", "SASL_SSL",
        "--node-name", "nöde-1",
        "--remediate-origins", "crowdsec",
        "--remediate-origins", "cscli",
    ]  # fmt: skip
    config, _ = _round_trip(auditor, tmp_path, *argv)
    code, _, _ = auditor(*argv, "--print-config")
    assert code == 0
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    assert config == load_config(parser.parse_args(argv[1:]), env={})
    assert config.access_log == ("/var/log/a b.log", '/var/log/"quoted"\\x.log')
    assert config.k3s_defaults is False
    assert config.kubeconfig is None


def test_credentials_in_urls_and_secrets_stay_out(
    auditor: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDITOR_LAPI_KEY", "env-secret")
    config, out = _round_trip(
        auditor,
        tmp_path,
        "run",
        "--access-log", "/x.log",
        "--lapi-url", "http://bouncer:hunter2@127.0.0.1:8080/",
        "--kafka-bootstrap", "user:pw@b1:9092",
    )  # fmt: skip
    assert "hunter2" not in out and "env-secret" not in out and "pw@" not in out
    assert config.lapi_url == "http://127.0.0.1:8080/"
    assert config.kafka_bootstrap == "b1:9092"
    assert "# LAPI key: read from env AUDITOR_LAPI_KEY" in out


def test_no_secret_placeholders_for_features_that_are_off(auditor: Run) -> None:
    code, out, _ = auditor("run", "--access-log", "/x.log", "--print-config")
    assert code == 0
    assert "LAPI key" not in out
    assert "SASL password" not in out
    assert "machine password" not in out
    assert "# lapi_url is not set" in out
