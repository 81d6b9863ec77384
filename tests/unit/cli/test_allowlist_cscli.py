"""The CrowdSec >= 1.6.6 centralized allowlist: ``cscli allowlists create/add`` commands, the
``--expiration`` flag, and the parser form kept next to them for older CrowdSec.

The commands follow cscli's own definition (cmd/crowdsec-cli/cliallowlists): ``create NAME -d
DESCRIPTION`` (description required), ``add NAME VALUE... [-e|--expiration D] [-d COMMENT]``,
durations parsed by go-cs-lib's cstime.ParseDuration (days first, then a Go duration)."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
import yaml

from pipeline.core.addresses import AddrClass, make_network
from pipeline.core.allowlist import ALLOWLIST_NAME, build_allowlist, check_expiration
from tests.support.auditor_cli import Run, _auditor  # noqa: F401 - the fixture


@pytest.mark.parametrize(
    ("text", "want"),
    [("30d", "30d"), ("12h", "12h"), ("1d12h", "1d12h"), ("90m", "90m"), ("1.5h", "1.5h"),
     (" 7d ", "7d"), ("1s", "1s"), ("2h45m30s", "2h45m30s")],
)  # fmt: skip
def test_expirations_cscli_accepts(text: str, want: str) -> None:
    assert check_expiration(text) == want


@pytest.mark.parametrize(
    "text", ["", "d", "3x", "-1h", "1h30", "0s", "500ms", "1d1d", "1w", "12h1d", "1 h", "P1D"]
)
def test_expirations_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        check_expiration(text)


def test_commands_list_every_internal_value() -> None:
    allow = build_allowlist(
        [make_network("10.42.7.9/32", AddrClass.NODE, "node a")], defaults=False
    )
    create, add = allow.allowlist_commands()
    assert shlex.split(create) == [
        "cscli", "allowlists", "create", ALLOWLIST_NAME,
        "-d", "Internal cluster addresses (ban-auditor)",
    ]  # fmt: skip
    # A host route is a plain address, as in the parser whitelist's `ip:` list.
    assert shlex.split(add) == [
        "cscli", "allowlists", "add", ALLOWLIST_NAME, "10.42.7.9",
        "-d", "Internal cluster addresses (ban-auditor)",
    ]  # fmt: skip


def test_script_is_valid_shell_with_the_same_commands(auditor: Run) -> None:
    code, out, err = auditor("allowlist", "--only", "allowlists", "--expiration", "30d")
    assert code == 0, err
    subprocess.run(["sh", "-n"], input=out, text=True, check=True)  # parses as sh
    joined = out.replace("\\\n", " ")
    commands = [shlex.split(ln) for ln in joined.splitlines() if ln and not ln.startswith("#")]
    create, add = commands
    assert create[:4] == ["cscli", "allowlists", "create", ALLOWLIST_NAME]
    assert add[:4] == ["cscli", "allowlists", "add", ALLOWLIST_NAME]
    assert add[-2:] == ["--expiration", "30d"]
    values = add[4:-4]
    assert "10.0.0.0/8" in values and "100.64.0.0/10" in values and "::1" in values
    # The same addresses as the parser whitelist of the same run.
    _, wl_out, _ = auditor("allowlist", "--only", "whitelist")
    wl = yaml.safe_load(wl_out)["whitelist"]
    assert sorted(values) == sorted([*wl["ip"], *wl["cidr"]])
    assert "CrowdSec >= 1.6.6" in out


def test_default_output_keeps_the_parser_and_adds_commands_as_comments(auditor: Run) -> None:
    code, out, _ = auditor("allowlist")
    assert code == 0
    docs = [d for d in yaml.safe_load_all(out) if d is not None]
    assert [d["kind"] if "kind" in d else d["name"] for d in docs] == [
        "ban-auditor/cluster-whitelist",
        "Middleware",
        "HelmChartConfig",
    ]
    assert "--only allowlists" in out  # the parser form points at the new one
    assert f"# cscli allowlists create {ALLOWLIST_NAME}" in out
    assert "--expiration" not in out  # never expires unless asked


def test_json_has_the_allowlist(auditor: Run) -> None:
    code, out, _ = auditor("allowlist", "-o", "json", "--expiration", "1d12h")
    assert code == 0
    doc = json.loads(out)["crowdsec_allowlist"]
    assert doc["name"] == ALLOWLIST_NAME
    assert doc["expiration"] == "1d12h"
    assert doc["min_crowdsec_version"] == "1.6.6"
    assert doc["commands"][1].endswith("--expiration 1d12h")
    code, out, _ = auditor("allowlist", "-o", "json", "--only", "allowlists")
    assert json.loads(out)["expiration"] is None


@pytest.mark.parametrize("bad", ["3x", "0s", "-2h", ""])
def test_bad_expiration_exits_2_naming_the_flag(auditor: Run, bad: str) -> None:
    code, out, err = auditor("allowlist", "--expiration", bad)
    assert code == 2
    assert out == ""
    assert "--expiration" in err
    assert "Traceback" not in err
