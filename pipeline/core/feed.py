"""The hot path shared by ``replay``, ``run`` and the benchmark: lines -> records -> engine.

One ``SourceAuditor`` per source keeps that source's envelope state (CRI partials) and parser
caches.
"""

from __future__ import annotations

from collections.abc import Sequence

from parsers.envelope import Envelope, EnvelopeDecoder
from parsers.records import ParseStats
from parsers.traefik import MAX_LINE_BYTES, TraefikParser
from pipeline.core.engine import Engine


class SourceAuditor:
    """Feeds one source's raw line batches to the engine."""

    __slots__ = ("_envelope", "_parser", "engine", "name")

    def __init__(
        self,
        engine: Engine,
        name: str,
        envelope: Envelope = Envelope.RAW,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.engine = engine
        self.name = name
        self._parser = TraefikParser(max_line_bytes)
        self._envelope = EnvelopeDecoder(envelope)

    def feed(self, lines: Sequence[bytes]) -> ParseStats:
        """Parse and ingest one batch; returns the batch's own counters (for metrics)."""
        stats = ParseStats()
        records = self._parser.parse(self._envelope.decode(lines, stats), stats)
        self.engine.ingest(records, stats, self.name)
        return stats

    def feed_text(self, text: bytes) -> ParseStats:
        """``feed`` for a block of whole lines (``readfile.text_batches``): bare Traefik lines
        are parsed without being split (``TraefikParser.parse_text``); until the envelope is
        known to be none, and in envelopes, the block is split into lines."""
        if self._envelope.kind is not Envelope.RAW:
            return self.feed(text.split(b"\n"))
        stats = ParseStats()
        self.engine.ingest(self._parser.parse_text(text, stats), stats, self.name)
        return stats
