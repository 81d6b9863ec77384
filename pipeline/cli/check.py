"""``auditor check``: one look at the cluster (and optionally the LAPI), findings with fixes.

Lists the cluster once (no watch), prints the internal networks it implies, the configuration
findings, the internal addresses CrowdSec currently bans (when ``--lapi-url`` is given) and the
allowlist to apply. Kubernetes (and with it aiohttp) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parsers.crowdsec import DecisionDelta
from pipeline.cli.allowlist import allowlist_from_facts
from pipeline.cli.args import (
    add_bouncer_args,
    add_cluster_args,
    bouncer_from_args,
    cluster_from_args,
)
from pipeline.core.addresses import Classifier, Network
from pipeline.core.allowlist import Allowlist
from pipeline.core.bouncer import BouncerSettings
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.findings import Finding, Kind, Severity, at_or_above
from pipeline.core.networks import missing_k3s_defaults
from pipeline.errors import EXIT_FINDINGS, EXIT_OK, UsageError
from pipeline.listen import split_urls, url_problem

if TYPE_CHECKING:
    from parsers.crowdsec import Decision
    from pipeline.kube.middleware import BouncerMiddleware
    from pipeline.kube.model import ClusterFacts

# The JSON contract's version (docs/schema/check-report.schema.json), as for replay.
CHECK_SCHEMA_VERSION = 1
NO_PLUGIN = "no Middleware configures the CrowdSec bouncer plugin (or its CRD is not installed)"


@dataclass(frozen=True, slots=True)
class CheckResult:
    source: str
    facts: ClusterFacts
    networks: tuple[Network, ...]
    findings: tuple[Finding, ...]
    allowlist: Allowlist
    decisions: int | None  # active decisions read from the LAPI, None without --lapi-url
    bouncer: BouncerView | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": CHECK_SCHEMA_VERSION,
            "networks": [
                {"cidr": n.cidr, "class": n.cls.value, "provenance": n.provenance}
                for n in self.networks
            ],
            "findings": [f.as_dict() for f in self.findings],
            "allowlist": self.allowlist.as_dict(),
        }
        if self.bouncer is not None and self.bouncer.present:
            out["bouncer"] = self.bouncer.as_dict()
        return out


@dataclass(frozen=True, slots=True)
class BouncerView:
    """The bouncer plugin as ``check`` found it: its Middlewares, the settings in effect (the
    flags', else the one Middleware's), and notes on what could not be read."""

    middlewares: tuple[BouncerMiddleware, ...]
    effective: BouncerSettings | None
    notes: tuple[str, ...]

    @property
    def present(self) -> bool:
        """Something to say: a Middleware, flags, or a list that failed. A cluster without
        the plugin's CRD keeps the JSON report it always had (the table still notes it)."""
        return bool(self.middlewares or self.effective or self.notes != (NO_PLUGIN,))

    def as_dict(self) -> dict[str, Any]:
        return {
            "middlewares": [m.as_dict() for m in self.middlewares],
            "effective": self.effective.as_dict() if self.effective is not None else None,
            "notes": list(self.notes),
        }


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check",
        help="audit the cluster's client-IP path and CrowdSec's current internal bans",
        description="Read the cluster once and report: internal networks, configuration "
        "findings with fixes, bans on internal addresses (with --lapi-url), and the allowlist "
        "to apply. Exit 0 when nothing is at or above --fail-on, 1 otherwise, 2 on usage or "
        "connection errors.",
    )
    add_cluster_args(p)
    p.add_argument(
        "--lapi-url",
        metavar="URL",
        help="CrowdSec LAPI, e.g. http://crowdsec-service.crowdsec:8080",
    )
    p.add_argument(
        "--lapi-key-file",
        metavar="PATH",
        help="file holding a bouncer API key (cscli bouncers add)",
    )
    p.add_argument(
        "-o",
        "--format",
        choices=("table", "json", "markdown"),
        default="table",
        help="output format (default: %(default)s)",
    )
    p.add_argument(
        "--fail-on",
        choices=[*(s.value for s in Severity), "never", "none"],
        default=Severity.HIGH.value,
        help="exit 1 when a finding has this severity or more; never (or none): report only "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--crowdsec-metrics-url",
        action="append",
        default=[],
        metavar="URL",
        help="a CrowdSec agent's Prometheus endpoint (repeatable or comma-separated): "
        "whitelist_gap findings from one scrape of each",
    )
    add_bouncer_args(p)
    p.set_defaults(func=run_check)


def internal_bans(decisions: Sequence[Decision], networks: Iterable[Network]) -> list[Finding]:
    """The engine judges the LAPI's decisions, as it does for ``run`` and ``replay``: one rule
    for decision types, simulation and severity, one evidence shape. Without traffic the blast
    radius is empty."""
    engine = Engine(EngineConfig(blast_scope="span"), Classifier(networks), time.time)
    engine.apply(DecisionDelta(new=tuple(decisions), deleted=(), startup=True))
    engine.finish()
    return [f for f in engine.findings.values() if f.kind is Kind.INTERNAL_BAN]


def unseen_bans(
    decisions: Sequence[Decision], networks: Iterable[Network], settings: BouncerSettings
) -> list[Finding]:
    """Live bans the bouncer never looks up (their address is in clientTrustedIPs), judged by
    the engine as ``run`` judges them. Without traffic nothing else can be said."""
    config = EngineConfig(blast_scope="span", bouncer=settings)
    engine = Engine(config, Classifier(networks), time.time)
    engine.apply(DecisionDelta(new=tuple(decisions), deleted=(), startup=True))
    engine.finish()
    return [f for f in engine.findings.values() if f.kind is Kind.BAN_MISMATCH]


async def _bouncer_view(args: argparse.Namespace, flags: BouncerSettings | None) -> BouncerView:
    """The Middlewares in the cluster; a missing CRD or RBAC that hides them is a note."""
    from pipeline.kube.api import KubeApiError
    from pipeline.kube.client import connect
    from pipeline.kube.middleware import list_bouncer_middlewares

    api = await connect(args.kubeconfig, args.context)
    try:
        scan = await list_bouncer_middlewares(api)
    except KubeApiError as exc:
        return BouncerView((), flags, (f"middlewares: cannot list them ({exc})",))
    finally:
        await api.close()
    notes = list(scan.notes)
    if not scan.found and all("not served" in n or n.startswith("no Middleware") for n in notes):
        notes = [NO_PLUGIN]
    effective = flags
    distinct = {
        (m.settings.trusted, m.settings.client_trusted, m.settings.header) for m in scan.found
    }
    if flags is not None:
        notes.append(f"the bouncer settings in effect are the flags' ({flags.source})")
    elif len(distinct) == 1:
        effective = scan.found[0].settings
    elif distinct:
        refs = ", ".join(m.ref for m in scan.found[:5])
        notes.append(
            f"{len(scan.found)} bouncer Middlewares with different settings ({refs}): each is "
            "shown; give --plugin-config to judge decisions against one"
        )
    if effective is not None and not effective.judgeable:
        notes.append(
            f"forwardedHeadersCustomName {effective.header!r}: the access log does not carry "
            "it, so replay and run cannot judge requests against these settings"
        )
    return BouncerView(scan.found, effective, tuple(notes))


# -- run ------------------------------------------------------------------------------------------
async def _check(args: argparse.Namespace, lapi_key: str | None) -> CheckResult:
    # Lazy: Kubernetes costs ~60 MB; `import pipeline.cli.check` must stay light for the CLI.
    from pipeline.crowdsec.client import fetch_decisions
    from pipeline.kube.checks import check_cluster

    facts, discovered, where = await cluster_from_args(args)
    # Guesses first, then what the cluster says (the order `auditor check` has always shown).
    networks = (*missing_k3s_defaults(discovered), *discovered)
    findings = check_cluster(facts)
    bouncer = await _bouncer_view(args, bouncer_from_args(args))
    decisions: int | None = None
    if args.lapi_url and lapi_key is not None:
        active = await fetch_decisions(args.lapi_url, lapi_key)
        decisions = len(active)
        findings += internal_bans(active, networks)
        if bouncer.effective is not None:
            findings += unseen_bans(active, networks, bouncer.effective)
    if args.crowdsec_metrics_url:
        from pipeline.crowdsec.health import look_once

        urls = [u for value in args.crowdsec_metrics_url for u in split_urls(value)]
        findings += await look_once(urls)
    findings.sort(key=lambda f: -f.severity.rank)
    return CheckResult(
        source=where,
        facts=facts,
        networks=networks,
        findings=tuple(findings),
        allowlist=allowlist_from_facts(facts, networks, source=f"discovered from {where}"),
        decisions=decisions,
        bouncer=bouncer,
    )


def run_check(args: argparse.Namespace) -> int:
    urls = [("--lapi-url", args.lapi_url)] if args.lapi_url else []
    urls += [
        ("--crowdsec-metrics-url", u) for v in args.crowdsec_metrics_url for u in split_urls(v)
    ]
    for flag, url in urls:
        why = url_problem(url)
        if why:
            msg = f"{flag}: {why}"
            raise UsageError(msg)
    if bool(args.lapi_url) != bool(args.lapi_key_file):
        msg = "--lapi-url and --lapi-key-file go together"
        raise UsageError(msg)
    key = None
    if args.lapi_key_file:
        from pipeline.secrets import secret_from_file

        secret, _ = secret_from_file(args.lapi_key_file, what="--lapi-key-file")
        key = secret.reveal()
    result = asyncio.run(_check(args, key))
    render = {"json": render_json, "markdown": render_markdown, "table": render_table}[args.format]
    sys.stdout.write(render(result))
    if args.fail_on in ("never", "none"):
        return EXIT_OK
    return EXIT_FINDINGS if at_or_above(list(result.findings), Severity(args.fail_on)) else EXIT_OK


# -- rendering ------------------------------------------------------------------------------------
def render_json(result: CheckResult) -> str:
    return json.dumps(result.as_dict(), indent=2) + "\n"


def _overview(result: CheckResult) -> list[str]:
    facts = result.facts
    t = facts.traefik
    workloads = ", ".join(
        f"{w.kind} {w.ref} ({_plural(sum(1 for p in t.pods if p.workload == w), 'pod')})"
        for w in t.workloads
    )
    services = ", ".join(
        f"Service {s.ref} {s.type}" + (f" externalTrafficPolicy={s.etp}" if s.exposed else "")
        for s in t.services
    )
    lb = []
    if facts.servicelb:
        lb.append(f"k3s servicelb ({_plural(len(facts.servicelb), 'DaemonSet')})")
    if facts.metallb.present:
        lb.append("MetalLB")
    lines = [
        f"Cluster: {result.source}",
        f"Nodes: {len(facts.nodes)}; load balancers: {', '.join(lb) or 'none found'}",
        f"Traefik: {'; '.join(x for x in (workloads, services) if x) or 'not found'}",
    ]
    if result.decisions is not None:
        bans = sum(1 for f in result.findings if f.kind is Kind.INTERNAL_BAN)
        lines.append(
            f"CrowdSec LAPI: {result.decisions} active decisions, {bans} on internal addresses"
        )
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _counts(findings: Sequence[Finding]) -> str:
    parts = []
    for sev in reversed(Severity):
        n = sum(1 for f in findings if f.severity is sev)
        if n:
            parts.append(f"{n} {sev.value}")
    return ", ".join(parts) or "none"


def _evidence_text(evidence: dict[str, Any]) -> str:
    return "; ".join(
        f"{k}={json.dumps(v, separators=(',', ':')) if not isinstance(v, str) else v}"
        for k, v in evidence.items()
    )


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + ln if ln else ln for ln in text.splitlines())


def render_table(result: CheckResult) -> str:
    out = _overview(result)
    rows = [(n.cidr, n.cls.value, n.provenance) for n in result.networks]
    w1 = max((len(r[0]) for r in rows), default=4)
    w2 = max((len(r[1]) for r in rows), default=5)
    out += ["", f"INTERNAL NETWORKS ({len(rows)})", f"{'CIDR':<{w1}}  {'CLASS':<{w2}}  PROVENANCE"]
    out += [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows]
    out += ["", f"FINDINGS ({len(result.findings)}: {_counts(result.findings)})"]
    for f in result.findings:
        code = f.check or f.kind.value
        out += [
            "",
            f"[{f.severity.value.upper()}] {code}  {f.target}",
            _indent(f.summary, "  "),
            "  evidence: " + _evidence_text(dict(f.evidence)),
            "  fix:",
            _indent(f.fix, "    "),
        ]
    out += _bouncer_lines(result.bouncer, "BOUNCER PLUGIN (the address it checks)")
    a = result.allowlist
    out += [
        "",
        "CROWDSEC WHITELIST (s02-enrich parser)",
        a.whitelist_yaml().rstrip("\n"),
        "",
        "TRAEFIK BOUNCER PLUGIN (trusted IPs)",
        a.middleware_yaml().rstrip("\n"),
        "",
        "TRAEFIK ENTRY POINTS",
        a.entrypoints_yaml().rstrip("\n"),
    ]
    return "\n".join(out) + "\n"


def _bouncer_lines(view: BouncerView | None, title: str, bullet: str = "") -> list[str]:
    if view is None:
        return []
    out = ["", title]
    for m in view.middlewares:
        out.append(f"{bullet}Middleware {m.ref} ({m.api}), plugin {m.plugin}")
    if view.effective is not None:
        s = view.effective
        out += [
            f"{bullet}in effect ({s.source}):",
            f"{bullet}  forwardedHeadersTrustedIPs: {', '.join(s.trusted) or '(none)'}",
            f"{bullet}  clientTrustedIPs: {', '.join(s.client_trusted) or '(none)'}",
            f"{bullet}  forwardedHeadersCustomName: {s.header}",
        ]
    out += [f"{bullet}note: {n}" for n in view.notes]
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(result: CheckResult) -> str:
    out = ["# auditor check", "", *(f"- {ln}" for ln in _overview(result))]
    out += [
        "",
        f"## Internal networks ({len(result.networks)})",
        "",
        "| CIDR | Class | Provenance |",
        "|---|---|---|",
    ]
    out += [f"| `{n.cidr}` | {n.cls.value} | {_md_cell(n.provenance)} |" for n in result.networks]
    out += ["", f"## Findings ({_counts(result.findings)})"]
    for f in result.findings:
        out += [
            "",
            f"### {f.severity.value.upper()} `{f.check or f.kind.value}` — {f.target}",
            "",
            f.summary,
            "",
            "```json",
            json.dumps(dict(f.evidence), indent=2),
            "```",
            "",
            "Fix:",
            "",
            "```",
            f.fix,
            "```",
        ]
    view = result.bouncer
    if view is not None:
        lines = _bouncer_lines(view, "## Bouncer plugin (the address it checks)", "- ")
        out += [*lines[:2], "", *lines[2:]]
    a = result.allowlist
    out += ["", "## Allowlist", ""]
    for title, text in (
        ("CrowdSec whitelist (s02-enrich parser)", a.whitelist_yaml()),
        ("Traefik bouncer plugin", a.middleware_yaml()),
        ("Traefik entry points", a.entrypoints_yaml()),
    ):
        out += [f"### {title}", "", "```yaml", text.rstrip("\n"), "```", ""]
    return "\n".join(out)
