"""suspected_hop: a public address that carries many clients, told from heavy single clients."""

from __future__ import annotations

from typing import Any

from parsers.records import AccessRecord
from pipeline.core import fixes
from pipeline.core.addresses import Classifier
from pipeline.core.engine import Engine
from pipeline.core.findings import Finding, Kind, Severity, State
from pipeline.core.networks import build_networks
from tests.support.engine import T0, FakeClock, ban, events, feed, make_engine, new, only, rec

HOP = "198.51.100.7"
SITES = [(f"site{i}.example.com", f"site{i}@kubernetes") for i in range(6)]


def minute(
    m: int,
    *,
    heavy: str = HOP,
    heavy_n: int = 40,
    heavy_sites: int = 6,
    xff: bool = False,
    others: int = 60,
    heavy_uas: int = 0,
) -> list[AccessRecord]:
    """One minute: ``others`` requests from 60 distinct public clients over every site, and
    ``heavy_n`` from ``heavy`` over its first ``heavy_sites`` sites, with ``heavy_uas``
    distinct User-Agents (0: the log keeps none)."""
    t = T0 + m * 60
    out = []
    for i in range(others):
        host, router = SITES[i % len(SITES)]
        out.append(rec(f"93.184.{m % 200}.{i % 60 + 1}", t + i * 0.5, host=host, router=router))
    for i in range(heavy_n):
        host, router = SITES[i % heavy_sites]
        behind = f"81.2.{m % 200}.{i % 20 + 1}" if xff else ""
        ua = f"Mozilla/5.0 (client {i % heavy_uas})" if heavy_uas else ""
        out.append(rec(heavy, t + i * 0.5 + 0.25, host=host, router=router, xff=behind, ua=ua))
    out.sort(key=lambda r: r[0])
    return out


def run(minutes: int, **kw: Any) -> list[AccessRecord]:
    return [r for m in range(minutes) for r in minute(m, **kw)]


def replay(
    records: list[AccessRecord], classifier: Classifier | None = None, **cfg: Any
) -> tuple[Engine, FakeClock]:
    engine, clock = make_engine(
        classifier=classifier, clear_recovered=False, blast_scope="span", **cfg
    )
    feed(engine, records)
    engine.finish()
    return engine, clock


def hops(engine: Engine) -> list[Finding]:
    return [f for f in engine.findings.values() if f.kind is Kind.SUSPECTED_HOP]


def test_a_public_address_carrying_every_site_is_a_suspected_hop() -> None:
    engine, _ = replay(run(20))
    f = only(engine, Kind.SUSPECTED_HOP)
    assert f.severity is Severity.HIGH
    assert f.target == HOP
    ev = f.evidence
    assert ev["request_share"] == 0.4
    assert ev["hosts"] == 6
    assert ev["host_share"] == 1.0
    assert 4 <= ev["routers"] <= 6  # a lower bound: two values may share a mask bit
    assert ev["router_share"] == 1.0
    assert ev["lockout"] is False
    assert ev["user_agents"] is None  # the log keeps no User-Agent
    assert ev["first_seen"] == T0
    assert ev["last_seen"] > ev["first_seen"]
    assert f.fix == fixes.suspected_hop_fix(HOP, banned=False)


def test_a_ban_on_a_suspected_hop_is_critical_and_says_who_is_locked_out() -> None:
    engine, _ = replay(run(20))
    engine.apply(new(ban(HOP, 77)))
    f = only(engine, Kind.SUSPECTED_HOP)
    assert f.severity is Severity.CRITICAL
    assert f.evidence["lockout"] is True
    assert f.evidence["decision"]["id"] == 77
    assert "locked out" in f.summary
    assert f"cscli decisions delete --ip {HOP}" in f.fix


def test_a_simulated_ban_or_a_ban_elsewhere_leaves_it_high() -> None:
    engine, _ = replay(run(20))
    engine.apply(new(ban(HOP, 1, simulated=True), ban("93.184.1.1", 2), ban("198.51.100.8", 3)))
    assert only(engine, Kind.SUSPECTED_HOP).severity is Severity.HIGH


def test_a_crawler_on_one_site_is_not_a_hop() -> None:
    engine, _ = replay(run(20, heavy_n=120, heavy_sites=1))
    engine.apply(new(ban(HOP, 5)))
    assert hops(engine) == []


def test_a_monitoring_probe_on_two_sites_is_not_a_hop() -> None:
    engine, _ = replay(run(20, heavy_n=40, heavy_sites=2))
    assert hops(engine) == []


def test_a_small_share_is_not_a_hop() -> None:
    # 10 of 70 requests a minute (14%), though it reaches every site
    engine, _ = replay(run(20, heavy_n=10))
    assert hops(engine) == []


def test_too_little_traffic_says_nothing() -> None:
    engine, _ = replay(run(2, heavy_n=20, others=10))
    assert hops(engine) == []


def test_a_cdn_configured_as_a_load_balancer_is_not_a_suspected_hop() -> None:
    cluster = Classifier(build_networks({"lb_ip": [HOP]}))
    engine, _ = replay(run(20), classifier=cluster)
    assert hops(engine) == []


def test_many_forwarded_clients_behind_one_site_make_a_hop() -> None:
    engine, _ = replay(run(20, heavy_sites=1, xff=True))
    f = only(engine, Kind.SUSPECTED_HOP)
    assert f.evidence["forwarded_clients"] >= 5
    assert f.evidence["hosts"] == 1


def test_live_raises_once_and_clears_when_the_address_calms_down() -> None:
    engine, _ = make_engine()
    for m in range(20):
        feed(engine, minute(m))
    assert [e for e in events(engine) if e[1] is Kind.SUSPECTED_HOP] == [
        (State.RAISED, Kind.SUSPECTED_HOP, HOP)
    ]
    for m in range(20, 40):
        feed(engine, minute(m, heavy_n=0))
    assert (State.CLEARED, Kind.SUSPECTED_HOP, HOP) in events(engine)
    assert hops(engine) == []


def test_live_a_ban_arriving_later_raises_it_to_critical() -> None:
    engine, _ = make_engine()
    for m in range(20):
        feed(engine, minute(m))
    engine.drain_events()
    engine.apply(new(ban(HOP, 9)))
    [e] = [e for e in engine.drain_events() if e.finding.kind is Kind.SUSPECTED_HOP]
    assert e.state is State.UPDATED
    assert e.finding.severity is Severity.CRITICAL


def test_bans_on_finds_decisions_on_the_address_and_on_ranges_covering_it() -> None:
    engine, _ = make_engine()
    engine.apply(
        new(
            ban(HOP, 1),
            ban(HOP, 2, type_="captcha"),
            ban("198.51.100.0/24", 3, scope="Range"),
            ban("198.51.0.0/16", 4, scope="Range", type_="custom-log"),  # not a ban type
            ban("203.0.113.0/24", 5, scope="Range"),
            ban("2001:db8::/32", 6, scope="Range"),
        )
    )
    assert sorted(d.id or 0 for d in engine.bans_on(HOP)) == [1, 2, 3]
    assert [d.id for d in engine.bans_on("198.51.100.9")] == [3]
    assert [d.id for d in engine.bans_on("2001:db8::7")] == [6]
    assert engine.bans_on("192.0.2.1") == []


def test_a_ban_on_a_range_covering_a_suspected_hop_is_critical_with_the_range_fix() -> None:
    engine, _ = replay(run(20))
    engine.apply(new(ban("198.51.100.0/24", 88, scope="Range")))
    f = only(engine, Kind.SUSPECTED_HOP)
    assert f.severity is Severity.CRITICAL
    assert f.evidence["lockout"] is True
    assert f.evidence["decision"]["value"] == "198.51.100.0/24"
    assert "cscli decisions delete --range 198.51.100.0/24" in f.fix
    assert f"--ip {HOP}" not in f.fix


def test_a_hop_with_many_user_agents_is_flagged_and_says_how_many() -> None:
    engine, _ = replay(run(20, heavy_uas=20))
    f = only(engine, Kind.SUSPECTED_HOP)
    assert f.target == HOP
    assert 3 <= f.evidence["user_agents"] <= 20  # a lower bound: two may share a mask bit


def test_a_crawler_on_every_site_with_one_user_agent_is_not_a_hop() -> None:
    """Same share and sites as a hop, but the log keeps User-Agents and it shows one (two):
    one client. Without User-Agents in the log it cannot be told from a hop (next test)."""
    for uas in (1, 2):
        engine, _ = replay(run(20, heavy_uas=uas))
        engine.apply(new(ban(HOP, 5)))
        assert hops(engine) == [], uas


def test_without_user_agents_a_crawler_on_every_site_still_looks_like_a_hop() -> None:
    engine, _ = replay(run(20, heavy_uas=0))
    assert only(engine, Kind.SUSPECTED_HOP).evidence["user_agents"] is None


def test_forwarded_clients_make_a_hop_even_with_one_user_agent() -> None:
    """An app (one User-Agent) behind a proxy that forwards many clients is still a hop."""
    engine, _ = replay(run(20, heavy_uas=1, heavy_sites=1, xff=True))
    assert only(engine, Kind.SUSPECTED_HOP).evidence["forwarded_clients"] >= 5
