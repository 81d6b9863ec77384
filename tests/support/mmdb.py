"""Small real MaxMind DB files for tests, written with the ``mmdb-writer`` package.

The record layouts are the vendors' own: GeoLite2-Country/City (``country.iso_code``), GeoLite2-ASN
(``autonomous_system_number`` / ``autonomous_system_organization``) and ip-location-db's country
files (``country_code``). Addresses are documentation ranges (RFC 5737 / RFC 3849), which the
classifier treats as public.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# network -> (country iso code, country name)
COUNTRIES: dict[str, tuple[str, str]] = {
    "198.51.100.0/24": ("DE", "Germany"),
    "203.0.113.0/25": ("BR", "Brazil"),
    "2001:db8:1::/48": ("FR", "France"),
}
# network -> (AS number, organisation)
ASNS: dict[str, tuple[int, str]] = {
    "198.51.100.0/24": (3320, "Deutsche Telekom AG"),
    "203.0.113.0/24": (28573, "Claro NXT Telecomunicacoes Ltda"),
    "2001:db8:1::/48": (3215, "Orange S.A."),
}


def _write(
    path: Path,
    database_type: str,
    records: Mapping[str, Any],
    *,
    ip_version: int = 6,
) -> Path:
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type=database_type,
        languages=["en"],
        description={"en": f"ban-auditor test {database_type}"},
        ipv4_compatible=ip_version == 6,
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def geolite2_country(path: Path, database_type: str = "GeoLite2-Country") -> Path:
    """GeoLite2-Country layout (also what GeoLite2-City carries under ``country``)."""
    records = {
        net: {
            "continent": {"code": "EU" if code != "BR" else "SA"},
            "country": {"iso_code": code, "names": {"en": name}},
            "registered_country": {"iso_code": code, "names": {"en": name}},
        }
        for net, (code, name) in COUNTRIES.items()
    }
    return _write(path, database_type, records)


def geolite2_asn(path: Path) -> Path:
    records = {
        net: {"autonomous_system_number": asn, "autonomous_system_organization": org}
        for net, (asn, org) in ASNS.items()
    }
    return _write(path, "GeoLite2-ASN", records)


def iplocation_country_v4(path: Path) -> Path:
    """ip-location-db's IPv4-only country file: ``{"country_code": "DE"}`` records."""
    records = {
        net: {"country_code": code} for net, (code, _name) in COUNTRIES.items() if ":" not in net
    }
    return _write(path, "ip-location-db country", records, ip_version=4)


def ipinfo_lite(path: Path) -> Path:
    """IPinfo Lite layout: country and AS in one record, ``asn`` as an ``AS123`` string."""
    records = {
        "198.51.100.0/24": {
            "asn": "AS3320",
            "as_name": "Deutsche Telekom AG",
            "as_domain": "telekom.de",
            "country_code": "DE",
            "continent_code": "EU",
        }
    }
    return _write(path, "IPinfo Lite", records)
