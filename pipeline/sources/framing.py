"""Newline framing of a byte stream with file offsets and a hard per-line byte cap.

Works on whole read chunks with ``bytes.split``/``rfind`` so the hot path creates no Python
objects per line other than the line itself. Framing happens in bytes, before any decoding.
"""

from __future__ import annotations

from itertools import accumulate, repeat

_NL = b"\n"
_CR = b"\r"
_NUL = b"\x00"


def _strip_nul_prefixes(lines: list[bytes]) -> list[bytes]:
    """Drop the NUL runs a stale non-O_APPEND writer leaves after copytruncate (sparse holes).

    A line that was nothing but NULs is an artefact of the hole, not an empty log line.
    """
    out: list[bytes] = []
    for line in lines:
        if line[:1] != _NUL:
            out.append(line)
        elif stripped := line.lstrip(_NUL):
            out.append(stripped)
    return out


def _line_ends(chunk: list[bytes], off: int) -> list[int]:
    """The file offset after each line's newline, ``chunk`` starting at ``off``.

    A span of one repeated line (a run of newlines, of ``\\r``, of one blank line) is done in C
    with ``range``: a file of newlines is millions of them, and the sum per line was the
    framer's main cost there. The first/last check keeps the ``count`` off ordinary spans.
    """
    first = chunk[0]
    if first == chunk[-1] and chunk.count(first) == len(chunk):
        step = len(first) + 1
        return list(range(off + step, off + step * len(chunk) + 1, step))
    return list(accumulate([len(line) + 1 for line in chunk], initial=off))[1:]


class LineFramer:
    """Turns chunks into complete lines; tracks the file offset after each handed-out line.

    Only complete (newline-terminated) lines are handed out, so an offset returned by ``take``
    always sits on a line boundary and a partial last line is held until its newline arrives.
    Lines longer than ``max_line_bytes`` (newline excluded, any ``\\r`` included) are dropped
    whole and counted in ``dropped``; the stream keeps flowing after them.
    """

    __slots__ = (
        "_cr",
        "_discard",
        "_idx",
        "_lead_nul",
        "_lines",
        "_max",
        "_nul",
        "_off",
        "_pend_off",
        "_pending",
        "dropped",
        "last_ends",
    )

    def __init__(self, max_line_bytes: int, offset: int = 0, *, skip_first: bool = False) -> None:
        """``skip_first`` discards up to the first newline uncounted (starting mid-line)."""
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._max = max_line_bytes
        self._pending = b""
        self._pend_off = offset  # file offset of _pending[0] (or of the next byte to come)
        self._lines: list[bytes] = []
        self._idx = 0
        self._off = offset  # file offset of _lines[_idx]
        self._discard = skip_first
        self._lead_nul = False  # the pending line so far was only NULs (already cut)
        self._nul = False
        self.last_ends: list[int] = []  # end offset of each line of the last take()/finish()
        self._cr = False
        self.dropped = 0

    @property
    def has_lines(self) -> bool:
        return self._idx < len(self._lines)

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> None:
        """Add the next chunk of the stream. Call only when ``take`` has nothing left."""
        if self.has_lines:
            raise RuntimeError("feed() called before the previous lines were taken")
        if self._discard:
            nl = data.find(_NL)
            if nl < 0:
                self._pend_off += len(data)
                return
            self._pend_off += nl + 1
            data = data[nl + 1 :]
            self._discard = False
        buf = self._pending + data if self._pending else data
        base = self._pend_off
        lead_nul = self._lead_nul
        last = buf.rfind(_NL)
        if last >= 0:
            lines = buf.split(_NL)
            pending = lines.pop()
            self._off = base
            if lead_nul and not lines[0]:
                # a NUL-only line whose NULs came in an earlier chunk: drop it like the rest
                del lines[0]
                self._off += 1
            self._lines = lines
            self._idx = 0
            self._nul = _NUL in buf
            self._cr = _CR in buf
            base += last + 1
            lead_nul = False
        else:
            pending = buf
        if pending[:1] == _NUL:
            stripped = pending.lstrip(_NUL)
            base += len(pending) - len(stripped)
            pending = stripped
            lead_nul = not pending
        elif pending:
            lead_nul = False
        if len(pending) > self._max:
            self.dropped += 1
            self._discard = True
            base += len(pending)
            pending = b""
            lead_nul = False
        self._pending = pending
        self._pend_off = base
        self._lead_nul = lead_nul

    def take(self, limit: int) -> tuple[list[bytes], int] | None:
        """Up to ``limit`` raw lines, filtered, and the offset just after them; None if none ready.

        The returned list can be empty when every line in the span was dropped; the offset
        still advances over them.
        """
        lines = self._lines
        start = self._idx
        if start >= len(lines):
            return None
        if start == 0 and len(lines) <= limit:
            chunk = lines
            self._lines = []
        else:
            chunk = lines[start : start + limit]
            self._idx = start + len(chunk)
            if self._idx >= len(lines):
                self._lines = []
                self._idx = 0
        ends = _line_ends(chunk, self._off)
        end = ends[-1]
        self._off = end
        if self._nul:
            keep = [i for i, line in enumerate(chunk) if line[:1] != _NUL or line.lstrip(_NUL)]
            chunk = _strip_nul_prefixes(chunk)
            ends = [ends[i] for i in keep]
        if chunk and max(map(len, chunk)) > self._max:
            keep = [i for i, line in enumerate(chunk) if len(line) <= self._max]
            self.dropped += len(chunk) - len(keep)
            chunk = [chunk[i] for i in keep]
            ends = [ends[i] for i in keep]
        self.last_ends = ends
        if self._cr:
            chunk = list(map(bytes.removesuffix, chunk, repeat(_CR)))  # one \r, in C
        return chunk, end

    def finish(self) -> tuple[list[bytes], int]:
        """For a finished file: the unterminated last line (if any) and the final offset."""
        if self.has_lines:
            raise RuntimeError("finish() called before the previous lines were taken")
        line = self._pending
        self._pending = b""
        end = self._pend_off + len(line)
        self._pend_off = end
        if not line or self._discard:
            self.last_ends = []
            return [], end
        if line[-1:] == _CR:
            line = line[:-1]
        self.last_ends = [end]
        return [line], end
