"""A real, self-contained CrowdSec (Debian package 1.4.6) on loopback, for tests.

Everything lives under one temp dir; the hub copy shipped by the package is enabled by
symlinks (``cscli collections install`` needs the internet in 1.4.6). The whitelists parser is
off by default because the point of this project is that CrowdSec bans internal addresses.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CROWDSEC_BIN = "/usr/bin/crowdsec"
CSCLI_BIN = "/usr/bin/cscli"
HUB_DIR = Path("/usr/share/crowdsec/hub")
DATA_SRC = Path("/usr/share/crowdsec/data")
PLUGIN_DIR = Path("/usr/lib/crowdsec/plugins")
ETC_DIR = Path("/etc/crowdsec")

INSTALL_HINT = (
    "install it with: mkdir -p /etc/crowdsec && "
    "echo '# no Central API' > /etc/crowdsec/online_api_credentials.yaml && "
    "apt-get install -y crowdsec"
)

# Parsers enabled by default: traefik JSON/CLF plus the container-log unwrappers (no-ops unless an
# acquisition label says containerd/docker), date parsing and the generic HTTP enrichment.
_PARSERS = (
    "s00-raw/crowdsecurity/syslog-logs",
    "s00-raw/crowdsecurity/cri-logs",
    "s00-raw/crowdsecurity/docker-logs",
    "s01-parse/crowdsecurity/traefik-logs",
    "s02-enrich/crowdsecurity/dateparse-enrich",
    "s02-enrich/crowdsecurity/http-logs",
)
_WHITELISTS = "s02-enrich/crowdsecurity/whitelists"
_COLLECTIONS = ("traefik", "base-http-scenarios", "http-cve")
# Its data file is not in the offline hub: every event would log an error and throughput collapses.
_SKIPPED_SCENARIOS = frozenset({"crowdsecurity/http-path-traversal-probing"})

START_TIMEOUT = 45.0
STOP_TIMEOUT = 10.0

# Process groups still running: killed at interpreter exit even if a teardown was skipped.
_LIVE_GROUPS: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    _LIVE_GROUPS.clear()


class CrowdSecUnavailable(RuntimeError):
    """The crowdsec package is not installed (tests must fail, not skip)."""


class CrowdSecError(RuntimeError):
    """CrowdSec did not start, or a cscli command failed; the message carries its log."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def check_installed(crowdsec_bin: str = CROWDSEC_BIN, cscli_bin: str = CSCLI_BIN) -> None:
    missing = [b for b in (crowdsec_bin, cscli_bin) if not os.access(b, os.X_OK)]
    if not HUB_DIR.joinpath(".index.json").is_file():
        missing.append(str(HUB_DIR / ".index.json"))
    if missing:
        msg = f"CrowdSec is not installed here (missing {', '.join(missing)}); {INSTALL_HINT}"
        raise CrowdSecUnavailable(msg)


def _collection_items(name: str) -> dict[str, list[str]]:
    """What a hub collection lists, by kind (a tiny YAML subset: ``key:`` then ``- item``)."""
    items: dict[str, list[str]] = {}
    key: str | None = None
    for raw in (
        (HUB_DIR / "collections" / "crowdsecurity" / f"{name}.yaml").read_text().splitlines()
    ):
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not line.startswith((" ", "-")):
            key = line.rstrip(":").strip() if line.endswith(":") else None
            continue
        if key and line.strip().startswith("- "):
            items.setdefault(key, []).append(line.strip()[2:].strip())
    return items


class CrowdSecInstance:
    """One CrowdSec (LAPI, optionally the agent too) with its own config dir, DB and ports."""

    def __init__(
        self,
        root: Path,
        *,
        whitelists: bool = False,
        crowdsec_bin: str = CROWDSEC_BIN,
        cscli_bin: str = CSCLI_BIN,
        machine: str = "test-machine",
    ) -> None:
        check_installed(crowdsec_bin, cscli_bin)
        self.root = root
        self.crowdsec_bin = crowdsec_bin
        self.cscli_bin = cscli_bin
        self.config_dir = root / "config"
        self.data_dir = root / "data"
        self.config_path = self.config_dir / "config.yaml"
        self.credentials_path = self.config_dir / "local_api_credentials.yaml"
        self.acquis_path = self.config_dir / "acquis.yaml"
        self.log_path = root / "crowdsec.log"
        self.lapi_port = free_port()
        self.prometheus_port = free_port()
        self.whitelists = whitelists
        self.machine = machine
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._setup()

    # ---- addresses ----------------------------------------------------------------------------
    @property
    def lapi_url(self) -> str:
        return f"http://127.0.0.1:{self.lapi_port}/"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}/metrics"

    @property
    def pid(self) -> int | None:
        """Pid (and process-group id) of the running crowdsec, if any."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- setup --------------------------------------------------------------------------------
    def _setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in ("profiles.yaml", "simulation.yaml"):
            shutil.copy(ETC_DIR / name, self.config_dir / name)
        shutil.copytree(ETC_DIR / "patterns", self.config_dir / "patterns", dirs_exist_ok=True)
        for f in DATA_SRC.iterdir():
            if f.is_file():
                shutil.copy(f, self.data_dir / f.name)
        self._enable_hub_items()
        self.acquis_path.write_text("")
        self.config_path.write_text(json.dumps(self._config(), indent=2) + "\n")
        self.cscli(
            "machines", "add", self.machine, "--auto", "--force",
            "-f", str(self.credentials_path), "--url", self.lapi_url,
        )  # fmt: skip
        self._fix_credentials_url()

    def _link(self, kind: str, stage: str | None, item: str) -> None:
        author, name = item.split("/", 1)
        src = HUB_DIR / kind / (stage or "") / author / f"{name}.yaml"
        if not src.is_file():
            msg = f"hub item {kind}/{stage or ''}/{item} not found under {HUB_DIR}"
            raise CrowdSecError(msg)
        dest_dir = self.config_dir / kind / (stage or "")
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{name}.yaml"
        if not dest.exists():
            dest.symlink_to(src)

    def _enable_hub_items(self) -> None:
        for p in (*_PARSERS, *((_WHITELISTS,) if self.whitelists else ())):
            stage, author, name = p.split("/")
            self._link("parsers", stage, f"{author}/{name}")
        for coll in _COLLECTIONS:
            self._link("collections", None, f"crowdsecurity/{coll}")
            for scenario in _collection_items(coll).get("scenarios", []):
                if scenario not in _SKIPPED_SCENARIOS:
                    self._link("scenarios", None, scenario)

    def _config(self) -> dict[str, Any]:
        return {
            "common": {
                "daemonize": False,
                "log_media": "stdout",
                "log_level": "info",
                "working_dir": str(self.root),
            },
            "config_paths": {
                "config_dir": f"{self.config_dir}/",
                "data_dir": f"{self.data_dir}/",
                "simulation_path": str(self.config_dir / "simulation.yaml"),
                "hub_dir": f"{HUB_DIR}/",
                "index_path": str(HUB_DIR / ".index.json"),
                "notification_dir": f"{self.config_dir / 'notifications'}/",
                "plugin_dir": f"{PLUGIN_DIR}/",
            },
            "crowdsec_service": {
                "acquisition_path": str(self.acquis_path),
                "parser_routines": 1,
            },
            "cscli": {"output": "human", "color": "no"},
            "db_config": {
                "log_level": "info",
                "type": "sqlite",
                "db_path": str(self.data_dir / "crowdsec.db"),
                "use_wal": True,
            },
            "plugin_config": {"user": "nobody", "group": "nogroup"},
            "api": {
                "client": {
                    "insecure_skip_verify": False,
                    "credentials_path": str(self.credentials_path),
                },
                "server": {
                    "log_level": "info",
                    "listen_uri": f"127.0.0.1:{self.lapi_port}",
                    "profiles_path": str(self.config_dir / "profiles.yaml"),
                    "trusted_ips": ["127.0.0.1"],
                },
            },
            "prometheus": {
                "enabled": True,
                "level": "full",
                "listen_addr": "127.0.0.1",
                "listen_port": self.prometheus_port,
            },
        }

    def _fix_credentials_url(self) -> None:
        lines = self.credentials_path.read_text().splitlines()
        fixed = [f"url: {self.lapi_url}" if ln.startswith("url:") else ln for ln in lines]
        if not any(ln.startswith("url:") for ln in lines):
            fixed.insert(0, f"url: {self.lapi_url}")
        self.credentials_path.write_text("\n".join(fixed) + "\n")

    def machine_credentials(self) -> dict[str, str]:
        """``url``/``login``/``password`` from the watcher credentials file."""
        out: dict[str, str] = {}
        for ln in self.credentials_path.read_text().splitlines():
            key, sep, value = ln.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out

    # ---- processes ----------------------------------------------------------------------------
    def start_lapi(self, timeout: float = START_TIMEOUT) -> None:
        """Run the Local API only (``-no-cs``) and wait until it answers."""
        self._start(["-no-cs"], timeout)

    def start_agent(
        self,
        acquis_files: Iterable[Path | str],
        log_type: str = "traefik",
        *,
        program: str | None = None,
        timeout: float = START_TIMEOUT,
    ) -> None:
        """Run agent + LAPI tailing ``acquis_files`` (created if missing); returns once tailing.

        The file source starts at the end of each file, so write lines only after this returns.
        ``program`` sets ``labels.program`` (needed with ``log_type="containerd"`` or ``"docker"``
        so the traefik parser picks the unwrapped lines up).
        """
        files = [Path(f).resolve() for f in acquis_files]
        if not files:
            msg = "start_agent needs at least one file to tail"
            raise ValueError(msg)
        for f in files:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch(exist_ok=True)
        labels: dict[str, str] = {"type": log_type}
        if program:
            labels["program"] = program
        acquis = {"filenames": [str(f) for f in files], "labels": labels}
        self.acquis_path.write_text(json.dumps(acquis) + "\n")
        self._start([], timeout, tailing=files)

    def _start(self, args: Sequence[str], timeout: float, tailing: Sequence[Path] = ()) -> None:
        if self.running:
            msg = "crowdsec is already running in this instance; stop() it first"
            raise CrowdSecError(msg)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                [self.crowdsec_bin, "-c", str(self.config_path), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # own process group: teardown kills it all
            )
        _LIVE_GROUPS.add(self._proc.pid)
        try:
            self._wait_ready(timeout, tailing)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float, tailing: Sequence[Path]) -> None:
        deadline = time.monotonic() + timeout
        pending_tails = {str(f) for f in tailing}
        lapi_up = False
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                msg = f"crowdsec exited with code {self._proc.returncode} while starting"
                raise CrowdSecError(self._with_log(msg))
            if not lapi_up:
                lapi_up = self.lapi_answers()
            if lapi_up and pending_tails:
                pending_tails = {f for f in pending_tails if not self._tailing(Path(f))}
            if lapi_up and not pending_tails:
                return
            if time.monotonic() > deadline:
                what = "LAPI" if not lapi_up else f"tailing of {sorted(pending_tails)}"
                msg = f"crowdsec not ready within {timeout:.0f}s (waiting for {what})"
                raise CrowdSecError(self._with_log(msg))
            time.sleep(0.1)

    def _tailing(self, path: Path) -> bool:
        """True once crowdsec holds ``path`` open and has seeked to its end (Linux /proc).

        The file source starts reading at the end of the file, so lines written before that seek
        would be skipped: waiting for it makes "write after start_agent() returns" safe.
        """
        if self._proc is None:
            return False
        proc_dir = Path(f"/proc/{self._proc.pid}")
        try:
            size = path.stat().st_size
            for fd in (proc_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) != str(path):
                        continue
                    info = (proc_dir / "fdinfo" / fd.name).read_text()
                    pos = int(info.split("pos:", 1)[1].split()[0])
                    if pos >= size:
                        if size == 0:
                            # Opened, but the seek runs right after in crowdsec's tail goroutine.
                            time.sleep(0.2)
                        return True
        except OSError:
            return False
        return False

    def lapi_answers(self) -> bool:
        """True once the LAPI answers HTTP (an unauthenticated call gets 403)."""
        req = urllib.request.Request(f"{self.lapi_url}v1/decisions", method="GET")
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return int(resp.status) > 0
        except urllib.error.HTTPError:
            return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group (plugins)
        if proc.poll() is None:
            proc.wait(timeout=STOP_TIMEOUT)
        _LIVE_GROUPS.discard(proc.pid)

    def restart_lapi(self, timeout: float = START_TIMEOUT) -> None:
        self.stop()
        self.start_lapi(timeout)

    def log_text(self, *, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return (
            data[self._log_offset :].decode(errors="replace")
            if since_start
            else data.decode(errors="replace")
        )

    def _with_log(self, msg: str, tail: int = 60) -> str:
        lines = self.log_text(since_start=True).splitlines()[-tail:]
        return f"{msg}\n--- crowdsec log ({self.log_path}) ---\n" + "\n".join(lines)

    # ---- cscli --------------------------------------------------------------------------------
    def cscli(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.cscli_bin, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if check and proc.returncode != 0:
            msg = (
                f"cscli {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
            raise CrowdSecError(self._with_log(msg, tail=20) if self.running else msg)
        return proc

    def add_bouncer(self, name: str) -> str:
        """Register a bouncer; returns its API key (works with the LAPI stopped: DB only)."""
        out = self.cscli("bouncers", "add", name, "-o", "raw").stdout.strip().splitlines()
        if not out or not out[-1].strip():
            msg = f"cscli bouncers add {name} printed no key"
            raise CrowdSecError(msg)
        return out[-1].strip()

    def add_decision(
        self,
        *,
        ip: str | None = None,
        range: str | None = None,
        duration: str = "4h",
        reason: str = "test",
        type: str = "ban",
    ) -> None:
        """``cscli decisions add`` (goes through the running LAPI)."""
        target = _target(ip=ip, range=range)
        self.cscli(
            "decisions", "add", *target, "--duration", duration, "--reason", reason, "--type", type
        )

    def delete_decision(
        self,
        *,
        ip: str | None = None,
        range: str | None = None,
        id: int | None = None,
    ) -> None:
        if id is not None:
            self.cscli("decisions", "delete", "--id", str(id))
        else:
            self.cscli("decisions", "delete", *_target(ip=ip, range=range))

    def delete_all_decisions(self) -> None:
        self.cscli("decisions", "delete", "--all")

    def decisions_list_json(self) -> list[dict[str, Any]]:
        """``cscli decisions list -o json``: alerts with nested decisions (``null`` -> [])."""
        out = self.cscli("decisions", "list", "-o", "json").stdout.strip()
        data = json.loads(out) if out else None
        return list(data or [])

    def active_decisions(self) -> list[dict[str, Any]]:
        """The nested decisions of ``decisions_list_json()``, flattened."""
        return [d for alert in self.decisions_list_json() for d in alert.get("decisions") or []]

    def wait_for_decision(self, value: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll until a decision on ``value`` is active; fail with the crowdsec log otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            for d in self.active_decisions():
                if d.get("value") == value:
                    return d
            if time.monotonic() > deadline:
                msg = f"no decision for {value} within {timeout:.0f}s"
                raise CrowdSecError(self._with_log(msg))
            time.sleep(0.3)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            body: bytes = resp.read()
            return body.decode()


def _target(*, ip: str | None, range: str | None) -> list[str]:
    if (ip is None) == (range is None):
        msg = "give exactly one of ip= or range="
        raise ValueError(msg)
    return ["--ip", ip] if ip is not None else ["--range", str(range)]


# ---- Traefik v2 JSON access-log lines ---------------------------------------------------------
PROBING_PATHS = (
    "/.env",
    "/wp-login.php",
    "/admin.php",
    "/.git/config",
    "/phpmyadmin/index.php",
    "/config.php.bak",
    "/backup.sql",
    "/.htpasswd",
    "/server-status",
    "/wp-config.php.old",
    "/db.sql",
    "/.aws/credentials",
    "/xmlrpc.php",
    "/shell.php",
    "/setup.php",
    "/.DS_Store",
    "/web.config",
    "/install.php",
    "/.svn/entries",
    "/debug.log",
)


def traefik_json_line(
    client_host: str,
    path: str = "/",
    status: int = 200,
    *,
    client_addr: str | None = None,
    client_port: int = 39496,
    method: str = "GET",
    host: str = "whoami.example.test",
    user_agent: str = "Mozilla/5.0",
    when: dt.datetime | None = None,
    request_count: int = 1,
    router: str = "whoami@docker",
    service_addr: str = "172.17.0.3:80",
    extra: dict[str, Any] | None = None,
) -> str:
    """One Traefik v2 JSON access-log line (the key set of tests/data/corpus/traefik-json-v2.jsonl).

    ``client_addr`` defaults to ``client_host:client_port``; give it separately to model a
    forwarded ``ClientHost`` (X-Forwarded-For kept). ``when`` defaults to now (UTC), so a live
    agent buckets it.
    """
    now = when or dt.datetime.now(dt.UTC)
    stamp = now.astimezone(dt.UTC)
    start = stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    http_date = stamp.strftime("%a, %d %b %Y %H:%M:%S GMT")
    body = 19 if status >= 400 else 357
    svc_host = service_addr
    obj: dict[str, Any] = {
        "ClientAddr": client_addr or f"{client_host}:{client_port}",
        "ClientHost": client_host,
        "ClientPort": str(client_port),
        "ClientUsername": "-",
        "DownstreamContentSize": body,
        "DownstreamStatus": status,
        "Duration": 357313,
        "OriginContentSize": body,
        "OriginDuration": 324669,
        "OriginStatus": status,
        "Overhead": 32644,
        "RequestAddr": host,
        "RequestContentSize": 0,
        "RequestCount": request_count,
        "RequestHost": host,
        "RequestMethod": method,
        "RequestPath": path,
        "RequestPort": "-",
        "RequestProtocol": "HTTP/1.1",
        "RequestScheme": "http",
        "RetryAttempts": 0,
        "RouterName": router,
        "ServiceAddr": svc_host,
        "ServiceName": router,
        "ServiceURL": {
            "Scheme": "http",
            "Opaque": "",
            "User": None,
            "Host": svc_host,
            "Path": "",
            "RawPath": "",
            "ForceQuery": False,
            "RawQuery": "",
            "Fragment": "",
            "RawFragment": "",
        },
        "StartLocal": start,
        "StartUTC": start,
        "downstream_Content-Length": str(body),
        "downstream_Content-Type": "text/plain; charset=utf-8",
        "downstream_Date": http_date,
        "entryPointName": "web",
        "level": "info",
        "msg": "",
        "origin_Content-Length": str(body),
        "origin_Content-Type": "text/plain; charset=utf-8",
        "origin_Date": http_date,
        "request_Connection": "Keep-Alive",
        "request_User-Agent": user_agent,
        "request_X-Forwarded-Host": host,
        "request_X-Forwarded-Port": "80",
        "request_X-Forwarded-Proto": "http",
        "request_X-Forwarded-Server": "traefik-7d4b",
        "request_X-Real-Ip": client_host,
        "time": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if extra:
        obj.update(extra)
    return json.dumps(dict(sorted(obj.items())), separators=(",", ":"))


def probing_burst_lines(
    ip: str, n: int = 20, *, host: str = "whoami.example.test", user_agent: str = "Nikto"
) -> list[str]:
    """``n`` current-time 404s on distinct probing paths (``/.env``, ``/wp-login.php``...)."""
    lines = []
    for i in range(n):
        base = PROBING_PATHS[i % len(PROBING_PATHS)]
        path = base if i < len(PROBING_PATHS) else f"{base}.{i}"
        lines.append(
            traefik_json_line(
                ip, path, 404, host=host, user_agent=user_agent, request_count=100 + i
            )
        )
    return lines


def write_probing_burst(
    path: Path | str,
    ip: str,
    n: int = 20,
    *,
    host: str = "whoami.example.test",
    user_agent: str = "Nikto",
) -> list[str]:
    """Append a probing burst from ``ip`` to ``path`` (enough for http-probing and friends)."""
    lines = probing_burst_lines(ip, n, host=host, user_agent=user_agent)
    with Path(path).open("a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
    return lines
