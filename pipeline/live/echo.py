"""``echo_access_log``: the Kubernetes "streaming sidecar" pattern for CrowdSec.

In the sidecar layout Traefik writes its access log into a file in an ``emptyDir``, where
CrowdSec's usual acquisition (the container logs under ``/var/log/containers``) cannot see it.
With echo on, ``auditor run`` writes every line it reads from the access log, unchanged, to its
own stdout; the container runtime stores that as the auditor container's log, and CrowdSec reads
it from there. Stdout then carries nothing else: log lines go to stderr as always, and findings
meant for stdout (``findings = "-"``) go to stderr too.

Writing must never stall tailing: stdout is a pipe to the container runtime, which may stop
reading for a while. A thread does the blocking writes; the runner only hands it the batch's
lines (no copy) up to ``MAX_BUFFER`` bytes waiting and, beyond that, drops the batch and counts
its lines (``auditor_echo_dropped_lines_total``, and a warning at most once a minute). The
thread writes ``WRITE_BYTES`` at a time, so echoing costs the sidecar no more than that on top
of the lines it holds anyway. A line is echoed as the tailer framed it: a CRLF ending is read,
and echoed, as LF.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence

import orjson

from pipeline.core.findings import FindingEvent

log = logging.getLogger("auditor.echo")

MAX_BUFFER = 2 * 1024 * 1024  # ~7k lines of 300 B: seconds of a busy node's traffic
WRITE_BYTES = 64 * 1024
WARN_EVERY_S = 60.0
CLOSE_TIMEOUT_S = 5.0


class StdoutEcho:
    """Writes batches of lines to ``fd`` from a thread, in order, through a bounded buffer."""

    def __init__(self, fd: int = 1, *, max_buffer: int = MAX_BUFFER) -> None:
        self._fd = fd
        self._max = max_buffer
        self._cond = threading.Condition()
        self._batches: deque[list[bytes]] = deque()
        self._buffered = 0  # bytes accepted and not yet written (in flight included)
        self._closing = False
        self._broken = ""
        self.lines_written = 0
        self.dropped = 0  # lines
        self._reported = 0
        self._last_warning = float("-inf")
        self._thread = threading.Thread(target=self._run, name="echo-stdout", daemon=True)
        self._thread.start()

    def write(self, lines: Sequence[bytes]) -> None:
        """Queue ``lines`` (without their newlines) for stdout; never blocks."""
        if not lines:
            return
        size = sum(map(len, lines)) + len(lines)
        with self._cond:
            if self._broken or self._closing or self._buffered + size > self._max:
                self.dropped += len(lines)
            else:
                self._batches.append(list(lines))
                self._buffered += size
                self._cond.notify()
        self._warn_dropped()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is buffered (waiting at most ``timeout`` s for a stalled stdout)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("stdout did not take the last echoed lines within %gs", timeout)
        with self._cond:
            self.dropped += sum(map(len, self._batches))
            self._batches.clear()
        self._warn_dropped(force=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._batches and not self._closing:
                    self._cond.wait()
                if not self._batches:
                    return
                lines = self._batches.popleft()
            try:
                self._write(lines)
            except OSError as exc:  # EPIPE: nobody reads stdout any more
                with self._cond:
                    self._broken = exc.strerror or type(exc).__name__
                    self.dropped += sum(map(len, self._batches))
                    self._batches.clear()
                    self._buffered = 0
                log.error("cannot write the access log to stdout (%s): echo stopped", self._broken)
                return

    def _write(self, lines: list[bytes]) -> None:
        """``lines`` in pieces of about WRITE_BYTES, each one join and one write loop."""
        start = 0
        while start < len(lines):
            end, size = start, 0
            while end < len(lines) and (size < WRITE_BYTES or end == start):
                size += len(lines[end]) + 1
                end += 1
            try:
                _write_all(self._fd, b"\n".join([*lines[start:end], b""]))
            except OSError:
                with self._cond:
                    self.dropped += len(lines) - start
                raise
            with self._cond:
                self._buffered -= size
                self.lines_written += end - start
            start = end

    def _warn_dropped(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.dropped == self._reported or (
            not force and now - self._last_warning < WARN_EVERY_S
        ):
            return
        log.warning(
            "%d access-log lines not echoed to stdout (it did not keep up; CrowdSec misses them)",
            self.dropped - self._reported,
        )
        self._reported = self.dropped
        self._last_warning = now


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class StderrFindings:
    """Findings as JSON lines on stderr: where ``findings = "-"`` goes while stdout echoes."""

    def emit(self, events: Sequence[FindingEvent]) -> None:
        if not events:
            return
        sys.stderr.flush()  # after any log line already written through the text layer
        out = sys.stderr.buffer
        out.write(b"".join(orjson.dumps(e.as_dict()) + b"\n" for e in events))
        out.flush()

    async def aclose(self) -> None:
        return None
