"""``auditor replay --format html``: one self-contained HTML page for people without Grafana.

No script, no font, no stylesheet from anywhere: the chart is inline SVG and the style inline
CSS, so the file can be mailed or attached to a ticket and viewed offline. It shows the internal
share over time per entrypoint (the masking window shaded, the moment masking started marked),
the top clients with their class, the findings with their blast radius, and each fix once.

The share over time needs per-minute counts that the engine folds away; ``ShareHistory`` is a
``Timeline`` that also keeps them (a few integers per entrypoint and minute), and replay uses it
only for this format.
"""

from __future__ import annotations

import html
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core.addresses import INTERNAL_CLASSES
from pipeline.core.traffic import Classify, Run, Summary, Timeline
from sinks.report import (
    FixPlan,
    _iso,
    _pct,
    details,
    group_findings,
    refs_text,
    severity_counts,
    window_label,
    window_times,
)

MAX_BUCKETS = 50_000  # a month of minutes; older ones are dropped first (the chart thins out)


class ShareHistory(Timeline):
    """A ``Timeline`` that also keeps requests and internal requests per entrypoint and bucket."""

    __slots__ = ("history",)

    def __init__(self, window_s: int, bucket_s: int) -> None:
        super().__init__(window_s, bucket_s)
        self.history: dict[int, dict[str, list[int]]] = {}

    def add_runs(
        self,
        runs: Sequence[Run],
        classify: Classify,
        on_close: Callable[[], None] | None = None,
    ) -> list[int]:
        newest = self.newest_bucket
        for run_bucket, tally, _first, _last in runs:
            # As the timeline files it: a run no newer than the newest bucket joins that one.
            bucket = run_bucket if newest is None else max(run_bucket, newest)
            newest = bucket
            row = self.history.setdefault(bucket, {})
            if isinstance(tally, Summary):
                for ep, n in tally.ep_total.items():
                    cell = row.setdefault(ep, [0, 0])
                    cell[0] += n
                    cell[1] += tally.ep_internal.get(ep, 0)
            else:
                for key, n in tally.items():
                    cell = row.setdefault(key[0], [0, 0])
                    cell[0] += n
                    if classify(key[1]).cls in INTERNAL_CLASSES:
                        cell[1] += n
            while len(self.history) > MAX_BUCKETS:
                del self.history[min(self.history)]
        return super().add_runs(runs, classify, on_close)


@dataclass(frozen=True, slots=True)
class Curve:
    """The sliding-window internal share of one entrypoint, as the engine judges it."""

    entrypoint: str
    points: tuple[tuple[float, float], ...]  # (window end, share) where the window has enough
    started: float | None  # first window end at or above the masked share


def curves(history: ShareHistory, *, masked_share: float, min_requests: int) -> list[Curve]:
    """One point per bucket with traffic: the share over the window ending with it (a sliding
    sum over the buckets present, so a log spanning years costs no more than its minutes)."""
    bucket_s, span = history.bucket_s, max(1, history.window_s // history.bucket_s)
    buckets = sorted(history.history)
    eps = sorted({ep for row in history.history.values() for ep in row})
    out = []
    for ep in eps:
        points: list[tuple[float, float]] = []
        started = None
        live: deque[tuple[int, int, int]] = deque()
        total = internal = 0
        for b in buckets:
            cell = history.history[b].get(ep)
            if cell:
                live.append((b, cell[0], cell[1]))
                total += cell[0]
                internal += cell[1]
            while live and live[0][0] <= b - span:
                _, n, i = live.popleft()
                total -= n
                internal -= i
            if not cell or total < min_requests:
                continue
            share = internal / total
            end = float((b + 1) * bucket_s)
            points.append((end, share))
            if started is None and share >= masked_share:
                started = end
        out.append(Curve(ep, tuple(points), started))
    return out


# -- rendering ------------------------------------------------------------------------------------

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MASK_FILL = "#f4b6b6"  # the masking window's band (the screenshot test looks for it)
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#1d1d1f;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}table{border-collapse:collapse;margin:6px 0}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}td.n{text-align:right}
.sev{display:inline-block;padding:1px 8px;border-radius:4px;color:#fff;font-weight:600;
font-size:13px}.critical{background:#b00020}.high{background:#d9480f}.medium{background:#b8860b}
.low{background:#1c7ed6}.info{background:#868e96}.finding{border:1px solid #e3e3e3;
border-radius:6px;padding:10px 14px;margin:10px 0}.finding h3{margin:0 0 6px;font-size:16px}
code{background:#f3f3f3;padding:0 3px;border-radius:3px;font-size:13px}
.counts span{margin-right:14px}ol.fixes li{margin:6px 0}svg text{font:12px sans-serif}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _code(text: str) -> str:
    """Escape, and show `backticked` parts as code (the fixes quote commands and keys)."""
    parts = _esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _hhmm(ts: float) -> str:
    iso = _iso(ts) or ""
    return iso[11:16] if len(iso) >= 16 else iso


def chart(curves_: list[Curve], report: dict[str, Any], masked_share: float) -> str:
    """Inline SVG: one line per entrypoint, the threshold dashed, masking windows shaded and
    the first crossing marked."""
    w, h, left, right, top, bottom = 1000, 340, 56, 16, 16, 56
    pts = [p for c in curves_ for p in c.points]
    if not pts:
        return "<p>Not enough requests in any window to draw the share over time.</p>"
    t0, t1 = min(t for t, _ in pts), max(t for t, _ in pts)
    if t1 <= t0:
        t1 = t0 + 1

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * (w - left - right)

    def y(share: float) -> float:
        return top + (1 - share) * (h - top - bottom)

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" '
        f'role="img" aria-label="internal share over time per entrypoint">',
        f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    for f in report["findings"]:
        ev = f["evidence"]
        if f["kind"] != "masked_client_ip" or not ev.get("window_end"):
            continue
        a = max(t0, ev["window_end"] - ev.get("window_s", 0))
        b = min(t1, ev["window_end"])
        if b > a:
            svg.append(
                f'<rect x="{x(a):.1f}" y="{top}" width="{max(2.0, x(b) - x(a)):.1f}" '
                f'height="{h - top - bottom}" fill="{MASK_FILL}" fill-opacity="0.75">'
                f"<title>{_esc(window_label(ev))} on {_esc(f['target'])}: "
                f"{_esc(window_times(ev))}</title></rect>"
            )
    for frac in (0, 0.25, 0.5, 0.75, 1):
        svg.append(
            f'<line x1="{left}" x2="{w - right}" y1="{y(frac):.1f}" y2="{y(frac):.1f}" '
            f'stroke="#e5e5e5"/><text x="{left - 6}" y="{y(frac) + 4:.1f}" '
            f'text-anchor="end">{int(frac * 100)}%</text>'
        )
    svg.append(
        f'<line x1="{left}" x2="{w - right}" y1="{y(masked_share):.1f}" '
        f'y2="{y(masked_share):.1f}" stroke="#b00020" stroke-dasharray="6 4"/>'
        f'<text x="{w - right - 4}" y="{y(masked_share) - 5:.1f}" text-anchor="end" '
        f'fill="#b00020">masking threshold {_pct(masked_share)}</text>'
    )
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        svg.append(
            f'<text x="{x(t):.1f}" y="{h - bottom + 16}" text-anchor="middle">'
            f"{_esc(_hhmm(t))}</text>"
        )
    for i, c in enumerate(curves_):
        color = _COLORS[i % len(_COLORS)]
        path = " ".join(f"{x(t):.1f},{y(s):.1f}" for t, s in c.points)
        svg.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5">'
            f"<title>{_esc(c.entrypoint)}</title></polyline>"
        )
        if c.started is not None:
            sx = x(c.started)
            # Labels near the right edge grow leftwards so they stay inside the chart.
            lx, anchor = (sx - 4, "end") if sx > w * 0.6 else (sx + 4, "start")
            svg.append(
                f'<line x1="{sx:.1f}" x2="{sx:.1f}" y1="{top}" y2="{h - bottom}" '
                f'stroke="{color}" stroke-width="1.5" stroke-dasharray="2 3"/>'
                f'<text x="{lx:.1f}" y="{top + 14 + 14 * i}" fill="{color}" '
                f'text-anchor="{anchor}">masking started on {_esc(c.entrypoint or "-")} '
                f"{_esc(_hhmm(c.started))}</text>"
            )
    legend_y = h - 6
    for i, c in enumerate(curves_):
        lx = left + 150 * i
        svg.append(
            f'<rect x="{lx}" y="{legend_y - 9}" width="14" height="4" '
            f'fill="{_COLORS[i % len(_COLORS)]}"/>'
            f'<text x="{lx + 20}" y="{legend_y - 4}">{_esc(c.entrypoint or "-")}</text>'
        )
    svg.append("</svg>")
    return "\n".join(svg)


def render_html(
    report: dict[str, Any],
    history: ShareHistory | None = None,
    *,
    masked_share: float = 0.5,
    min_requests: int = 30,
) -> str:
    s = report["summary"]
    lines = s["lines"]
    found = (
        curves(history, masked_share=masked_share, min_requests=min_requests)
        if history is not None
        else []
    )
    minutes = f"{history.window_s / 60:g}" if history is not None else "?"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No network at view time, ever: nothing may load from anywhere.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        "<title>ban-auditor replay report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ban-auditor replay report</h1>",
        f'<p class="meta">{_esc(", ".join(s["inputs"]))} · {_esc(s["time_span"]["first"])} '
        f"to {_esc(s['time_span']['last'])} · {lines['parsed']} of {lines['read']} lines "
        f"parsed · {s['decisions']['active']} active decisions, "
        f"{s['decisions']['internal']} on internal targets</p>",
        '<p class="counts">'
        + "".join(
            f'<span><span class="sev {sev}">{n}</span> {sev}</span>'
            for sev, n in severity_counts(report)
        )
        + "</p>",
        f"<h2>Internal-client share over time ({minutes} min window)</h2>",
        chart(found, report, masked_share),
        '<p class="meta">Shaded: each entrypoint\'s worst window behind a masking finding. '
        "Dotted: where the share first reached the threshold.</p>",
        "<h2>Entrypoints (whole span)</h2>",
        "<table><tr><th>entrypoint</th><th>requests</th><th>internal</th><th>share</th>"
        "<th>clients</th></tr>",
        *(
            f"<tr><td>{_esc(e['name'])}</td><td class=n>{e['requests']}</td>"
            f"<td class=n>{e['internal_requests']}</td><td class=n>"
            f"{_pct(e['internal_share'])}</td><td class=n>{e['distinct_clients']}</td></tr>"
            for e in s["entrypoints"]
        ),
        "</table>",
        "<h2>Top clients</h2>",
        "<table><tr><th>address</th><th>requests</th><th>share</th><th>class</th></tr>",
        *(
            f"<tr><td><code>{_esc(c['address'])}</code></td><td class=n>{c['requests']}</td>"
            f"<td class=n>{_pct(c['share'])}</td><td>{_esc(c['class'])}</td></tr>"
            for c in s["top_clients"]
        ),
        "</table>",
        f"<h2>Findings ({len(report['findings'])})</h2>",
    ]
    if not report["findings"]:
        out.append("<p>None.</p>")
    groups = group_findings(report["findings"])
    plan = FixPlan.of([f["fix"] for f, _ in groups])
    for f, ids in groups:
        sev = f["severity"]
        title = f"{_esc(f['kind'])} <code>{_esc(f['target'])}</code>"
        if ids:
            title += f" ({len(ids)} decisions: {_esc(', '.join(str(i) for i in ids))})"
        inline, refs = plan.split(f["fix"])
        fix = " ".join([*inline, refs_text(refs, first=True)]).strip()
        out += [
            '<div class="finding">',
            f'<h3><span class="sev {_esc(sev)}">{_esc(sev.upper())}</span> {title}</h3>',
            f"<p>{_code(f['summary'])}</p>",
            *(f"<p>{_code(d)}</p>" for d in details(f)),
            f"<p><b>Fix:</b> {_code(fix)}</p>",
            "</div>",
        ]
    if plan.shared:
        out += ["<h2>Fixes</h2>", '<ol class="fixes">']
        out += [f"<li>{_code(part)}</li>" for part in plan.shared]
        out.append("</ol>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
