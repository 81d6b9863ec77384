"""Whitelist and bucket series of CrowdSec's metrics: real 1.4.6 captures (only the whitelist
node's own hits) and the ``cs_node_wl_hits_*`` series of CrowdSec >= 1.6.1, in the label set its
source declares (source, type, name, reason, stage, acquis_type)."""

from __future__ import annotations

from parsers.crowdsec_metrics import CrowdSecMetrics, parse_metrics
from tests.support.paths import DATA

CAPTURES = DATA / "crowdsec_metrics"
SOURCE = "/var/log/traefik/access.log"
HUB = "crowdsecurity/whitelists"
CRAWL = "crowdsecurity/http-crawl-non_statics"


def capture(name: str) -> CrowdSecMetrics:
    return parse_metrics((CAPTURES / f"{name}.prom").read_text())


def test_legacy_whitelist_node_by_name() -> None:
    hub = capture("wl-hub-internal")
    assert hub.wl_node_hits == {(SOURCE, HUB): 40.0}
    assert hub.wl_checked == {} and hub.wl_whitelisted == {}
    assert not hub.wl_counted  # 1.4.6 does not count what it whitelists
    assert hub.whitelist_nodes() == {HUB}
    assert hub.whitelist_nodes([SOURCE]) == {HUB}
    assert hub.whitelist_nodes(["/var/log/other.log"]) == set()
    # Whitelisted lines never reach a bucket: only the 10 public ones were poured.
    assert hub.poured == {(SOURCE, CRAWL): 10.0}
    assert capture("wl-narrow-internal").whitelist_nodes() == {"local/narrow-whitelist"}
    none = capture("wl-none-internal")
    assert none.whitelist_nodes() == set()
    assert none.poured == {(SOURCE, CRAWL): 40.0}
    # The traefik parser's child nodes and other parsers are not whitelists.
    assert all("whitelist" in n for _, n in hub.wl_node_hits)


def test_counted_whitelist_series() -> None:
    labels = (
        'acquis_type="traefik",name="local/k3s",reason="cluster",source="{src}",'
        'stage="s02-enrich",type="file"'
    )
    text = "\n".join(
        [
            "# TYPE cs_node_wl_hits_total counter",
            f"cs_node_wl_hits_total{{{labels.format(src=SOURCE)}}} 120",
            f"cs_node_wl_hits_total{{{labels.format(src='/var/log/auth.log')}}} 7",
            "# TYPE cs_node_wl_hits_ok_total counter",
            f"cs_node_wl_hits_ok_total{{{labels.format(src=SOURCE)}}} 90",
            "",
        ]
    )
    m = parse_metrics(text)
    assert m.wl_counted
    assert m.wl_checked == {(SOURCE, "local/k3s"): 120.0, ("/var/log/auth.log", "local/k3s"): 7.0}
    assert m.wl_whitelisted == {(SOURCE, "local/k3s"): 90.0}
    assert m.wl_reasons == {"local/k3s": "cluster"}
    assert m.whitelist_nodes() == {"local/k3s"}  # found by series, whatever its name


def test_restart_seen_in_whitelist_and_bucket_counters() -> None:
    """Only a pour or whitelist counter went down (the others stood still): still a restart."""
    text = (CAPTURES / "wl-hub-internal.prom").read_text()
    poured = f'cs_bucket_poured_total{{name="{CRAWL}",source="{SOURCE}",type="file"}} 10'
    hits = f'cs_node_hits_total{{name="{HUB}",source="{SOURCE}",type="file"}} 40'
    assert poured in text and hits in text
    before = parse_metrics(text)
    for old, new in ((poured, poured[:-2] + "3"), (hits, hits[:-2] + "5")):
        after = parse_metrics(text.replace(old, new))
        assert after.restarted_since(before)
        assert not before.restarted_since(after)
