"""Config precedence (file < env < flags), unknown keys, coercion errors naming the key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.config import RunConfig, add_config_args, load_config
from pipeline.errors import ConfigError
from tests.support.paths import ROOT


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_args(p)
    return p.parse_args(list(argv))


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('metrics_listen = "127.0.0.1:1000"\nwindow = 60\naccess_log = ["/a.log"]\n')
    env = {"AUDITOR_METRICS_LISTEN": "127.0.0.1:2000", "AUDITOR_WINDOW": "120"}
    c = load_config(_args("--config", str(cfg), "--window", "300"), env)
    assert c.metrics_listen == "127.0.0.1:2000"  # env beats file
    assert c.window == 300  # flag beats env
    assert c.access_log == ("/a.log",)  # file value survives when nothing overrides it


def test_env_lists_and_bools() -> None:
    env = {"AUDITOR_ACCESS_LOG": "/a.log, /b.log", "AUDITOR_K3S_DEFAULTS": "false"}
    c = load_config(_args(), env)
    assert c.access_log == ("/a.log", "/b.log")
    assert c.k3s_defaults is False


def test_flag_lists_and_negated_bool() -> None:
    c = load_config(_args("--access-log", "/a", "--access-log", "/b", "--no-k3s-defaults"), {})
    assert c.access_log == ("/a", "/b")
    assert not c.k3s_defaults


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('acces_log = ["/a.log"]\n')
    with pytest.raises(ConfigError, match="unknown key 'acces_log'"):
        load_config(_args("--config", str(cfg)), {})


def test_unknown_env_key_is_named() -> None:
    with pytest.raises(ConfigError, match="AUDITOR_NOPE"):
        load_config(_args(), {"AUDITOR_NOPE": "1"})


def test_secret_env_is_not_a_config_key() -> None:
    c = load_config(_args(), {"AUDITOR_LAPI_KEY": "s3cret"})
    assert "s3cret" not in repr(c)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("window = 'soon'", "window"),
        ("start_at = 'middle'", "start_at"),
        ("metrics_listen = 'nocolon'", "metrics_listen"),
        ("masked_share = 2.0", "masked_share"),
        ("k3s_defaults = 'maybe'", "k3s_defaults"),
        ("access_log = 5", "access_log"),
        ("lapi_url = 'crowdsec:8080'", "lapi_url"),
        ("lapi_url = 'ftp://crowdsec:8080'", "lapi_url"),
        ("crowdsec_metrics_url = 'http://a:6060/metrics,nonsense'", "crowdsec_metrics_url"),
        ("crowdsec_metrics_url = 'http://a:99999/metrics'", "crowdsec_metrics_url"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key):
        load_config(_args("--config", str(cfg)), {})


def test_a_bad_url_is_named_with_its_password_redacted(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("crowdsec_metrics_url = 'gopher://user:hunter2@a:6060/metrics'\n")
    with pytest.raises(ConfigError, match="crowdsec_metrics_url") as err:
        load_config(_args("--config", str(cfg)), {})
    assert "hunter2" not in str(err.value)


def test_cli_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("bogus_key = 1\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "bogus_key" in capsys.readouterr().err


def test_print_config_redacts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key"
    key.write_text("very-secret-key\n")
    monkeypatch.setenv("AUDITOR_LAPI_KEY", "env-secret")
    rc = main(
        [
            "run",
            "--print-config",
            "--access-log",
            "/x.log",
            "--lapi-url",
            "http://127.0.0.1:1/",
            "--lapi-key-file",
            str(key),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "very-secret-key" not in out and "env-secret" not in out
    assert f"# LAPI key: read from file {key}" in out
    assert 'access_log = ["/x.log"]' in out


def test_defaults_are_loopback_safe() -> None:
    assert RunConfig().metrics_listen.startswith("127.0.0.1:")


def test_shipped_example_config_loads(capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "examples" / "run.toml"
    assert main(["run", "--config", str(example), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert 'lapi_url = "http://127.0.0.1:8080/"' in out
    assert "# LAPI key: read from file /run/secrets/ban-auditor/api-key" in out


def test_kubernetes_service_links_and_the_key_variable_are_not_config_keys() -> None:
    env = {
        "AUDITOR_PORT": "tcp://10.43.0.5:9977",
        "AUDITOR_PORT_9977_TCP": "tcp://10.43.0.5:9977",
        "AUDITOR_PORT_9977_TCP_ADDR": "10.43.0.5",
        "AUDITOR_SERVICE_HOST": "10.43.0.5",
        "AUDITOR_SERVICE_PORT": "9977",
        "AUDITOR_LAPI_KEY_ENV": "AUDITOR_BOUNCER_KEY",
        "AUDITOR_BOUNCER_KEY": "s3cret",
    }
    c = load_config(_args(), env)
    assert c.lapi_key_env == "AUDITOR_BOUNCER_KEY"
    assert "s3cret" not in repr(c)


@pytest.mark.parametrize(
    ("content", "named"),
    [(b"\xff\xfe not utf-8", "not valid TOML"), (None, "cannot read it")],
)
def test_unreadable_config_file_is_a_config_error(
    tmp_path: Path, content: bytes | None, named: str
) -> None:
    cfg = tmp_path / "c.toml"
    if content is None:
        cfg.mkdir()  # a directory where the file should be
    else:
        cfg.write_bytes(content)
    with pytest.raises(ConfigError, match=named):
        load_config(_args("--config", str(cfg)), {})


def test_port_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError, match="metrics_listen"):
        load_config(_args("--metrics-listen", "127.0.0.1:99999"), {})
