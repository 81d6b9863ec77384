"""Container log envelopes (CRI and docker json-file) around Traefik's lines.

A node agent reads ``/var/log/containers/*.log``: each line wraps one piece of the container's
output. This decoder strips the envelope and reassembles partial pieces per stream, with a cap on
the merged size so a runaway partial sequence cannot grow memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from itertools import compress

import orjson

from parsers.records import ParseStats, SkipReason, non_blank

_CRI = re.compile(rb"^(\S+) (stdout|stderr) ([PF])(?::\S*)? ?(.*)$", re.DOTALL)
MAX_MERGED_BYTES = 64 * 1024
MAX_PIECES = 1024  # containerd splits at 16 KiB, so a real line has a handful of pieces
_STREAMS = frozenset({"stdout", "stderr"})


class Envelope(StrEnum):
    AUTO = "auto"
    RAW = "raw"
    CRI = "cri"
    DOCKER = "docker"


def detect(line: bytes) -> Envelope:
    """Pick the envelope from one line, the way kubelet does (CRI first, then docker JSON)."""
    if _CRI.match(line):
        return Envelope.CRI
    if line.startswith(b"{") and b'"log"' in line:
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            return Envelope.RAW
        if type(d) is dict and type(d.get("log")) is str and "stream" in d:
            return Envelope.DOCKER
    return Envelope.RAW


class EnvelopeDecoder:
    """Stateful only in its per-stream partial buffers; no I/O."""

    __slots__ = ("_overflow", "_partial", "_sizes", "kind", "max_merged_bytes")

    def __init__(
        self, kind: Envelope = Envelope.AUTO, max_merged_bytes: int = MAX_MERGED_BYTES
    ) -> None:
        self.kind = kind
        self.max_merged_bytes = max_merged_bytes
        self._partial: dict[bytes, list[bytes]] = {}
        self._sizes: dict[bytes, int] = {}
        self._overflow: set[bytes] = set()

    def settle(self, lines: Sequence[bytes]) -> bool:
        """Whether this batch needs unwrapping; AUTO settles here, once, on the batch's first
        non-blank line (a blank-only batch leaves it open and passes through).

        The one place the envelope is decided: per batch, so lines never pay for it.
        """
        kind = self.kind
        if kind is Envelope.AUTO:
            if lines.count(b"") == len(lines):  # a run of newlines: one shared b"", no strip
                return False
            first = next(compress(lines, map(bytes.strip, lines)), None)  # C, not per line
            if first is None:
                return False
            kind = self.kind = detect(first)
        return kind is not Envelope.RAW

    def decode(self, lines: Sequence[bytes], stats: ParseStats) -> Sequence[bytes]:
        """The batch's logical lines; a RAW batch is handed back as is (no copy)."""
        return self.unwrap(lines, stats) if self.settle(lines) else lines

    def unwrap(self, lines: Sequence[bytes], stats: ParseStats) -> list[bytes]:
        """Strip the envelope of every line, reassembling partials; settles AUTO first."""
        self.settle(lines)
        kind = self.kind
        out: list[bytes] = []
        if kind is Envelope.CRI:
            piece = self._cri
        elif kind is Envelope.DOCKER:
            piece = self._docker
        else:  # RAW, or AUTO with nothing but blank lines so far
            out.extend(lines)
            return out
        # The first blank line leaves the loop; the blank lines left are counted in C
        # (``non_blank``), not one failed match each (blank lines never touch partials).
        todo = iter(lines)
        while True:
            for line in todo:
                if piece(line, out, stats):
                    break
            else:
                return out
            kept, blank = non_blank(todo)
            stats.lines += 1 + blank
            stats.skip(SkipReason.EMPTY, 1 + blank)
            todo = iter(kept)

    def _piece(
        self, stream: bytes, content: bytes, final: bool, out: list[bytes], stats: ParseStats
    ) -> None:
        if stream in self._overflow:
            if final:
                self._overflow.discard(stream)
            return
        parts = self._partial.get(stream)
        if parts is None:
            if final:
                out.append(content)
                return
            parts = self._partial[stream] = []
            self._sizes[stream] = 0
        parts.append(content)
        self._sizes[stream] += len(content)
        # Bytes and pieces both capped: a run of empty or 1-byte pieces is a runaway too.
        if self._sizes[stream] > self.max_merged_bytes or len(parts) > MAX_PIECES:
            del self._partial[stream]
            del self._sizes[stream]
            stats.lines += 1
            stats.skip(SkipReason.PARTIAL_OVERFLOW)
            if not final:
                self._overflow.add(stream)
            return
        if final:
            del self._partial[stream]
            del self._sizes[stream]
            out.append(b"".join(parts))

    def _cri(self, line: bytes, out: list[bytes], stats: ParseStats) -> bool:
        """True for a blank line, left for the caller to count."""
        m = _CRI.match(line)
        if m is None:
            if not line.strip():
                return True
            stats.lines += 1
            stats.skip(SkipReason.BAD_ENVELOPE)
            return False
        self._piece(m.group(2), m.group(4), m.group(3) == b"F", out, stats)
        return False

    def _docker(self, line: bytes, out: list[bytes], stats: ParseStats) -> bool:
        """True for a blank line, left for the caller to count."""
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            d = None
        if type(d) is not dict or type(d.get("log")) is not str:
            if not line.strip():
                return True
            stats.lines += 1
            stats.skip(SkipReason.BAD_ENVELOPE)
            return False
        text: str = d["log"]
        stream_name = d.get("stream", "stdout")
        if stream_name not in _STREAMS:  # one partial buffer per stream: only the two real ones
            stats.lines += 1
            stats.skip(SkipReason.BAD_ENVELOPE)
            return False
        stream = stream_name.encode()
        final = text.endswith("\n")
        self._piece(stream, text.removesuffix("\n").encode(), final, out, stats)
        return False
