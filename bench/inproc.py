"""One in-process measurement, run in a fresh interpreter so each gets its own peak RSS.

    python -m bench.inproc floor|parse|hot FILE [--decisions FILE]

Only the loop is timed (imports and engine construction are not); prints one JSON object.

- ``floor``: issue 16's floor, a bare ``orjson.loads`` loop over every line of ``line_batches``
  (the split lines), nothing else.
- ``parse``: ``TraefikParser.parse_text`` over replay's blocks (``text_batches``; records built,
  no engine): splits the gap between the floor and the hot path into parser and engine cost.
- ``hot``: ``pipeline.cli.replay.audit_path`` with an engine built by
  ``pipeline.cli.replay.build_engine`` from ``auditor replay``'s own argument
  parser, so it is exactly replay's configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.sources.readfile import line_batches, text_batches


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def floor(path: str) -> dict[str, Any]:
    loads = orjson.loads
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, "rb") as fh:
        for batch in line_batches(fh):
            for line in batch:
                loads(line)
            n += len(batch)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "lines": n}


def parse(path: str) -> dict[str, Any]:
    from parsers.records import ParseStats
    from parsers.traefik import TraefikParser

    parser = TraefikParser()
    stats = ParseStats()
    records = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, "rb") as fh:
        for text in text_batches(fh):  # what replay reads: blocks of lines, not split
            records += len(parser.parse_text(text, stats))
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "lines": stats.lines,
        "records": records,
    }


def hot(path: str, decisions: str | None) -> dict[str, Any]:
    from parsers.envelope import Envelope
    from pipeline.cli.main import build_parser
    from pipeline.cli.replay import audit_path, build_engine, load_decisions

    argv = ["replay", path] + (["--decisions", decisions] if decisions else [])
    args = build_parser().parse_args(argv)
    engine = build_engine(args)
    for delta in load_decisions(args.decisions):
        engine.apply(delta)
    t0, c0 = time.perf_counter(), time.process_time()
    audit_path(engine, path, Envelope(args.envelope))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    engine.finish()
    finish_s = time.perf_counter() - t1
    lines = sum(st.lines for st in engine.stats.values())
    whole = engine.traffic.whole()
    from bench.peers.common import answer

    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "finish_s": finish_s,
        "lines": lines,
        "answer": answer(lines, sum(whole.ep_internal.values()), dict(whole.clients)),
        "findings": sorted(engine.findings),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inproc")
    p.add_argument("mode", choices=("floor", "parse", "hot"))
    p.add_argument("file")
    p.add_argument("--decisions")
    args = p.parse_args(argv)
    if args.mode == "floor":
        out = floor(args.file)
    elif args.mode == "parse":
        out = parse(args.file)
    else:
        out = hot(args.file, args.decisions)
    out["mode"] = args.mode
    out["bytes"] = os.path.getsize(args.file)
    out["peak_rss_kb"] = vm_hwm_kb()
    sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
