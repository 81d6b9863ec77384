"""GeoIP/ASN enrichment against real MaxMind DB files built with mmdb-writer."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import maxminddb
import pytest
from prometheus_client import CollectorRegistry

from pipeline.cli.main import main
from pipeline.cli.run import build_runner
from pipeline.config import RunConfig
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.findings import Finding, FindingEvent, Kind, Severity, State
from pipeline.errors import UsageError
from sinks.geoip import CACHE_SIZE, DbKind, GeoIP, GeoSink, db_kind, extract, open_database
from tests.support.crowdsec import traefik_json_line
from tests.support.mmdb import geolite2_asn, geolite2_country, ipinfo_lite, iplocation_country_v4

DE = {"country": "DE", "asn": 3320, "as_org": "Deutsche Telekom AG"}
FR = {"country": "FR", "asn": 3215, "as_org": "Orange S.A."}


@pytest.fixture
def dbs(tmp_path: Path) -> tuple[Path, Path]:
    return geolite2_country(tmp_path / "GeoLite2-Country.mmdb"), geolite2_asn(
        tmp_path / "GeoLite2-ASN.mmdb"
    )


@pytest.fixture
def geo(dbs: tuple[Path, Path]) -> Iterator[GeoIP]:
    g = GeoIP.open([str(p) for p in dbs], Classifier(k3s_defaults()))
    yield g
    g.close()


def test_database_kind_comes_from_metadata(tmp_path: Path, dbs: tuple[Path, Path]) -> None:
    city = geolite2_country(tmp_path / "city.mmdb", database_type="GeoLite2-City")
    v4 = iplocation_country_v4(tmp_path / "v4.mmdb")
    kinds = {Path(p).name: open_database(str(p)).kind for p in (*dbs, city, v4)}
    assert kinds == {
        "GeoLite2-Country.mmdb": DbKind.COUNTRY,
        "GeoLite2-ASN.mmdb": DbKind.ASN,
        "city.mmdb": DbKind.COUNTRY,
        "v4.mmdb": DbKind.COUNTRY,
    }
    assert db_kind("IPinfo Lite") is DbKind.MIXED
    assert db_kind("DBIP-ASN-Lite (compat=GeoLite2-ASN)") is DbKind.ASN
    assert db_kind("DBIP-Country-Lite") is DbKind.COUNTRY
    assert db_kind("GeoIP2-ISP") is DbKind.ASN


def test_ipv4_merges_country_and_asn(geo: GeoIP) -> None:
    assert geo.lookup("198.51.100.7") == DE
    assert geo.lookup("198.51.100.7:44123") == DE  # a ClientAddr with its port


def test_ipv6_and_bracketed(geo: GeoIP) -> None:
    assert geo.lookup("2001:db8:1::5") == FR
    assert geo.lookup("[2001:db8:1::5]:443") == FR


def test_ipv4_mapped_ipv6_looks_up_as_ipv4(geo: GeoIP, dbs: tuple[Path, Path]) -> None:
    # The database itself has nothing under ::ffff:0:0/96 ...
    with maxminddb.open_database(str(dbs[0])) as reader:
        assert reader.get("::ffff:198.51.100.7") is None
    # ... the address is folded to IPv4 before the lookup.
    assert geo.lookup("::ffff:198.51.100.7") == DE


def test_partial_and_missing_records(geo: GeoIP) -> None:
    # 203.0.113.128/25 has an AS but no country record.
    assert geo.lookup("203.0.113.200") == {
        "asn": 28573,
        "as_org": "Claro NXT Telecomunicacoes Ltda",
    }
    assert geo.lookup("203.0.113.5") == {
        "country": "BR",
        "asn": 28573,
        "as_org": "Claro NXT Telecomunicacoes Ltda",
    }
    assert geo.lookup("192.0.2.1") is None  # public, in no database
    assert geo.lookup("2001:db8:2::1") is None


def test_only_public_addresses_are_looked_up(geo: GeoIP) -> None:
    before = geo.lookups
    for addr in ("10.42.0.7", "10.43.0.1", "127.0.0.1", "::1", "172.17.0.1", "fe80::1", "junk"):
        assert geo.lookup(addr) is None
    assert geo.lookup("::ffff:10.42.0.7") is None  # mapped internal stays internal
    assert geo.lookups == before


def test_lookups_are_cached_and_bounded(dbs: tuple[Path, Path]) -> None:
    geo = GeoIP.open([str(p) for p in dbs], Classifier())
    try:
        geo.lookup("198.51.100.7")
        first = geo.lookups
        assert first == 2  # one per database
        for _ in range(5):
            geo.lookup("198.51.100.7")
            geo.lookup("::ffff:198.51.100.7")  # same address, same cache entry
        assert geo.lookups == first
        for i in range(CACHE_SIZE + 10):
            geo.lookup(f"192.0.{i // 256 % 256}.{i % 256}" if i < 65536 else "192.0.2.1")
        assert len(geo._cache) <= CACHE_SIZE
        geo.lookup("198.51.100.7")  # evicted long ago: looked up again
        assert geo.lookups > first + CACHE_SIZE
    finally:
        geo.close()


def test_ipv4_only_database_skips_ipv6(tmp_path: Path) -> None:
    v4 = iplocation_country_v4(tmp_path / "dbip-country-ipv4.mmdb")
    asn = geolite2_asn(tmp_path / "asn.mmdb")
    geo = GeoIP.open([str(v4), str(asn)], Classifier())
    try:
        assert geo.lookup("198.51.100.9") == DE  # country_code layout + ASN database
        assert geo.lookup("2001:db8:1::1") == {"asn": 3215, "as_org": "Orange S.A."}
    finally:
        geo.close()


def test_combined_database(tmp_path: Path) -> None:
    """One IPinfo-style file with country and AS in each record (kind from its name: mixed)."""
    geo = GeoIP.open([str(ipinfo_lite(tmp_path / "ipinfo_lite.mmdb"))], Classifier())
    try:
        assert geo.databases[0].kind is DbKind.MIXED
        assert geo.lookup("198.51.100.7") == {**DE, "as_domain": "telekom.de"}
    finally:
        geo.close()


def test_extract_vendor_layouts() -> None:
    assert extract({"country_code": "DE"}) == {"country": "DE"}
    assert extract({"registered_country": {"iso_code": "NL"}}) == {"country": "NL"}
    assert extract({"asn": "AS13335", "as_name": "Cloudflare", "as_domain": "cloudflare.com"}) == {
        "asn": 13335,
        "as_org": "Cloudflare",
        "as_domain": "cloudflare.com",
    }
    assert extract(None) == {}
    assert extract("DE") == {}


def test_missing_and_corrupt_files_fail_at_open(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mmdb"
    with pytest.raises(UsageError, match=str(missing)):
        GeoIP.open([str(missing)], Classifier())
    corrupt = tmp_path / "corrupt.mmdb"
    corrupt.write_bytes(b"\x00" * 64 + b"not a maxmind database")
    with pytest.raises(UsageError, match=rf"{corrupt}.*not a readable MaxMind DB"):
        GeoIP.open([str(corrupt)], Classifier())
    with pytest.raises(UsageError, match=str(tmp_path)):
        GeoIP.open([str(tmp_path)], Classifier())  # a directory


# -- findings and events ----------------------------------------------------------------------
def masked_finding(example: str) -> Finding:
    return Finding(
        kind=Kind.MASKED_CLIENT_IP,
        severity=Severity.HIGH,
        target="websecure",
        summary="masked",
        evidence={
            "internal_hops": [{"address": "10.42.0.7", "requests": 40, "class": "pod"}],
            "real_client_example": example,
        },
        fix="",
        key="masked_client_ip:websecure",
    )


def test_enrich_adds_geo_for_public_addresses_only(geo: GeoIP) -> None:
    enriched = geo.enrich(masked_finding("198.51.100.7"))
    assert enriched.evidence["geo"] == {"198.51.100.7": DE}
    assert enriched.evidence["real_client_example"] == "198.51.100.7"
    internal_only = masked_finding("10.42.0.9")
    assert geo.enrich(internal_only) is internal_only  # nothing public: unchanged


def test_geo_sink_wraps_events(geo: GeoIP) -> None:
    class Collect:
        def __init__(self) -> None:
            self.events: list[FindingEvent] = []
            self.closed = False

        def emit(self, events: Sequence[FindingEvent]) -> None:
            self.events.extend(events)

        async def aclose(self) -> None:
            self.closed = True

    inner = Collect()
    sink = GeoSink(inner, geo)
    sink.emit([FindingEvent(State.RAISED, masked_finding("2001:db8:1::77"), 1.0)])
    assert inner.events[0].as_dict()["evidence"]["geo"] == {"2001:db8:1::77": FR}


# -- replay -----------------------------------------------------------------------------------
def write_masked_log(path: Path) -> None:
    """Invidious behind servicelb: most lines come from the 10.42.0.7 hop, with the real client
    kept in X-Forwarded-For; a few public clients reach Traefik directly."""
    now = dt.datetime.now(dt.UTC)
    lines = [
        traefik_json_line(
            "10.42.0.7",
            f"/watch?v={i}",
            when=now,
            extra={"request_X-Forwarded-For": "198.51.100.7"},
        )
        for i in range(40)
    ]
    lines += [traefik_json_line("2001:db8:1::5", "/feed/popular", when=now) for _ in range(5)]
    lines += [traefik_json_line("192.0.2.10", "/api/v1/stats", when=now) for _ in range(3)]
    path.write_text("".join(ln + "\n" for ln in lines))


def test_replay_report_carries_geo(
    tmp_path: Path, dbs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "access.log"
    write_masked_log(log)
    args = ["replay", str(log), "--format", "json", "--no-progress"]
    for db in dbs:
        args += ["--geoip-db", str(db)]
    assert main(args) == 1  # the masked finding is high
    report = json.loads(capsys.readouterr().out)
    top = {c["address"]: c for c in report["summary"]["top_clients"]}
    assert "geo" not in top["10.42.0.7"]
    assert top["2001:db8:1::5"]["geo"] == FR
    assert top["192.0.2.10"]["geo"] == {}  # public, unknown to the databases
    masked = next(f for f in report["findings"] if f["kind"] == "masked_client_ip")
    assert masked["evidence"]["real_client_example"] == "198.51.100.7"
    assert masked["evidence"]["geo"] == {"198.51.100.7": DE}

    assert main([*args[:3], "table", *args[4:]]) == 1
    table = capsys.readouterr().out
    assert "FR AS3215 Orange S.A." in table
    assert "198.51.100.7: DE AS3320 Deutsche Telekom AG" in table


def test_replay_without_geoip_has_no_geo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "access.log"
    write_masked_log(log)
    main(["replay", str(log), "--format", "json", "--no-progress"])
    report = json.loads(capsys.readouterr().out)
    assert all("geo" not in c for c in report["summary"]["top_clients"])
    assert all("geo" not in f["evidence"] for f in report["findings"])


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_replay_bad_database_exits_2_before_reading(
    tmp_path: Path, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "access.log"
    # Only internal clients: no lookup would ever happen, so only an open at start can fail.
    log.write_text(traefik_json_line("10.42.0.7", "/") + "\n")
    db = tmp_path / "GeoLite2-City.mmdb"
    if problem == "corrupt":
        db.write_bytes(b"MaxMind? no." * 100)
    code = main(["replay", str(log), "--geoip-db", str(db), "--format", "json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert str(db) in captured.err
    assert captured.out == ""  # no report: it failed before reading the input


def test_run_bad_database_exits_2_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    db = tmp_path / "missing.mmdb"
    code = main(
        [
            "run",
            "--access-log",
            str(log),
            "--geoip-db",
            str(db),
            "--metrics-listen",
            "127.0.0.1:0",
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--findings",
            str(tmp_path / "findings.jsonl"),
        ]
    )
    assert code == 2
    assert str(db) in capsys.readouterr().err


async def test_run_findings_carry_geo(tmp_path: Path, dbs: tuple[Path, Path]) -> None:
    """``auditor run`` wiring: every event sink (here the findings file) gets enriched events."""
    log = tmp_path / "access.log"
    write_masked_log(log)
    findings = tmp_path / "findings.jsonl"
    runner = build_runner(
        RunConfig(
            access_log=(str(log),),
            start_at="beginning",
            metrics_listen="127.0.0.1:0",
            findings=str(findings),
            checkpoint_dir=str(tmp_path / "ckpt"),
            geoip_db=tuple(str(p) for p in dbs),
        ),
        registry=CollectorRegistry(),
    )
    task = asyncio.create_task(runner.run())

    def masked() -> dict[str, object] | None:
        if findings.exists():
            for line in findings.read_text().splitlines():
                event = json.loads(line)
                if event["kind"] == "masked_client_ip":
                    return dict(event)
        return None

    try:
        async with asyncio.timeout(20):
            while (event := masked()) is None:
                await asyncio.sleep(0.05)
    finally:
        runner.stop.set()
        assert await asyncio.wait_for(task, 20) == 0
    assert event["evidence"]["geo"] == {"198.51.100.7": DE}  # type: ignore[index]
