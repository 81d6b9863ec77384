"""Read-to-end sources for ``replay``: plain files, ``.gz`` files and stdin, in batches of lines
(``line_batches``) or blocks of whole lines that are never split (``text_batches``).

Memory is bounded by one read chunk plus one batch, whatever the file size.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

from parsers.traefik import MAX_LINE_BYTES
from pipeline.errors import UsageError

# Bytes per read. glibc serves a request of 128 KiB or more with a fresh mmap and unmaps it when
# freed, so every 1 MiB read faulted its pages in again: 1 MiB reads made a bare orjson.loads
# loop over the lines 14 % slower than 64 KiB reads (bench/RESULTS.md, minor page faults).
CHUNK_BYTES = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
# ~1k lines per batch: the hot path is ~20% faster than with 4k, whose records fall out of the
# CPU cache before they are counted (bench/RESULTS.md).
BATCH_LINES = 1024


class Readable(Protocol):
    """What ``line_batches`` reads from: a file, or a bounded view of one (parallel replay)."""

    def read(self, size: int, /) -> bytes: ...


class _Gzip(gzip.GzipFile):
    """A truncated or corrupt archive is an input error (exit 2 naming the file), not a crash."""

    def read(self, size: int | None = -1) -> bytes:
        try:
            return super().read(size)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            msg = f"input file {self.name}: corrupt or truncated gzip ({exc})"
            raise UsageError(msg) from None


def open_input(path: str) -> BinaryIO:
    """Open ``path`` (``-`` is stdin; gzip is detected by its magic bytes, on stdin too)."""
    if path == "-":
        stdin = sys.stdin.buffer
        if isinstance(stdin, io.BufferedReader) and stdin.peek(2)[:2] == _GZIP_MAGIC:
            return _Gzip(fileobj=stdin, mode="rb")  # type: ignore[return-value]
        return stdin
    try:
        raw = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        msg = f"input file not found: {path}"
        raise UsageError(msg) from None
    except IsADirectoryError:
        msg = f"input is a directory, not a file: {path}"
        raise UsageError(msg) from None
    except PermissionError:
        msg = f"input file not readable: {path}"
        raise UsageError(msg) from None
    if not os.path.isfile(path):  # a pipe (<(cmd)): no seeking back
        return raw
    if raw.read(2) == _GZIP_MAGIC:
        raw.close()
        return _Gzip(path, "rb")  # type: ignore[return-value]  # owns (and closes) the file
    raw.seek(0)
    return raw


def input_size(path: str) -> int:
    try:
        return 0 if path == "-" else os.path.getsize(path)
    except OSError:
        return 0


class _Reads:
    """A stream's reads, the rest of a runaway line skipped: ``skipping`` is set by the reader
    that cut the line, and the next reads drop bytes up to its newline."""

    __slots__ = ("_on_bytes", "_size", "_stream", "skipping")

    def __init__(self, stream: Readable, size: int, on_bytes: Callable[[int], None] | None) -> None:
        self._stream = stream
        self._size = size
        self._on_bytes = on_bytes
        self.skipping = False

    def __iter__(self) -> Iterator[bytes]:
        read, size, on_bytes = self._stream.read, self._size, self._on_bytes
        while True:
            chunk = read(size)
            if not chunk:
                return
            if on_bytes is not None:
                on_bytes(len(chunk))
            if self.skipping:
                newline = chunk.find(b"\n")
                if newline < 0:
                    continue
                chunk = chunk[newline + 1 :]
                self.skipping = False
            yield chunk


def line_batches(
    stream: Readable,
    batch_lines: int = BATCH_LINES,
    on_bytes: Callable[[int], None] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[list[bytes]]:
    """Yield batches of lines without their newline; a last line without one is still a line.

    A line that grows past ``max_line_bytes`` without a newline is cut there (the parser counts
    it as too long) and the rest of it is skipped, so a file with no newlines cannot grow memory.
    """
    rest = b""
    pending: list[bytes] = []
    reads = _Reads(stream, CHUNK_BYTES, on_bytes)
    for chunk in reads:
        parts = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = parts.pop()
        if pending:
            parts[:0] = pending
        if len(rest) > max_line_bytes:
            parts.append(rest[: max_line_bytes + 1])
            rest = b""
            reads.skipping = True
        # Slices by index: deleting each batch from the front of the list moved the rest of it
        # every time, quadratic in the lines of a chunk (a chunk of newlines has a million).
        full = len(parts) - len(parts) % batch_lines
        for start in range(0, full, batch_lines):
            yield parts[start : start + batch_lines]
        pending = parts[full:]
    if rest:
        pending.append(rest)
    if pending:
        yield pending


# Bytes of whole lines per ``text_batches`` block (~50 Traefik lines): one engine batch. Under
# glibc's 128 KiB mmap threshold, as ``CHUNK_BYTES``: 256 KiB blocks cost ten times the page
# faults and ~8 % of the hot path; 32 KiB blocks made more batches than quiet traffic gained.
TEXT_BYTES = CHUNK_BYTES


def text_batches(
    stream: Readable,
    on_bytes: Callable[[int], None] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    block_bytes: int = TEXT_BYTES,
) -> Iterator[bytes]:
    """Yield blocks of whole lines, newline-separated, for ``TraefikParser.parse_text``: the
    lines ``line_batches`` yields, never split apart (``b""`` is one blank line).

    A line that grows past ``max_line_bytes`` without a newline is cut there, ends its block
    (the parser counts it as too long) and the rest of it is skipped, as ``line_batches`` does.
    """
    rest = b""
    reads = _Reads(stream, block_bytes, on_bytes)
    for chunk in reads:
        data = rest + chunk if rest else chunk
        cut = data.rfind(b"\n")
        text = data[:cut] if cut >= 0 else None
        rest = data[cut + 1 :] if cut >= 0 else data
        if len(rest) > max_line_bytes:
            cut_line = rest[: max_line_bytes + 1]
            text = cut_line if text is None else text + b"\n" + cut_line
            rest = b""
            reads.skipping = True
        if text is not None:
            yield text
    if rest:
        yield rest
