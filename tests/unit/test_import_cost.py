"""A plain sidecar and ``auditor replay`` must not pay for features they do not use.

aiohttp (~10 MB RSS), aiokafka, kubernetes-asyncio (~60 MB) and maxminddb load only where the
config turns their feature on; the plugin wiring must keep it that way. Talking to CrowdSec
loads none of them (``pipeline/crowdsec/http1.py``): the shipped sidecar, with a LAPI and the
watcher's networks file, has a 40 MB budget.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.paths import ROOT

HEAVY = ("aiohttp", "aiokafka", "kubernetes_asyncio", "maxminddb")

PROBE = """
import sys
{setup}
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))
print(','.join(heavy))
"""


def loaded_after(setup: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup, heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    return set(filter(None, proc.stdout.strip().split(",")))


@pytest.mark.parametrize(
    "setup",
    [
        # every command registered, as `auditor --help` does
        "import pipeline.cli.main as m; m.build_parser()",
        # replay's whole path, parallel workers included
        "import pipeline.cli.replay, pipeline.sources.parallel, sinks.report",
        # a sidecar with no LAPI, no Kafka, no discovery, no GeoIP: plugins attached
        (
            "from pipeline.config import RunConfig\n"
            "from pipeline.cli.run import build_runner\n"
            "r = build_runner(RunConfig(access_log=('/dev/null',)))\n"
            "plugins = r._attach(r.config, r.context) if r._attach else []\n"
            "assert plugins == [], plugins"
        ),
        # the shipped sidecar: a LAPI (polled once, nothing listening), CrowdSec's metrics,
        # the watcher's networks file and the echo for CrowdSec, plugins attached
        (
            "import asyncio, os, tempfile\n"
            "os.environ['AUDITOR_TEST_KEY'] = 'k'\n"
            "from pipeline.config import RunConfig\n"
            "from pipeline.cli.run import build_runner\n"
            "from pipeline.crowdsec.client import CrowdSecClient, CrowdSecUnavailable\n"
            "nets = os.path.join(tempfile.mkdtemp(), 'networks.json')\n"
            "r = build_runner(RunConfig(access_log=('/dev/null',), lapi_url='http://127.0.0.1:1',"
            " lapi_key_env='AUDITOR_TEST_KEY', networks_file=nets, echo_access_log=True,"
            " crowdsec_metrics_url='http://127.0.0.1:1/metrics'))\n"
            "plugins = r._attach(r.config, r.context) if r._attach else []\n"
            "assert plugins, plugins\n"
            "async def poll():\n"
            "    try:\n"
            "        await CrowdSecClient('http://127.0.0.1:1/metrics', timeout=1).metrics_text()\n"
            "    except CrowdSecUnavailable:\n"
            "        pass\n"
            "asyncio.run(poll())"
        ),
    ],
    ids=["cli", "replay", "plain-sidecar", "shipped-sidecar"],
)
def test_no_heavy_import(setup: str) -> None:
    assert loaded_after(setup) == set()


def test_probe_sees_a_heavy_import() -> None:
    """The probe itself works: the Kubernetes client loads kubernetes-asyncio and aiohttp."""
    assert {"kubernetes_asyncio", "aiohttp"} <= loaded_after("import pipeline.kube.client")
