"""Which address CrowdSec bans and which one the Traefik bouncer plugin checks, per request.

CrowdSec's ``crowdsecurity/traefik-logs`` parser bans the last element of ``ClientHost`` (Traefik
writes the whole ``X-Forwarded-For`` there when the request has one, else the TCP peer's host):
``AccessRecord[CLIENT]``. The bouncer plugin (maxlerebourg/crowdsec-bouncer-traefik-plugin,
``pkg/ip``) reads the header ``forwardedHeadersCustomName`` (default ``X-Forwarded-For``), walks
it right to left, skips empty elements and those inside ``forwardedHeadersTrustedIPs``, and checks
the first other one; when none is left it checks the host of the TCP peer (``req.RemoteAddr``).
An address inside ``clientTrustedIPs`` skips the decision lookup, and an address that is not an IP
at all (``unknown``, ``1.2.3.4:80``) makes the plugin refuse the request. When the two addresses
differ, a ban never reaches the client it was meant for, or reaches everyone behind a hop.

The access log shows the headers the plugin sees: both run after the entrypoint's
``forwardedHeaders`` handling. It carries ``X-Forwarded-For`` (``ClientHost``, whatever the
header fields keep) and ``X-Real-Ip`` (when kept); any other custom header name cannot be judged.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import repeat
from operator import itemgetter
from typing import Any

from parsers.crowdsec import Decision
from parsers.records import CLIENT, CLIENT_HOST_RAW, PEER, REAL_IP, TS, XFF, AccessRecord
from pipeline.core import fixes
from pipeline.core.addresses import parse_address, parse_network, same_prefix
from pipeline.core.findings import Finding, Kind, Severity

# The plugin's keys as its README spells them. Traefik decodes plugin options without regard to
# case, and the Go struct's JSON tags spell the lists ``...TrustedIps``: both are accepted.
TRUSTED_KEY = "forwardedHeadersTrustedIPs"
CLIENT_TRUSTED_KEY = "clientTrustedIPs"
HEADER_KEY = "forwardedHeadersCustomName"
XFF_HEADER = "X-Forwarded-For"
REAL_IP_HEADER = "X-Real-Ip"
_KEYS = {k.lower(): k for k in (TRUSTED_KEY, CLIENT_TRUSTED_KEY, HEADER_KEY)}
MAX_CIDRS = 1024  # per list; a real setting lists a handful of ranges
MAX_HEADER = 256

# Thresholds of the traffic findings. A mismatch is a property of the configuration, not a
# statistical blip: once a class of requests is judged on another address than the one CrowdSec
# bans, every attack in that class goes unblocked. 1% of judged requests (and 20 of them) keeps a
# stray hand-written header from one curl out, yet flags a CDN or a second proxy that carries a
# small part of the traffic. Cleared (live) below half the share, so a share that hovers at the
# threshold does not flap.
MISMATCH_SHARE = 0.01
MISMATCH_MIN_REQUESTS = 20
EXAMPLES_CAP = 256  # distinct (banned, checked, peer, header) combinations kept per mode
ADDRESSES_CAP = 2048  # distinct addresses kept per tally (checked; banned but never checked)
# Verdicts cached by (CrowdSec's address, headers, peer host): a batch has at most ~1,000 distinct
# ones, and an entry holds five strings (~0.5 KB), so 8,192 keep ~4 MB at most on a sidecar.
_CACHE_CAP = 1 << 13


class SettingsError(ValueError):
    """A bouncer setting the plugin itself would refuse; ``key`` names it."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key


class Mode(StrEnum):
    """How the address the bouncer checks relates to the one CrowdSec bans, for one request."""

    AGREE = "agree"  # the same address: a ban applies
    TRUSTED = "trusted"  # both in clientTrustedIPs: exempt on purpose (LAN, VPN)
    FORWARDED = "forwarded"  # the bouncer checks another X-Forwarded-For element
    HOP = "hop"  # the bouncer checks the TCP peer (a hop), CrowdSec bans someone else
    EXEMPT = "exempt"  # the bouncer's address is in clientTrustedIPs, CrowdSec's is not
    REFUSED = "refused"  # the bouncer's address is not an IP: the plugin refuses the request
    UNKNOWN = "unknown"  # the log lacks what the judgement needs (X-Real-Ip not kept, no peer)


PROBLEMS = (Mode.HOP, Mode.FORWARDED, Mode.REFUSED, Mode.EXEMPT)


def _go_ip(text: str) -> tuple[int, int] | None:
    """An address as Go's ``net.ParseIP`` takes it: no port, brackets or zone (the shared
    parser is lenient and strips those, the plugin does not)."""
    if not text or "[" in text or "%" in text or text.count(":") == 1 or text != text.strip():
        return None
    return parse_address(text)


def _go_network(text: str) -> tuple[int, int, int] | None:
    """A ``NewChecker`` entry: an IP or a CIDR, after ``TrimSpace``."""
    text = text.strip()
    addr, _, _ = text.partition("/")
    if _go_ip(addr) is None:
        return None
    return parse_network(text)


@dataclass(frozen=True, slots=True)
class BouncerSettings:
    """The plugin settings that decide which address it checks."""

    trusted: tuple[str, ...] = ()  # forwardedHeadersTrustedIPs
    client_trusted: tuple[str, ...] = ()  # clientTrustedIPs
    header: str = XFF_HEADER  # forwardedHeadersCustomName
    source: str = "flags"  # where they were read (a file, a Middleware, flags)

    def __post_init__(self) -> None:
        for key, values in ((TRUSTED_KEY, self.trusted), (CLIENT_TRUSTED_KEY, self.client_trusted)):
            if len(values) > MAX_CIDRS:
                raise SettingsError(key, f"more than {MAX_CIDRS} entries")
            for v in values:
                if _go_network(v) is None:
                    raise SettingsError(key, f"not an IP address or CIDR: {v[:64]!r}")
        h = self.header
        if not h or len(h) > MAX_HEADER or not all(c.isascii() and c.isprintable() for c in h):
            raise SettingsError(HEADER_KEY, f"not a header name: {h[:64]!r}")
        if any(c in h for c in " \t:,;\"'()<>@[]{}/\\?="):
            raise SettingsError(HEADER_KEY, f"not a header name: {h[:64]!r}")

    @property
    def judgeable(self) -> bool:
        """The access log carries the header the plugin reads."""
        return self.header.lower() in (XFF_HEADER.lower(), REAL_IP_HEADER.lower())

    def as_dict(self) -> dict[str, Any]:
        """In the plugin's own key names (evidence, ``auditor check``)."""
        return {
            TRUSTED_KEY: list(self.trusted),
            CLIENT_TRUSTED_KEY: list(self.client_trusted),
            HEADER_KEY: self.header,
            "source": self.source,
        }


def _strings(key: str, value: object) -> tuple[str, ...]:
    """A list of strings, or one comma-separated string (Traefik's labels and CLI flags)."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[object] = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise SettingsError(key, f"expected a list of CIDRs, got {type(value).__name__}")
    if len(items) > MAX_CIDRS:
        raise SettingsError(key, f"more than {MAX_CIDRS} entries")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise SettingsError(key, f"expected CIDR strings, got {type(item).__name__}")
        out.append(item.strip())
    return tuple(out)


def settings_from_block(block: Mapping[str, object], source: str) -> BouncerSettings:
    """The plugin's option block (its keys in any case; other options are ignored)."""
    found: dict[str, object] = {}
    for raw, value in block.items():
        key = _KEYS.get(str(raw).lower())
        if key is None:
            continue
        if key in found:
            raise SettingsError(key, "given twice (keys are case-insensitive)")
        found[key] = value
    header = found.get(HEADER_KEY, XFF_HEADER)
    if header is None or header == "":
        header = XFF_HEADER  # an empty value leaves the plugin's default
    if not isinstance(header, str):
        raise SettingsError(HEADER_KEY, f"expected a header name, got {type(header).__name__}")
    return BouncerSettings(
        trusted=_strings(TRUSTED_KEY, found.get(TRUSTED_KEY)),
        client_trusted=_strings(CLIENT_TRUSTED_KEY, found.get(CLIENT_TRUSTED_KEY)),
        header=header.strip(),
        source=source,
    )


def _is_block(data: Mapping[str, object]) -> bool:
    return any(str(k).lower() in _KEYS for k in data) or "enabled" in data


def plugin_block(doc: object, plugin: str | None = None) -> Mapping[str, object]:
    """The option block in a Middleware object (``spec.plugin.<name>``), a ``{plugin: {name:
    block}}`` map, or a bare block. ``plugin`` picks one name when several plugins are set."""
    if not isinstance(doc, Mapping):
        raise SettingsError("(document)", f"expected a mapping, got {type(doc).__name__}")
    spec = doc.get("spec")
    holder: object = spec.get("plugin") if isinstance(spec, Mapping) else doc.get("plugin")
    if holder is None:
        if _is_block(doc):
            return doc
        raise SettingsError("spec.plugin", "no bouncer plugin options found")
    if not isinstance(holder, Mapping) or not holder:
        raise SettingsError("spec.plugin", "expected a map of plugin name to its options")
    blocks = {str(k): v for k, v in holder.items() if isinstance(v, Mapping)}
    if plugin is not None:
        if plugin not in blocks:
            raise SettingsError(f"spec.plugin.{plugin}", "no such plugin in this Middleware")
        return blocks[plugin]
    bouncers = {k: v for k, v in blocks.items() if _is_block(v)}
    if len(bouncers) != 1:
        names = ", ".join(sorted(blocks)) or "none"
        raise SettingsError("spec.plugin", f"expected one bouncer plugin block, found: {names}")
    return next(iter(bouncers.values()))


MAX_FILE_BYTES = 1 << 20  # a Middleware is a few hundred bytes; a list of them a few KB
MAX_DOCUMENTS = 256


def _candidates(doc: object) -> list[Mapping[str, object]]:
    """Middleware objects in a document: itself, or the items of a ``kind: List``."""
    if isinstance(doc, Mapping) and isinstance(doc.get("items"), list):
        return [i for i in doc["items"][:MAX_DOCUMENTS] if isinstance(i, Mapping)]
    return [doc] if isinstance(doc, Mapping) else []


def _name(doc: Mapping[str, object]) -> str:
    meta = doc.get("metadata")
    if isinstance(meta, Mapping):
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}".strip("/")
    return ""


def settings_from_text(text: str, source: str, plugin: str | None = None) -> BouncerSettings:
    """A settings file: YAML or JSON, one Middleware, a ``kind: List`` of them, several YAML
    documents, or the bare option block. Exactly one must hold bouncer settings."""
    import yaml  # type: ignore[import-untyped]  # only with a bouncer file: replay pays nothing

    try:
        docs = []
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if i >= MAX_DOCUMENTS:
                raise SettingsError("(document)", f"more than {MAX_DOCUMENTS} YAML documents")
            docs.append(doc)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SettingsError("(document)", f"not YAML or JSON{where}") from None
    found: list[tuple[str, Mapping[str, object]]] = []
    errors: list[SettingsError] = []
    for doc in docs:
        for cand in _candidates(doc):
            try:
                found.append((_name(cand), plugin_block(cand, plugin)))
            except SettingsError as exc:
                errors.append(exc)
    if not found:
        raise errors[0] if errors else SettingsError("(document)", "empty")
    if len(found) > 1:
        names = ", ".join(n or "?" for n, _ in found[:5])
        raise SettingsError("(document)", f"several bouncer Middlewares ({names}): keep one")
    name, block = found[0]
    return settings_from_block(block, f"{source} ({name})" if name else source)


def with_overrides(
    base: BouncerSettings | None,
    trusted: Sequence[str] | None,
    client_trusted: Sequence[str] | None,
    header: str | None,
) -> BouncerSettings | None:
    """Flags over a file: each given flag replaces that one setting. None when nothing is set."""
    if base is None and trusted is None and client_trusted is None and header is None:
        return None
    flags = (trusted, client_trusted, header) != (None, None, None)
    if base is None:
        base, source = BouncerSettings(), "flags"
    else:
        source = f"{base.source} + flags" if flags else base.source
    return BouncerSettings(
        trusted=tuple(trusted) if trusted is not None else base.trusted,
        client_trusted=tuple(client_trusted) if client_trusted is not None else base.client_trusted,
        header=header if header is not None else base.header,
        source=source,
    )


# -- the model -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Verdict:
    mode: Mode
    banned: str  # what CrowdSec bans
    checked: str  # what the bouncer checks ("" when unknown)


class _Nets:
    __slots__ = ("nets",)

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.nets = [n for n in map(_go_network, cidrs) if n is not None]

    def contains(self, parsed: tuple[int, int]) -> bool:
        version, value = parsed
        return any(same_prefix(v, p, version, value, length) for v, p, length in self.nets)


class BouncerModel:
    """The plugin's address choice for given settings (see the module docstring)."""

    __slots__ = ("_client", "_real_ip", "_trusted", "settings")

    def __init__(self, settings: BouncerSettings) -> None:
        self.settings = settings
        self._trusted = _Nets(settings.trusted)
        self._client = _Nets(settings.client_trusted)
        self._real_ip = settings.header.lower() == REAL_IP_HEADER.lower()

    def checked(self, header: str, peer_host: str) -> str:
        """``ip.GetRemoteIP``: the rightmost header element outside the trusted ranges (one that
        is not an IP counts as outside), else the peer."""
        if header:
            trusted = self._trusted
            for part in reversed(header.split(",")):
                p = part.strip()
                if not p:
                    continue
                parsed = _go_ip(p)
                if parsed is None or not trusted.contains(parsed):
                    return p
        return peer_host

    def client_trusted(self, address: str) -> bool:
        parsed = _go_ip(address) if address else None
        return parsed is not None and self._client.contains(parsed)

    def judge(
        self, banned: str, xff: str, real_ip: str, client_host: str, peer_host: str
    ) -> Verdict:
        """One request: ``banned`` is ``AccessRecord[CLIENT]``; ``peer_host`` the host of
        ``ClientAddr``."""
        if not banned:
            return Verdict(Mode.UNKNOWN, banned, "")
        if self._real_ip:
            if not real_ip:  # Traefik always sets it: empty means the log dropped it
                return Verdict(Mode.UNKNOWN, banned, "")
            header = real_ip
        else:  # ClientHost is the whole X-Forwarded-For when the request has one
            header = xff or (client_host if client_host != peer_host else "")
        checked = self.checked(header, peer_host)
        if not checked:
            return Verdict(Mode.UNKNOWN, banned, "")
        parsed = _go_ip(checked)
        if parsed is None:
            return Verdict(Mode.REFUSED, banned, checked)
        if self._client.contains(parsed):
            mode = Mode.TRUSTED if self.client_trusted(banned) else Mode.EXEMPT
            return Verdict(mode, banned, checked)
        if checked == banned:
            return Verdict(Mode.AGREE, banned, checked)
        return Verdict(Mode.HOP if checked == peer_host else Mode.FORWARDED, banned, checked)


# -- the tally -------------------------------------------------------------------------------
Example = tuple[str, str, str, str]  # banned, checked, peer host, header as logged


def _add_capped(target: dict[Any, int], key: Any, n: int, cap: int) -> None:
    if key in target:
        target[key] += n
    elif len(target) < cap:
        target[key] = n


@dataclass(slots=True)
class ModeCounts:
    """Requests per mode over some span, with bounded examples."""

    judged: int = 0  # requests with a verdict (not UNKNOWN)
    unknown: int = 0
    modes: dict[Mode, int] = field(default_factory=dict)
    examples: dict[Mode, dict[Example, int]] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)  # addresses the bouncer checked
    unchecked: dict[str, int] = field(default_factory=dict)  # banned in a problem request
    saturated: bool = False  # ``checked`` hit its cap: "never checked" cannot be claimed

    def count(self, verdict: Verdict, example: Example, n: int) -> None:
        mode = verdict.mode
        if mode is Mode.UNKNOWN:
            self.unknown += n
            return
        self.judged += n
        self.modes[mode] = self.modes.get(mode, 0) + n
        if len(self.checked) >= ADDRESSES_CAP and verdict.checked not in self.checked:
            self.saturated = True
        _add_capped(self.checked, verdict.checked, n, ADDRESSES_CAP)
        if mode in PROBLEMS:
            ex = self.examples.get(mode)
            if ex is None:
                ex = self.examples[mode] = {}
            _add_capped(ex, example, n, EXAMPLES_CAP)
            _add_capped(self.unchecked, verdict.banned, n, ADDRESSES_CAP)

    def merge(self, other: ModeCounts) -> None:
        self.judged += other.judged
        self.unknown += other.unknown
        self.saturated |= other.saturated
        for mode, n in other.modes.items():
            self.modes[mode] = self.modes.get(mode, 0) + n
        for mode, ex in other.examples.items():
            mine = self.examples.setdefault(mode, {})
            for key, n in ex.items():
                _add_capped(mine, key, n, EXAMPLES_CAP)
        for addr, n in other.checked.items():
            if len(self.checked) >= ADDRESSES_CAP and addr not in self.checked:
                self.saturated = True
            _add_capped(self.checked, addr, n, ADDRESSES_CAP)
        for addr, n in other.unchecked.items():
            _add_capped(self.unchecked, addr, n, ADDRESSES_CAP)

    def never_checked(self) -> list[str]:
        """Addresses CrowdSec would ban from a problem request that the bouncer never checked
        in this span (empty when the checked set overflowed: then nothing can be claimed)."""
        if self.saturated:
            return []
        return sorted(a for a in self.unchecked if a not in self.checked)


_fields = itemgetter(CLIENT, XFF, REAL_IP, CLIENT_HOST_RAW)
_peer = itemgetter(PEER)
_first = itemgetter(0)
_ts = itemgetter(TS)


def _peer_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class MismatchTally:
    """Verdict counts per data-time bucket (live window) and over the whole input (replay).

    Made only when bouncer settings are given, so the replay hot path pays nothing otherwise.
    Per batch the distinct (CrowdSec's address, headers, peer host) combinations are counted in
    C; the verdict is judged once per distinct combination (cached). Memory is bounded: the
    cache, the examples and address maps are capped, and only ``keep`` buckets are held.
    """

    __slots__ = ("_cache", "_memo", "_version", "bucket_s", "buckets", "keep", "model", "span")

    def __init__(self, model: BouncerModel, bucket_s: int, keep: int | None) -> None:
        """``keep``: buckets held for the live window; None keeps only the whole-input span."""
        self.model = model
        self.bucket_s = bucket_s
        self.keep = keep
        self.buckets: dict[int, ModeCounts] = {}
        self.span = ModeCounts()  # replay only: live judges the window
        self._cache: dict[tuple[tuple[str, str, str, str], str], Verdict] = {}
        self._version = 0  # batches added; the window is summed again only when it moved
        self._memo: tuple[int, int, int, ModeCounts] | None = None

    def add(self, records: Sequence[AccessRecord]) -> None:
        if not records:
            return
        hosts = map(_first, map(str.rpartition, map(_peer, records), repeat(":")))
        counts = Counter(zip(map(_fields, records), hosts, strict=True))
        target = self._target(records)
        cache = self._cache
        judge = self.model.judge
        for key, n in counts.items():
            verdict = cache.get(key)
            (banned, xff, real_ip, client_host), host = key
            peer_host = _peer_host(host)
            if verdict is None:
                if len(cache) >= _CACHE_CAP:
                    cache.clear()
                verdict = cache[key] = judge(banned, xff, real_ip, client_host, peer_host)
            if verdict.mode is not Mode.AGREE:
                example = (banned, verdict.checked, peer_host, xff or real_ip or client_host)
            else:
                example = ("", "", "", "")
            target.count(verdict, example, n)

    def add_unjudged(self, records: Sequence[AccessRecord]) -> None:
        """Requests whose input lacks what any verdict needs (a Kafka sidecar of event version
        1 sends neither ClientHost nor the peer, so a hop cannot be told from a forwarded
        element): counted as unknown, in the bucket ``add`` would put them in."""
        if not records:
            return
        self._target(records).unknown += len(records)

    def _target(self, records: Sequence[AccessRecord]) -> ModeCounts:
        """Where a batch's verdicts go: the span (replay), or its newest line's bucket."""
        self._version += 1
        if self.keep is None:
            return self.span
        bucket = int(max(map(_ts, records))) // self.bucket_s
        mine = self.buckets.get(bucket)
        if mine is None:
            mine = self.buckets[bucket] = ModeCounts()
            self._prune(bucket)
        return mine

    def _prune(self, newest: int) -> None:
        keep = self.keep or 0
        for b in [b for b in self.buckets if b <= newest - keep]:
            del self.buckets[b]

    def window(self, last_ts: float, window_s: int) -> ModeCounts:
        """The buckets of the window ending at ``last_ts`` (data time), summed."""
        newest = int(last_ts) // self.bucket_s
        first = newest - max(1, window_s // self.bucket_s) + 1
        memo = self._memo
        if memo is not None and memo[:3] == (self._version, first, newest):
            return memo[3]  # ticks between batches: nothing moved
        out = ModeCounts()
        for b, counts in self.buckets.items():
            if first <= b <= newest:
                out.merge(counts)
        self._memo = (self._version, first, newest, out)
        return out


# -- findings ---------------------------------------------------------------------------------
def share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def over_threshold(counts: ModeCounts, mode: Mode, *, clearing: bool = False) -> bool:
    """Raise at ``MISMATCH_SHARE`` and ``MISMATCH_MIN_REQUESTS``; keep (``clearing``) down to
    half the share."""
    n = counts.modes.get(mode, 0)
    if n < MISMATCH_MIN_REQUESTS or not counts.judged:
        return False
    need = MISMATCH_SHARE / 2 if clearing else MISMATCH_SHARE
    return n / counts.judged >= need


def examples(counts: ModeCounts, mode: Mode, limit: int = 5) -> list[dict[str, Any]]:
    rows = sorted(counts.examples.get(mode, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [
        {"crowdsec_bans": b, "bouncer_checks": c, "peer": p, "header": h, "requests": n}
        for (b, c, p, h), n in rows
    ]


def top_checked(counts: ModeCounts, mode: Mode, *, banned: bool = False) -> list[str]:
    """The addresses the bouncer checks in ``mode``'s requests (``banned``: those CrowdSec
    bans), busiest first."""
    per: dict[str, int] = {}
    for (b, checked, _, _), n in counts.examples.get(mode, {}).items():
        addr = b if banned else checked
        per[addr] = per.get(addr, 0) + n
    return [a for a, _ in sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))]


def _decision(d: Decision) -> dict[str, Any]:
    """As ``Decision.as_dict``, the time left in whole seconds: stable across a run."""
    out = d.as_dict()
    if d.duration_s is not None:
        out["duration_s"] = float(math.ceil(d.duration_s))
    return out


def _shown(addresses: Sequence[str]) -> str:
    return ", ".join(addresses[:3]) + (" ..." if len(addresses) > 3 else "")


_SUMMARIES = {
    Mode.HOP: "{pct}% of requests are checked by the bouncer on the TCP peer ({checked}) while "
    "CrowdSec bans another address: bans on clients never apply, a ban on the hop locks "
    "everyone out",
    Mode.FORWARDED: "{pct}% of requests are checked by the bouncer on another X-Forwarded-For "
    "element ({checked}) than the one CrowdSec bans ({banned}): the bans never match",
    Mode.EXEMPT: "{pct}% of requests pass the bouncer unchecked: clientTrustedIPs covers the "
    "address it checks ({checked}), not the one CrowdSec bans",
    Mode.REFUSED: "{pct}% of requests are refused by the bouncer: the address it derives "
    "({checked}) is not an IP",
}
_SEVERITY = {
    Mode.HOP: Severity.HIGH,
    Mode.FORWARDED: Severity.HIGH,
    Mode.REFUSED: Severity.HIGH,
    Mode.EXEMPT: Severity.MEDIUM,
}


def mismatch_finding(
    mode: Mode,
    counts: ModeCounts,
    settings: BouncerSettings,
    scope: dict[str, Any],
    hop_bans: Sequence[Decision] = (),
) -> Finding:
    """``scope``: ``{"scope": "span"|"window", "window_s": ...}``; ``hop_bans``: live bans on the
    addresses the bouncer checks in HOP mode (each locks out everyone behind it)."""
    n = counts.modes.get(mode, 0)
    checked = top_checked(counts, mode)
    pct = max(1, round(100 * n / counts.judged)) if counts.judged else 0
    shown = ", ".join(checked[:3]) + (" ..." if len(checked) > 3 else "")
    banned = top_checked(counts, mode, banned=True)
    summary = _SUMMARIES[mode].format(pct=pct, checked=shown, banned=_shown(banned))
    severity = _SEVERITY[mode]
    evidence: dict[str, Any] = {
        "mode": mode.value,
        **scope,
        "requests": n,
        "judged_requests": counts.judged,
        "unjudged_requests": counts.unknown,
        "share": share(n, counts.judged),
        "bouncer_checks": checked[:10],
        "crowdsec_bans": banned[:10],
        "examples": examples(counts, mode),
        "bouncer": settings.as_dict(),
    }
    if hop_bans:
        severity = Severity.CRITICAL
        evidence["hop_bans"] = [_decision(d) for d in hop_bans[:5]]
        summary += f"; {hop_bans[0].value} is banned now: everyone behind it is locked out"
    return Finding(
        kind=Kind.BAN_MISMATCH,
        severity=severity,
        target=mode.value,
        summary=summary,
        evidence=evidence,
        fix=fixes.ban_mismatch_fix(mode.value, banned if mode is Mode.FORWARDED else checked),
        key=f"ban_mismatch:{mode.value}",
    )


def unseen_finding(
    reason: str, decisions: Sequence[Decision], total: int, settings: BouncerSettings
) -> Finding:
    """Live decisions the bouncer never sees. ``reason``: ``exempt`` (the value is in
    clientTrustedIPs) or ``unchecked`` (CrowdSec banned it from requests the bouncer judges on
    another address, and the bouncer checked it on no request)."""
    shown = _shown(sorted({d.value for d in decisions}))
    if reason == "exempt":
        summary = (
            f"{total} active ban(s) on addresses in the bouncer's clientTrustedIPs ({shown}): "
            "the bouncer never looks them up"
        )
        severity = Severity.MEDIUM
    else:
        summary = (
            f"{total} active ban(s) on addresses the bouncer never checks ({shown}): it judges "
            "those clients' requests on another address, so the bans do nothing"
        )
        severity = Severity.HIGH
    return Finding(
        kind=Kind.BAN_MISMATCH,
        severity=severity,
        target=f"decisions:{reason}",
        summary=summary,
        evidence={
            "reason": reason,
            "decisions": total,
            "examples": [_decision(d) for d in decisions[:10]],
            "bouncer": settings.as_dict(),
        },
        fix=fixes.ban_mismatch_fix("decisions"),
        key=f"ban_mismatch:decisions:{reason}",
    )
