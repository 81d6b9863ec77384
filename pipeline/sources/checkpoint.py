"""Atomic, versioned checkpoints for the file tailer.

A checkpoint names a file by ``(st_dev, st_ino)`` *and* by content: a hash of its first bytes and a
hash of the bytes just before the saved offset (Fluent Bit's offset marker). Inode-only identity
resumes a reused inode at a stale offset; content-only identity confuses files with equal heads.
Checking both means a file rewritten, truncated or replaced while we were stopped is read from 0.

The state is one JSON document per tailer, written temp file -> fsync -> ``os.replace`` -> fsync
of the directory, so a crash leaves either the old or the new document, never a torn one.

The directory may be shared with someone less trusted (a hostPath, a volume another container
writes), so no name in it is followed: the temp file is created fresh (``O_EXCL|O_NOFOLLOW``,
relative to a descriptor of the directory) and whatever sat at its name is unlinked, never
written through; a checkpoint that is a symbolic link is refused. New directories are 0700 and
files 0600: offsets and paths of the node's logs are nobody else's business.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError

log = logging.getLogger("auditor.tail")

SCHEMA_VERSION = 1
HEAD_BYTES = 256
MARKER_BYTES = 64


def digest(data: bytes) -> str:
    """Short content hash used for head fingerprints and offset markers."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read ``size`` bytes at ``offset`` or fewer only at EOF (pread may return short reads)."""
    parts: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def marker_at(fd: int, offset: int) -> tuple[int, str]:
    """(length, hash) of the bytes just before ``offset``."""
    length = min(MARKER_BYTES, offset)
    return length, digest(pread_exact(fd, length, offset - length))


@dataclass(frozen=True, slots=True)
class FileCheckpoint:
    """How far one file was processed, and enough of its content to recognise it again."""

    dev: int
    ino: int
    offset: int
    head_len: int
    head_hash: str
    marker_len: int
    marker_hash: str
    key: str | None
    path: str

    def matches(self, fd: int, size: int) -> bool:
        """True if the open file still holds the bytes this checkpoint was taken over."""
        if size < self.offset or size < self.head_len or self.marker_len > self.offset:
            return False
        if digest(pread_exact(fd, self.head_len, 0)) != self.head_hash:
            return False
        marker = pread_exact(fd, self.marker_len, self.offset - self.marker_len)
        return digest(marker) == self.marker_hash

    def to_json(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "ino": self.ino,
            "offset": self.offset,
            "head_len": self.head_len,
            "head_hash": self.head_hash,
            "marker_len": self.marker_len,
            "marker_hash": self.marker_hash,
            "key": self.key,
            "path": self.path,
        }


@dataclass(frozen=True, slots=True)
class CheckpointState:
    """A loaded checkpoint document. ``seq`` grows with every save; the higher one is newer."""

    seq: int
    files: tuple[FileCheckpoint, ...]


class CheckpointError(ValueError):
    """The document is not a checkpoint this version can use."""


_INT_FIELDS = ("dev", "ino", "offset", "head_len", "marker_len")
_STR_FIELDS = ("head_hash", "marker_hash", "path")


def _file_from_json(raw: object) -> FileCheckpoint:
    if not isinstance(raw, dict):
        raise CheckpointError("file entry is not an object")
    for name in _INT_FIELDS:
        value = raw.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"file entry field {name!r} is not a non-negative integer")
    for name in _STR_FIELDS:
        if not isinstance(raw.get(name), str):
            raise CheckpointError(f"file entry field {name!r} is not a string")
    key = raw.get("key")
    if key is not None and not isinstance(key, str):
        raise CheckpointError("file entry field 'key' is not a string or null")
    return FileCheckpoint(
        dev=raw["dev"],
        ino=raw["ino"],
        offset=raw["offset"],
        head_len=raw["head_len"],
        head_hash=raw["head_hash"],
        marker_len=raw["marker_len"],
        marker_hash=raw["marker_hash"],
        key=key,
        path=raw["path"],
    )


def parse_state(data: bytes) -> CheckpointState:
    """Validate a checkpoint document strictly; raise CheckpointError on anything unexpected."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError("top level is not an object")
    version = doc.get("version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise CheckpointError(f"unsupported schema version {version!r}")
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise CheckpointError("'seq' is not a non-negative integer")
    files = doc.get("files")
    if not isinstance(files, list):
        raise CheckpointError("'files' is not a list")
    return CheckpointState(seq=seq, files=tuple(_file_from_json(f) for f in files))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_CHECKPOINT_BYTES = 64 << 20  # ~200,000 files' entries: anything larger is not ours


def _symlink_error(path: str) -> OSError:
    return OSError(errno.ELOOP, "is a symbolic link; refusing to follow it", path)


def _is_symlink(path: str, dir_fd: int | None = None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class CheckpointStore:
    """One tailer's checkpoint file: ``<directory>/<name>.json`` plus its ``.tmp`` sibling.

    Raises ``UsageError`` naming the file when the checkpoint is a symbolic link, so that
    ``auditor run`` stops at startup (exit 2) instead of writing somewhere it was pointed to.
    """

    def __init__(self, directory: str, name: str = "tail") -> None:
        self.directory = directory
        self.name = f"{name}.json"
        self.tmp_name = self.name + ".tmp"
        self.path = os.path.join(directory, self.name)
        self.tmp_path = os.path.join(directory, self.tmp_name)
        self._seq = 0
        if _is_symlink(self.path):
            msg = (
                f"config key 'checkpoint_dir': checkpoint {self.path} is a symbolic link; "
                "refusing to follow it (remove it, the auditor writes a regular file)"
            )
            raise UsageError(msg)

    def _read(self, path: str) -> tuple[CheckpointState | None, str | None]:
        """(state, None) if usable, (None, why) if unusable, (None, None) if absent."""
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None, "a symbolic link (not followed)"
            return None, f"unreadable: {exc}"
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, "not a regular file"
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(MAX_CHECKPOINT_BYTES + 1)
        except OSError as exc:
            return None, f"unreadable: {exc}"
        finally:
            os.close(fd)
        if len(data) > MAX_CHECKPOINT_BYTES:
            return None, f"larger than {MAX_CHECKPOINT_BYTES} bytes"
        if not data:
            return None, "empty file"
        try:
            return parse_state(data), None
        except CheckpointError as exc:
            return None, str(exc)

    def load(self) -> CheckpointState | None:
        """The newest usable state, or None (first run, or nothing usable: callers use start_at).

        A leftover temp file is a save that crashed before or after ``os.replace``; it is used
        only if it parses and is newer than the main file (or the main file is unusable).
        """
        main, main_err = self._read(self.path)
        tmp, tmp_err = self._read(self.tmp_path)
        if main_err is not None:
            log.warning("checkpoint %s is corrupt (%s); ignoring it", self.path, main_err)
        chosen = main
        if tmp is not None and (main is None or tmp.seq > main.seq):
            log.warning("recovering checkpoint from leftover temp file %s", self.tmp_path)
            chosen = tmp
        elif tmp is not None or tmp_err is not None:
            why = tmp_err or "not newer than the checkpoint"
            log.info("ignoring leftover checkpoint temp file %s (%s)", self.tmp_path, why)
        if tmp is not None or tmp_err is not None:
            try:
                os.unlink(self.tmp_path)
            except OSError:
                log.debug("could not remove %s", self.tmp_path)
        if chosen is not None:
            self._seq = chosen.seq
        return chosen

    def save(self, files: Iterable[FileCheckpoint]) -> None:
        """Replace the checkpoint atomically and durably. Raises OSError on I/O failure."""
        self._seq += 1
        doc = {
            "version": SCHEMA_VERSION,
            "seq": self._seq,
            "files": [f.to_json() for f in files],
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = self._create_temp(dfd)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            # rename(2) replaces a symbolic link rather than following it, but one planted at
            # the checkpoint's name is refused here as at startup: the same rule all the time.
            if _is_symlink(self.name, dfd):
                raise _symlink_error(self.path)
            os.replace(self.tmp_name, self.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _create_temp(self, dfd: int) -> int:
        """A new, empty temp file of ours (0600). Whatever already has its name (a save that
        failed, or a link planted to make us overwrite its target) is unlinked: the name goes,
        its target is never opened."""
        try:
            return os.open(self.tmp_name, _TEMP_FLAGS, 0o600, dir_fd=dfd)
        except FileExistsError:
            if _is_symlink(self.tmp_name, dfd):
                log.warning("removing symbolic link %s (never followed)", self.tmp_path)
            os.unlink(self.tmp_name, dir_fd=dfd)
            return os.open(self.tmp_name, _TEMP_FLAGS, 0o600, dir_fd=dfd)
