"""CrowdSec keeps its input in the sidecar layout: a real CrowdSec agent reads exactly what the
shipped layout gives it and bans a scanner.

In that layout Traefik writes its access log into a file in an emptyDir, which CrowdSec cannot
see. The shipped sidecar config (rendered from deploy/kustomize/overlays/sidecar) turns
``echo_access_log`` on: ``auditor run`` re-emits each line on its stdout. Here a stand-in kubelet
writes the auditor container's stdout and stderr into a container log file exactly as the
container runtime does (CRI: ``<RFC3339Nano> stdout F <line>``), named as the kubelet names it
under /var/log/containers, and CrowdSec 1.4.6 tails that file with the acquisition documented
for this layout (``type: containerd``, ``program: traefik``). A probing burst from a public
address in Traefik's log must end as a CrowdSec ban on that address.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import pytest
import yaml

from pipeline.core.addresses import AddrClass, make_network
from pipeline.core.networks_file import encode
from tests.support.crowdsec import (
    free_port,
    traefik_json_line,
    write_probing_burst,
)
from tests.support.crowdsec_fixtures import CrowdSecFactory, start_or_fail
from tests.support.kube_api import ConfigMapVolume
from tests.support.paths import ROOT

pytestmark = pytest.mark.slow

SCANNER = "198.51.100.66"  # a public address probing for files: CrowdSec must ban it
VISITORS = [f"203.0.113.{i}" for i in range(20, 32)]
CONTAINER_ID = "5e0c" * 16
# The kubelet's name for the auditor container's log: <pod>_<namespace>_<container>-<id>.log.
LOG_NAME = f"traefik-m4q7z_kube-system_ban-auditor-{CONTAINER_ID}.log"
# The acquisitions documented for the sidecar layout (deploy/README.md, "CrowdSec"): a plain
# acquis.yaml naming the auditor container, and what the CrowdSec Helm chart generates from
# agent.acquisition {namespace: kube-system, podName: traefik-*, program: traefik}.
ACQUIS_GLOB = "/var/log/containers/traefik-*_kube-system_ban-auditor-*.log"
HELM_CHART_GLOB = "/var/log/containers/traefik-*_kube-system_*.log"
DEADLINE = 60.0


def _shipped_sidecar_config() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: it renders the shipped sidecar config")
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "kustomize" / "overlays" / "sidecar")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for doc in yaml.safe_load_all(result.stdout):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "ban-auditor-config":
            text: str = doc["data"]["config.toml"]
            return text
    pytest.fail("the sidecar overlay renders no ConfigMap ban-auditor-config")


def _cri_time(now: dt.datetime) -> str:
    """RFC3339Nano as Go formats it (containerd): nanoseconds, trailing zeros dropped."""
    frac = f"{now.microsecond * 1000:09d}".rstrip("0")
    return now.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


class Kubelet:
    """Writes a container's stdout and stderr into its log file as the CRI runtime does: one
    ``<time> <stream> F <line>`` record per line, both streams in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def attach(self, stream: IO[bytes], name: str) -> None:
        thread = threading.Thread(target=self._copy, args=(stream, name), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _copy(self, stream: IO[bytes], name: str) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.rstrip(b"\n")
            stamp = _cri_time(dt.datetime.now(dt.UTC)).encode()
            with self._lock, self.path.open("ab") as fh:
                fh.write(stamp + b" " + name.encode() + b" F " + line + b"\n")

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=10)

    def records(self, stream: str) -> list[bytes]:
        out = []
        for record in self.path.read_bytes().splitlines():
            _, got, tag, line = record.split(b" ", 3)
            assert tag == b"F"
            if got == stream.encode():
                out.append(line)
        return out


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            body: bytes = resp.read()
            return body.decode()
    except (OSError, urllib.error.URLError):
        return ""


def _wait(pred: object, what: str, diag: object) -> None:
    deadline = time.monotonic() + DEADLINE
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{diag()}")  # type: ignore[operator]
        time.sleep(0.1)


def test_documented_acquisitions_match_the_kubelets_file_name() -> None:
    path = f"/var/log/containers/{LOG_NAME}"
    assert fnmatch.fnmatchcase(path, ACQUIS_GLOB)
    assert fnmatch.fnmatchcase(path, HELM_CHART_GLOB)
    # The plain acquisition takes only the auditor's container, not Traefik's own log.
    traefik = f"/var/log/containers/traefik-m4q7z_kube-system_traefik-{CONTAINER_ID}.log"
    assert not fnmatch.fnmatchcase(traefik, ACQUIS_GLOB)


def test_crowdsec_bans_a_scanner_from_the_sidecars_echo(
    crowdsec_factory: CrowdSecFactory, tmp_path: Path
) -> None:
    # The pod's volumes: Traefik's emptyDir, the config, the key, the watcher's ConfigMap.
    traefik_log = tmp_path / "var-log-traefik" / "access.log"
    traefik_log.parent.mkdir()
    traefik_log.touch()
    config = tmp_path / "etc-ban-auditor" / "config.toml"
    config.parent.mkdir()
    config.write_text(_shipped_sidecar_config(), encoding="utf-8")
    networks = ConfigMapVolume(tmp_path / "etc-ban-auditor-networks")
    networks.publish(
        {
            "networks.json": encode(
                synced_at=time.time(),
                source="test",
                networks=[make_network("10.42.0.0/24", AddrClass.POD, "node n1 spec.podCIDRs")],
                findings=[],
            )
        }
    )

    # CrowdSec tails the auditor container's log, as the node's /var/log/containers holds it.
    container_log = tmp_path / "var-log-containers" / LOG_NAME
    crowdsec = crowdsec_factory()
    start_or_fail(lambda: crowdsec.start_agent([container_log], "containerd", program="traefik"))
    key = tmp_path / "run-secrets" / "api-key"
    key.parent.mkdir()
    key.write_text(crowdsec.add_bouncer("ban-auditor-sidecar") + "\n")
    key.chmod(0o600)

    port = free_port()
    pod_env = {
        # The pod's own values (the manifests set these), and the paths of this test's volumes.
        "AUDITOR_METRICS_LISTEN": f"127.0.0.1:{port}",
        "AUDITOR_NODE_NAME": "n1",
        "AUDITOR_ACCESS_LOG": str(traefik_log),
        "AUDITOR_CHECKPOINT_DIR": str(tmp_path / "var-lib-ban-auditor"),
        "AUDITOR_LAPI_URL": crowdsec.lapi_url,
        "AUDITOR_LAPI_KEY_FILE": str(key),
        "AUDITOR_NETWORKS_FILE": str(networks.path("networks.json")),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITOR_")} | pod_env
    kubelet = Kubelet(container_log)
    auditor = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "auditor"), "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert auditor.stdout is not None and auditor.stderr is not None
    kubelet.attach(auditor.stdout, "stdout")
    kubelet.attach(auditor.stderr, "stderr")

    def diag() -> str:
        text = container_log.read_text(errors="replace") if container_log.exists() else ""
        return (
            f"--- container log ---\n{text[-4000:]}\n" + crowdsec.log_text(since_start=True)[-3000:]
        )

    written: list[str] = []
    try:
        _wait(lambda: "auditor_lapi_up 1.0" in _metrics(port), "the sidecar, LAPI up", diag)
        # start_at = "end" in the shipped config: only lines written from now on are read.
        for i, ip in enumerate(VISITORS):
            written.append(traefik_json_line(ip, f"/watch?v={i}"))
        with traefik_log.open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in written))
        written += write_probing_burst(traefik_log, SCANNER, 20)
        banned = crowdsec.wait_for_decision(SCANNER, timeout=DEADLINE)
    finally:
        auditor.send_signal(signal.SIGTERM)
        code = auditor.wait(timeout=30)
        kubelet.join()
        auditor.stdout.close()
        auditor.stderr.close()
    assert code == 0, diag()
    assert banned["origin"] == "crowdsec"
    assert banned["scenario"].startswith("crowdsecurity/http-")

    # What CrowdSec read from stdout is Traefik's access log, line for line, and nothing else;
    # the auditor's own logs went to stderr (CrowdSec's parser skips them as unparsable).
    assert kubelet.records("stdout") == [line.encode() for line in written]
    stderr = b"\n".join(kubelet.records("stderr")).decode()
    assert "auditor.run: listening on" in stderr
    assert "Traceback" not in stderr
    assert "networks file" in stderr  # the watcher's file was read: no API access needed
