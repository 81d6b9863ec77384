"""CrowdSec's Prometheus exposition text to the few series its health checks need.

Kept apart from the checks (``pipeline.crowdsec.health``) because it is a format, not a policy:
it reads any CrowdSec version's ``/metrics`` and ignores what it does not know, so the checks
can be tested on captured text alone.

Whitelist parsers show up in two ways. CrowdSec >= 1.6.1 counts them in ``cs_node_wl_hits_total``
(events a whitelist node checked) and ``cs_node_wl_hits_ok_total`` (events it whitelisted), both
labelled with the node's ``name`` and ``reason``. Every version also counts a whitelist node in
``cs_node_hits_total`` like any other node, where only its name tells it apart (the hub's is
``crowdsecurity/whitelists``); before 1.6.1 that is all there is: it says the node ran, not what
it whitelisted. Whitelisted events are dropped before the buckets, so they never reach
``cs_bucket_poured_total``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

K = TypeVar("K", str, tuple[str, str])


@dataclass(frozen=True, slots=True)
class CrowdSecMetrics:
    """The few series the checks need, summed per source / scenario / bouncer."""

    parser_ok: Mapping[str, float] = field(default_factory=dict)  # by acquisition source
    parser_ko: Mapping[str, float] = field(default_factory=dict)
    traefik_ok: Mapping[str, float] = field(default_factory=dict)  # traefik parser node, by source
    traefik_ko: Mapping[str, float] = field(default_factory=dict)
    overflowed: Mapping[str, float] = field(default_factory=dict)  # by scenario
    active_decisions: float | None = None  # None: this endpoint has no LAPI metrics
    bouncer_requests: Mapping[str, float] = field(default_factory=dict)  # by bouncer name
    version: str = ""
    crowdsec: bool = False  # any cs_* series at all
    # Events poured into a scenario's buckets, by (source, scenario).
    poured: Mapping[tuple[str, str], float] = field(default_factory=dict)
    # Whitelist nodes, by (source, node name): events checked and events whitelisted
    # (CrowdSec >= 1.6.1), and, any version, the hits of nodes whose name says "whitelist".
    wl_checked: Mapping[tuple[str, str], float] = field(default_factory=dict)
    wl_whitelisted: Mapping[tuple[str, str], float] = field(default_factory=dict)
    wl_node_hits: Mapping[tuple[str, str], float] = field(default_factory=dict)
    wl_reasons: Mapping[str, str] = field(default_factory=dict)  # node name -> its reason

    @property
    def overflow_total(self) -> float:
        return sum(self.overflowed.values())

    @property
    def wl_counted(self) -> bool:
        """This CrowdSec counts what its whitelists whitelist (>= 1.6.1, some node ran)."""
        return bool(self.wl_checked)

    def whitelist_nodes(self, sources: Iterable[str] | None = None) -> set[str]:
        """Whitelist nodes that checked events (of ``sources`` when given)."""
        wanted = None if sources is None else set(sources)
        return {
            node
            for series in (self.wl_checked, self.wl_node_hits)
            for (source, node), n in series.items()
            if n > 0 and (wanted is None or source in wanted)
        }

    def counters(self) -> dict[tuple[str, str], float]:
        """Every monotonic value by series and key, to notice a CrowdSec restart."""
        out: dict[tuple[str, str], float] = {}
        for series, values in (
            ("parser_ok", self.parser_ok),
            ("parser_ko", self.parser_ko),
            ("traefik_ok", self.traefik_ok),
            ("traefik_ko", self.traefik_ko),
            ("overflowed", self.overflowed),
        ):
            for key, value in values.items():
                out[(series, key)] = value
        for series, pairs in (
            ("poured", self.poured),
            ("wl_checked", self.wl_checked),
            ("wl_whitelisted", self.wl_whitelisted),
            ("wl_node_hits", self.wl_node_hits),
        ):
            for (source, name), value in pairs.items():
                out[(series, f"{source}\x00{name}")] = value
        return out

    def restarted_since(self, earlier: CrowdSecMetrics) -> bool:
        """A counter went down or vanished: CrowdSec restarted and began again at zero."""
        now = self.counters()
        return any(now.get(k, -1.0) < v for k, v in earlier.counters().items())


def _is_traefik_node(name: str) -> bool:
    # The parser's own node counts one hit per line; its "child-" nodes count per-pattern tries.
    return "traefik" in name and not name.startswith("child-")


def _is_whitelist_node(name: str) -> bool:
    # Before 1.6.1 a whitelist node is told apart by its name only: the hub's
    # crowdsecurity/whitelists, and custom ones that keep the word (as `auditor allowlist`'s does).
    low = name.lower()
    return not low.startswith("child-") and ("whitelist" in low or "allowlist" in low)


def _add(target: dict[K, float], key: K, value: float) -> None:
    target[key] = target.get(key, 0.0) + value


def parse_metrics(text: str) -> CrowdSecMetrics:
    """Read CrowdSec's exposition text (any version; unknown series are ignored).

    Text that is not the Prometheus format raises ``ValueError``: the caller reports the
    endpoint as unusable rather than guessing.
    """
    parser_ok: dict[str, float] = {}
    parser_ko: dict[str, float] = {}
    traefik_ok: dict[str, float] = {}
    traefik_ko: dict[str, float] = {}
    overflowed: dict[str, float] = {}
    bouncers: dict[str, float] = {}
    poured: dict[tuple[str, str], float] = {}
    wl_checked: dict[tuple[str, str], float] = {}
    wl_whitelisted: dict[tuple[str, str], float] = {}
    wl_node_hits: dict[tuple[str, str], float] = {}
    wl_reasons: dict[str, str] = {}
    active: float | None = None
    lapi = False
    version = ""
    crowdsec = False
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if not name.startswith("cs_"):
                continue
            crowdsec = True
            source = labels.get("source", "")
            node = labels.get("name", "")
            if name in ("cs_node_wl_hits_total", "cs_node_wl_hits_ok_total"):
                into = wl_checked if name == "cs_node_wl_hits_total" else wl_whitelisted
                _add(into, (source, node), value)
                wl_reasons.setdefault(node, labels.get("reason", ""))
            elif name == "cs_node_hits_total" and _is_whitelist_node(node):
                _add(wl_node_hits, (source, node), value)
            elif name == "cs_bucket_poured_total":
                _add(poured, (source, node), value)
            if name == "cs_parser_hits_ok_total":
                _add(parser_ok, source, value)
            elif name == "cs_parser_hits_ko_total":
                _add(parser_ko, source, value)
            elif name == "cs_node_hits_ok_total" and _is_traefik_node(labels.get("name", "")):
                _add(traefik_ok, source, value)
            elif name == "cs_node_hits_ko_total" and _is_traefik_node(labels.get("name", "")):
                _add(traefik_ko, source, value)
            elif name == "cs_bucket_overflowed_total":
                _add(overflowed, labels.get("name", ""), value)
            elif name == "cs_active_decisions":
                active = (active or 0.0) + value
            elif name == "cs_lapi_bouncer_requests_total":
                _add(bouncers, labels.get("bouncer", ""), value)
            elif name == "cs_info":
                version = labels.get("version", "")
            if name.startswith("cs_lapi_"):
                lapi = True
    if active is None and lapi:
        active = 0.0  # the LAPI is here and exports no decision gauge: there are none
    return CrowdSecMetrics(
        parser_ok=parser_ok,
        parser_ko=parser_ko,
        traefik_ok=traefik_ok,
        traefik_ko=traefik_ko,
        overflowed=overflowed,
        active_decisions=active,
        bouncer_requests=bouncers,
        version=version,
        crowdsec=crowdsec,
        poured=poured,
        wl_checked=wl_checked,
        wl_whitelisted=wl_whitelisted,
        wl_node_hits=wl_node_hits,
        wl_reasons=wl_reasons,
    )
