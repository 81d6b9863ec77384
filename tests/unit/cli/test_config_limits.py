"""Numeric config keys: finite, in their documented range, integers integral; exit 2 naming
the key and where the value came from, never a traceback. And no credentials in --print-config.

``window = inf`` raised OverflowError and ``window = 1e30`` a TypeError in ``--print-config``
(tracebacks, exit 1); NaN and negative intervals and timeouts were accepted.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from pipeline.config import LIMITS, RunConfig, add_config_args, load_config, validate
from pipeline.errors import EXIT_USAGE, ConfigError
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture
from tests.support.paths import ROOT


def auditor_process(
    *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command line in its own process: a traceback there is exit 1 and a stack."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_args(p)
    return p.parse_args(list(argv))


NUMERIC = tuple(
    f.name
    for f in dataclasses.fields(RunConfig)
    if typing.get_type_hints(RunConfig)[f.name] in (int, float)
)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("window = inf", "window"),
        ("window = 1e30", "window"),
        ("window = -inf", "window"),
        ("window = nan", "window"),
        ("poll_interval = nan", "poll_interval"),
        ("poll_interval = -1.0", "poll_interval"),
        ("kafka_timeout = nan", "kafka_timeout"),
        ("kafka_timeout = -5", "kafka_timeout"),
        ("rotate_wait = nan", "rotate_wait"),
        ("rotate_wait = -0.5", "rotate_wait"),
        ("max_line_bytes = 1e400", "max_line_bytes"),
        ("kafka_partitions = 99999999999999999999999", "kafka_partitions"),
    ],
)
def test_bad_number_in_the_file_exits_2_naming_key_and_file(
    tmp_path: Path, line: str, key: str
) -> None:
    cfg = tmp_path / "auditor.toml"
    cfg.write_text(f'access_log = ["/x.log"]\n{line}\n')
    proc = auditor_process("run", "--config", str(cfg), "--print-config")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"config key '{key}'" in proc.stderr
    assert str(cfg) in proc.stderr
    assert proc.stdout == ""


def test_bad_number_in_env_and_flag_exits_2_naming_them(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AUDITOR_KAFKA_TIMEOUT": "nan"}
    proc = auditor_process("aggregate", "--kafka-bootstrap", "b:9092", "--print-config", env=env)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "'kafka_timeout' (env AUDITOR_KAFKA_TIMEOUT)" in proc.stderr
    proc = auditor_process("run", "--access-log", "/x.log", "--rotate-wait", "-1", "--print-config")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "'rotate_wait' (flag --rotate-wait)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_numeric_key_has_documented_limits() -> None:
    assert set(NUMERIC) == set(LIMITS)
    for key in NUMERIC:
        default = getattr(RunConfig(), key)
        assert LIMITS[key].admits(default), key


@pytest.mark.parametrize("key", sorted(LIMITS))
@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_each_numeric_key_refuses_non_finite_and_out_of_range(
    tmp_path: Path, key: str, source: str
) -> None:
    limits = LIMITS[key]
    below = limits.low if limits.open_low else limits.low - 1
    bad = ["nan", "inf", "-inf", repr(below), repr(limits.high + 1)]
    for text in bad:
        with pytest.raises(ConfigError, match=f"'{key}'") as exc:
            _load(tmp_path, source, key, text)
        assert {"file": "file ", "env": "env AUDITOR_", "flag": "flag --"}[source] in str(exc.value)
    for edge in (limits.high, limits.low + 1 if limits.open_low else limits.low):
        assert getattr(_load(tmp_path, source, key, repr(edge)), key) == edge


def _load(tmp_path: Path, source: str, key: str, text: str) -> RunConfig:
    if source == "file":
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"{key} = {text}\n")
        return load_config(_args("--config", str(cfg)), {})
    if source == "env":
        return load_config(_args(), {"AUDITOR_" + key.upper(): text})
    return load_config(_args(f"--{key.replace('_', '-')}={text}"), {})


@pytest.mark.parametrize("text", ["1.5", "'1.5'", "59.9"])
def test_integer_keys_must_be_integral(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"window = {text}\n")
    with pytest.raises(ConfigError, match=r"'window'.*expected an integer"):
        load_config(_args("--config", str(cfg)), {})


def test_integral_numbers_are_accepted_for_integer_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("window = 600.0\nmasked_min_requests = '40'\n")
    c = load_config(_args("--config", str(cfg), "--kafka-partitions", "3.0"), {})
    assert (c.window, c.masked_min_requests, c.kafka_partitions) == (600, 40, 3)
    assert all(type(getattr(c, k)) is int for k in ("window", "masked_min_requests"))


def test_validate_refuses_a_config_built_in_code() -> None:
    with pytest.raises(ConfigError, match="'poll_interval'"):
        validate(RunConfig(poll_interval=float("nan")))
    with pytest.raises(ConfigError, match="'lapi_poll_interval'"):
        validate(RunConfig(lapi_poll_interval=-1.0))


def test_flag_help_shows_each_range(auditor: Run) -> None:
    code, out, _ = auditor("run", "--help")
    assert code == 0
    assert "an integer from 1 to 604800 (default: 900)" in " ".join(out.split())


# -- URLs with credentials ------------------------------------------------------------------------


def test_print_config_strips_credentials_from_urls(auditor: Run) -> None:
    code, out, err = auditor(
        "run",
        "--access-log",
        "/x.log",
        "--lapi-url",
        "http://bouncer:hunter2@127.0.0.1:8080/",
        "--crowdsec-metrics-url",
        "http://prom:s3cr3t@127.0.0.1:6060/metrics",
        "--print-config",
    )
    assert code == 0, err
    assert "hunter2" not in out and "s3cr3t" not in out and "bouncer" not in out
    assert 'lapi_url = "http://127.0.0.1:8080/"' in out
    assert 'crowdsec_metrics_url = "http://127.0.0.1:6060/metrics"' in out


# -- replay's flags share the ranges -----------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--window", "99999999999"),
        ("--masked-share", "nan"),
        ("--masked-share", "inf"),
        ("--masked-min-requests", "10000000000"),
        ("--jobs", "100000"),
    ],
)
def test_replay_numeric_flags_are_bounded(
    auditor: Run, tmp_path: Path, flag: str, value: str
) -> None:
    # No such input: flags are checked first, and a regression must never get as far as
    # starting 100000 worker processes.
    code, out, err = auditor("replay", flag, value, str(tmp_path / "absent.log"))
    assert code == EXIT_USAGE
    assert flag in err
    assert out == ""
