"""``auditor replay``: audit saved access logs against a set of CrowdSec decisions, then exit.

Same parsers and engine as ``run``; the sources read to the end instead of following, and
"recent" traffic for the blast radius is the replayed input's own span.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from parsers.crowdsec import DecisionDelta, DecisionFormatError, parse_decisions
from parsers.envelope import Envelope, EnvelopeDecoder
from parsers.records import ParseStats, SkipReason
from pipeline.cli.args import (
    add_bouncer_args,
    add_network_args,
    bouncer_from_args,
    networks_from_args,
)
from pipeline.cli.progress import Progress
from pipeline.config import LIMITS
from pipeline.core.addresses import Classifier
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.feed import SourceAuditor
from pipeline.core.findings import Severity, at_or_above
from pipeline.core.traffic import Timeline
from pipeline.errors import EXIT_FINDINGS, EXIT_OK, UsageError
from pipeline.sources.parallel import audit_parallel
from pipeline.sources.readfile import input_size, open_input, text_batches
from sinks.report import Style, build_report, render_json, render_markdown, render_table

if TYPE_CHECKING:
    from pipeline.crowdsec.whitelists import Agent

FORMATS = ("table", "json", "markdown", "html")
NEVER = ("never", "none")  # --fail-on values for report-only use (make demo, scripts)
PARALLEL_MIN_BYTES = 32 << 20
MAX_JOBS = 64  # each job is a process with its own parser and buffers
DEFAULT_MAX_JOBS = 4  # measured on 2 cores only; the parent merges ~10x faster than a worker


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="audit saved Traefik access logs and CrowdSec decisions",
        description="Audit saved Traefik access logs (JSON or common format, plain, .gz or - "
        "for stdin) against CrowdSec decisions, print a report and exit 0 (clean), "
        "1 (findings at or above --fail-on) or 2 (usage or input error).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="access log file, .gz, or - (stdin)")
    p.add_argument(
        "--decisions",
        action="append",
        default=[],
        metavar="FILE",
        help="CrowdSec decisions: LAPI stream/decisions body, cscli decisions/alerts "
        "list -o json, or JSON lines of those (repeatable)",
    )
    p.add_argument(
        "-o",
        "--format",
        choices=FORMATS,
        default=None,
        help="output format; html is one self-contained page with a chart (default: table on a "
        "terminal, json otherwise)",
    )
    p.add_argument(
        "--fail-on",
        choices=[*(s.value for s in Severity), *NEVER],
        default="high",
        help="lowest severity that makes the exit code 1; never (or none): always 0 when the "
        "input was read (default: high)",
    )
    p.add_argument(
        "--envelope",
        choices=[e.value for e in Envelope],
        default="auto",
        help="container log envelope around each line (default: detect)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=900,
        metavar="SECONDS",
        help="sliding window for the masked-client share (default 900)",
    )
    p.add_argument(
        "--masked-share",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="internal-client share that flags masking (default 0.5)",
    )
    p.add_argument(
        "--masked-min-requests",
        type=int,
        default=30,
        metavar="N",
        help="requests a window needs before masking is judged (default 30)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help=f"parse plain files with N (1 to {MAX_JOBS}) processes; the report is the same "
        f"(default: one per usable core, up to {DEFAULT_MAX_JOBS}, for files over "
        f"{PARALLEL_MIN_BYTES >> 20} MiB, else 1)",
    )
    p.add_argument(
        "--geoip-db",
        action="append",
        default=[],
        metavar="PATH",
        help="MaxMind DB (GeoLite2/DB-IP/ip-location-db country, city or ASN) to add country "
        "and AS of public addresses to the report (repeatable)",
    )
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour severities in the table (default: auto, on a terminal unless NO_COLOR is set)",
    )
    p.add_argument(
        "--crowdsec-metrics",
        action="append",
        default=[],
        metavar="FILE",
        help="a CrowdSec agent's /metrics page saved after it read these logs (curl -s "
        "http://agent:6060/metrics > FILE; repeatable, one per agent): whitelist_gap findings",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_network_args(p)
    add_bouncer_args(p)
    p.set_defaults(func=run_replay)


MAX_METRICS_BYTES = 16 << 20  # a CrowdSec agent's page is tens of kB; this is no metrics page


def load_crowdsec_metrics(paths: list[str]) -> list[Agent]:
    """Saved CrowdSec metrics pages, each an agent named by its file; a file that is not one
    exits 2 naming it (a report without the check would read as all clear)."""
    if not paths:
        return []
    from parsers.crowdsec_metrics import parse_metrics
    from pipeline.crowdsec.whitelists import Agent

    agents = []
    for path in paths:
        what = f"--crowdsec-metrics {path}"
        try:
            with open_input(path) as fh:
                raw = fh.read(MAX_METRICS_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"{what}: {exc.strerror or exc}") from None
        if len(raw) > MAX_METRICS_BYTES:
            raise UsageError(f"{what}: over {MAX_METRICS_BYTES >> 20} MiB: not a metrics page")
        try:
            metrics = parse_metrics(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"{what}: not Prometheus text ({str(exc)[:120]})") from None
        if not metrics.crowdsec:
            raise UsageError(f"{what}: no CrowdSec series in it (cs_*): not an agent's page")
        agents.append(Agent(path, metrics))
    return agents


def load_decisions(paths: list[str]) -> list[DecisionDelta]:
    deltas = []
    for path in paths:
        with open_input(path) as fh:
            data = fh.read()
        try:
            deltas.append(parse_decisions(data))
        except DecisionFormatError as exc:
            msg = f"decisions file {path}: not a known CrowdSec decisions shape: {exc}"
            raise UsageError(msg) from None
    return deltas


def _check_args(args: argparse.Namespace) -> None:
    if args.jobs is not None and not 1 <= args.jobs <= MAX_JOBS:
        raise UsageError(f"--jobs: must be an integer from 1 to {MAX_JOBS}")
    # The same ranges as the config keys of ``run`` (NaN and infinities are refused there too).
    for key in ("window", "masked_share", "masked_min_requests"):
        limits = LIMITS[key]
        value = getattr(args, key)
        if not limits.admits(value):
            flag = "--" + key.replace("_", "-")
            msg = f"{flag}: must be {limits.describe(integer=isinstance(value, int))}"
            raise UsageError(msg)
    if sum(1 for f in [*args.files, *args.decisions, *args.crowdsec_metrics] if f == "-") > 1:
        raise UsageError("stdin (-) can be read only once")
    for f in [*args.files, *args.decisions, *args.crowdsec_metrics]:
        if f != "-" and Path(f).is_dir():
            raise UsageError(f"input {f} is a directory: name the log files in it")
        if f != "-" and not Path(f).exists():
            raise UsageError(f"input file not found: {f}")


# Below this share of non-blank lines read as access records, an input is the wrong file or the
# wrong --envelope, not a log with some noise: a report on it would be a clean bill of health.
MIN_PARSED_SHARE = 0.05
_SKIP_HINTS = {
    SkipReason.BAD_ENVELOPE: "the lines are not in the {envelope} container envelope "
    "(try --envelope auto)",
    SkipReason.UNRECOGNIZED: "it does not look like a Traefik access log (JSON or common format)",
    SkipReason.NOT_ACCESS_LOG: "JSON lines without access-log fields (Traefik's own log?)",
    SkipReason.INVALID_JSON: "lines that start like JSON but do not parse",
    SkipReason.INVALID_UTF8: "binary data or not UTF-8",
}


def check_inputs_parsed(
    engine: Engine, files: list[str], envelope: str = "auto", *, decisions: bool = False
) -> None:
    """Exit 2 naming the input and its top skip reasons when (almost) none of it parsed. An
    empty input is an error too, unless decisions were given: then the report audits only them
    (``auditor replay /dev/null --decisions d.json``), and stderr says so."""
    for path in files:
        stats = engine.stats.get("stdin" if path == "-" else path, ParseStats())
        blank = stats.skipped.get(SkipReason.EMPTY, 0)
        nonblank = stats.lines - blank
        if nonblank > 0 and stats.parsed >= MIN_PARSED_SHARE * nonblank:
            continue
        name = "standard input" if path == "-" else path
        if nonblank <= 0 and decisions:
            note = f"auditor: note: {name} is empty: only the decisions are audited"
            print(note, file=sys.stderr)
            continue
        if nonblank <= 0:
            raise UsageError(f"{name}: no lines to audit (empty input)")
        top = sorted(
            ((r, n) for r, n in stats.skipped.items() if n and r is not SkipReason.EMPTY),
            key=lambda rn: -rn[1],
        )[:3]
        reasons = ", ".join(f"{r.value}: {n}" for r, n in top)
        hint = _SKIP_HINTS.get(top[0][0], "").format(envelope=envelope) if top else ""
        msg = (
            f"{name}: {stats.parsed} of {nonblank} lines are Traefik access log lines "
            f"(skipped: {reasons})" + (f"; {hint}" if hint else "")
        )
        raise UsageError(msg)


def build_engine(args: argparse.Namespace, timeline: Timeline | None = None) -> Engine:
    config = EngineConfig(
        window_s=args.window,
        blast_scope="span",
        masked_share=args.masked_share,
        masked_min_requests=args.masked_min_requests,
        clear_recovered=False,
        bouncer=bouncer_from_args(args),
    )
    return Engine(config, Classifier(networks_from_args(args)), time.time, timeline)


def audit_path(
    engine: Engine,
    path: str,
    envelope: Envelope = Envelope.AUTO,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Read one input to the end through the hot path (also what bench/ measures)."""
    source = SourceAuditor(engine, "stdin" if path == "-" else path, envelope)
    with open_input(path) as fh:
        for text in text_batches(fh, on_bytes=on_bytes):
            source.feed_text(text)


def _jobs(requested: int | None, path: str) -> int:
    """One process per usable core by default, for large files: every process parses, counts
    and folds chunks, and this one also merges them in order (bench/RESULTS.md has what a
    second core gives). Usable cores are those this process may run on (``taskset``, a
    cpuset), not all the machine's."""
    if requested is not None:
        return requested
    usable = len(os.sched_getaffinity(0))
    if usable < 2 or input_size(path) < PARALLEL_MIN_BYTES:
        return 1
    return min(usable, DEFAULT_MAX_JOBS)


def _parallel_ok(path: str, envelope: Envelope) -> bool:
    """Chunks can be cut only in plain files of bare lines (no gzip, no stdin, no envelopes)."""
    if path == "-" or not os.path.isfile(path) or envelope not in (Envelope.AUTO, Envelope.RAW):
        return False
    with open_input(path) as fh:
        head = fh.read(4096)
    if isinstance(fh, gzip.GzipFile):
        return False
    return not EnvelopeDecoder(envelope).settle(head.split(b"\n"))


def table_style(color: str) -> Style:
    """The terminal's width (80 when stdout is not one, unless COLUMNS says otherwise), and
    colour on a terminal unless NO_COLOR is set; ``--color always|never`` overrides both."""
    width = shutil.get_terminal_size((80, 24)).columns
    if color == "auto":
        tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
        return Style(width=width, color=tty and not os.environ.get("NO_COLOR"))
    return Style(width=width, color=color == "always")


def run_replay(args: argparse.Namespace) -> int:
    _check_args(args)
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    history = None
    if fmt == "html":  # the share over time needs per-minute counts the engine folds away
        from sinks.html_report import ShareHistory

        history = ShareHistory(args.window, EngineConfig().bucket_s)
    engine = build_engine(args, history)
    geo = None
    if args.geoip_db:
        from pipeline.cli.extras import require

        require("maxminddb", "--geoip-db")
        from sinks.geoip import GeoIP  # maxminddb only when asked for

        geo = GeoIP.open(args.geoip_db, engine.classifier)  # a bad file fails before any input
    for delta in load_decisions(args.decisions):
        engine.apply(delta)
    agents = load_crowdsec_metrics(args.crowdsec_metrics)  # a bad file fails before any input
    show = not args.no_progress and sys.stderr.isatty()
    progress = Progress(sum(input_size(f) for f in args.files), enabled=show)
    for path in args.files:
        jobs = _jobs(args.jobs, path)
        try:
            if jobs > 1 and _parallel_ok(path, Envelope(args.envelope)):
                audit_parallel(engine, path, jobs, progress.advance)
            else:
                audit_path(engine, path, Envelope(args.envelope), progress.advance)
        except OSError as exc:  # a disk or network file system failing mid-read: no traceback
            name = "standard input" if path == "-" else f"input file {path}"
            raise UsageError(f"{name}: read error: {exc.strerror or exc}") from None
    progress.close()
    check_inputs_parsed(engine, list(args.files), args.envelope, decisions=bool(args.decisions))
    engine.finish()
    if agents:
        from pipeline.crowdsec.whitelists import traffic_from, with_traffic

        view = engine.traffic
        span = max(0.0, view.last_ts - view.first_ts)
        found = with_traffic(agents, traffic_from(view.whole().by_class), span)
        engine.replace_findings("crowdsec_metrics", found)
    report = build_report(engine, list(args.files), geo)
    if geo is not None:
        geo.close()
    if fmt == "table":
        text = render_table(report, table_style(args.color))
    elif fmt == "html":
        from sinks.html_report import render_html

        text = render_html(
            report,
            history,
            masked_share=args.masked_share,
            min_requests=args.masked_min_requests,
        )
    else:
        text = {"json": render_json, "markdown": render_markdown}[fmt](report)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.fail_on in NEVER:
        return EXIT_OK
    failing = at_or_above(list(engine.findings.values()), Severity(args.fail_on))
    return EXIT_FINDINGS if failing else EXIT_OK
