"""The networks file: the cluster's internal networks and config findings, as one watcher saw them.

``auditor discover`` (the only process that talks to the Kubernetes API) writes it into a
ConfigMap; every sidecar and node agent mounts that ConfigMap and reads it. This module is the
format on both sides: ``encode`` for the writer, ``decode`` for the readers. A reader trusts
nothing in it: the size, every field's type and length, every CIDR and class are checked, and a
file that fails any check is refused whole (the reader keeps its last good copy).

Version 1 (JSON)::

    {"format": "ban-auditor-networks", "version": 1,
     "synced_at": 1796394262.7,        # epoch s the watcher was last in sync; null: never
     "source": "in-cluster service account (https://10.43.0.1:443)",
     "networks": [{"cidr": "10.42.0.0/24", "class": "pod", "provenance": "node n1 spec.podCIDRs"}],
     "findings": [{"kind": "config", "severity": "high", "check": "etp_cluster", "key": "...",
                   "target": "...", "summary": "...", "evidence": {...}, "fix": "..."}],
     "findings_omitted": 0}            # findings left out to stay under the ConfigMap size limit
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.core.addresses import INTERNAL_CLASSES, Network, make_network
from pipeline.core.findings import Finding, Kind, Severity

FORMAT = "ban-auditor-networks"
VERSION = 1
# A ConfigMap holds at most 1 MiB in all; a bigger file is not one the watcher wrote.
MAX_BYTES = 1024 * 1024
# The writer leaves room for the ConfigMap's own metadata.
WRITE_BUDGET = 900 * 1024
MAX_NETWORKS = 20_000
MAX_FINDINGS = 2_000
_MAX_PROVENANCE = 512
_MAX_SOURCE = 512
_MAX_TARGET = 512
_MAX_KEY = 1024
_MAX_SUMMARY = 4096
_MAX_FIX = 32768
_CHECK = re.compile(r"[a-z][a-z0-9_]{0,63}")


class NetworksFileError(ValueError):
    """The file is not a networks file this version can use; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class NetworksDoc:
    """One published view of the cluster."""

    synced_at: float | None
    source: str
    networks: tuple[Network, ...]
    findings: tuple[Finding, ...]
    findings_omitted: int = 0


# -- writer ---------------------------------------------------------------------------------------
def _network_dict(net: Network) -> dict[str, str]:
    return {"cidr": net.cidr, "class": net.cls.value, "provenance": net.provenance}


def _finding_dict(f: Finding) -> dict[str, Any]:
    out = f.as_dict()
    out["key"] = f.key or f"{f.kind.value}:{f.check}:{f.target}"
    return out


def encode(
    *,
    synced_at: float | None,
    source: str,
    networks: Iterable[Network],
    findings: Iterable[Finding],
    budget: int = WRITE_BUDGET,
) -> bytes:
    """The file's bytes, the same for the same view (networks sorted), within ``budget`` bytes.

    Networks always go in (without them the file is useless); findings are added in order of
    severity until the budget is spent, and the rest is counted in ``findings_omitted``.
    Raises ``NetworksFileError`` when the networks alone do not fit.
    """
    nets = sorted(
        {(n.version, n.prefix, n.length, n.cls): n for n in networks}.values(),
        key=lambda n: (n.version, n.prefix, n.length, n.cls.value),
    )
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "synced_at": synced_at,
        "source": source[:_MAX_SOURCE],
        "networks": [_network_dict(n) for n in nets[:MAX_NETWORKS]],
        "findings": [],
        "findings_omitted": 0,
    }
    if len(nets) > MAX_NETWORKS:
        msg = f"{len(nets)} networks: more than the {MAX_NETWORKS} a networks file may hold"
        raise NetworksFileError(msg)
    base = orjson.dumps(doc)
    if len(base) > budget:
        msg = f"the networks alone take {len(base)} bytes, more than the {budget} allowed"
        raise NetworksFileError(msg)
    ordered = sorted(findings, key=lambda f: (-f.severity.rank, f.key, f.target))
    spent = len(base)
    kept: list[dict[str, Any]] = []
    for f in ordered[:MAX_FINDINGS]:
        item = _finding_dict(f)
        size = len(orjson.dumps(item)) + 1  # and a comma
        if spent + size > budget:
            break
        kept.append(item)
        spent += size
    doc["findings"] = kept
    doc["findings_omitted"] = len(ordered) - len(kept)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


# -- reader ---------------------------------------------------------------------------------------
def _field(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        msg = f"{where}: '{key}' is missing or not {_kind_name(kind)}"
        raise NetworksFileError(msg)
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _text(doc: Mapping[str, Any], key: str, limit: int, where: str) -> str:
    value: str = _field(doc, key, str, where)
    if len(value) > limit:
        msg = f"{where}: '{key}' is longer than {limit} characters"
        raise NetworksFileError(msg)
    return value


_NETWORK_CLASSES = {c.value: c for c in INTERNAL_CLASSES}


def _network(item: object, i: int) -> Network:
    where = f"networks[{i}]"
    if not isinstance(item, dict):
        msg = f"{where}: not an object"
        raise NetworksFileError(msg)
    cidr = _text(item, "cidr", 64, where)
    cls = _NETWORK_CLASSES.get(_text(item, "class", 32, where))
    if cls is None:
        msg = f"{where}: 'class' must be one of {', '.join(sorted(_NETWORK_CLASSES))}"
        raise NetworksFileError(msg)
    provenance = _text(item, "provenance", _MAX_PROVENANCE, where)
    try:
        return make_network(cidr, cls, provenance)
    except ValueError:
        msg = f"{where}: 'cidr' is not a CIDR or IP address: {cidr[:64]!r}"
        raise NetworksFileError(msg) from None


_SEVERITIES = {s.value: s for s in Severity}


def _finding(item: object, i: int) -> Finding:
    where = f"findings[{i}]"
    if not isinstance(item, dict):
        msg = f"{where}: not an object"
        raise NetworksFileError(msg)
    if item.get("kind") != Kind.CONFIG.value:
        msg = f"{where}: 'kind' must be 'config' (the watcher publishes config findings only)"
        raise NetworksFileError(msg)
    severity = _SEVERITIES.get(_text(item, "severity", 16, where))
    if severity is None:
        msg = f"{where}: 'severity' must be one of {', '.join(_SEVERITIES)}"
        raise NetworksFileError(msg)
    check = _text(item, "check", 64, where)
    if not _CHECK.fullmatch(check):
        msg = f"{where}: 'check' is not a check code: {check[:64]!r}"
        raise NetworksFileError(msg)
    evidence: dict[str, Any] = _field(item, "evidence", dict, where)
    return Finding(
        kind=Kind.CONFIG,
        severity=severity,
        target=_text(item, "target", _MAX_TARGET, where),
        summary=_text(item, "summary", _MAX_SUMMARY, where),
        evidence=evidence,
        fix=_text(item, "fix", _MAX_FIX, where),
        key=_text(item, "key", _MAX_KEY, where),
        check=check,
    )


def _items(doc: Mapping[str, Any], key: str, limit: int) -> Sequence[object]:
    items: list[object] = _field(doc, key, list, "file")
    if len(items) > limit:
        msg = f"file: '{key}' has {len(items)} entries, more than {limit}"
        raise NetworksFileError(msg)
    return items


def decode(data: bytes) -> NetworksDoc:
    """Parse and check a networks file; ``NetworksFileError`` says what is wrong."""
    if len(data) > MAX_BYTES:
        msg = f"file: {len(data)} bytes, more than the {MAX_BYTES} a ConfigMap can hold"
        raise NetworksFileError(msg)
    if not data.strip():
        msg = "file: empty (the watcher has not published yet?)"
        raise NetworksFileError(msg)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = f"file: not JSON: {exc}"
        raise NetworksFileError(msg) from None
    if not isinstance(doc, dict):
        msg = "file: not a JSON object"
        raise NetworksFileError(msg)
    if doc.get("format") != FORMAT:
        msg = f"file: 'format' is not {FORMAT!r}"
        raise NetworksFileError(msg)
    if doc.get("version") != VERSION or isinstance(doc.get("version"), bool):
        shown = str(doc.get("version"))[:16]
        msg = f"file: version {shown} is not {VERSION}; upgrade the auditor"
        raise NetworksFileError(msg)
    synced = doc.get("synced_at")
    if synced is not None:
        if isinstance(synced, bool) or not isinstance(synced, int | float):
            msg = "file: 'synced_at' is not a number or null"
            raise NetworksFileError(msg)
        if not math.isfinite(synced) or synced <= 0:
            msg = "file: 'synced_at' is not a positive finite time"
            raise NetworksFileError(msg)
    omitted = doc.get("findings_omitted", 0)
    if isinstance(omitted, bool) or not isinstance(omitted, int) or omitted < 0:
        msg = "file: 'findings_omitted' is not a count"
        raise NetworksFileError(msg)
    return NetworksDoc(
        synced_at=float(synced) if synced is not None else None,
        source=_text(doc, "source", _MAX_SOURCE, "file"),
        networks=tuple(_network(x, i) for i, x in enumerate(_items(doc, "networks", MAX_NETWORKS))),
        findings=tuple(_finding(x, i) for i, x in enumerate(_items(doc, "findings", MAX_FINDINGS))),
        findings_omitted=omitted,
    )
