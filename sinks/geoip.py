"""Country and AS of public client addresses from MaxMind DB files (GeoLite2, DB-IP...).

Knowing that the banned or masked "client" sits in Deutsche Telekom's AS, or that the only real
client seen behind the masking hop is in Brazil, tells an operator which users a finding is about.
Databases are opened once at start, so a wrong path fails the command before any input is read;
only public addresses are looked up (an internal address has no country), each at most once while
it stays in a bounded LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import maxminddb
from maxminddb import InvalidDatabaseError

from pipeline.core.addresses import AddrClass, ClassifierView, format_network, parse_address
from pipeline.core.findings import EventSink, Finding, FindingEvent
from pipeline.errors import UsageError

CACHE_SIZE = 8192
_MAX_DEPTH = 4  # how deep evidence is searched for addresses
_MAX_ADDR_LEN = 64

Geo = dict[str, Any]  # {"country": "DE", "asn": 3320, "as_org": "Deutsche Telekom AG"}
FIELDS = ("country", "asn", "as_org", "as_domain")


class DbKind(StrEnum):
    COUNTRY = "country"  # GeoLite2-Country/City, GeoIP2-*, DB-IP country/city, ip-location-db
    ASN = "asn"  # GeoLite2-ASN, GeoIP2-ISP, DB-IP ASN, ip-location-db asn
    MIXED = "mixed"  # unknown type (IPinfo lite...): take whichever fields the records carry


def db_kind(database_type: str) -> DbKind:
    """Classify a database by its metadata ``database_type`` (e.g. ``GeoLite2-ASN``)."""
    t = database_type.lower()
    if "asn" in t or "isp" in t:
        return DbKind.ASN
    if "country" in t or "city" in t:
        return DbKind.COUNTRY
    return DbKind.MIXED


def _asn_number(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value.upper().removeprefix("AS")
        if digits.isdigit():
            return int(digits)
    return None


def _country_of(rec: Mapping[str, Any]) -> str | None:
    for key in ("country", "registered_country"):
        sub = rec.get(key)
        if isinstance(sub, Mapping) and isinstance(sub.get("iso_code"), str):
            return str(sub["iso_code"])
        if key == "country" and isinstance(sub, str) and len(sub) == 2:
            return sub
    code = rec.get("country_code")
    return code if isinstance(code, str) and code else None


def extract(rec: object) -> Geo:
    """The fields we report from one database record, whatever vendor layout it has."""
    if not isinstance(rec, Mapping):
        return {}
    out: Geo = {}
    country = _country_of(rec)
    if country:
        out["country"] = country
    asn = _asn_number(rec.get("autonomous_system_number", rec.get("asn")))
    if asn is not None:
        out["asn"] = asn
    org = rec.get("autonomous_system_organization", rec.get("as_name"))
    if isinstance(org, str) and org:
        out["as_org"] = org
    domain = rec.get("as_domain")
    if isinstance(domain, str) and domain:
        out["as_domain"] = domain
    return out


@dataclass(frozen=True, slots=True)
class GeoDatabase:
    path: str
    kind: DbKind
    database_type: str
    ip_version: int
    reader: Any  # maxminddb.Reader (C extension or pure Python)


def open_database(path: str) -> GeoDatabase:
    """Open and identify one database; any problem is a UsageError naming the file."""
    p = Path(path)
    if not p.is_file():
        msg = f"--geoip-db {path}: file not found"
        raise UsageError(msg)
    try:
        reader = maxminddb.open_database(str(p))
        meta = reader.metadata()
    except (InvalidDatabaseError, OSError, ValueError) as exc:
        msg = f"--geoip-db {path}: not a readable MaxMind DB file ({exc})"
        raise UsageError(msg) from None
    database_type = str(meta.database_type or "")
    return GeoDatabase(str(p), db_kind(database_type), database_type, int(meta.ip_version), reader)


class GeoIP:
    """Merged lookups over several databases: country from country DBs, AS from ASN DBs."""

    def __init__(
        self,
        databases: Sequence[GeoDatabase],
        classifier: ClassifierView,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.databases = tuple(databases)
        self.classifier = classifier
        self._cache: OrderedDict[tuple[int, int], Geo | None] = OrderedDict()
        self._cache_size = cache_size
        self.lookups = 0  # database lookups done (cache misses), for tests and debugging

    @classmethod
    def open(cls, paths: Iterable[str], classifier: ClassifierView) -> GeoIP:
        opened: list[GeoDatabase] = []
        try:
            for path in paths:
                opened.append(open_database(path))
        except UsageError:
            for db in opened:
                db.reader.close()
            raise
        return cls(opened, classifier)

    def close(self) -> None:
        for db in self.databases:
            db.reader.close()

    def describe(self) -> list[dict[str, str]]:
        return [{"path": d.path, "kind": d.kind, "database_type": d.database_type} for d in self]

    def __iter__(self) -> Iterator[GeoDatabase]:
        return iter(self.databases)

    # -- lookups ------------------------------------------------------------------------------
    def lookup(self, address: str) -> Geo | None:
        """Country/AS of a public address; None for non-public, unparsable or unknown ones.

        The class is checked on every call (the classifier caches it): discovery can turn a
        public-looking node address internal after its geo was cached.
        """
        parsed = parse_address(address)
        if parsed is None or self.classifier.classify(address).cls is not AddrClass.PUBLIC:
            return None
        if parsed in self._cache:
            self._cache.move_to_end(parsed)
            return self._cache[parsed]
        result = self._lookup_uncached(parsed)
        self._cache[parsed] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def _lookup_uncached(self, parsed: tuple[int, int]) -> Geo | None:
        version, value = parsed
        # Mapped IPv6 (::ffff:a.b.c.d) was folded to IPv4 by parse_address: look it up as IPv4,
        # which is where every database keeps the IPv4 space.
        text = format_network(version, value, 32 if version == 4 else 128).partition("/")[0]
        found: list[tuple[DbKind, Geo]] = []
        for db in self.databases:
            if version == 6 and db.ip_version == 4:
                continue
            self.lookups += 1
            try:
                fields = extract(db.reader.get(text))
            except ValueError:
                continue
            if fields:
                found.append((db.kind, fields))
        merged: Geo = {}
        for key in FIELDS:
            # Each field from the database made for it, then any other that carries it
            # (an ASN database with countries, an IPinfo-style combined one...).
            prefer = DbKind.COUNTRY if key == "country" else DbKind.ASN
            for _kind, fields in sorted(found, key=lambda kf: (kf[0] != prefer, kf[0] != "mixed")):
                if key in fields:
                    merged[key] = fields[key]
                    break
        return merged or None

    # -- findings -----------------------------------------------------------------------------
    def addresses_in(self, target: str, evidence: Mapping[str, Any]) -> dict[str, Geo]:
        """Public addresses a finding mentions (target and evidence values) with their geo."""
        found: dict[str, Geo] = {}
        for text in _strings(target, evidence):
            if text in found or len(text) > _MAX_ADDR_LEN:
                continue
            geo = self.lookup(text)
            if geo:
                found[text] = geo
        return found

    def enrich(self, finding: Finding) -> Finding:
        """The finding with ``evidence.geo = {address: geo}`` when it mentions public addresses."""
        geo = self.addresses_in(finding.target, finding.evidence)
        if not geo:
            return finding
        return replace(finding, evidence={**finding.evidence, "geo": geo})

    def enrich_dict(self, finding: dict[str, Any]) -> dict[str, Any]:
        """Same as ``enrich`` on a ``Finding.as_dict()`` shape (the replay report)."""
        evidence = finding.get("evidence") or {}
        geo = self.addresses_in(str(finding.get("target", "")), evidence)
        if geo:
            finding = {**finding, "evidence": {**evidence, "geo": geo}}
        return finding

    def enrich_events(self, events: Sequence[FindingEvent]) -> list[FindingEvent]:
        return [replace(e, finding=self.enrich(e.finding)) for e in events]


def _strings(target: str, evidence: Mapping[str, Any]) -> Iterator[str]:
    yield target
    stack: list[tuple[object, int]] = [(evidence, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            yield node
        elif depth >= _MAX_DEPTH:
            continue
        elif isinstance(node, Mapping):
            stack.extend((v, depth + 1) for k, v in node.items() if k != "geo")
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


class GeoSink:
    """Wraps an event sink so the findings it receives carry ``evidence.geo``."""

    def __init__(self, inner: EventSink, geo: GeoIP) -> None:
        self.inner = inner
        self.geo = geo

    def emit(self, events: Sequence[FindingEvent]) -> None:
        self.inner.emit(self.geo.enrich_events(events))

    async def aclose(self) -> None:
        await self.inner.aclose()
