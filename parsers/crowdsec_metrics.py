"""CrowdSec's Prometheus exposition text to the few series its health checks need.

Kept apart from the checks (``pipeline.crowdsec.health``) because it is a format, not a policy:
it reads any CrowdSec version's ``/metrics`` and ignores what it does not know, so the checks
can be tested on captured text alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


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

    @property
    def overflow_total(self) -> float:
        return sum(self.overflowed.values())

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
        return out

    def restarted_since(self, earlier: CrowdSecMetrics) -> bool:
        """A counter went down or vanished: CrowdSec restarted and began again at zero."""
        now = self.counters()
        return any(now.get(k, -1.0) < v for k, v in earlier.counters().items())


def _is_traefik_node(name: str) -> bool:
    # The parser's own node counts one hit per line; its "child-" nodes count per-pattern tries.
    return "traefik" in name and not name.startswith("child-")


def _add(target: dict[str, float], key: str, value: float) -> None:
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
    )
