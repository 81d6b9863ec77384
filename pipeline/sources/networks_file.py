"""Following the networks file the watcher publishes, as a sidecar sees it in its ConfigMap volume.

The kubelet updates a ConfigMap volume atomically: it writes the new files into a fresh
``..<timestamp>/`` directory, points a temporary link at it and renames that link over
``..data``; ``networks.json`` itself is a link to ``..data/networks.json``. So the file is never
rewritten in place: every update is a different inode behind the same path. ``poll`` opens the
path (following the links), and reads it only when the opened file is not the one it read last.

A missing, unreadable or invalid file never replaces a good one: the last good copy stays in
force, and the problem is logged once per file, not on every poll. ``age`` is what tells an
operator the copy is getting old.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pipeline.core.networks_file import MAX_BYTES, NetworksDoc, NetworksFileError, decode

log = logging.getLogger("auditor.networks")

_Signature = tuple[int, int, int, int]  # device, inode, size, mtime (ns)


@dataclass(frozen=True, slots=True)
class LoadedDoc:
    """A good copy and when this process read it (epoch seconds)."""

    doc: NetworksDoc
    loaded_at: float


class NetworksFileReader:
    """See module docstring. Single-threaded: call ``poll`` from one task."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.current: LoadedDoc | None = None
        self.problem = ""  # why the file on disk is not in force ("" when it is)
        self.loads = 0
        self.failures = 0
        self._good: _Signature | None = None  # the file the copy in force came from
        self._bad: _Signature | None = None  # the last file refused (not parsed again)

    def poll(self, now: float) -> NetworksDoc | None:
        """A new good copy when the file changed and checks out, else None (nothing new, or
        a bad file: the last good copy stays)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            self._fail(None, _reason(exc))
            return None
        try:
            st = os.fstat(fd)
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if signature == self._good:
                self._in_force()  # back after a moment without it
                return None
            if signature == self._bad:
                return None
            data = _read(fd)
        except OSError as exc:
            self._fail(None, _reason(exc))
            return None
        finally:
            os.close(fd)
        try:
            doc = decode(data)
        except NetworksFileError as exc:
            self._fail(signature, str(exc))
            return None
        self._good, self._bad = signature, None
        self.current = LoadedDoc(doc, now)
        self.loads += 1
        self._in_force()
        return doc

    def age(self, now: float) -> float:
        """Seconds since the copy in force was in sync with the cluster; infinite without one
        (or when the watcher never synced). A time stamped ahead of this clock counts from when
        the copy was read, so a skewed watcher cannot make a copy look fresh forever."""
        if self.current is None or self.current.doc.synced_at is None:
            return float("inf")
        synced = min(self.current.doc.synced_at, self.current.loaded_at)
        return max(0.0, now - synced)

    def _in_force(self) -> None:
        if self.problem:
            log.info("networks file %s is good again", self.path)
        self.problem = ""

    def _fail(self, signature: _Signature | None, why: str) -> None:
        if signature is not None:
            self._bad = signature
        self.failures += 1
        if why == self.problem:
            return
        self.problem = why
        keeping = "keeping the last good copy" if self.current else "no good copy yet"
        log.warning("networks file %s: %s; %s", self.path, why, keeping)


def _read(fd: int) -> bytes:
    """At most MAX_BYTES + 1 bytes: enough for ``decode`` to refuse an oversized file."""
    chunks: list[bytes] = []
    left = MAX_BYTES + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "missing (not published yet, or the ConfigMap lost its key)"
    return exc.strerror or type(exc).__name__
