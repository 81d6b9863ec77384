"""The audit engine driven by hand: injected clock, synthetic records, decision deltas."""

from __future__ import annotations

import pytest

from parsers.records import AccessRecord, ParseStats
from parsers.traefik import TraefikParser
from pipeline.core import fixes, traffic
from pipeline.core.addresses import AddrClass, Classifier, k3s_defaults, make_network
from pipeline.core.engine import Engine
from pipeline.core.findings import Kind, Severity, State
from pipeline.core.networks import build_networks
from pipeline.core.traffic import CLIENTS_CAP, SET_CAP, Timeline
from tests.support.engine import (
    T0,
    ban,
    deleted,
    events,
    feed,
    make_engine,
    new,
    only,
    rec,
)
from tests.support.paths import CORPUS

CLUSTER = Classifier(build_networks({"node_ip": ["192.168.1.10"], "lb_ip": ["203.0.113.5"]}))


@pytest.mark.parametrize(
    ("value", "cls", "severity"),
    [
        ("10.42.0.7", AddrClass.POD, Severity.CRITICAL),
        ("::ffff:10.42.0.7", AddrClass.POD, Severity.CRITICAL),
        ("127.0.0.1", AddrClass.LOOPBACK, Severity.CRITICAL),
        ("::1", AddrClass.LOOPBACK, Severity.CRITICAL),
        ("192.168.1.10", AddrClass.NODE, Severity.CRITICAL),
        ("203.0.113.5", AddrClass.LOADBALANCER, Severity.CRITICAL),
        ("10.43.0.10", AddrClass.SERVICE, Severity.HIGH),
        ("192.168.1.11", AddrClass.PRIVATE, Severity.HIGH),
        ("100.64.1.1", AddrClass.CGNAT, Severity.HIGH),
        ("172.17.0.1", AddrClass.DOCKER, Severity.HIGH),
        ("169.254.1.1", AddrClass.LINK_LOCAL, Severity.HIGH),
        ("fd00::5", AddrClass.PRIVATE, Severity.HIGH),
    ],
)
def test_internal_ban_severity_by_class(value: str, cls: AddrClass, severity: Severity) -> None:
    engine, clock = make_engine(classifier=CLUSTER)
    engine.apply(new(ban(value, 42)))
    f = only(engine, Kind.INTERNAL_BAN)
    assert f.severity is severity
    assert f.target == value
    assert f.key == "internal_ban:id:42"
    assert f.evidence["class"] == cls.value
    assert f.evidence["decision"]["value"] == value
    assert f.evidence["decision"]["id"] == 42
    assert f.fix == fixes.internal_ban_fix(value, ranged=False)
    assert f"cscli decisions delete --ip {value}" in f.fix
    assert f.evidence["blast_radius"]["requests"] == 0
    assert [(e.state, e.at) for e in engine.drain_events()] == [(State.RAISED, clock.now)]
    assert engine.raised_total == {(Kind.INTERNAL_BAN, severity): 1}


def test_captcha_counts_as_ban_other_types_do_not() -> None:
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.7", 1, type_="captcha")))
    engine.apply(new(ban("10.42.0.8", 2, type_="enforce_mfa")))
    engine.apply(new(ban("10.42.0.9", 3, type_="throttle")))
    engine.apply(new(ban("10.42.0.10", 4, type_="BAN")))
    assert sorted(f.target for f in engine.findings.values()) == ["10.42.0.10", "10.42.0.7"]
    assert len(engine.decisions) == 4


def test_external_and_non_address_bans_raise_nothing() -> None:
    engine, _ = make_engine()
    engine.apply(
        new(
            ban("1.2.3.4", 1),
            ban("2.2.3.0/24", 2, scope="Range"),
            ban("91.241.19.122/32", 3),
            ban("2606:4700::1111", 4),
            ban("FR", 5, scope="Country"),
            ban("AS13335", 6, scope="AS"),
            ban("10.42.0.7", 7, scope="username"),
            ban("garbage", 8),
        )
    )
    assert engine.findings == {}
    assert engine.drain_events() == []
    assert len(engine.decisions) == 8


def test_simulated_internal_ban_is_medium() -> None:
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.7", simulated=True)))
    assert only(engine, Kind.INTERNAL_BAN).severity is Severity.MEDIUM


# -- blast radius -------------------------------------------------------------------------------


def masked_traffic() -> list[AccessRecord]:
    out = [
        rec(
            "10.42.0.7", T0 + i * 0.5, host=f"{'ab'[i % 2]}.example.com", router=f"r{i % 2 + 1}@k8s"
        )
        for i in range(90)
    ]
    out += [
        rec(f"203.0.113.{i + 100}", T0 + 45 + i, host="c.example.com", router="r3@k8s")
        for i in range(10)
    ]
    return out


def test_blast_radius_shares() -> None:
    engine, _ = make_engine()
    feed(engine, masked_traffic())
    engine.apply(new(ban("10.42.0.7")))
    f = only(engine, Kind.INTERNAL_BAN)
    blast = f.evidence["blast_radius"]
    assert blast == {
        "scope": "window",
        "window_s": 900,
        "requests": 90,
        "total_requests": 100,
        "request_share": 0.9,
        "hosts": 2,
        "host_share": 0.6667,
        "routers": 2,
        "router_share": 0.6667,
        "addresses": ["10.42.0.7"],
    }
    assert "90% of recent requests" in f.summary


def test_blast_radius_span_scope_counts_whole_input() -> None:
    engine, _ = make_engine(blast_scope="span")
    feed(engine, [rec("10.42.0.7", T0 + i * 60) for i in range(30)])  # 30 minutes > window
    feed(engine, [rec("1.1.1.1", T0 + 1800 + i) for i in range(10)])
    engine.apply(new(ban("10.42.0.7")))
    blast = only(engine, Kind.INTERNAL_BAN).evidence["blast_radius"]
    assert (blast["scope"], blast["window_s"]) == ("span", None)
    assert (blast["requests"], blast["total_requests"]) == (30, 40)
    assert blast["request_share"] == 0.75


def test_blast_radius_window_forgets_old_traffic() -> None:
    engine, _ = make_engine()
    feed(engine, [rec("10.42.0.7", T0 + i) for i in range(50)])
    feed(engine, [rec("1.1.1.1", T0 + 2000 + i) for i in range(10)])
    engine.apply(new(ban("10.42.0.7")))
    blast = only(engine, Kind.INTERNAL_BAN).evidence["blast_radius"]
    assert (blast["requests"], blast["total_requests"]) == (0, 10)


def test_range_decision_sums_clients_inside() -> None:
    engine, _ = make_engine()
    records = [rec("10.42.0.7", T0 + i * 0.1) for i in range(50)]
    records += [rec("::ffff:10.42.0.8", T0 + 5 + i * 0.1) for i in range(30)]
    records += [rec("10.42.1.9", T0 + 8 + i * 0.1) for i in range(10)]
    records += [rec("198.51.100.1", T0 + 9 + i * 0.1) for i in range(10)]
    feed(engine, records)
    engine.apply(new(ban("10.42.0.0/24", 9, scope="Range")))
    f = only(engine, Kind.INTERNAL_BAN)
    assert f.severity is Severity.CRITICAL
    assert f.evidence["class"] == "pod"
    blast = f.evidence["blast_radius"]
    assert blast["requests"] == 80
    assert blast["request_share"] == 0.8
    assert blast["addresses"] == ["10.42.0.7", "::ffff:10.42.0.8"]
    assert "--range 10.42.0.0/24" in f.fix


def test_ip_scope_with_cidr_value_and_mapped_matching() -> None:
    engine, _ = make_engine()
    feed(engine, [rec("::ffff:10.42.0.7", T0 + i) for i in range(20)] + [rec("1.1.1.1", T0 + 30)])
    engine.apply(new(ban("10.42.0.7/32", 1), ban("10.42.0.7", 2)))
    for f in engine.findings.values():
        assert f.evidence["blast_radius"]["requests"] == 20
        assert f.evidence["blast_radius"]["addresses"] == ["::ffff:10.42.0.7"]
    # The fix deletes a CIDR-valued Ip decision as the range it is, as remediation does.
    fixes_by_target = {f.target: f.fix for f in engine.findings.values()}
    assert "--range 10.42.0.7/32" in fixes_by_target["10.42.0.7/32"]
    assert "--ip 10.42.0.7" in fixes_by_target["10.42.0.7"]


def test_wide_range_swallowing_pod_cidr_is_internal() -> None:
    engine, _ = make_engine()
    feed(
        engine,
        [
            rec("10.42.0.7", T0),
            rec("10.43.0.9", T0 + 1),
            rec("10.1.2.3", T0 + 2),
            rec("8.8.8.8", T0 + 3),
        ],
    )
    engine.apply(new(ban("10.0.0.0/8", 1, scope="Range"), ban("0.0.0.0/0", 2, scope="Range")))
    by_target = {f.target: f for f in engine.findings.values()}
    assert by_target["10.0.0.0/8"].evidence["class"] == "pod"
    assert by_target["10.0.0.0/8"].evidence["blast_radius"]["requests"] == 3
    assert by_target["0.0.0.0/0"].severity is Severity.CRITICAL
    # Only internal clients are tracked, so a /0 counts the internal ones it holds.
    assert by_target["0.0.0.0/0"].evidence["blast_radius"]["requests"] == 3


# -- decision lifecycle -------------------------------------------------------------------------


def test_deleted_decision_clears_finding() -> None:
    engine, clock = make_engine()
    engine.apply(new(ban("10.42.0.7", 5)))
    clock.advance(10)
    engine.apply(deleted(ban("10.42.0.7", 5)))
    evs = engine.drain_events()
    assert [(e.state, e.at) for e in evs] == [
        (State.RAISED, clock.now - 10),
        (State.CLEARED, clock.now),
    ]
    assert evs[1].finding.key == "internal_ban:id:5"
    assert engine.findings == {}
    assert engine.decisions == {}


def test_deleting_unknown_decision_is_a_no_op() -> None:
    engine, _ = make_engine()
    engine.apply(deleted(ban("10.42.0.7", 5)))
    assert engine.drain_events() == []


def test_expired_duration_in_new_is_treated_as_deleted() -> None:
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.7", 5)))
    engine.apply(new(ban("10.42.0.7", 5, duration_s=-68030752.8)))
    assert [s for s, _, _ in events(engine)] == [State.RAISED, State.CLEARED]
    assert engine.decisions == {}
    engine.apply(new(ban("10.42.0.9", 6, duration_s=0.0)))
    assert engine.decisions == {}
    assert engine.drain_events() == []


def test_decisions_without_id_keyed_by_scope_value_type_origin() -> None:
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.7", None)))
    assert list(engine.decisions) == ["Ip:10.42.0.7:ban:crowdsec"]
    engine.apply(deleted(ban("10.42.0.7", None)))
    assert engine.findings == {}


def test_startup_delta_replaces_state() -> None:
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.1", 1), ban("10.42.0.2", 2), ban("1.2.3.4", 3)))
    engine.drain_events()
    engine.apply(new(ban("10.42.0.2", 2), ban("10.42.0.3", 4), startup=True))
    assert sorted(engine.decisions) == ["id:2", "id:4"]
    assert sorted((s.value, t) for s, _, t in events(engine)) == [
        ("cleared", "10.42.0.1"),
        ("raised", "10.42.0.3"),
    ]


def test_startup_delta_with_only_expired_clears_everything() -> None:
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.1", 1)))
    engine.apply(new(ban("10.42.0.1", 1, duration_s=-5.0), startup=True))
    assert engine.decisions == {}
    assert engine.findings == {}


def test_decision_expires_by_clock_on_tick() -> None:
    engine, clock = make_engine()
    engine.apply(new(ban("10.42.0.7", 1, duration_s=60.0), ban("10.42.0.8", 2, duration_s=None)))
    engine.drain_events()
    clock.advance(59.5)
    engine.tick()
    assert sorted(engine.decisions) == ["id:1", "id:2"]
    assert engine.drain_events() == []
    clock.advance(0.5)
    engine.tick()
    assert list(engine.decisions) == ["id:2"]  # no duration: never expires by clock
    evs = engine.drain_events()
    assert [(e.state, e.finding.target, e.at) for e in evs] == [
        (State.CLEARED, "10.42.0.7", clock.now)
    ]


def test_reclassify_after_discovery() -> None:
    classifier = Classifier(k3s_defaults())
    engine, _ = make_engine(classifier=classifier)
    engine.apply(new(ban("203.0.113.5", 1)))
    assert engine.findings == {}
    classifier.replace_networks(
        [*k3s_defaults(), make_network("203.0.113.5", AddrClass.LOADBALANCER, "k8s")]
    )
    engine.reclassify()
    f = only(engine, Kind.INTERNAL_BAN)
    assert (f.severity, f.evidence["class"], f.evidence["provenance"]) == (
        Severity.CRITICAL,
        "loadbalancer",
        "k8s",
    )
    classifier.replace_networks(k3s_defaults())
    engine.reclassify()
    assert engine.findings == {}


def test_events_raised_updated_cleared_in_order() -> None:
    engine, clock = make_engine()
    engine.apply(new(ban("10.42.0.7", 1)))
    t_raise = clock.now
    clock.advance(30)
    feed(engine, masked_traffic())
    engine.tick()  # blast radius changed the summary; masking seen
    t_update = clock.now
    clock.advance(30)
    engine.apply(deleted(ban("10.42.0.7", 1)))
    evs = engine.drain_events()
    assert [(e.state, e.finding.kind, e.at) for e in evs] == [
        (State.RAISED, Kind.INTERNAL_BAN, t_raise),
        (State.RAISED, Kind.MASKED_CLIENT_IP, t_update),
        (State.UPDATED, Kind.INTERNAL_BAN, t_update),
        (State.CLEARED, Kind.INTERNAL_BAN, clock.now),
    ]
    assert "an internal pod address" in evs[0].finding.summary
    assert "90% of recent requests" in evs[2].finding.summary
    assert evs[3].as_dict()["state"] == "cleared"
    # Same state again: evidence refreshed silently, no event.
    engine.tick()
    assert engine.drain_events() == []
    assert engine.raised_total == {
        (Kind.INTERNAL_BAN, Severity.CRITICAL): 1,
        (Kind.MASKED_CLIENT_IP, Severity.HIGH): 1,
    }


# -- masked client IP ---------------------------------------------------------------------------


def mixed(
    n_internal: int, n_public: int, t: float = T0, hop: str = "10.42.0.9"
) -> list[AccessRecord]:
    out = [rec(hop, t + i * 0.1) for i in range(n_internal)]
    out += [rec(f"198.51.100.{i % 250 + 1}", t + 10 + i * 0.1) for i in range(n_public)]
    return out


def test_masked_raised_at_share_and_min_requests() -> None:
    engine, _ = make_engine()
    feed(engine, mixed(30, 10))
    engine.tick()
    f = only(engine, Kind.MASKED_CLIENT_IP)
    assert f.severity is Severity.HIGH
    assert f.target == "websecure"
    assert f.key == "masked_client_ip:websecure"
    ev = f.evidence
    assert (ev["requests"], ev["internal_requests"], ev["internal_share"]) == (40, 30, 0.75)
    assert ev["internal_hops"] == [{"address": "10.42.0.9", "requests": 30, "class": "pod"}]
    assert ev["distinct_clients"] == 11
    assert ev["headers_kept"] is False
    assert ev["real_client_visible"] == 0
    assert ev["real_client_example"] is None
    assert ev["window_s"] == 900
    assert f.fix == fixes.masked_fix(False, [])
    assert fixes.KEEP_HEADERS in f.fix
    assert "75% of requests on entrypoint websecure" in f.summary


def test_masked_boundary_exactly_half_of_thirty() -> None:
    engine, _ = make_engine()
    feed(engine, mixed(15, 15))
    engine.tick()
    assert only(engine, Kind.MASKED_CLIENT_IP).evidence["internal_share"] == 0.5


def test_masked_not_raised_below_min_requests() -> None:
    engine, _ = make_engine()
    feed(engine, mixed(29, 0))
    engine.tick()
    assert engine.findings == {}


def test_masked_not_raised_below_share() -> None:
    engine, _ = make_engine()
    feed(engine, mixed(14, 16))
    engine.tick()
    assert engine.findings == {}


def test_masked_evaluated_when_a_data_bucket_closes() -> None:
    engine, _ = make_engine()
    feed(engine, mixed(40, 0))
    assert engine.findings == {}  # bucket still open
    feed(engine, [rec("10.42.0.9", T0 + 61)])
    assert only(engine, Kind.MASKED_CLIENT_IP).evidence["requests"] >= 40


def test_masked_per_entrypoint() -> None:
    engine, _ = make_engine()
    feed(engine, mixed(40, 0) + [rec("1.1.1.1", T0 + 20 + i, ep="web") for i in range(40)])
    engine.tick()
    assert only(engine, Kind.MASKED_CLIENT_IP).target == "websecure"


def test_masked_cleared_below_clear_share_in_live_mode() -> None:
    engine, _ = make_engine()
    feed(engine, mixed(30, 10))
    engine.tick()
    engine.drain_events()
    feed(engine, mixed(0, 35, t=T0 + 20))  # 30/75 = 0.4: between clear and raise share
    engine.tick()
    assert Kind.MASKED_CLIENT_IP in {f.kind for f in engine.findings.values()}
    assert engine.drain_events() == []
    feed(engine, mixed(0, 30, t=T0 + 30))  # 30/105 < 0.3
    engine.tick()
    assert engine.findings == {}
    assert events(engine) == [(State.CLEARED, Kind.MASKED_CLIENT_IP, "websecure")]


def test_masked_cleared_when_window_slides_past_it() -> None:
    engine, _ = make_engine()
    feed(engine, mixed(40, 0))
    engine.tick()
    feed(engine, mixed(0, 40, t=T0 + 2000))
    engine.tick()
    assert engine.findings == {}


def test_masked_kept_with_peak_evidence_in_replay_mode() -> None:
    engine, _ = make_engine(clear_recovered=False, blast_scope="span")
    feed(engine, mixed(30, 10))
    engine.tick()
    feed(engine, mixed(0, 100, t=T0 + 20))
    feed(engine, mixed(0, 100, t=T0 + 2000))
    engine.finish()
    f = only(engine, Kind.MASKED_CLIENT_IP)
    assert f.evidence["internal_share"] == 0.75
    assert f.evidence["requests"] == 40
    assert [s for s, _, _ in events(engine)] == [State.RAISED]


def test_masked_replay_mode_moves_to_a_higher_peak() -> None:
    engine, _ = make_engine(clear_recovered=False)
    feed(engine, mixed(20, 20))
    engine.tick()
    feed(engine, mixed(60, 0, t=T0 + 30))
    engine.finish()
    assert only(engine, Kind.MASKED_CLIENT_IP).evidence["internal_share"] == 0.8


@pytest.mark.parametrize("separate_batches", [False, True])
def test_masked_replay_sees_traffic_before_a_gap(separate_batches: bool) -> None:
    """Data-driven evaluation judges a bucket before the window slides past it, even when the
    next data comes more than window_s later (a quiet night, concatenated files)."""
    engine, _ = make_engine(clear_recovered=False, blast_scope="span")
    before, after = mixed(40, 0), mixed(0, 40, t=T0 + 3600)
    if separate_batches:
        feed(engine, before)
        feed(engine, after)
    else:
        feed(engine, before + after)
    engine.finish()
    assert only(engine, Kind.MASKED_CLIENT_IP).evidence["internal_share"] == 1.0


def test_masked_replay_without_gap_is_seen() -> None:
    engine, _ = make_engine(clear_recovered=False, blast_scope="span")
    feed(engine, mixed(40, 0) + mixed(0, 40, t=T0 + 600))
    engine.finish()
    # Judged when the first bucket closed (1.0) or on the whole window at the end (0.5).
    assert only(engine, Kind.MASKED_CLIENT_IP).evidence["internal_share"] >= 0.5


def test_masked_hops_count_only_their_entrypoint() -> None:
    engine, _ = make_engine()
    records = [rec("10.42.0.9", T0 + i * 0.1) for i in range(40)]
    records += [rec("10.42.0.9", T0 + 10 + i * 0.1, ep="web") for i in range(10)]
    records += [rec("198.51.100.7", T0 + 20 + i * 0.1, ep="web") for i in range(20)]
    feed(engine, records)
    engine.tick()
    f = only(engine, Kind.MASKED_CLIENT_IP)
    assert f.target == "websecure"
    assert f.evidence["internal_requests"] == 40
    assert f.evidence["internal_hops"] == [{"address": "10.42.0.9", "requests": 40, "class": "pod"}]


def test_real_client_visible_in_kept_xff() -> None:
    """A proxy hop adds X-Forwarded-For to every request: trusting exactly it is the advice."""
    engine, _ = make_engine()
    records = [
        rec("10.42.0.9", T0 + i, ch=f"203.0.113.{i + 1}, 10.42.0.9", xff=f"203.0.113.{i + 1}")
        for i in range(40)
    ]
    feed(engine, records)
    engine.tick()
    f = only(engine, Kind.MASKED_CLIENT_IP)
    assert f.evidence["real_client_visible"] == 40
    assert f.evidence["real_client_example"] == "203.0.113.1"
    assert f.evidence["headers_kept"] is True
    assert f.evidence["forwarded_share"] == 1.0
    assert f.evidence["forwarding_hops"] == ["10.42.0.9"]
    assert "the hop adds X-Forwarded-For/X-Real-Ip: the real client is visible" in f.summary
    assert f.fix == fixes.masked_fix(True, ["10.42.0.9"])
    assert "trust exactly those addresses in `forwardedHeaders.trustedIPs`" in f.fix


@pytest.mark.parametrize("forged", [1, 20])
def test_client_supplied_xff_behind_a_layer4_hop_is_never_trusted(forged: int) -> None:
    """Issue 12: one request (or half of them) with a client-written X-Forwarded-For behind a
    masking layer-4 hop must not turn into 'trust the hop', which would let any client choose
    its address for CrowdSec."""
    engine, _ = make_engine()
    records = [
        rec("10.42.0.9", T0 + i * 0.1, ch="203.0.113.77, 10.42.0.9", xff="203.0.113.77")
        for i in range(forged)
    ]
    records += [rec("10.42.0.9", T0 + 5 + i * 0.1) for i in range(40 - forged)]
    feed(engine, records)
    engine.tick()
    f = only(engine, Kind.MASKED_CLIENT_IP)
    assert f.evidence["forwarding_hops"] == []
    assert f.evidence["forwarded_share"] == round(forged / 40, 4)
    assert "show the real client" not in f.summary
    assert "written by clients, not added by the hop" in f.summary
    assert "Do not add the hop to `forwardedHeaders.trustedIPs`" in f.fix
    assert "trust exactly" not in f.fix


def test_real_client_visible_in_kept_real_ip() -> None:
    engine, _ = make_engine()
    records = [rec("10.42.0.9", T0 + i * 0.1, rip="2001:db8:beef::7") for i in range(5)]
    records += [rec("10.42.0.9", T0 + 1 + i * 0.1) for i in range(35)]
    feed(engine, records)
    engine.tick()
    ev = only(engine, Kind.MASKED_CLIENT_IP).evidence
    assert (ev["real_client_visible"], ev["real_client_example"]) == (5, "2001:db8:beef::7")


def test_internal_real_ip_header_is_kept_but_not_visible() -> None:
    engine, _ = make_engine()
    feed(engine, [rec("10.42.0.9", T0 + i * 0.1, rip="10.42.0.9") for i in range(40)])
    engine.tick()
    f = only(engine, Kind.MASKED_CLIENT_IP)
    assert (f.evidence["headers_kept"], f.evidence["real_client_visible"]) == (True, 0)
    assert fixes.KEEP_HEADERS not in f.fix


# -- log format ---------------------------------------------------------------------------------


def _clf_stats_and_records(source_lines: list[bytes]) -> tuple[list[AccessRecord], ParseStats]:
    stats = ParseStats()
    return TraefikParser().parse(source_lines, stats), stats


def test_log_format_finding_on_common_lines() -> None:
    lines = (CORPUS / "traefik-clf.log").read_bytes().splitlines()
    records, stats = _clf_stats_and_records(lines)
    engine, _ = make_engine()
    engine.ingest(records, stats, "/var/log/traefik/access.log")
    f = only(engine, Kind.LOG_FORMAT)
    assert f.severity is Severity.MEDIUM
    assert f.target == "/var/log/traefik/access.log"
    assert f.evidence == {"common_lines": 28, "json_lines": 0, "common_share": 1.0}
    assert f.fix == fixes.JSON_FORMAT
    assert f.summary == (
        "access lines from /var/log/traefik/access.log are in common log format, not JSON"
    )


def test_log_format_share_with_json_and_common_mixed() -> None:
    clf = (CORPUS / "traefik-clf.log").read_bytes().splitlines()[:4]
    js = (CORPUS / "traefik-json-v3.jsonl").read_bytes().splitlines()
    records, stats = _clf_stats_and_records(js + clf)
    engine, _ = make_engine()
    engine.ingest(records, stats, "s")
    assert only(engine, Kind.LOG_FORMAT).evidence["common_share"] == 0.5


def test_no_log_format_finding_for_json_or_when_not_expected() -> None:
    js = (CORPUS / "traefik-json-v3.jsonl").read_bytes().splitlines()
    records, stats = _clf_stats_and_records(js)
    engine, _ = make_engine()
    engine.ingest(records, stats, "s")
    assert engine.findings == {}
    clf = (CORPUS / "traefik-clf.log").read_bytes().splitlines()
    records, stats = _clf_stats_and_records(clf)
    engine2, _ = make_engine(expect_json=False)
    engine2.ingest(records, stats, "s")
    assert engine2.findings == {}


# -- memory caps ----------------------------------------------------------------------------------

N_DISTINCT = 200_000


def _distinct(prefix: str, i: int) -> str:
    return f"{prefix}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _feed_distinct(engine: Engine, prefix: str, n: int = N_DISTINCT) -> None:
    batch: list[AccessRecord] = []
    for i in range(n):
        client = _distinct(prefix, i)
        batch.append(rec(client, T0 + i * 0.01, host=f"h{i}.example.com", router=f"r{i}"))
        if len(batch) == 4096:
            feed(engine, batch)
            batch = []
    feed(engine, batch)


def test_memory_caps_public_clients() -> None:
    timeline = Timeline(900, 60)
    engine, _ = make_engine(timeline=timeline)
    _feed_distinct(engine, "11")  # 11.0.0.0/8 is public
    whole = engine.traffic.whole()
    assert whole.total == N_DISTINCT
    assert len(whole.clients) <= CLIENTS_CAP
    assert len(timeline.span.clients) <= CLIENTS_CAP
    assert all(len(s) <= SET_CAP for s in whole.ep_clients.values())
    assert len(whole.hosts) <= SET_CAP
    assert len(whole.routers) <= SET_CAP
    assert len(engine.classifier._cache) <= 65536
    window = engine.traffic.window(full=True)
    assert len(window.clients) <= CLIENTS_CAP


def test_memory_caps_internal_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct internal addresses (a LAN of 10.x clients, a pod-to-pod scan) are capped too."""
    # A small cap keeps this fast; the code's own cap is checked to exist and be finite.
    monkeypatch.setattr(traffic, "INTERNAL_CAP", 1000, raising=False)
    n = 20_000
    timeline = Timeline(900, 60)
    engine, _ = make_engine(timeline=timeline)
    _feed_distinct(engine, "10", n)  # all RFC 1918: internal
    whole = engine.traffic.whole()
    assert whole.total == n
    assert whole.ep_internal == {"websecure": n}  # still counted as internal traffic
    assert len(timeline.span.internal) <= 1000
    assert len(whole.internal) <= 1000
    assert len(engine.traffic.window(full=True).internal) <= 1000
    monkeypatch.undo()
    assert 0 < traffic.INTERNAL_CAP <= 1 << 20


def test_findings_by_kind_follow_every_change_of_the_findings() -> None:
    """The index the closes read (``_kind``) holds exactly the active findings of each kind,
    after raising, updating, a key that changes kind (an outside checker's), and clearing."""
    from pipeline.core.findings import Finding

    engine, _ = make_engine()

    def f(kind: Kind, target: str) -> Finding:
        return Finding(kind, Severity.HIGH, target, f"{kind.value} {target}", {}, "fix", key=target)

    def index() -> dict[str, Kind]:
        filed = [(key, kind) for kind in Kind for key in engine._kind(kind)]
        assert len(filed) == len({key for key, _ in filed})  # each key under one kind
        return dict(filed)

    def truth() -> dict[str, Kind]:
        return {key: found.kind for key, found in engine.findings.items()}

    engine.replace_findings("g", [f(Kind.LOG_FORMAT, "a"), f(Kind.SUSPECTED_HOP, "b")])
    assert index() == truth() == {"g:a": Kind.LOG_FORMAT, "g:b": Kind.SUSPECTED_HOP}
    engine.replace_findings("g", [f(Kind.MASKED_CLIENT_IP, "a"), f(Kind.SUSPECTED_HOP, "b")])
    assert index() == truth() == {"g:a": Kind.MASKED_CLIENT_IP, "g:b": Kind.SUSPECTED_HOP}
    assert not engine._kind(Kind.LOG_FORMAT)  # left its old kind's index
    engine.replace_findings("g", [f(Kind.MASKED_CLIENT_IP, "a")])
    assert index() == truth() == {"g:a": Kind.MASKED_CLIENT_IP}
