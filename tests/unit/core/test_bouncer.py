"""ban_mismatch: the address the bouncer plugin checks against the one CrowdSec bans."""

from __future__ import annotations

from typing import Any

import pytest

from parsers import records as R
from parsers.records import AccessRecord, ParseStats
from parsers.traefik import TraefikParser
from pipeline.core import bouncer
from pipeline.core.bouncer import (
    BouncerModel,
    BouncerSettings,
    MismatchTally,
    Mode,
    SettingsError,
    plugin_block,
    settings_from_block,
    settings_from_text,
    with_overrides,
)
from pipeline.core.engine import Engine
from pipeline.core.findings import Finding, Kind, Severity, State
from tests.support.engine import T0, ban, events, feed, make_engine, new
from tests.support.paths import ROOT

CDN = ["104.16.0.1", "104.16.0.2", "104.16.0.3"]
CDN_RANGE = "104.16.0.0/13"
SVCLB = "10.42.0.9"


def req(
    banned: str,
    peer: str,
    ts: float = T0,
    *,
    client_host: str | None = None,
    xff: str = "",
    rip: str = "",
) -> AccessRecord:
    """A record as the parser writes it: ``banned`` is CrowdSec's address (last ClientHost
    element), ``peer`` the TCP peer's host."""
    out: list[object] = [None] * 12
    out[R.TS], out[R.ENTRYPOINT], out[R.CLIENT] = ts, "websecure", banned
    out[R.HOST], out[R.ROUTER] = "app.example.com", "app@kubernetes"
    out[R.CLIENT_HOST_RAW] = client_host if client_host is not None else (xff or peer)
    out[R.PEER] = f"{peer}:{40000 + int(ts) % 1000}"
    out[R.STATUS], out[R.XFF], out[R.REAL_IP] = 200, xff, rip
    out[R.USER_AGENT], out[R.DURATION_NS] = "curl/8", 1_000_000
    return tuple(out)  # type: ignore[return-value]


def cdn_chain(n: int, t0: float = T0, step: float = 1.0) -> list[AccessRecord]:
    """client -> CDN edge -> front proxy (appends) -> servicelb -> Traefik: X-Forwarded-For is
    ``client, edge``; CrowdSec bans the edge."""
    out = []
    for i in range(n):
        client, edge = f"81.2.{i % 50}.{i % 200 + 1}", CDN[i % len(CDN)]
        out.append(req(edge, SVCLB, t0 + i * step, xff=f"{client}, {edge}"))
    return out


def direct(n: int, t0: float = T0, step: float = 1.0) -> list[AccessRecord]:
    """Clients straight to Traefik (no header): both sides agree on the peer."""
    return [
        req(f"93.184.0.{i % 200 + 1}", f"93.184.0.{i % 200 + 1}", t0 + i * step) for i in range(n)
    ]


def replay(records: list[AccessRecord], settings: BouncerSettings | None, **kw: Any) -> Engine:
    engine, _ = make_engine(clear_recovered=False, blast_scope="span", bouncer=settings, **kw)
    for d in kw.pop("_decisions", ()):
        engine.apply(new(d))
    feed(engine, records)
    engine.finish()
    return engine


def mismatches(engine: Engine) -> dict[str, Finding]:
    return {f.target: f for f in engine.findings.values() if f.kind is Kind.BAN_MISMATCH}


# -- the plugin's address choice -------------------------------------------------------------
def test_checked_walks_right_to_left_past_trusted_else_peer() -> None:
    m = BouncerModel(BouncerSettings(trusted=("10.0.0.0/8", "104.16.0.0/13")))
    assert m.checked("81.2.3.4, 104.16.0.1", "10.42.0.9") == "81.2.3.4"
    assert m.checked("81.2.3.4, 10.1.1.1, 104.16.0.1", "10.42.0.9") == "81.2.3.4"
    assert m.checked(" , 10.1.1.1,", "10.42.0.9") == "10.42.0.9"  # empty skipped, all trusted
    assert m.checked("", "10.42.0.9") == "10.42.0.9"
    # an element that is not an IP is never "trusted": it is what the plugin checks
    assert m.checked("81.2.3.4, 104.16.0.1:443", "10.42.0.9") == "104.16.0.1:443"
    # no trusted ranges: the rightmost element, as CrowdSec bans it
    assert BouncerModel(BouncerSettings()).checked("81.2.3.4, 104.16.0.1", "p") == "104.16.0.1"


@pytest.mark.parametrize(
    ("settings", "record", "mode", "checked"),
    [
        (
            BouncerSettings(),
            req("104.16.0.1", SVCLB, xff="81.2.3.4, 104.16.0.1"),
            Mode.AGREE,
            "104.16.0.1",
        ),
        (
            BouncerSettings(trusted=(CDN_RANGE,)),
            req("104.16.0.1", SVCLB, xff="81.2.3.4, 104.16.0.1"),
            Mode.FORWARDED,
            "81.2.3.4",
        ),
        # the access log dropped the header fields: ClientHost still holds X-Forwarded-For
        (
            BouncerSettings(trusted=(CDN_RANGE,)),
            req("104.16.0.1", SVCLB, client_host="81.2.3.4,104.16.0.1"),
            Mode.FORWARDED,
            "81.2.3.4",
        ),
        # everything in the header trusted: the bouncer falls back to the hop
        (
            BouncerSettings(trusted=("0.0.0.0/0",)),
            req("81.2.3.4", SVCLB, xff="81.2.3.4"),
            Mode.HOP,
            SVCLB,
        ),
        # X-Real-Ip, which Traefik sets to the peer when absent
        (
            BouncerSettings(header="x-real-ip"),
            req("81.2.3.4", SVCLB, xff="81.2.3.4", rip=SVCLB),
            Mode.HOP,
            SVCLB,
        ),
        (
            BouncerSettings(header="X-Real-Ip"),
            req("81.2.3.4", SVCLB, xff="81.2.3.4"),
            Mode.UNKNOWN,
            "",
        ),
        (
            BouncerSettings(header="X-Real-Ip", client_trusted=("10.42.0.0/16",)),
            req("81.2.3.4", SVCLB, xff="81.2.3.4", rip=SVCLB),
            Mode.EXEMPT,
            SVCLB,
        ),
        (
            BouncerSettings(client_trusted=("10.0.0.0/8",)),
            req("10.9.9.9", "10.9.9.9"),
            Mode.TRUSTED,
            "10.9.9.9",
        ),
        (BouncerSettings(), req("unknown", SVCLB, xff="unknown"), Mode.REFUSED, "unknown"),
        (BouncerSettings(), req("", ""), Mode.UNKNOWN, ""),
    ],
)
def test_verdicts(
    settings: BouncerSettings, record: AccessRecord, mode: Mode, checked: str
) -> None:
    m = BouncerModel(settings)
    peer = record[R.PEER].rpartition(":")[0]
    v = m.judge(record[R.CLIENT], record[R.XFF], record[R.REAL_IP], record[R.CLIENT_HOST_RAW], peer)
    assert (v.mode, v.checked) == (mode, checked)


def test_corpus_line_behind_a_proxy_chain() -> None:
    """traefik-json-v3.jsonl: ClientHost ``192.168.1.100,10.0.0.50`` from a Cloudflare peer.
    CrowdSec bans 10.0.0.50; a bouncer trusting 10.0.0.0/8 checks 192.168.1.100."""
    lines = (ROOT / "tests/data/corpus/traefik-json-v3.jsonl").read_bytes().splitlines()
    records = TraefikParser().parse(lines, ParseStats())
    chain = [r for r in records if "," in r[R.CLIENT_HOST_RAW]]
    assert len(chain) == 1
    tally = MismatchTally(BouncerModel(BouncerSettings(trusted=("10.0.0.0/8",))), 60, None)
    tally.add(records)
    assert tally.span.modes.get(Mode.FORWARDED) == 1
    assert tally.span.modes.get(Mode.AGREE) == len(records) - 1
    assert bouncer.examples(tally.span, Mode.FORWARDED)[0]["crowdsec_bans"] == "10.0.0.50"
    assert bouncer.examples(tally.span, Mode.FORWARDED)[0]["bouncer_checks"] == "192.168.1.100"
    # one line is below MISMATCH_MIN_REQUESTS: a replay of the sample raises nothing
    engine = replay(records, BouncerSettings(trusted=("10.0.0.0/8",)))
    assert mismatches(engine) == {}
    # and the plugin's defaults agree with CrowdSec on every line
    tally = MismatchTally(BouncerModel(BouncerSettings()), 60, None)
    tally.add(records)
    assert set(tally.span.modes) == {Mode.AGREE}


# -- findings on generated traffic ------------------------------------------------------------
def test_cdn_trusted_by_the_bouncer_only_raises_forwarded() -> None:
    engine = replay(
        [*cdn_chain(200), *direct(100, T0 + 0.5)], BouncerSettings(trusted=(CDN_RANGE,))
    )
    found = mismatches(engine)
    assert set(found) == {"forwarded"}
    f = found["forwarded"]
    assert f.severity is Severity.HIGH
    ev = f.evidence
    assert (ev["requests"], ev["judged_requests"], ev["share"]) == (200, 300, 0.6667)
    assert ev["scope"] == "span"
    assert {e["crowdsec_bans"] for e in ev["examples"]} <= set(CDN)
    assert ev["bouncer"]["forwardedHeadersTrustedIPs"] == [CDN_RANGE]
    assert "last X-Forwarded-For element" in f.fix
    assert set(ev["crowdsec_bans"]) == set(CDN)


def test_plugin_defaults_agree_with_crowdsec_no_finding() -> None:
    engine = replay([*cdn_chain(200), *direct(100, T0 + 0.5)], BouncerSettings())
    assert mismatches(engine) == {}


def test_no_settings_no_tally_no_finding() -> None:
    engine = replay(cdn_chain(200), None)
    assert mismatches(engine) == {}
    assert engine._bouncer is None  # nothing is counted per batch


def test_a_few_hand_written_headers_stay_below_the_threshold() -> None:
    """19 spoofed requests (under MISMATCH_MIN_REQUESTS) among 3000: no finding; 40 among
    1000 (4%, over MISMATCH_SHARE) raise."""
    spoof = [req("10.1.1.1", "93.184.1.1", T0 + i, xff="10.1.1.1") for i in range(19)]
    settings = BouncerSettings(trusted=("10.0.0.0/8",))
    assert mismatches(replay([*direct(3000, T0, 0.1), *spoof], settings)) == {}
    spoof = [req("10.1.1.1", "93.184.1.1", T0 + i, xff="10.1.1.1") for i in range(40)]
    found = mismatches(replay([*direct(1000, T0, 0.1), *spoof], settings))
    assert set(found) == {"hop"}
    assert found["hop"].evidence["examples"][0]["bouncer_checks"] == "93.184.1.1"


def test_share_threshold_on_large_traffic() -> None:
    """50 mismatched among 10,000 (0.5%) stay below MISMATCH_SHARE."""
    settings = BouncerSettings(trusted=(CDN_RANGE,))
    assert mismatches(replay([*direct(9950, T0, 0.01), *cdn_chain(50, T0)], settings)) == {}


def test_hop_checked_and_banned_is_critical() -> None:
    settings = BouncerSettings(header="X-Real-Ip")
    records = [
        req(f"81.2.0.{i % 200 + 1}", SVCLB, T0 + i, xff=f"81.2.0.{i % 200 + 1}", rip=SVCLB)
        for i in range(100)
    ]
    engine, _ = make_engine(clear_recovered=False, blast_scope="span", bouncer=settings)
    engine.apply(new(ban(SVCLB, 1), ban("81.2.0.5", 2)))
    feed(engine, records)
    engine.finish()
    found = mismatches(engine)
    assert found["hop"].severity is Severity.CRITICAL
    assert found["hop"].evidence["hop_bans"][0]["value"] == SVCLB
    assert "locked out" in found["hop"].summary
    # 81.2.0.5 is banned by CrowdSec but the bouncer only ever checks the hop
    unseen = found["decisions:unchecked"]
    assert unseen.severity is Severity.HIGH
    assert [d["value"] for d in unseen.evidence["examples"]] == ["81.2.0.5"]


def test_ban_in_client_trusted_ips_is_reported_and_cleared_on_delete() -> None:
    settings = BouncerSettings(client_trusted=("192.168.0.0/16", "203.0.113.7"))
    engine, _ = make_engine(bouncer=settings)
    engine.apply(new(ban("203.0.113.7", 1), ban("93.184.0.1", 2), ban("192.168.1.0/24", 3)))
    engine.tick()
    f = mismatches(engine)["decisions:exempt"]
    assert (f.severity, f.evidence["decisions"]) == (Severity.MEDIUM, 1)
    assert f.evidence["examples"][0]["value"] == "203.0.113.7"
    from tests.support.engine import deleted

    engine.apply(deleted(ban("203.0.113.7", 1)))
    engine.tick()
    assert "decisions:exempt" not in mismatches(engine)


def test_live_raises_once_and_clears_when_it_stops() -> None:
    settings = BouncerSettings(trusted=(CDN_RANGE,))
    engine, clock = make_engine(bouncer=settings, window_s=300)
    events(engine)
    raised = []
    for m in range(4):  # four minutes of CDN traffic
        clock.now = T0 + m * 60 + 60
        feed(engine, [*cdn_chain(30, T0 + m * 60, 2.0), *direct(30, T0 + m * 60 + 1, 2.0)])
        engine.tick()
        raised += [e for e in events(engine) if e[1] is Kind.BAN_MISMATCH]
    assert raised == [(State.RAISED, Kind.BAN_MISMATCH, "forwarded")]
    for m in range(4, 12):  # the CDN is gone: direct clients only
        clock.now = T0 + m * 60 + 60
        feed(engine, direct(60, T0 + m * 60, 1.0))
        engine.tick()
        raised += [e for e in events(engine) if e[1] is Kind.BAN_MISMATCH]
    # the share falls as the window slides (an update per tenth), then the finding clears
    states = [state for state, _, _ in raised]
    assert states.count(State.RAISED) == 1
    assert states[-1] is State.CLEARED
    assert states.count(State.CLEARED) == 1
    assert "forwarded" not in mismatches(engine)


def test_memory_stays_bounded_on_distinct_combinations() -> None:
    tally = MismatchTally(BouncerModel(BouncerSettings(trusted=(CDN_RANGE,))), 60, 17)
    for b in range(40):  # 40 buckets of 3000 distinct clients each
        t = T0 + b * 60
        tally.add(
            [
                req(
                    CDN[0],
                    SVCLB,
                    t,
                    xff=f"{1 + i // 65536}.{i // 256 % 256}.{i % 256}.{b}, {CDN[0]}",
                )
                for i in range(3000)
            ]
        )
    assert len(tally.buckets) <= 17
    assert len(tally._cache) <= 1 << 13
    assert tally.span.judged == 0  # live keeps only the window's buckets
    window = tally.window(T0 + 39 * 60, 900)
    assert window.modes[Mode.FORWARDED] == 15 * 3000
    assert len(window.examples[Mode.FORWARDED]) <= bouncer.EXAMPLES_CAP
    assert len(window.checked) <= bouncer.ADDRESSES_CAP
    assert window.saturated
    assert window.never_checked() == []  # too many addresses to claim "never"
    assert tally.window(T0 + 39 * 60, 900) is window  # no batch since: not summed again


# -- settings -----------------------------------------------------------------------------------
MIDDLEWARE = """
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: crowdsec, namespace: traefik}
spec:
  plugin:
    crowdsec-bouncer-traefik-plugin:
      enabled: true
      crowdsecLapiKey: secret
      forwardedHeadersTrustedIPs: [104.16.0.0/13, 172.64.0.0/13]
      clientTrustedIps: ["192.168.0.0/16"]
      ForwardedHeadersCustomName: X-Forwarded-For
"""


def test_settings_from_a_middleware_a_block_and_json() -> None:
    s = settings_from_text(MIDDLEWARE, "mw.yaml")
    assert s.trusted == ("104.16.0.0/13", "172.64.0.0/13")
    assert s.client_trusted == ("192.168.0.0/16",)
    assert s.source == "mw.yaml (traefik/crowdsec)"
    bare = settings_from_text('{"forwardedHeadersTrustedIPs": "10.0.0.0/8, 10.1.0.0/16"}', "b")
    assert bare.trusted == ("10.0.0.0/8", "10.1.0.0/16")
    listed = settings_from_text(
        '{"kind": "List", "items": [' + '{"spec": {"plugin": {"x": {"enabled": true}}}}]}', "l"
    )
    assert listed == BouncerSettings(source="l")
    over = with_overrides(s, None, ["10.0.0.0/8"], None)
    assert over is not None
    assert (over.trusted, over.client_trusted, over.source) == (
        s.trusted,
        ("10.0.0.0/8",),
        "mw.yaml (traefik/crowdsec) + flags",
    )
    assert with_overrides(None, None, None, None) is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("forwardedHeadersTrustedIPs: [10.0.0.0/33]", "forwardedHeadersTrustedIPs"),
        ("clientTrustedIPs: ['10.0.0.1:80']", "clientTrustedIPs"),
        ("clientTrustedIPs: {a: 1}", "clientTrustedIPs"),
        ("forwardedHeadersCustomName: 'X Bad'", "forwardedHeadersCustomName"),
        ("forwardedHeadersCustomName: [1]", "forwardedHeadersCustomName"),
        ("clientTrustedIPs: [a]\nclienttrustedips: [b]", "clientTrustedIPs"),
        ("spec: {plugin: {a: {enabled: true}, b: {enabled: true}}}", "spec.plugin"),
        ("- 1\n- 2", "(document)"),
        ("a: [unclosed", "(document)"),
        ("kind: Middleware\nspec: {}", "spec.plugin"),
    ],
)
def test_hostile_settings_name_the_key(text: str, key: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from_text(text, "f")
    assert err.value.key == key


def test_block_helpers() -> None:
    assert plugin_block({"clientTrustedIPs": []}) == {"clientTrustedIPs": []}
    assert settings_from_block({"ClientTrustedIPs": None}, "x") == BouncerSettings(source="x")
    assert not BouncerSettings(header="CF-Connecting-IP").judgeable
    assert BouncerSettings(header="x-real-ip").judgeable
