"""Read-to-end sources for ``replay``: plain files, ``.gz`` files and stdin, in line batches.

Memory is bounded by one read chunk plus one batch, whatever the file size.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

from pipeline.errors import UsageError

CHUNK_BYTES = 1 << 20
# ~1k lines per batch: the hot path is ~20% faster than with 4k, whose records fall out of the
# CPU cache before they are counted (bench/RESULTS.md).
BATCH_LINES = 1024


def open_input(path: str) -> BinaryIO:
    """Open ``path`` (``-`` is stdin, ``*.gz`` is decompressed); a missing file names itself."""
    if path == "-":
        return sys.stdin.buffer
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
    if raw.read(2) == b"\x1f\x8b":
        raw.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]  # owns (and closes) the file
    raw.seek(0)
    return raw


def input_size(path: str) -> int:
    try:
        return 0 if path == "-" else os.path.getsize(path)
    except OSError:
        return 0


def line_batches(
    stream: BinaryIO,
    batch_lines: int = BATCH_LINES,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[list[bytes]]:
    """Yield batches of lines without their newline; a last line without one is still a line."""
    rest = b""
    pending: list[bytes] = []
    read = stream.read
    while True:
        chunk = read(CHUNK_BYTES)
        if not chunk:
            break
        if on_bytes is not None:
            on_bytes(len(chunk))
        parts = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = parts.pop()
        pending.extend(parts)
        while len(pending) >= batch_lines:
            yield pending[:batch_lines]
            del pending[:batch_lines]
    if rest:
        pending.append(rest)
    if pending:
        yield pending
