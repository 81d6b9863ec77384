"""Packaging hygiene: one version, a license, lean runtime dependencies, extras that name what
they add, and a clear message when one is missing."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata

import pytest

import pipeline
from pipeline.cli.extras import EXTRAS, require
from pipeline.errors import UsageError
from tests.support.paths import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
IMAGE_REF = re.compile(r"ghcr\.io/ban-auditor/ban-auditor:([0-9][\w.+-]*)")


def test_the_version_is_written_once() -> None:
    assert pipeline.__version__ == PROJECT["version"]
    init = (ROOT / "pipeline" / "__init__.py").read_text()
    assert PROJECT["version"] not in init


def test_image_references_in_deploy_use_the_version() -> None:
    tags = {
        (path.relative_to(ROOT).as_posix(), tag)
        for path in (ROOT / "deploy").rglob("*")
        if path.is_file() and path.suffix in {".yaml", ".yml", ".md"}
        for tag in IMAGE_REF.findall(path.read_text(encoding="utf-8"))
    }
    assert tags, "no image reference found in deploy/"
    assert {tag for _, tag in tags} == {PROJECT["version"]}, sorted(tags)


def test_license_changelog_and_urls() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
    meta = metadata("ban-auditor")
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Source", "Issues", "Changelog"} <= set(urls)


def test_runtime_dependencies_leave_out_the_heavy_features() -> None:
    """aiohttp included: the sidecar reaches CrowdSec through pipeline/crowdsec/http1.py, and
    only the Kubernetes client (the [kube] extra) uses aiohttp."""
    runtime = " ".join(PROJECT["dependencies"])
    for heavy in ("aiohttp", "aiokafka", "kubernetes-asyncio", "maxminddb"):
        assert heavy not in runtime
    extras = PROJECT["optional-dependencies"]
    assert {"kafka", "kube", "geoip", "all"} <= set(extras)
    assert set(EXTRAS.values()) <= set(extras)
    assert any(dep.startswith("aiohttp") for dep in extras["kube"])


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aiokafka" else real(name)
    )
    with pytest.raises(UsageError, match=r"pip install 'ban-auditor\[kafka\]'"):
        require("aiokafka", "config key 'kafka_bootstrap' (Kafka)")


def test_run_with_kafka_but_no_kafka_extra_exits_2(tmp_path: object) -> None:
    """A real process in which aiokafka cannot be imported."""
    probe = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('aiokafka', 'maxminddb'):\n"
        "            raise ModuleNotFoundError(name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib.util\n"
        "_real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n in ('aiokafka', 'maxminddb') "
        "else _real(n, *a)\n"
        "from pipeline.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for argv, extra in (
        (["aggregate", "--kafka-bootstrap", "127.0.0.1:9"], "kafka"),
        (["replay", "examples/demo/access.log", "--geoip-db", "x.mmdb"], "geoip"),
    ):
        proc = subprocess.run(
            [sys.executable, "-c", probe, *argv],
            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"pip install 'ban-auditor[{extra}]'" in proc.stderr
        assert "Traceback" not in proc.stderr
