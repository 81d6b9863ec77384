"""The container image, built by `make image`'s script (deploy/build_image.py) once per session
and run with podman: non-root on a read-only root filesystem, `--version`, the demo replay, and
`auditor run` with the shipped sidecar config against a real CrowdSec LAPI, serving /metrics and
/readyz. Prints the image size and the sidecar's RSS (bench/RESULTS.md quotes them).

No registry is reachable in CI, so the image is built on a Debian bookworm debootstrapped from
the mirror apt uses (kept and reused across sessions in a dedicated podman store, apart from the
user's own images); set BAN_AUDITOR_IMAGE_BASE to build on a registry image instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import pipeline
from tests.support.crowdsec import CrowdSecInstance, free_port
from tests.support.paths import ROOT
from tests.support.waiting import until

pytestmark = pytest.mark.slow

BUILD = ROOT / "deploy" / "build_image.py"
DEMO = ROOT / "examples" / "demo"
SIDECAR_CONFIG = ROOT / "deploy" / "kustomize" / "base" / "config.toml"
SIDECAR_PATCH = (
    ROOT / "deploy" / "kustomize" / "overlays" / "sidecar" / "traefik-daemonset-patch.yaml"
)
REPOSITORY = "ghcr.io/ban-auditor/ban-auditor"
DEBOOTSTRAP_BASE = "localhost/ban-auditor-base:bookworm"  # deploy/build_image.py
UID = 65532
# What the project adds to its base (the venv): 76 MB with every optional dependency.
ADDED_MB_BUDGET = 100
BUILD_TIMEOUT = 900
RUN_TIMEOUT = 60
# Podman's default of 1048576 open files fails where the caller's hard limit is lower (this
# sandbox and CI); crun fails on hybrid cgroup hierarchies, runc does not.
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
INSTALL_HINT = "install it as root with `make deps` (apt-get install podman runc debootstrap)"


def _store() -> list[str]:
    """A podman store of its own: the tests' images never replace the user's, and the
    debootstrapped base survives between sessions (/run is cleared on reboot, /var/tmp not)."""
    if os.geteuid() == 0:
        data, run = Path("/var/tmp/ban-auditor-containers"), Path("/run/ban-auditor-containers")
    else:
        data = Path.home() / ".cache" / "ban-auditor" / "containers"
        run = (
            Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
            / f"ban-auditor-containers-{os.getuid()}"
        )
    return [
        "--root", str(data / "storage"),
        "--runroot", str(run / "run"),
        "--tmpdir", str(run / "libpod"),
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Image:
    """The built image and the podman command line that sees it."""

    ref: str
    base: str
    podman: tuple[str, ...]

    def run(self, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.podman, "run", "--rm", *ULIMITS, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def podman_out(self, *args: str) -> str:
        result = subprocess.run(
            [*self.podman, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture(name="podman", scope="session")
def _podman() -> tuple[str, ...]:
    path = shutil.which("podman")
    if path is None:
        pytest.fail(f"podman not found: the image tests build and run it; {INSTALL_HINT}")
    if shutil.which("runc") is None and not Path("/usr/sbin/runc").exists():
        pytest.fail(f"runc not found; {INSTALL_HINT}")
    return (path, "--runtime", "runc", *_store())


@pytest.fixture(name="image", scope="session")
def _image(podman: tuple[str, ...]) -> Image:
    base = os.environ.get("BAN_AUDITOR_IMAGE_BASE")
    if base is None and shutil.which("debootstrap") is None:
        pytest.fail(f"debootstrap not found (it makes the image's base offline); {INSTALL_HINT}")
    cmd = [sys.executable, str(BUILD), "--engine", shlex.join(podman)]
    cmd += ["--base", base] if base else ["--debootstrap-base"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        pytest.fail(f"image build failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    ref = result.stdout.strip().splitlines()[-1]
    # Each change to the sources leaves the previous build's layers untagged (~160 MB): keep
    # the last hour's as the build cache, drop older ones so the store does not grow forever.
    subprocess.run(
        [*podman, "image", "prune", "-f", "--filter", "until=1h"],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return Image(ref, base or DEBOOTSTRAP_BASE, podman)


def _manifest_refs() -> list[str]:
    """Every reference to our image in the YAML under deploy/ (values embedded in a
    HelmChartConfig included: they are text in the file)."""
    pattern = re.compile(re.escape(REPOSITORY) + r"[^\s\"']*")
    return [
        ref
        for path in sorted((ROOT / "deploy").rglob("*.yaml"))
        for ref in pattern.findall(path.read_text(encoding="utf-8"))
    ]


def test_build_prints_the_reference_the_manifests_use(image: Image) -> None:
    assert image.ref == f"{REPOSITORY}:{pipeline.__version__}"
    refs = _manifest_refs()
    assert len(refs) >= 5, refs  # sidecar patch, node agent, Helm v40/v41, k3s
    assert set(refs) == {image.ref}
    labels = json.loads(
        image.podman_out("image", "inspect", "--format", "{{json .Labels}}", image.ref)
    )
    assert labels["org.opencontainers.image.version"] == pipeline.__version__


def test_make_image_runs_the_build_script() -> None:
    result = subprocess.run(
        ["make", "-n", "image"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "deploy/build_image.py" in result.stdout


def test_runs_as_non_root_on_a_read_only_root(image: Image) -> None:
    config = json.loads(
        image.podman_out("image", "inspect", "--format", "{{json .Config}}", image.ref)
    )
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["auditor"]
    assert config["Cmd"] == ["run", "--config", "/etc/ban-auditor/config.toml"]
    script = "id -u; id -g; touch /opt/venv/x 2>/dev/null && echo writable || echo read-only"
    result = image.run(
        "--read-only", "--network", "none", "--entrypoint", "sh", image.ref, "-c", script
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(UID), str(UID), "read-only"]


def test_version(image: Image) -> None:
    result = image.run("--read-only", "--network", "none", image.ref, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"auditor {pipeline.__version__}"


def test_demo_replay_matches_the_host(image: Image) -> None:
    """`make demo`'s sample, replayed in the image, gives the same report as on the host."""
    argv = [
        "replay", "examples/demo/access.log", "--decisions", "examples/demo/decisions.json",
        "--format", "json",
    ]  # fmt: skip
    inside = image.run(
        "--read-only", "--network", "none", "-v", f"{DEMO}:/demo/examples/demo:ro", "-w", "/demo",
        image.ref, *argv,
    )  # fmt: skip
    host = subprocess.run(
        [str(Path(sys.executable).with_name("auditor")), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert inside.returncode == host.returncode == 1, inside.stderr  # 1: findings, as in the demo
    report = json.loads(inside.stdout)
    assert report["findings"]
    assert report == json.loads(host.stdout)


def _size_mb(image: Image, ref: str) -> float:
    return int(image.podman_out("image", "inspect", "--format", "{{.Size}}", ref)) / 1e6


def test_image_size(image: Image, capsys: pytest.CaptureFixture[str]) -> None:
    size, base = _size_mb(image, image.ref), _size_mb(image, image.base)
    with capsys.disabled():
        print(
            f"\nimage {image.ref}: {size:.0f} MB, "
            f"of which {size - base:.0f} MB on top of {image.base}"
        )
    assert 0 < size - base < ADDED_MB_BUDGET


def _memory_limit_mib() -> int:
    spec = yaml.safe_load(SIDECAR_PATCH.read_text(encoding="utf-8"))["spec"]["template"]["spec"]
    (auditor,) = [c for c in spec["containers"] if c["name"] == "ban-auditor"]
    limit: str = auditor["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return int(limit.removesuffix("Mi"))


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _lines_read(metrics: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "auditor_lines_total"
    )


def _status_kib(pid: str, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


@pytest.fixture(name="sidecar")
def _sidecar(
    image: Image, crowdsec_lapi: CrowdSecInstance, tmp_path: Path
) -> Iterator[tuple[str, str, Path]]:
    """`auditor run` in the image as the sidecar runs it: the shipped config, a read-only root,
    tmpfs where it writes, the log and the key mounted read-only. Yields (container, base URL,
    the access log on the host)."""
    mounts = tmp_path / "mounts"
    for name in ("config", "key", "logs"):
        (mounts / name).mkdir(parents=True)
    shutil.copy(SIDECAR_CONFIG, mounts / "config" / "config.toml")
    (mounts / "key" / "api-key").write_text(crowdsec_lapi.add_bouncer("image-sidecar") + "\n")
    log = mounts / "logs" / "access.log"
    log.touch()
    for path in [mounts, *mounts.rglob("*")]:  # readable by uid 65532 (tmp_path is 0700)
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    name = f"ban-auditor-test-{os.getpid()}-{port}"
    result = subprocess.run(
        [
            *image.podman, "run", "-d", "--name", name, *ULIMITS, "--network", "host",
            "--read-only", "--tmpfs", "/tmp:size=16m",
            "--tmpfs", "/var/lib/ban-auditor:size=16m,mode=1777",
            "-v", f"{mounts / 'config'}:/etc/ban-auditor:ro",
            "-v", f"{mounts / 'key'}:/run/secrets/ban-auditor:ro",
            "-v", f"{mounts / 'logs'}:/var/log/traefik:ro",
            "-e", f"AUDITOR_METRICS_LISTEN=127.0.0.1:{port}",
            "-e", f"AUDITOR_LAPI_URL={crowdsec_lapi.lapi_url}",
            "-e", "AUDITOR_NODE_NAME=n1",
            image.ref,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        yield name, f"http://127.0.0.1:{port}", log
    finally:
        subprocess.run(
            [*image.podman, "rm", "-f", "-t", "5", name],
            capture_output=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )


async def test_run_serves_metrics_and_readyz(
    image: Image, sidecar: tuple[str, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    name, url, log = sidecar

    def logs() -> str:
        out = subprocess.run(
            [*image.podman, "logs", name],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        return (out.stdout + out.stderr)[-3000:]

    await until(
        lambda: _get(f"{url}/readyz")[0] == 200, "/readyz in the container", timeout=60, detail=logs
    )
    assert _get(f"{url}/healthz")[0] == 200
    # start_at = "end" (shipped config): lines written after the start are the ones read.
    demo = (DEMO / "access.log").read_bytes()
    with log.open("ab") as fh:
        fh.write(demo)
    expected = demo.count(b"\n")
    await until(
        lambda: _lines_read(_get(f"{url}/metrics")[1]) >= expected,
        f"{expected} lines counted in /metrics",
        timeout=60,
        detail=logs,
    )
    metrics = _get(f"{url}/metrics")[1]
    assert "auditor_lapi_up 1.0" in metrics

    pid = image.podman_out("inspect", "--format", "{{.State.Pid}}", name)
    rss, peak = _status_kib(pid, "VmRSS") / 1024, _status_kib(pid, "VmHWM") / 1024
    size = _size_mb(image, image.ref)
    with capsys.disabled():
        print(
            f"\nimage {image.ref}: {size:.0f} MB; sidecar (shipped config, LAPI, "
            f"{expected} lines) RSS {rss:.1f} MiB, peak {peak:.1f} MiB"
        )
    assert peak < _memory_limit_mib(), "the shipped memory limit would OOM-kill the sidecar"

    # SIGTERM (what the kubelet sends) stops it cleanly within the grace period.
    stopped = subprocess.run(
        [*image.podman, "stop", "-t", "10", name],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert image.podman_out("inspect", "--format", "{{.State.ExitCode}}", name) == "0", logs()
