"""Findings as JSON lines (stdout or a file): one object per state change."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import BinaryIO

import orjson

from pipeline.core.findings import FindingEvent


class JsonlFindings:
    """Appends finding events; a file is opened in append mode so restarts add, not overwrite."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own = target != "-"
        self._fh: BinaryIO = open(target, "ab") if self._own else sys.stdout.buffer  # noqa: SIM115

    def emit(self, events: Sequence[FindingEvent]) -> None:
        if not events:
            return
        self._fh.write(b"".join(orjson.dumps(e.as_dict()) + b"\n" for e in events))
        self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()

    async def aclose(self) -> None:
        """The EventSink side of the runner and the aggregator."""
        self.close()
