"""Deterministic Traefik JSON access logs of an Invidious instance and CrowdSec decisions for them.

The workload of the benchmark and of the bundled demo. Lines look like what Traefik v3 (or v2)
writes through logrus: keys sorted bytewise, no spaces, ``&<>`` escaped as ``\\u0026`` and so on
(Go's default HTML escaping), ``StartUTC`` in RFC3339Nano with trailing zeros trimmed, ``time`` in
whole seconds at the end of the request, and lines written in order of request *end* (so a slow
``/videoplayback`` lands after faster requests that started later). Headers kept:
``User-Agent``, ``X-Real-Ip`` (Traefik sets it to the TCP peer) and ``X-Forwarded-For`` when a
trusted CDN peer sent one (then ``ClientHost`` is that list, as Traefik overwrites it).

Masked requests model k3s servicelb masquerade: the peer is a ``10.42.0.x`` hop, ``ClientHost``
and ``X-Real-Ip`` say the same hop, and nothing in the line names the real client.

Same seed and options give the same bytes (``random.Random`` seeded with strings is stable).

    python -m bench.generate --lines 1000000 --seed 1 --masked-share 0.1 \\
        --out bench/out/access-1000000.log --decisions-out bench/out/decisions.json
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import heapq
import ipaddress
import itertools
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
DEFAULT_START = "2025-03-14T08:00:00Z"
DEFAULT_HOPS = (("10.42.0.12", 0.75), ("10.42.0.1", 0.15), ("10.42.0.37", 0.10))
_BATCH = 4096

MAIN_HOST = "invidious.example.org"
# (host, router, service, backend) of what the instance's Traefik serves; the first is Invidious.
SITES = (
    (
        MAIN_HOST,
        "invidious-invidious-3c1d0a9b8e2f47a6b5c1@kubernetescrd",
        "invidious-invidious-3000@kubernetescrd",
        "10.42.0.57:3000",
    ),
    (
        "status.example.org",
        "monitoring-uptime-kuma-a41f09c2d3e87b65f012@kubernetescrd",
        "monitoring-uptime-kuma-3001@kubernetescrd",
        "10.42.0.83:3001",
    ),
    (
        "example.org",
        "web-homepage-77e0b1c4a9d25f3e6b80@kubernetescrd",
        "web-homepage-80@kubernetescrd",
        "10.42.0.91:80",
    ),
)
SITE_WEIGHTS = (0.975, 0.015, 0.010)
REDIRECT_ROUTER = "invidious-invidious-http-5b2e8c1f0a7d4396e4a2@kubernetescrd"
REDIRECT_SERVICE = "invidious-invidious-3000@kubernetescrd"
LB_ADDRESS = "198.51.100.23"  # the node's public address that scanners hit by IP
CDN_EDGES = ("172.70.142.31", "172.70.86.114", "162.158.94.12", "162.158.190.77")

BROWSER_UAS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:135.0) Gecko/20100101 Firefox/135.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/133.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.3 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_3_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.3 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/133.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Android 14; Mobile; rv:135.0) Gecko/135.0 Firefox/135.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) FreeTube/0.23.2 "
    "Chrome/132.0.6834.196 Electron/34.2.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/133.0.0.0 Safari/537.36 Edg/133.0.0.0",
    "Yattee/1.5.0 (iPhone; iOS 18.3; Scale/3.00)",
    "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0 LibreWolf/115.0",
)
BOT_UAS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
    "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
    "python-requests/2.32.3",
    "curl/8.5.0",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
)
SCANNER_UAS = (
    "Mozilla/5.0 zgrab/0.x",
    "Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)",
    "Go-http-client/1.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/89.0.4389.90 Safari/537.36",
    "Mozilla/5.0 (l9scan/2.0.; +https://leakix.net)",
)
PROBE_PATHS = (
    "/.env",
    "/.git/config",
    "/wp-login.php",
    "/wp-admin/setup-config.php",
    "/xmlrpc.php",
    "/phpmyadmin/index.php",
    "/cgi-bin/luci/;stok=/locale",
    "/actuator/health",
    "/server-status",
    "/.aws/credentials",
    "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
    "/boaform/admin/formLogin",
    "/config.json",
    "/api/v1/../../../../etc/passwd",
    "/owa/auth/logon.aspx",
)
V6_PREFIXES = (
    0x2A01_0E0A,
    0x2A02_8108,
    0x2001_0BC8,
    0x2A01_04F8,
    0x2600_1700,
    0x2A02_A210,
    0x2003_00E2,
    0x2A0A_A546,
    0x2804_0D58,
    0x2409_8A28,
)
SCENARIOS = (
    "crowdsecurity/http-probing",
    "crowdsecurity/http-crawl-non_statics",
    "crowdsecurity/http-sensitive-files",
    "crowdsecurity/http-bad-user-agent",
    "crowdsecurity/http-path-traversal-probing",
    "crowdsecurity/http-admin-interface-probing",
    "crowdsecurity/CVE-2017-9841",
)
MACHINE_ID = "c7a1f3e9b2d04e6f8a5b1c3d7e9f0a2bRk3sNode01xYz"


@dataclass(frozen=True, slots=True)
class GenConfig:
    """What to generate; every field feeds the seeded streams, so it is part of the output."""

    lines: int = 1_000_000
    seed: int = 1
    masked_share: float = 0.1  # share of requests masked inside the masked span
    masked_span: tuple[float, float] = (0.0, 1.0)  # fractions of the line count
    hops: tuple[tuple[str, float], ...] = DEFAULT_HOPS
    rate: float = 50.0  # requests per second (Poisson arrivals)
    start: str = DEFAULT_START
    clients: int = 2000
    v6_share: float = 0.25
    zipf_s: float = 1.0
    cdn_share: float = 0.03  # requests via a trusted CDN edge (X-Forwarded-For kept)
    web_share: float = 0.05  # requests on the plain-HTTP entrypoint (redirected)
    traefik: int = 3

    def __post_init__(self) -> None:
        a, b = self.masked_span
        if self.lines < 1:
            raise ValueError("lines must be positive")
        if not 0.0 <= self.masked_share <= 1.0:
            raise ValueError("masked share must be in [0, 1]")
        if not 0.0 <= a <= b <= 1.0:
            raise ValueError("masked span must be START:END with 0 <= START <= END <= 1")
        if not self.hops or any(w <= 0 for _, w in self.hops):
            raise ValueError("hops need positive weights")
        if self.rate <= 0 or self.clients < 10:
            raise ValueError("rate must be positive and clients at least 10")
        if self.traefik not in (2, 3):
            raise ValueError("traefik must be 2 or 3")


_D = GenConfig()


@dataclass(frozen=True, slots=True)
class Client:
    address: str
    v6: bool
    user_agent: str
    scanner: bool
    via_cdn: bool


@dataclass(slots=True)
class GenStats:
    lines: int = 0
    bytes: int = 0
    masked: int = 0
    cdn: int = 0
    first_ts: str = ""
    last_ts: str = ""
    by_hop: dict[str, int] = field(default_factory=dict)


# -- population ------------------------------------------------------------------------------
def _public_v4(rng: random.Random) -> str:
    while True:
        addr = ipaddress.IPv4Address(rng.randrange(0x0100_0000, 0xE000_0000))
        if addr.is_global:
            return str(addr)


def _public_v6(rng: random.Random) -> str:
    prefix = rng.choice(V6_PREFIXES)
    value = (prefix << 96) | (rng.getrandbits(32) << 64) | rng.getrandbits(64)
    return ipaddress.IPv6Address(value).compressed


def population(cfg: GenConfig) -> list[Client]:
    """Clients by rank (rank 0 is the busiest); Zipf weights follow from the rank."""
    rng = random.Random(f"{cfg.seed}:population")
    seen: set[str] = set()
    out: list[Client] = []
    while len(out) < cfg.clients:
        v6 = rng.random() < cfg.v6_share
        addr = _public_v6(rng) if v6 else _public_v4(rng)
        if addr in seen:
            continue
        seen.add(addr)
        rank = len(out)
        roll = rng.random()
        scanner = rank >= 20 and roll < 0.03
        if scanner:
            ua = rng.choice(SCANNER_UAS)
        elif roll < 0.10:
            ua = rng.choice(BOT_UAS)
        else:
            ua = rng.choice(BROWSER_UAS)
        out.append(Client(addr, v6, ua, scanner, not scanner and rng.random() < cfg.cdn_share))
    return out


def zipf_cum_weights(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (r + 1) ** s for r in range(n)))


def _pick(rng: random.Random, cum: Sequence[float]) -> int:
    """``rng.choices(range(n), cum_weights=cum)[0]`` without building lists (same draws)."""
    return bisect.bisect(cum, rng.random() * cum[-1], 0, len(cum) - 1)


# -- request shapes --------------------------------------------------------------------------
def _token(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(B64URL, k=n))


class _Videos:
    """A pool of videos with the googlevideo parameters Invidious proxies for each."""

    def __init__(self, rng: random.Random, n: int = 5000) -> None:
        self.ids = [_token(rng, 11) for _ in range(n)]
        self.cum = zipf_cum_weights(n, 0.9)
        self.playback: list[str] = []
        for _ in self.ids:
            clen = rng.randrange(2_000_000, 180_000_000)
            dur = f"{rng.randrange(30, 3600)}.{rng.randrange(0, 999):03d}"
            mn = f"sn-{_token(rng, 4).lower()}{rng.randrange(10, 99)}"
            self.playback.append(
                "&id=o-A"
                + _token(rng, 43)
                + "&source=youtube&requiressl=yes&clen="
                + str(clen)
                + "&dur="
                + dur
                + "&lmt=17"
                + str(rng.randrange(10**14, 10**15))
                + "&sig=AJfQdSsw"
                + _token(rng, 36)
                + "&host=rr"
                + str(rng.randrange(1, 6))
                + "---"
                + mn
                + ".googlevideo.com"
            )

    def pick(self, rng: random.Random) -> int:
        return _pick(rng, self.cum)


ITAGS = ("243", "244", "247", "248", "302", "303", "250", "251", "140", "18", "22")
THUMBS = ("mqdefault.jpg", "hqdefault.jpg", "maxresdefault.jpg", "hq720.jpg", "sddefault.jpg")
STATIC = (
    "/css/default.css?v=a1b2c3d",
    "/css/player.css?v=a1b2c3d",
    "/js/player.js?v=a1b2c3d",
    "/js/watch.js?v=a1b2c3d",
    "/videojs/video.js/video.js?v=a1b2c3d",
    "/favicon-32x32.png?v=a1b2c3d",
    "/robots.txt",
    "/opensearch.xml",
)
SEARCHES = (
    "linux",
    "lofi hip hop",
    "k3s traefik",
    "kurzgesagt",
    "veritasium",
    "cooking pasta",
    "3blue1brown",
    "news",
    "music 2025",
    "crowdsec",
)
# kind -> weight; the bulk of an Invidious proxy's requests are /videoplayback
ROUTES = (
    ("videoplayback", 0.62),
    ("thumb", 0.12),
    ("api_video", 0.05),
    ("latest", 0.04),
    ("watch", 0.04),
    ("popular", 0.015),
    ("trending", 0.01),
    ("comments", 0.02),
    ("dash", 0.02),
    ("storyboard", 0.01),
    ("ggpht", 0.02),
    ("search", 0.01),
    ("static", 0.03),
    ("channel", 0.01),
)
_ROUTE_NAMES = [r for r, _ in ROUTES]
_ROUTE_CUM = list(itertools.accumulate(w for _, w in ROUTES))


def _lognorm_ms(rng: random.Random, median_ms: float, sigma: float, cap_ms: float) -> int:
    ms = min(cap_ms, rng.lognormvariate(0.0, sigma) * median_ms)
    return max(50_000, int(ms * 1_000_000))


def _request(
    rng: random.Random, videos: _Videos, kind: str, start_s: int
) -> tuple[str, str, int, int, int]:
    """(method, path, status, size, duration_ns) for an Invidious route."""
    i = videos.pick(rng)
    vid = videos.ids[i]
    if kind == "videoplayback":
        chunk = 1 << rng.choice((18, 19, 20, 20, 21))
        first = rng.randrange(0, 96) * chunk
        expire = start_s - start_s % 3600 + 6 * 3600 + rng.randrange(0, 3600)
        path = (
            f"/videoplayback?expire={expire}{videos.playback[i]}&itag={rng.choice(ITAGS)}"
            f"&range={first}-{first + chunk - 1}"
        )
        roll = rng.random()
        status = 200 if roll < 0.95 else (403 if roll < 0.985 else 404)
        size = chunk if status == 200 else rng.randrange(0, 400)
        method = "GET" if rng.random() < 0.99 else "HEAD"
        return method, path, status, size, _lognorm_ms(rng, 180.0, 0.9, 30_000.0)
    if kind == "thumb":
        path = f"/vi/{vid}/{rng.choice(THUMBS)}"
        return "GET", path, 200, rng.randrange(6_000, 90_000), _lognorm_ms(rng, 60, 0.6, 5000)
    if kind == "api_video":
        path = f"/api/v1/videos/{vid}"
        if rng.random() < 0.3:
            path += "?fields=title,videoId,lengthSeconds,adaptiveFormats,formatStreams"
        status = 200 if rng.random() < 0.93 else 500
        return (
            "GET",
            path,
            status,
            rng.randrange(15_000, 120_000),
            _lognorm_ms(rng, 900, 0.7, 15000),
        )
    if kind == "latest":
        itag = rng.choice(("18", "22", "140", "251"))
        path = f"/latest_version?id={vid}&itag={itag}&local=true"
        return "GET", path, 302, 0, _lognorm_ms(rng, 700, 0.6, 10000)
    if kind == "watch":
        path = f"/watch?v={vid}"
        if rng.random() < 0.2:
            path += f"&t={rng.randrange(1, 900)}s"
        return "GET", path, 200, rng.randrange(40_000, 140_000), _lognorm_ms(rng, 1100, 0.6, 15000)
    if kind == "popular":
        return (
            "GET",
            "/feed/popular",
            200,
            rng.randrange(60_000, 90_000),
            _lognorm_ms(rng, 120, 0.5, 3000),
        )
    if kind == "trending":
        path = "/feed/trending" + ("?type=music" if rng.random() < 0.2 else "")
        return "GET", path, 200, rng.randrange(60_000, 90_000), _lognorm_ms(rng, 800, 0.6, 9000)
    if kind == "comments":
        path = f"/api/v1/comments/{vid}?format=html&hl=en-US&thin_mode=false"
        return "GET", path, 200, rng.randrange(3_000, 40_000), _lognorm_ms(rng, 1200, 0.6, 15000)
    if kind == "dash":
        path = f"/api/manifest/dash/id/{vid}?local=true&unique_res=1"
        return "GET", path, 200, rng.randrange(4_000, 12_000), _lognorm_ms(rng, 600, 0.6, 9000)
    if kind == "storyboard":
        path = f"/api/v1/storyboards/{vid}?height=90"
        return "GET", path, 200, rng.randrange(300, 900), _lognorm_ms(rng, 500, 0.6, 9000)
    if kind == "ggpht":
        path = f"/ggpht/ytc/AIdro_{_token(rng, 40)}=s48-c-k-c0x00ffffff-no-rj"
        return "GET", path, 200, rng.randrange(1_500, 6_000), _lognorm_ms(rng, 80, 0.5, 3000)
    if kind == "search":
        q = rng.choice(SEARCHES).replace(" ", "+")
        return (
            "GET",
            f"/search?q={q}",
            200,
            rng.randrange(50_000, 90_000),
            _lognorm_ms(rng, 1300, 0.6, 15000),
        )
    if kind == "static":
        return (
            "GET",
            rng.choice(STATIC),
            200 if rng.random() < 0.6 else 304,
            rng.randrange(0, 40_000),
            _lognorm_ms(rng, 2, 0.5, 200),
        )
    channel = "UC" + _token(rng, 22)
    return (
        "GET",
        f"/channel/{channel}",
        200,
        rng.randrange(50_000, 120_000),
        _lognorm_ms(rng, 1200, 0.6, 15000),
    )


# -- timestamps ------------------------------------------------------------------------------
class _Clock:
    """RFC3339 strings for a UTC nanosecond time, cached per second."""

    __slots__ = ("_sec", "_text")

    def __init__(self) -> None:
        self._sec = -1
        self._text = ""

    def seconds(self, sec: int) -> str:
        if sec != self._sec:
            self._sec = sec
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return self._text

    def nano(self, ns: int) -> str:
        """RFC3339Nano as Go writes it: trailing zeros of the fraction trimmed, no dot if none."""
        sec, frac = divmod(ns, 1_000_000_000)
        base = self.seconds(sec)
        if frac:
            return f"{base}.{frac:09d}".rstrip("0") + "Z"
        return base + "Z"


def _go_escape(line: bytes) -> bytes:
    """Go's json encoder (logrus default) escapes HTML characters inside strings."""
    if b"&" in line:
        line = line.replace(b"&", b"\\u0026")
    if b"<" in line:
        line = line.replace(b"<", b"\\u003c")
    if b">" in line:
        line = line.replace(b">", b"\\u003e")
    return line


def _v2_service_url(backend: str) -> orjson.Fragment:
    """Traefik v2 serialises ServiceURL as Go's url.URL struct (field order, not sorted)."""
    return orjson.Fragment(
        b'{"Scheme":"http","Opaque":"","User":null,"Host":"'
        + backend.encode()
        + b'","Path":"","RawPath":"","OmitHost":false,"ForceQuery":false,"RawQuery":"",'
        b'"Fragment":"","RawFragment":""}'
    )


# -- the log ---------------------------------------------------------------------------------
def _start_ns(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) * 1_000_000_000


def generate(cfg: GenConfig, stats: GenStats | None = None) -> Iterator[bytes]:
    """Yield lines (with their newline) in the order Traefik would write them."""
    st = stats if stats is not None else GenStats()
    clients = population(cfg)
    cum = zipf_cum_weights(len(clients), cfg.zipf_s)
    rng = random.Random(f"{cfg.seed}:lines")
    videos = _Videos(random.Random(f"{cfg.seed}:videos"))
    hop_names = [h for h, _ in cfg.hops]
    hop_cum = list(itertools.accumulate(w for _, w in cfg.hops))
    site_cum = list(itertools.accumulate(SITE_WEIGHTS))
    clock = _Clock()
    sort_keys = orjson.OPT_SORT_KEYS
    span_lo = int(cfg.masked_span[0] * cfg.lines)
    span_hi = int(cfg.masked_span[1] * cfg.lines)
    v2_urls = {s[3]: _v2_service_url(s[3]) for s in SITES}
    t_ns = _start_ns(cfg.start)
    mean_gap_ns = 1e9 / cfg.rate
    request_count = 1 + random.Random(f"{cfg.seed}:count").randrange(1000, 90_000)
    pending: list[tuple[int, int, bytes]] = []
    picks: list[int] = []
    for i in range(cfg.lines):
        if not picks:
            picks = rng.choices(range(len(clients)), cum_weights=cum, k=_BATCH)
            picks.reverse()
        client = clients[picks.pop()]
        t_ns += int(rng.expovariate(1.0) * mean_gap_ns) + 1
        while pending and pending[0][0] <= t_ns:
            yield _emit(st, heapq.heappop(pending)[2])
        start_s = t_ns // 1_000_000_000
        masked = span_lo <= i < span_hi and rng.random() < cfg.masked_share
        https = rng.random() >= cfg.web_share
        request_count += 1
        d: dict[str, object] = {
            "ClientUsername": "-",
            "RequestContentSize": 0,
            "RequestCount": request_count,
            "RetryAttempts": 0,
            "level": "info",
            "msg": "",
            "request_User-Agent": client.user_agent,
        }
        port = rng.randrange(1024, 65536)
        if masked:
            hop = hop_names[_pick(rng, hop_cum)]
            st.masked += 1
            st.by_hop[hop] = st.by_hop.get(hop, 0) + 1
            d["ClientAddr"] = f"{hop}:{port}"
            d["ClientHost"] = hop
            d["request_X-Real-Ip"] = hop
        elif client.via_cdn and https:
            edge = CDN_EDGES[rng.randrange(len(CDN_EDGES))]
            xff = client.address
            if rng.random() < 0.1:  # the client sent its own X-Forwarded-For; the CDN appended
                xff = f"{_public_v4(rng)}, {client.address}"
            st.cdn += 1
            d["ClientAddr"] = f"{edge}:{port}"
            d["ClientHost"] = xff
            d["request_X-Forwarded-For"] = xff
            d["request_X-Real-Ip"] = edge
        else:
            a = client.address
            d["ClientAddr"] = f"[{a}]:{port}" if client.v6 else f"{a}:{port}"
            d["ClientHost"] = a
            d["request_X-Real-Ip"] = a
        d["ClientPort"] = str(port)
        if client.scanner and rng.random() < 0.7:
            # Probes by IP: no router matches, Traefik answers 404 itself.
            host = LB_ADDRESS if rng.random() < 0.6 else MAIN_HOST
            method, path, status, size = "GET", rng.choice(PROBE_PATHS), 404, 19
            dur = rng.randrange(8_000, 90_000)
            router = service = backend = None
            if host == MAIN_HOST:  # the Invidious router matched and Invidious said 404
                router, service, backend = SITES[0][1], SITES[0][2], SITES[0][3]
                dur = _lognorm_ms(rng, 15, 0.5, 1000)
        else:
            site = SITES[_pick(rng, site_cum)]
            host, router, service, backend = site
            if host == MAIN_HOST:
                kind = _ROUTE_NAMES[_pick(rng, _ROUTE_CUM)]
                method, path, status, size, dur = _request(rng, videos, kind, start_s)
            else:
                method, path, status, size = "GET", "/", 200, rng.randrange(2_000, 30_000)
                dur = _lognorm_ms(rng, 20, 0.5, 2000)
        overhead = rng.randrange(20_000, 250_000)
        if not https:
            # Plain HTTP: the redirect middleware answers, no backend is reached.
            router = REDIRECT_ROUTER if router is not None else None
            service = REDIRECT_SERVICE if router is not None else None
            backend = None
            status, size, dur = (301, 17, overhead) if router is not None else (404, 19, dur)
        d["DownstreamContentSize"] = size
        d["DownstreamStatus"] = status
        d["Duration"] = dur
        d["Overhead"] = min(overhead, dur)
        if backend is not None:
            d["OriginContentSize"] = size
            d["OriginDuration"] = dur - d["Overhead"]  # type: ignore[operator]
            d["OriginStatus"] = status
            d["ServiceAddr"] = backend
            d["ServiceURL"] = f"http://{backend}" if cfg.traefik == 3 else v2_urls[backend]
        else:
            d["OriginContentSize"] = 0
            d["OriginDuration"] = 0
            d["OriginStatus"] = 0
        if router is not None:
            d["RouterName"] = router
        if service is not None:
            d["ServiceName"] = service
        d["RequestAddr"] = host
        d["RequestHost"] = host
        d["RequestMethod"] = method
        d["RequestPath"] = path
        d["RequestPort"] = "-"
        if https:
            d["RequestProtocol"] = "HTTP/2.0" if rng.random() < 0.85 else "HTTP/1.1"
            d["RequestScheme"] = "https"
            d["TLSCipher"] = "TLS_AES_128_GCM_SHA256"
            d["TLSVersion"] = "1.3"
            d["entryPointName"] = "websecure"
        else:
            d["RequestProtocol"] = "HTTP/1.1"
            d["RequestScheme"] = "http"
            d["entryPointName"] = "web"
        start = clock.nano(t_ns)
        d["StartLocal"] = start
        d["StartUTC"] = start
        end_ns = t_ns + dur
        d["time"] = clock.seconds(end_ns // 1_000_000_000) + "Z"
        line = _go_escape(orjson.dumps(d, option=sort_keys)) + b"\n"
        if not st.first_ts:
            st.first_ts = start
        st.last_ts = start
        heapq.heappush(pending, (end_ns, i, line))
    while pending:
        yield _emit(st, heapq.heappop(pending)[2])


def _emit(st: GenStats, line: bytes) -> bytes:
    st.lines += 1
    st.bytes += len(line)
    return line


def write_log(cfg: GenConfig, path: Path) -> GenStats:
    """Write atomically (tmp + rename) so an interrupted run never leaves a short file behind."""
    stats = GenStats()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    buf: list[bytes] = []
    with tmp.open("wb") as fh:
        for line in generate(cfg, stats):
            buf.append(line)
            if len(buf) >= _BATCH:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))
    tmp.replace(path)
    return stats


# -- decisions -------------------------------------------------------------------------------
def _go_duration(rng: random.Random, max_s: int) -> str:
    """Remaining time as CrowdSec 1.4.6 prints it (Go time.Duration with nanoseconds)."""
    total = rng.randrange(60, max_s)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    ns = rng.randrange(1, 1_000_000_000)
    frac = f"{ns:09d}".rstrip("0")
    return f"{h}h{m}m{s}.{frac}s" if h else f"{m}m{s}.{frac}s"


def decisions(cfg: GenConfig) -> dict[str, object]:
    """A LAPI ``/v1/decisions/stream?startup=true`` body for this traffic, CrowdSec 1.4.6 shape.

    Mostly bans of external clients (the scanners, some crawlers, community-blocklist entries),
    plus the harmful ones: the busiest masked hop banned by a local scenario, and a manual Range
    ban over the pod subnet it lives in.
    """
    rng = random.Random(f"{cfg.seed}:decisions")
    clients = population(cfg)
    next_id = 1000 + rng.randrange(0, 5000)
    new: list[dict[str, object]] = []

    def add(origin: str, scenario: str, scope: str, value: str, max_s: int = 4 * 3600) -> None:
        nonlocal next_id
        next_id += rng.randrange(1, 7)
        new.append(
            {
                "duration": _go_duration(rng, max_s),
                "id": next_id,
                "origin": origin,
                "scenario": scenario,
                "scope": scope,
                "type": "ban",
                "value": value,
            }
        )

    for c in clients:
        if c.scanner:
            add("crowdsec", rng.choice(SCENARIOS[:3] + SCENARIOS[4:]), "Ip", c.address)
        elif c.user_agent in BOT_UAS[2:] and rng.random() < 0.3:
            add("crowdsec", "crowdsecurity/http-crawl-non_statics", "Ip", c.address)
    for _ in range(max(5, cfg.clients // 40)):  # community blocklist, mostly not in this traffic
        value = _public_v4(rng) if rng.random() < 0.9 else rng.choice(clients).address
        add("CAPI", rng.choice(SCENARIOS), "Ip", value, 7 * 24 * 3600)
    busiest = max(cfg.hops, key=lambda h: h[1])[0]
    if cfg.masked_share > 0 and cfg.masked_span[1] > cfg.masked_span[0]:
        add("crowdsec", "crowdsecurity/http-probing", "Ip", busiest)
        net = ipaddress.ip_network(f"{busiest}/24", strict=False)
        add("cscli", f"manual 'ban' from '{MACHINE_ID}'", "Range", str(net))
    return {"deleted": None, "new": new}


def write_decisions(cfg: GenConfig, path: Path) -> int:
    body = decisions(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    # LAPI 1.4.6 serialises the stream body with Go's encoding/json: sorted keys, compact.
    path.write_bytes(orjson.dumps(body, option=orjson.OPT_SORT_KEYS) + b"\n")
    new = body["new"]
    return len(new) if isinstance(new, list) else 0


# -- command line ----------------------------------------------------------------------------
def _span(text: str) -> tuple[float, float]:
    a, sep, b = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected START:END fractions, e.g. 0.3:1")
    return float(a), float(b)


def _hops(text: str) -> tuple[tuple[str, float], ...]:
    out = []
    for item in text.split(","):
        addr, _, weight = item.partition("=")
        out.append((addr.strip(), float(weight) if weight else 1.0))
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=_D.lines)
    p.add_argument("--seed", type=int, default=_D.seed)
    p.add_argument(
        "--masked-share",
        type=float,
        default=_D.masked_share,
        help="share of requests masked through a 10.42.0.x hop inside the span",
    )
    p.add_argument(
        "--masked-span",
        type=_span,
        default=_D.masked_span,
        metavar="START:END",
        help="stretch of the file (fractions of the lines) where masking happens",
    )
    p.add_argument(
        "--hops",
        type=_hops,
        default=DEFAULT_HOPS,
        metavar="ADDR[=W],...",
        help="masquerading hops and their weights (default 10.42.0.12=0.75,...)",
    )
    p.add_argument("--rate", type=float, default=_D.rate, help="requests per second")
    p.add_argument("--start", default=_D.start, help="first StartUTC, YYYY-MM-DDTHH:MM:SSZ")
    p.add_argument("--clients", type=int, default=_D.clients)
    p.add_argument("--traefik", type=int, choices=(2, 3), default=_D.traefik)
    p.add_argument("--out", type=Path, required=True, help="access log to write")
    p.add_argument("--decisions-out", type=Path, help="also write a LAPI stream body here")
    return p


def config_from_args(args: argparse.Namespace) -> GenConfig:
    return GenConfig(
        lines=args.lines,
        seed=args.seed,
        masked_share=args.masked_share,
        masked_span=args.masked_span,
        hops=args.hops,
        rate=args.rate,
        start=args.start,
        clients=args.clients,
        traefik=args.traefik,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    st = write_log(cfg, args.out)
    msg = (
        f"{args.out}: {st.lines} lines, {st.bytes / 1e6:.1f} MB "
        f"({st.bytes / max(st.lines, 1):.0f} B/line), masked {st.masked} "
        f"({st.masked / max(st.lines, 1):.1%}), {st.first_ts} .. {st.last_ts}, "
        f"{time.perf_counter() - t0:.1f}s"
    )
    print(msg, file=sys.stderr)
    if args.decisions_out is not None:
        n = write_decisions(cfg, args.decisions_out)
        print(f"{args.decisions_out}: {n} decisions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
