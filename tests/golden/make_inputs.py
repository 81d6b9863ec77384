"""Writes the inputs of the golden replay cases (deterministic; run from anywhere).

    .venv/bin/python tests/golden/make_inputs.py

Synthetic cases model what Traefik writes on a k3s node; the corpus cases are built from the
byte-exact samples in tests/data/corpus (see its SOURCES.md). Expected outputs are made by
``AUDITOR_REGEN_GOLDEN=1 .venv/bin/pytest tests/unit/cli/test_replay_golden.py`` and then
reviewed by hand.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
CORPUS = HERE.parent / "data" / "corpus"
START = datetime(2026, 1, 10, 8, 0, 0, tzinfo=UTC)


def access(
    i: int,
    client_host: str,
    peer: str,
    *,
    ep: str = "websecure",
    host: str = "app.example.com",
    router: str = "websecure-app-example-com@kubernetes",
    status: int = 200,
    path: str = "/",
    ua: str | None = None,
    step_s: float = 5.0,
    extra: dict[str, object] | None = None,
) -> str:
    """One Traefik v3 JSON access line; keys sorted like logrus writes them."""
    start = START + timedelta(seconds=i * step_s, microseconds=137 * (i % 997))
    port = peer.rsplit(":", 1)[1]
    d: dict[str, object] = {
        "ClientAddr": peer,
        "ClientHost": client_host,
        "ClientPort": port,
        "ClientUsername": "-",
        "DownstreamContentSize": 612 + i % 50,
        "DownstreamStatus": status,
        "Duration": 1_500_000 + 7919 * i,
        "OriginContentSize": 612 + i % 50,
        "OriginDuration": 1_400_000 + 7919 * i,
        "OriginStatus": status,
        "Overhead": 100_000,
        "RequestAddr": host,
        "RequestContentSize": 0,
        "RequestCount": 1000 + i,
        "RequestHost": host,
        "RequestMethod": "GET",
        "RequestPath": path,
        "RequestPort": "-",
        "RequestProtocol": "HTTP/2.0",
        "RequestScheme": "https",
        "RetryAttempts": 0,
        "RouterName": router,
        "ServiceAddr": "10.42.0.141:8080",
        "ServiceName": "default-app-8080@kubernetes",
        "ServiceURL": "http://10.42.0.141:8080",
        "StartLocal": start.isoformat().replace("+00:00", "Z"),
        "StartUTC": start.isoformat().replace("+00:00", "Z"),
        "entryPointName": ep,
        "level": "info",
        "msg": "",
        "time": start.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    if ua is not None:
        d["request_User-Agent"] = ua
    if extra:
        d.update(extra)
    return json.dumps(dict(sorted(d.items())), separators=(",", ":"))


def decision(
    value: str,
    id_: int,
    scenario: str,
    *,
    scope: str = "Ip",
    duration: str = "3h59m57s",
    origin: str = "crowdsec",
) -> dict[str, object]:
    return {
        "duration": duration,
        "id": id_,
        "origin": origin,
        "scenario": scenario,
        "scope": scope,
        "type": "ban",
        "value": value,
    }


def write(case: str, name: str, text: str) -> None:
    path = HERE / case / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def k3s_masked() -> None:
    """k3s servicelb: Traefik logs the svclb hop 10.42.0.9 for most external clients."""
    hosts = [
        ("app.example.com", "websecure-app-example-com@kubernetes"),
        ("grafana.example.com", "monitoring-grafana@kubernetes"),
        ("cloud.example.com", "nextcloud-nextcloud@kubernetes"),
    ]
    lines = []
    public = [f"198.51.100.{n}" for n in (23, 41, 77, 102)] + ["203.0.113.200"]
    for i in range(130):
        host, router = hosts[i % 3]
        if i % 13 == 5:  # 10 plain-http requests, redirected
            lines.append(
                access(
                    i,
                    "10.42.0.9",
                    f"10.42.0.9:{33000 + i}",
                    ep="web",
                    host=host,
                    router="web-redirect@kubernetes",
                    status=308,
                )
            )
        elif i % 13 == 9:  # 10 from node 2's svclb hop
            lines.append(access(i, "10.42.1.0", f"10.42.1.0:{41000 + i}", host=host, router=router))
        elif i % 13 in (2, 11):  # 20 arrive through a tunnel that keeps the real client
            client = public[i % 5]
            lines.append(
                access(
                    i,
                    client,
                    f"{client}:{50000 + i}",
                    host=host,
                    router=router,
                    ua="Mozilla/5.0 (X11; Linux x86_64)",
                )
            )
        else:  # 90 masked
            status = 404 if i % 17 == 0 else 200
            path = "/wp-login.php" if status == 404 else "/"
            lines.append(
                access(
                    i,
                    "10.42.0.9",
                    f"10.42.0.9:{34000 + i}",
                    host=host,
                    router=router,
                    status=status,
                    path=path,
                )
            )
    write("k3s-masked-internal-ban", "input.log", "\n".join(lines) + "\n")
    body = {
        "new": [
            decision("10.42.0.9", 5001, "crowdsecurity/http-probing"),
            decision("198.51.100.23", 5002, "crowdsecurity/http-crawl-non_statics"),
            decision("1.2.3.0/24", 5003, "lists:firehol_level1", scope="Range", origin="lists"),
        ],
        "deleted": [],
    }
    write("k3s-masked-internal-ban", "decisions.json", json.dumps(body) + "\n")
    write("k3s-masked-internal-ban", "args.txt", "\n")


def ipv6_mapped() -> None:
    """Dual-stack cluster (rke2 docs example CIDRs): mapped IPv4, IPv6 pods, zones, public v6."""
    specs = (
        [("::ffff:10.42.0.5", "[::ffff:10.42.0.5]:{p}")] * 40
        + [("2001:cafe:42::17", "[2001:cafe:42::17]:{p}")] * 10
        + [("fe80::1%eth0", "[fe80::1%eth0]:{p}")] * 3
        + [("2606:4700:4700::1111", "[2606:4700:4700::1111]:{p}")] * 5
        + [("::ffff:203.0.113.9", "[::ffff:203.0.113.9]:{p}")] * 5
        + [("::1", "[::1]:{p}")] * 2
    )
    lines = []
    for i, (ch, peer) in enumerate(specs):
        lines.append(
            access(
                i,
                ch,
                peer.format(p=40000 + i),
                host="v6.example.com",
                router="websecure-v6@kubernetes",
                step_s=3.0,
            )
        )
    write("ipv6-mapped", "input.log", "\n".join(lines) + "\n")
    body = [
        decision("10.42.0.5", 7001, "crowdsecurity/http-probing"),
        decision("2001:cafe:42::/64", 7002, "crowdsecurity/http-bad-user-agent", scope="Range"),
        decision("fe80::1", 7003, "crowdsecurity/http-probing"),
        decision("::ffff:203.0.113.9", 7004, "crowdsecurity/http-probing"),
        decision("2606:4700:4700::1111", 7005, "crowdsecurity/http-probing"),
    ]
    write("ipv6-mapped", "decisions.json", json.dumps(body, indent=1) + "\n")
    write("ipv6-mapped", "args.txt", "--pod-cidr 10.42.0.0/16 --pod-cidr 2001:cafe:42::/56\n")


def _corpus_text(name: str) -> str:
    text = (CORPUS / name).read_text()
    return text if text.endswith("\n") else text + "\n"


def mixed_corpus() -> None:
    """Traefik stdout as found: JSON v1/v2/v3, plugin and app log lines, then common format."""
    parts = [
        "traefik-stdout-mixed.log",
        "traefik-json-elastic-mixed.jsonl",
        "traefik-applog-text.log",
        "traefik-clf.log",
    ]
    write("mixed-corpus", "input.log", "".join(_corpus_text(p) for p in parts))
    # JSON lines: the LAPI responses as recorded, then the two alert fixtures compacted.
    docs = [_corpus_text("crowdsec-lapi-responses.jsonl")]
    for name in ("crowdsec-alert-sample.json", "crowdsec-alerts-get-response.json"):
        docs.append(json.dumps(json.loads((CORPUS / name).read_text())) + "\n")
    write("mixed-corpus", "decisions.json", "".join(docs))
    write("mixed-corpus", "args.txt", "\n")


def common_only() -> None:
    """Traefik's default (common) format; weave-net pods in 10.32.0.0/12 (DataDog sample)."""
    write("common-format-only", "input.log", _corpus_text("traefik-clf.log"))
    body = {
        "deleted": None,
        "new": [
            decision("10.32.0.1", 9001, "crowdsecurity/http-probing"),
            decision("172.17.0.0/16", 9002, "crowdsecurity/http-crawl-non_statics", scope="range"),
            decision("89.160.20.156", 9003, "crowdsecurity/http-probing"),
        ],
    }
    write("common-format-only", "decisions.json", json.dumps(body) + "\n")
    write("common-format-only", "args.txt", "--pod-cidr 10.32.0.0/12 --fail-on critical\n")


def cri_node_agent() -> None:
    """A node agent's view: /var/log/containers CRI file, long lines split by containerd."""
    out = []
    for i in range(45):
        client = "10.42.0.1" if i % 5 else f"192.0.2.{i}"
        line = access(
            i,
            client,
            f"{client}:{45000 + i}",
            host="shop.example.com",
            router="websecure-shop@kubernetes",
            step_s=10.0,
        )
        ts = (START + timedelta(seconds=i * 10, microseconds=990)).isoformat()
        if i % 4 == 0:  # split into three P/P/F pieces with an stderr line in between
            a, b, c = line[:120], line[120:400], line[400:]
            out.append(f"{ts} stdout P {a}")
            out.append(f'{ts} stderr F time="{ts}" level=warning msg="x" ')
            out.append(f"{ts} stdout P {b}")
            out.append(f"{ts} stdout F {c}")
        else:
            out.append(f"{ts} stdout F {line}")
    write("cri-node-agent", "input.log", "\n".join(out) + "\n")
    alerts = [
        {
            "capacity": 5,
            "decisions": [
                {
                    "duration": "59m49s",
                    "id": 11,
                    "origin": "crowdsec",
                    "scenario": "crowdsecurity/http-bad-user-agent",
                    "scope": "Ip",
                    "simulated": False,
                    "type": "ban",
                    "value": "10.42.0.1",
                },
            ],
            "events_count": 6,
            "id": 3,
            "scenario": "crowdsecurity/http-bad-user-agent",
            "simulated": False,
            "source": {"ip": "10.42.0.1", "range": "", "scope": "Ip", "value": "10.42.0.1"},
        },
        {
            "decisions": [
                {
                    "duration": "-2m3s",
                    "id": 9,
                    "origin": "crowdsec",
                    "scenario": "crowdsecurity/http-probing",
                    "scope": "Ip",
                    "type": "ban",
                    "value": "10.42.0.1",
                },
            ],
            "id": 2,
            "scenario": "crowdsecurity/http-probing",
        },
    ]
    write("cri-node-agent", "decisions.json", json.dumps(alerts, indent=1) + "\n")
    write("cri-node-agent", "args.txt", "--envelope auto\n")


def public_node_hop() -> None:
    """k3s HA nodes SNAT to their own public address: 30% of requests arrive from node A's
    public IP (banned) and 30% from node B's (not banned), each for every site. A crawler with
    one User-Agent sends 20% to one site (also banned: a legitimate ban, no finding), and four
    real clients the rest. Nothing here is in an internal range."""
    hosts = [(f"{name}.example.com", f"websecure-{name}@kubernetes") for name in SITES]
    lines = []
    for i in range(1500):
        host, router = hosts[(i + i // 10) % len(hosts)]
        slot = i % 10
        if slot < 3:
            addr, ua = "203.0.113.21", f"Mozilla/5.0 client-{i % 37}"
        elif slot < 6:
            addr, ua = "203.0.113.22", f"Mozilla/5.0 client-{i % 41}"
        elif slot < 8:
            addr, ua = "198.51.100.60", "Mozilla/5.0 (compatible; bingbot/2.0)"
            host, router = hosts[0]
        else:
            addr, ua = f"198.51.100.{100 + i % 20}", "Mozilla/5.0 visitor"
        lines.append(
            access(
                i, addr, f"{addr}:{30000 + i % 20000}", host=host, router=router, ua=ua, step_s=1.0
            )
        )
    write("public-node-hop", "input.log", "\n".join(lines) + "\n")
    body = {
        "new": [
            decision("203.0.113.21", 11, "crowdsecurity/http-crawl-non_statics"),
            decision("198.51.100.60", 12, "crowdsecurity/http-bad-user-agent"),
        ],
        "deleted": None,
    }
    write("public-node-hop", "decisions.json", json.dumps(body) + "\n")
    write("public-node-hop", "args.txt", "\n")


SITES = ("app", "grafana", "cloud", "git", "wiki")


def masking_after_upgrade() -> None:
    """A k3s node upgraded at 08:20: for 20 minutes Traefik saw its clients (one request in 30
    from a pod), then servicelb began to masquerade and 85% of requests arrive from the svclb
    hop 10.42.0.9, which CrowdSec then banned. A request every 10 s, 40 minutes."""
    hosts = [(f"{name}.example.com", f"websecure-{name}@kubernetes") for name in SITES[:3]]
    public = [f"198.51.100.{n}" for n in (23, 41, 77, 102, 140, 201)]
    lines = []
    for i in range(240):
        host, router = hosts[i % 3]
        after = i >= 120  # 08:20:00
        if after and i % 20 not in (3, 11, 17):
            addr = "10.42.0.9"
        elif not after and i % 30 == 7:
            addr = "10.42.0.33"  # a pod calling the ingress
        else:
            addr = public[i % len(public)]
        lines.append(access(i, addr, f"{addr}:{30000 + i}", host=host, router=router, step_s=10.0))
    write("masking-after-upgrade", "input.log", "\n".join(lines) + "\n")
    body = {
        "new": [decision("10.42.0.9", 7001, "crowdsecurity/http-probing")],
        "deleted": [],
    }
    write("masking-after-upgrade", "decisions.json", json.dumps(body) + "\n")
    write("masking-after-upgrade", "args.txt", "\n")


def public_hop_after_upgrade() -> None:
    """k3s HA servers upgraded at 08:30: for 30 minutes Traefik saw its clients, then node A
    began to SNAT to its own public address 203.0.113.21, which from then on carries 4 requests
    in 10, to every site, with many User-Agents (CrowdSec then banned it). At 08:35 a crawler
    with one User-Agent starts on one site (2 in 10, banned: a legitimate ban): heavy and
    mid-stream, but no hop, so no step. A request every 2 s, 50 minutes."""
    hosts = [(f"{name}.example.com", f"websecure-{name}@kubernetes") for name in SITES]
    lines = []
    for i in range(1500):
        host, router = hosts[(i + i // 10) % len(hosts)]
        slot = i % 10
        if i >= 900 and slot < 4:  # 08:30:00
            addr, ua = "203.0.113.21", f"Mozilla/5.0 client-{i % 37}"
        elif i >= 1050 and slot >= 8:  # 08:35:00
            addr, ua = "198.51.100.60", "Mozilla/5.0 (compatible; bingbot/2.0)"
            host, router = hosts[0]
        else:
            addr, ua = f"198.51.100.{100 + i % 40}", f"Mozilla/5.0 visitor-{i % 40}"
        lines.append(
            access(
                i, addr, f"{addr}:{30000 + i % 20000}", host=host, router=router, ua=ua, step_s=2.0
            )
        )
    case = "public-hop-after-upgrade"
    write(case, "input.log", "\n".join(lines) + "\n")
    body = {
        "new": [
            decision("203.0.113.21", 21, "crowdsecurity/http-crawl-non_statics"),
            decision("198.51.100.60", 22, "crowdsecurity/http-bad-user-agent"),
        ],
        "deleted": None,
    }
    write(case, "decisions.json", json.dumps(body) + "\n")
    write(case, "args.txt", "\n")


CF_EDGES = ("104.16.3.7", "104.16.9.21", "172.64.40.2", "172.64.41.9", "104.23.8.30", "172.71.2.4")


def cdn_bouncer_mismatch() -> None:
    """Cloudflare in front of an nginx on the node (203.0.113.10) that appends the edge to
    X-Forwarded-For; Traefik trusts the nginx, so ClientHost is ``client, edge`` and CrowdSec
    bans the Cloudflare edge. The bouncer's forwardedHeadersTrustedIPs lists Cloudflare's ranges
    (as the plugin's README suggests), so it checks the client: the bans never match. A quarter
    of the requests reach nginx directly (X-Forwarded-For is the client): both sides agree."""
    hosts = [(f"{name}.example.com", f"websecure-{name}@kubernetes") for name in SITES[:3]]
    lines = []
    for i in range(300):
        host, router = hosts[i % 3]
        client = f"81.2.{69 + i % 7}.{160 + i % 31}"
        if i % 4 == 3:
            xff = client
        else:
            xff = f"{client}, {CF_EDGES[i % len(CF_EDGES)]}"
        peer = f"203.0.113.10:{41000 + i}"
        extra = {"request_X-Forwarded-For": xff, "request_X-Real-Ip": client}
        lines.append(
            access(i, xff.replace(" ", ""), peer, host=host, router=router, step_s=2.0, extra=extra)
        )
    case = "cdn-bouncer-mismatch"
    write(case, "input.log", "\n".join(lines) + "\n")
    body = {
        "new": [
            decision("104.16.3.7", 8101, "crowdsecurity/http-probing"),
            decision("81.2.69.160", 8102, "crowdsecurity/http-bad-user-agent"),
        ],
        "deleted": None,
    }
    write(case, "decisions.json", json.dumps(body) + "\n")
    middleware = """apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata:
  name: crowdsec
  namespace: traefik
spec:
  plugin:
    crowdsec-bouncer-traefik-plugin:
      enabled: true
      crowdsecMode: stream
      crowdsecLapiHost: crowdsec-service.crowdsec:8080
      crowdsecLapiKeyFile: /etc/traefik/lapi-key
      forwardedHeadersTrustedIPs:
        - 104.16.0.0/13
        - 104.24.0.0/14
        - 172.64.0.0/13
      clientTrustedIPs:
        - 192.168.0.0/16
"""
    write(case, "bouncer.yaml", middleware)
    write(case, "args.txt", "--plugin-config bouncer.yaml\n")


if __name__ == "__main__":
    masking_after_upgrade()
    public_node_hop()
    public_hop_after_upgrade()
    k3s_masked()
    ipv6_mapped()
    mixed_corpus()
    common_only()
    cri_node_agent()
    cdn_bouncer_mismatch()
