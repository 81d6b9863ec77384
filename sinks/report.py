"""The replay report: one JSON object, or a table / markdown rendering of it for humans."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from parsers.records import ParseStats
from pipeline.core.engine import Engine
from pipeline.core.findings import Finding, Severity
from pipeline.core.fixes import ALLOWLIST, JSON_FORMAT, KEEP_HEADERS, PRESERVE_CLIENT_IP

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


# The JSON contract's version (docs/schema/replay-report.schema.json): raised when a field is
# removed or changes meaning; adding a field or a finding kind keeps it.
SCHEMA_VERSION = 1


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
    # From the engine's counts: rebuilding 100,000 compact decisions to count them is not cheap.
    by_scope: dict[str, int] = {}
    for (scope, _type, _cls), n in engine.decision_counts.items():
        by_scope[scope] = by_scope.get(scope, 0) + n
    findings = sorted_findings(list(engine.findings.values()))
    # Every severity, zeros too, most severe first: a script reads a count without a default.
    by_severity: dict[str, int] = {s.value: 0 for s in reversed(Severity)}
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
            "active": engine.decisions_active,
            "internal": len(engine.internal_decisions),
            "by_scope": by_scope,
        },
        "findings": by_severity,
    }
    rendered = [f.as_dict() for f in findings]
    if geo is not None:
        rendered = [geo.enrich_dict(f) for f in rendered]
    return {"schema_version": SCHEMA_VERSION, "summary": summary, "findings": rendered}


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


# -- shared by the human renderings (table, markdown, html) -------------------------------------

_KNOWN_FIXES = (ALLOWLIST, PRESERVE_CLIENT_IP, KEEP_HEADERS, JSON_FORMAT)


def fix_parts(fix: str) -> list[str]:
    """A fix cut into its paragraphs: the known ones of ``pipeline.core.fixes`` and the text
    between them, so a paragraph shared by several findings can be printed once."""
    parts: list[str] = []
    rest = fix
    while rest:
        hits = [(rest.find(k), k) for k in _KNOWN_FIXES if k in rest]
        if not hits:
            parts.append(rest.strip())
            break
        at, known = min(hits)
        if rest[:at].strip():
            parts.append(rest[:at].strip())
        parts.append(known)
        rest = rest[at + len(known) :]
    return [p for p in parts if p]


@dataclass(frozen=True, slots=True)
class FixPlan:
    """Which fix paragraphs several findings share (numbered, printed once at the end) and
    which belong to one finding only (printed with it)."""

    shared: tuple[str, ...]

    @classmethod
    def of(cls, fixes: list[str]) -> FixPlan:
        seen: dict[str, int] = {}
        for fix in fixes:
            for part in dict.fromkeys(fix_parts(fix)):
                seen[part] = seen.get(part, 0) + 1
        return cls(tuple(p for p, n in seen.items() if n > 1))

    def split(self, fix: str) -> tuple[list[str], list[int]]:
        """The paragraphs of ``fix`` to print inline, and the numbers (1-based) of the rest."""
        inline, refs = [], []
        for part in fix_parts(fix):
            if part in self.shared:
                refs.append(self.shared.index(part) + 1)
            else:
                inline.append(part)
        return inline, refs


def refs_text(refs: list[int], *, first: bool) -> str:
    if not refs:
        return ""
    names = ", ".join(f"[{n}]" for n in refs)
    return f"See fix{'es' if len(refs) > 1 else ''} {names} below." if first else names


def group_findings(findings: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[Any]]]:
    """Findings that read the same (several decisions on one target): one entry each, with the
    decision ids it stands for (empty when it stands alone)."""
    groups: dict[str, tuple[dict[str, Any], list[Any]]] = {}
    for f in findings:
        ev = {k: v for k, v in f["evidence"].items() if k != "decision"}
        key = orjson.dumps(
            [f["kind"], f["severity"], f["target"], f["summary"], f["fix"], ev],
            option=orjson.OPT_SORT_KEYS,
        ).decode()
        decision = f["evidence"].get("decision") or {}
        if key in groups:
            groups[key][1].append(decision.get("id"))
        else:
            groups[key] = (f, [decision.get("id")])
    return [(f, ids if len(ids) > 1 else []) for f, ids in groups.values()]


def window_label(ev: dict[str, Any]) -> str:
    """``worst 15 min window``: a masking finding is about its worst window, not the whole span
    the entrypoint table shows."""
    return f"worst {ev['window_s'] / 60:g} min window" if ev.get("window_s") else "worst window"


def window_times(ev: dict[str, Any]) -> str:
    """``2025-03-14T08:06:59Z to 2025-03-14T08:21:59Z`` (ISO-8601, never epoch seconds)."""
    end = ev.get("window_end")
    if not end or not ev.get("window_s"):
        return f"to {_iso(end)}" if end else ""
    return f"{_iso(end - ev['window_s'])} to {_iso(end)}"


def details(f: dict[str, Any]) -> list[str]:
    """The evidence worth reading, one line each (the JSON format carries all of it)."""
    ev = f["evidence"]
    out = []
    for addr, g in (ev.get("geo") or {}).items():
        out.append(f"{addr}: {geo_text(g)}")
    blast = ev.get("blast_radius")
    if blast:
        out.append(
            f"blast radius: {blast['requests']}/{blast['total_requests']} requests "
            f"({_pct(blast['request_share'])}), {blast['hosts']} hosts "
            f"({_pct(blast['host_share'])}), {blast['routers']} routers "
            f"({_pct(blast['router_share'])})"
        )
    hops = ev.get("internal_hops")
    if hops:
        out.append(
            (f"window {window_times(ev)}" if ev.get("window_end") else window_label(ev))
            + f": {ev['internal_requests']}/{ev['requests']} requests "
            f"({_pct(ev['internal_share'])}) from internal hops "
            f"({', '.join(h['address'] for h in hops[:3])}); "
            f"headers kept: {'yes' if ev['headers_kept'] else 'no'}"
        )
    return out


def severity_counts(report: dict[str, Any]) -> list[tuple[str, int]]:
    """Every severity, worst first, zeros included (a reader sees what is absent too)."""
    counts = report["summary"].get("findings") or {}
    return [(s.value, int(counts.get(s.value, 0))) for s in reversed(Severity)]


# -- table ----------------------------------------------------------------------------------------

_SEVERITY_SGR = {"critical": "1;31", "high": "31", "medium": "33", "low": "36", "info": "2"}


@dataclass(frozen=True, slots=True)
class Style:
    """How the table is drawn: the terminal's width, and whether to colour severities."""

    width: int = 80
    color: bool = False

    def severity(self, sev: str, text: str) -> str:
        if not self.color:
            return text
        return f"\x1b[{_SEVERITY_SGR.get(sev, '0')}m{text}\x1b[0m"

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.color else text

    def wrap(self, text: str, indent: str, hang: str = "") -> list[str]:
        return textwrap.wrap(
            text,
            width=max(self.width, 40),
            initial_indent=indent,
            subsequent_indent=indent + hang,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [indent]


def _table(headers: list[str], rows: list[list[str]], width: int = 1 << 16) -> list[str]:
    """Left-aligned columns; the last column is cut (with …) when the row would not fit."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    room = max(width, 40) - sum(widths[:-1]) - 2 * (len(widths) - 1)
    if widths[-1] > room:
        widths[-1] = max(room, len(headers[-1]))

    def row(cells: list[str]) -> str:
        cut = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(cells, widths, strict=True)]
        return "  ".join(c.ljust(w) for c, w in zip(cut, widths, strict=True)).rstrip()

    return [row(headers), row(["-" * w for w in widths]), *(row(r) for r in rows)]


def render_table(report: dict[str, Any], style: Style | None = None) -> str:
    st = style or Style()
    s = report["summary"]
    lines = s["lines"]
    out: list[str] = []
    out += st.wrap(
        f"Lines: {lines['read']} read, {lines['parsed']} parsed "
        f"({lines['json']} JSON, {lines['common']} common format), "
        f"{lines['read'] - lines['parsed']} skipped"
        + (
            " (" + ", ".join(f"{k}: {v}" for k, v in lines["skipped"].items()) + ")"
            if lines["skipped"]
            else ""
        ),
        "",
        "  ",
    )
    out += [
        f"Time span: {s['time_span']['first']} .. {s['time_span']['last']}",
        f"Decisions: {s['decisions']['active']} active, "
        f"{s['decisions']['internal']} on internal targets",
        "",
        "Entrypoints (whole span):",
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
        st.width,
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
        st.width,
    )
    counts = ", ".join(
        st.severity(sev, f"{n} {sev}") if n else f"{n} {sev}" for sev, n in severity_counts(report)
    )
    out += ["", st.bold(f"Findings ({len(report['findings'])}):") + f" {counts}"]
    if not report["findings"]:
        out.append("  none")
    groups = group_findings(report["findings"])
    plan = FixPlan.of([f["fix"] for f, _ in groups])
    for f, ids in groups:
        tag = st.severity(f["severity"], f"[{f['severity'].upper()}]")
        head = f"{f['kind']} {f['target']}"
        if ids:
            head += f" ({len(ids)} decisions: {', '.join(str(i) for i in ids)})"
        if f["kind"] == "masked_client_ip":
            head += f", {window_label(f['evidence'])}"
        # Wrapped without the colour codes (they take no room), then painted.
        plain = f"[{f['severity'].upper()}]"
        wrapped = st.wrap(f"{plain} {head}: {f['summary']}", "  ", "    ")
        wrapped[0] = wrapped[0].replace(plain, tag, 1)
        out += wrapped
        for line in details(f):
            out += st.wrap(line, "    ", "  ")
        inline, refs = plan.split(f["fix"])
        text = " ".join([*inline, refs_text(refs, first=True)]).strip()
        out += st.wrap(f"fix: {text}", "    ", "     ")
    if plan.shared:
        out += ["", st.bold("Fixes:")]
        for n, part in enumerate(plan.shared, 1):
            out += st.wrap(f"[{n}] {part}", "  ", "    ")
    return "\n".join(out) + "\n"


# -- markdown -------------------------------------------------------------------------------------


def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = s["lines"]
    out = [
        "# ban-auditor replay report",
        "",
        f"- Inputs: {', '.join(f'`{i}`' for i in s['inputs'])}",
        f"- Lines: {lines['read']} read, {lines['parsed']} parsed, "
        f"{lines['read'] - lines['parsed']} skipped"
        + (
            " (" + ", ".join(f"{k}: {v}" for k, v in lines["skipped"].items()) + ")"
            if lines["skipped"]
            else ""
        ),
        f"- Time span: {s['time_span']['first']} .. {s['time_span']['last']}",
        f"- Decisions: {s['decisions']['active']} active, {s['decisions']['internal']} internal",
        "- Findings: " + ", ".join(f"{n} {sev}" for sev, n in severity_counts(report)),
        "",
        "## Entrypoints (whole span)",
        "",
        "| entrypoint | requests | internal | share | clients |",
        "|---|---:|---:|---:|---:|",
    ]
    out += [
        f"| {_md_cell(e['name'])} | {e['requests']} | {e['internal_requests']} "
        f"| {_pct(e['internal_share'])} | {e['distinct_clients']} |"
        for e in s["entrypoints"]
    ]
    with_geo = any("geo" in c for c in s["top_clients"])
    out += [
        "",
        "## Top clients",
        "",
        "| address | requests | share | class |" + (" geo |" if with_geo else ""),
        "|---|---:|---:|---|" + ("---|" if with_geo else ""),
    ]
    out += [
        f"| `{c['address']}` | {c['requests']} | {_pct(c['share'])} | {c['class']} |"
        + (f" {_md_cell(geo_text(c.get('geo')))} |" if with_geo else "")
        for c in s["top_clients"]
    ]
    out += ["", "## Findings", ""]
    if not report["findings"]:
        out.append("None.")
    groups = group_findings(report["findings"])
    plan = FixPlan.of([f["fix"] for f, _ in groups])
    for f, ids in groups:
        title = f"### {f['severity'].upper()} {f['kind']}: `{f['target']}`"
        if ids:
            title += f" ({len(ids)} decisions: {', '.join(str(i) for i in ids)})"
        out += [title, "", f["summary"], ""]
        decision = f["evidence"].get("decision")
        facts = [
            *(
                [
                    f"decision {decision.get('id')}: {decision.get('type')} on "
                    f"{decision.get('scope')} `{decision.get('value')}` by "
                    f"{decision.get('origin')} ({decision.get('scenario')})"
                ]
                if decision and not ids
                else []
            ),
            *details(f),
        ]
        out += [f"- {_md_cell(x)}" for x in facts]
        inline, refs = plan.split(f["fix"])
        text = " ".join([*inline, refs_text(refs, first=True)]).strip()
        out += [*([""] if facts else []), f"**Fix:** {text}", ""]
    if plan.shared:
        out += ["## Fixes", ""]
        out += [f"{n}. {part}" for n, part in enumerate(plan.shared, 1)]
    return "\n".join(out).rstrip("\n") + "\n"
