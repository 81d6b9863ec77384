"""``--help`` of the live commands is generated from the config definition: every flag has a
line of help with its default, choices and range; flags that do not apply are not offered."""

from __future__ import annotations

import argparse

import pytest

from pipeline.cli.main import build_parser
from pipeline.config import CHOICES, KEYS, LIMITS, RUN_ONLY, key_doc, keys_for
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 (fixture)

COMMANDS = ("replay", "run", "aggregate", "check", "allowlist")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_and_a_meaningful_metavar(command: str) -> None:
    for action in _flags(_subparser(command)):
        name = action.option_strings[-1]
        assert action.help and action.help.strip(), f"{command} {name}: no help"
        assert "\n" not in action.help, f"{command} {name}: help is one line"
        assert action.metavar not in ("VALUE", "MINUTE", "INTERVAL"), f"{command} {name}"


def test_every_config_key_is_documented() -> None:
    for key in KEYS:
        text, metavar = key_doc(key)
        assert text and not text.endswith("."), key
        assert metavar or key_doc(key) == (text, ""), key


def test_help_shows_default_choices_and_range(auditor: Run) -> None:
    code, out, _ = auditor("run", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "--envelope {auto,raw,cri,docker}" in text
    assert "--log-level {debug,info,warning,error}" in text
    assert "--metrics-listen HOST:PORT" in text
    assert "(default: 127.0.0.1:9977)" in text
    assert "--remediate, --no-remediate" in text
    assert "(default: off)" in text
    assert "--remediate-origins ORIGIN" in text
    assert "(default: crowdsec)" in text
    for key in LIMITS:
        assert "--" + key.replace("_", "-") in text
    for key in CHOICES:
        assert "--" + key.replace("_", "-") + " {" in text


def test_aggregate_offers_only_what_applies(auditor: Run) -> None:
    _, out, _ = auditor("aggregate", "--help")
    for key in RUN_ONLY:
        assert f"--{key.replace('_', '-')} " not in out + " ", key
    assert "--kafka-bootstrap HOST:PORT" in out
    assert set(keys_for("aggregate")) == set(KEYS) - RUN_ONLY
    code, _, err = auditor("aggregate", "--access-log", "/var/log/x.log")
    assert code == 2
    assert "--access-log" in err


def test_run_offers_every_key() -> None:
    dests = {a.dest for a in _subparser("run")._actions}
    assert set(KEYS) <= dests
