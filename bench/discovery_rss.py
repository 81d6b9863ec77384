"""RSS of `auditor run` with and without Kubernetes discovery, at 1,000 lines/s, and of the
cluster watcher `auditor discover` that publishes the networks file instead.

Runs against the test suite's fake k3s API server (tests/support/kube_api.py), feeding lines from a
generated Invidious log. The watcher runs for the same time while a node changes every 3 s (each
change is a watch event and a ConfigMap update), with a 10 s refresh. Usage:
.venv/bin/python -m bench.discovery_rss
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import BinaryIO

from bench.generate import main as generate
from tests.support.crowdsec import free_port
from tests.support.kube_api import FakeKubeApi

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "bench" / "out" / "access-100000-s1-m0.1.log"
AUDITOR = str(Path(sys.executable).with_name("auditor"))
RATE = 1000
SECONDS = 20


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in fh)}


def measure(tmp: Path, src: BinaryIO, kubeconfig: Path | None) -> dict[str, object]:
    log = tmp / "access.log"
    log.write_bytes(b"")
    port = free_port()
    args = [
        AUDITOR,
        "run",
        "--access-log",
        str(log),
        "--metrics-listen",
        f"127.0.0.1:{port}",
        "--findings",
        "/dev/null",
        "--checkpoint-dir",
        str(tmp / f"ck-{bool(kubeconfig)}"),
        "--start-at",
        "end",
    ]
    if kubeconfig is not None:
        args += ["--discovery", "--kubeconfig", str(kubeconfig)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        deadline = time.monotonic() + SECONDS
        with log.open("ab") as out:
            while time.monotonic() < deadline:
                started = time.monotonic()
                for _ in range(RATE // 10):
                    out.write(src.readline())
                out.flush()
                time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
        status = _status(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
            metrics = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(10)
    kube = [m for m in metrics.splitlines() if m.startswith("auditor_kubernetes_up")]
    return {"VmRSS": status["VmRSS"], "VmHWM": status["VmHWM"], "kubernetes": kube}


NAMESPACE = "ban-auditor"
CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {
        "name": "ban-auditor-networks",
        "namespace": NAMESPACE,
        "labels": {
            "app.kubernetes.io/name": "ban-auditor",
            "app.kubernetes.io/component": "networks",
        },
    },
}


def measure_watcher(fake: FakeKubeApi, kubeconfig: Path) -> dict[str, object]:
    fake.apply(CONFIGMAP)
    port = free_port()
    args = [
        AUDITOR,
        "discover",
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        NAMESPACE,
        "--metrics-listen",
        f"127.0.0.1:{port}",
        "--refresh-interval",
        "10",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for i in range(SECONDS + 3):
            time.sleep(1)
            if i % 3 == 0:
                node = fake.get("Node", "k3s-agent-1")
                node["metadata"].setdefault("annotations", {})["bench"] = str(i)
                fake.apply(node)
        status = _status(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
            metrics = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(10)
    data = fake.get("ConfigMap", "ban-auditor-networks", NAMESPACE).get("data") or {}
    kube = [m for m in metrics.splitlines() if m.startswith("auditor_kubernetes_up")]
    return {
        "VmRSS": status["VmRSS"],
        "VmHWM": status["VmHWM"],
        "kubernetes": kube,
        "published_bytes": len(data.get("networks.json", "")),
    }


def main() -> int:
    if not SOURCE.exists():
        SOURCE.parent.mkdir(parents=True, exist_ok=True)
        generate(
            ["--lines", "100000", "--seed", "1", "--masked-share", "0.1", "--out", str(SOURCE)]
        )
    tmp = Path(tempfile.mkdtemp(prefix="auditor-rss-"))
    fake = FakeKubeApi().start().load_cluster("k3s-servicelb")
    try:
        kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig")
        with SOURCE.open("rb") as src:
            print("without discovery:", measure(tmp, src, None))
            print("with discovery:   ", measure(tmp, src, kubeconfig))
        print("watcher (discover):", measure_watcher(fake, kubeconfig))
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
