"""Findings as JSON lines (stdout or a file): one object per state change."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import BinaryIO

import orjson

from pipeline.core.findings import FindingEvent

# Appended to, never truncated; a symbolic link at the path is refused (O_NOFOLLOW), so a link
# planted where the findings go cannot make the auditor write into its target.
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def open_append(path: str) -> BinaryIO:
    """``path`` for appending, created 0600 if new. Raises OSError, with a clear reason when
    the path is a symbolic link."""
    try:
        fd = os.open(path, _APPEND_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link; refusing to follow it", path) from None
        raise
    return os.fdopen(fd, "ab")


class JsonlFindings:
    """Appends finding events; a file is opened in append mode so restarts add, not overwrite."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own = target != "-"
        self._fh: BinaryIO = open_append(target) if self._own else sys.stdout.buffer

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
