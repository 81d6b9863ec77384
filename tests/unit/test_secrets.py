"""Secrets outside the process: key files others can read, and credentials inside URLs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.secrets import read_private_file, redact_url, secret_from_file

KEY = "bouncer-key-do-not-log"


def key_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "api-key"
    path.write_text(KEY + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_key_file_is_warned_about(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = key_file(tmp_path, mode)
    with caplog.at_level(logging.WARNING, logger="auditor.secrets"):
        secret, _ = secret_from_file(path, what="lapi_key_file")
    assert secret.reveal() == KEY  # a warning, not a refusal
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(path) in message and "lapi_key_file" in message and f"{mode:04o}" in message
    assert KEY not in caplog.text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_file_is_read_quietly(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = key_file(tmp_path, mode)
    with caplog.at_level(logging.DEBUG, logger="auditor.secrets"):
        text, source = read_private_file(path, what="lapi_credentials_file")
    assert text.strip() == KEY
    assert source == f"file {path}"
    assert caplog.records == []


def test_symlinked_key_file_is_checked_at_its_target(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A link elsewhere does not hide a readable key: the target's mode is what counts."""
    target = key_file(tmp_path, 0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="auditor.secrets"):
        read_private_file(link, what="lapi_key_file")
    assert str(link) in caplog.text


def test_kubernetes_secret_volume_file_is_read_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The kubelet's layout: ``api-key -> ..data/api-key``, ``..data -> ..<timestamp>``. A
    non-root container reads a root-owned Secret only through its group/world bits (the shipped
    sidecar mounts it 0444), so that is no leak to warn about on every start."""
    stamped = tmp_path / "..2026_12_04_14_00_00.123"
    stamped.mkdir()
    key_file(stamped, 0o444)
    (tmp_path / "..data").symlink_to(stamped.name)
    (tmp_path / "api-key").symlink_to("..data/api-key")
    with caplog.at_level(logging.WARNING, logger="auditor.secrets"):
        secret, _ = secret_from_file(tmp_path / "api-key", what="lapi_key_file")
    assert secret.reveal() == KEY
    assert caplog.records == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pass@127.0.0.1:8080/", "http://127.0.0.1:8080/"),
        ("https://bouncer@lapi.example:8080/v1/x?a=b@c", "https://lapi.example:8080/v1/x?a=b@c"),
        ("http://u:p@ss@[::1]:8080", "http://[::1]:8080"),  # '@' in the password
        ("http://u:p%40ss@host/path@v1", "http://host/path@v1"),  # '@' in the path stays
        ("//user:pw@host:6443", "//host:6443"),
        ("user:pw@broker:9092", "broker:9092"),  # a Kafka bootstrap server
        ("u:p@ss@broker:9092/x", "broker:9092/x"),
        ("HTTPS://USER:PW@HOST", "HTTPS://HOST"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/"),
        ("http://host/a@b", "http://host/a@b"),
        ("broker-0:9092,broker-1:9092", "broker-0:9092,broker-1:9092"),
        ("not a url", "not a url"),
        ("", ""),
        ("http://[::1", "http://[::1"),  # malformed: unchanged, never an exception
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


_USERINFO = st.text(alphabet="abcXYZ019-._~!$&'()*+,;=:%@", min_size=1, max_size=20).filter(
    lambda s: s.strip("@")
)


@given(
    scheme=st.sampled_from(["http", "https", "kafka+ssl"]),
    user=_USERINFO,
    password=_USERINFO,
    host=st.sampled_from(["127.0.0.1:8080", "[::1]:6443", "lapi.example"]),
    rest=st.sampled_from(["", "/", "/v1/decisions?startup=true", "#frag"]),
)
def test_redact_url_never_shows_the_userinfo(
    scheme: str, user: str, password: str, host: str, rest: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}{rest}"
    assert redact_url(url) == f"{scheme}://{host}{rest}"


async def test_crowdsec_errors_and_health_findings_carry_no_credentials() -> None:
    """URLs reach messages, findings and logs from the CrowdSec client and the health checker
    (issue 12, item 12): the user:password@ part never does."""
    from pipeline.crowdsec.client import CrowdSecClient, CrowdSecUnavailable
    from pipeline.crowdsec.health import HealthChecker

    url = "http://bouncer:hunter2@127.0.0.1:9/"
    client = CrowdSecClient(url, timeout=0.5)
    try:
        with pytest.raises(CrowdSecUnavailable) as info:
            await client.metrics_text()
    finally:
        await client.aclose()
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1:9" in str(info.value)
    checker = HealthChecker(url)
    assert checker.shown_url == "http://127.0.0.1:9/"
