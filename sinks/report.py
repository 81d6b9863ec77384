"""The replay report: one JSON object, or a table / markdown rendering of it for humans."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from parsers.records import ParseStats
from pipeline.core.engine import Engine
from pipeline.core.findings import Finding

if TYPE_CHECKING:
    from sinks.geoip import GeoIP


def _iso(ts: float) -> str | None:
    if not ts:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return None


def sorted_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.severity.rank, f.kind.value, f.target))


def build_report(engine: Engine, inputs: list[str], geo: GeoIP | None = None) -> dict[str, Any]:
    """The report; with ``geo``, public top clients get a ``geo`` object ({} when no database
    knows them) and findings that mention public addresses get ``evidence.geo``."""
    total = ParseStats()
    for st in engine.stats.values():
        total.merge(st)
    whole = engine.traffic.whole()
    tl = engine.traffic
    entrypoints = [
        {
            "name": ep,
            "requests": n,
            "internal_requests": whole.ep_internal.get(ep, 0),
            "internal_share": round(whole.ep_internal.get(ep, 0) / n, 4) if n else 0.0,
            "distinct_clients": len(whole.ep_clients.get(ep, ())),
        }
        for ep, n in sorted(whole.ep_total.items(), key=lambda kv: -kv[1])
    ]
    top: list[dict[str, Any]] = [
        {
            "address": addr,
            "requests": n,
            "share": round(n / whole.total, 4) if whole.total else 0.0,
            "class": engine.classifier.classify(addr).cls.value,
        }
        for addr, n in whole.top_clients(engine.config.top_k)
    ]
    if geo is not None:
        for client in top:
            if client["class"] == "public":
                client["geo"] = geo.lookup(client["address"]) or {}
    internal_decisions = [a for a in engine.decisions.values() if a.target.internal]
    by_scope: dict[str, int] = {}
    for a in engine.decisions.values():
        by_scope[a.decision.scope] = by_scope.get(a.decision.scope, 0) + 1
    findings = sorted_findings(list(engine.findings.values()))
    by_severity: dict[str, int] = {}
    for f in findings:
        by_severity[f.severity.value] = by_severity.get(f.severity.value, 0) + 1
    summary = {
        "inputs": inputs,
        "lines": {
            "read": total.lines,
            "parsed": total.parsed,
            "json": total.json,
            "common": total.common,
            "skipped": {r.value: n for r, n in total.skipped.items() if n},
        },
        "time_span": {
            "first": _iso(tl.first_ts),
            "last": _iso(tl.last_ts),
            "seconds": round(tl.last_ts - tl.first_ts, 3) if tl.first_ts else 0.0,
        },
        "requests": whole.total,
        "entrypoints": entrypoints,
        "top_clients": top,
        "decisions": {
            "active": len(engine.decisions),
            "internal": len(internal_decisions),
            "by_scope": by_scope,
        },
        "findings": by_severity,
    }
    rendered = [f.as_dict() for f in findings]
    if geo is not None:
        rendered = [geo.enrich_dict(f) for f in rendered]
    return {"summary": summary, "findings": rendered}


def render_json(report: dict[str, Any]) -> str:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def geo_text(geo: dict[str, Any] | None) -> str:
    """``DE AS3320 Deutsche Telekom AG``; ``-`` when nothing is known."""
    if not geo:
        return "-"
    parts = [str(geo["country"])] if geo.get("country") else []
    if geo.get("asn") is not None:
        parts.append(f"AS{geo['asn']}")
    if geo.get("as_org"):
        parts.append(str(geo["as_org"]))
    return " ".join(parts) or "-"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def render_table(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = s["lines"]
    out = [
        f"Lines: {lines['read']} read, {lines['parsed']} parsed "
        f"({lines['json']} JSON, {lines['common']} common format), "
        f"{lines['read'] - lines['parsed']} skipped"
        + (
            " (" + ", ".join(f"{k}: {v}" for k, v in lines["skipped"].items()) + ")"
            if lines["skipped"]
            else ""
        ),
        f"Time span: {s['time_span']['first']} .. {s['time_span']['last']}",
        f"Decisions: {s['decisions']['active']} active, "
        f"{s['decisions']['internal']} on internal targets",
        "",
        "Entrypoints:",
    ]
    out += _table(
        ["entrypoint", "requests", "internal", "share", "clients"],
        [
            [
                e["name"],
                str(e["requests"]),
                str(e["internal_requests"]),
                _pct(e["internal_share"]),
                str(e["distinct_clients"]),
            ]
            for e in s["entrypoints"]
        ],
    )
    out += ["", "Top clients:"]
    with_geo = any("geo" in c for c in s["top_clients"])
    out += _table(
        ["address", "requests", "share", "class", *(["geo"] if with_geo else [])],
        [
            [
                c["address"],
                str(c["requests"]),
                _pct(c["share"]),
                c["class"],
                *([geo_text(c.get("geo"))] if with_geo else []),
            ]
            for c in s["top_clients"]
        ],
    )
    out += ["", f"Findings ({len(report['findings'])}):"]
    if not report["findings"]:
        out.append("  none")
    for f in report["findings"]:
        out.append(f"  [{f['severity'].upper()}] {f['kind']} {f['target']}: {f['summary']}")
        for addr, g in (f["evidence"].get("geo") or {}).items():
            out.append(f"    {addr}: {geo_text(g)}")
        blast = f["evidence"].get("blast_radius")
        if blast:
            out.append(
                f"    blast radius: {blast['requests']}/{blast['total_requests']} requests "
                f"({_pct(blast['request_share'])}), {blast['hosts']} hosts "
                f"({_pct(blast['host_share'])}), {blast['routers']} routers "
                f"({_pct(blast['router_share'])})"
            )
        hops = f["evidence"].get("internal_hops")
        if hops:
            ev = f["evidence"]
            out.append(
                f"    window: {ev['internal_requests']}/{ev['requests']} requests from "
                f"internal hops ({', '.join(h['address'] for h in hops[:3])}); "
                f"headers kept: {'yes' if ev['headers_kept'] else 'no'}"
            )
        out += textwrap.wrap(
            f"fix: {f['fix']}", width=100, initial_indent="    ", subsequent_indent="         "
        )
    return "\n".join(out) + "\n"


def render_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = s["lines"]
    out = [
        "# ban-auditor replay report",
        "",
        f"- Lines: {lines['read']} read, {lines['parsed']} parsed, "
        f"{lines['read'] - lines['parsed']} skipped",
        f"- Time span: {s['time_span']['first']} .. {s['time_span']['last']}",
        f"- Decisions: {s['decisions']['active']} active, {s['decisions']['internal']} internal",
        "",
        "## Entrypoints",
        "",
        "| entrypoint | requests | internal | share |",
        "|---|---:|---:|---:|",
    ]
    out += [
        f"| {e['name']} | {e['requests']} | {e['internal_requests']} "
        f"| {_pct(e['internal_share'])} |"
        for e in s["entrypoints"]
    ]
    out += ["", "## Findings", ""]
    if not report["findings"]:
        out.append("None.")
    for f in report["findings"]:
        out += [
            f"### {f['severity'].upper()} {f['kind']}: `{f['target']}`",
            "",
            f["summary"],
            "",
            f"**Fix:** {f['fix']}",
            "",
            "```json",
            orjson.dumps(f["evidence"], option=orjson.OPT_INDENT_2).decode(),
            "```",
            "",
        ]
    return "\n".join(out) + "\n"
