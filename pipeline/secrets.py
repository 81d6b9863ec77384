"""Secrets (API keys) read from a file or an environment variable, never from argv.

A ``Secret`` never shows its value in ``repr``/``str``/f-strings/logs; code that must send it
calls ``reveal()`` at the last moment. Errors name where the secret was looked for, never its value.
URLs may carry a secret too (``http://user:password@host/``): ``redact_url`` before showing one.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NoReturn

from pipeline.errors import ConfigError

REDACTED: Final = "***"

log = logging.getLogger("auditor.secrets")

# scheme://authority (RFC 3986: the authority ends at the first / ? or #); also //authority.
_AUTHORITY = re.compile(r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//)(?P<authority>[^/?#]*)")


def redact_url(url: str) -> str:
    """``url`` without its ``user:password@`` part, for logs, errors and ``--print-config``.

    Everything up to the last ``@`` of the authority goes (a password may contain ``@``); a
    string that is not a URL, or has no userinfo, comes back unchanged. Never raises.
    """
    match = _AUTHORITY.match(url)
    if match is None:
        # A bare authority (``user:pw@host:9092``, as Kafka bootstrap servers are written).
        authority, sep, rest = url.partition("/")
        if "@" not in authority:
            return url
        return authority.rpartition("@")[2] + sep + rest
    if "@" not in match["authority"]:
        return url
    host = match["authority"].rpartition("@")[2]
    return match["head"] + host + url[match.end() :]


class Secret:
    """An opaque string; compare with ``==`` (constant time), read with ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        value: str = object.__getattribute__(self, "_value")
        return value

    def __setattr__(self, name: str, value: object) -> NoReturn:
        msg = "Secret is immutable"
        raise AttributeError(msg)

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self.reveal().encode(), other.reveal().encode())

    def __hash__(self) -> int:
        return hash((Secret, self.reveal()))

    def __reduce__(self) -> NoReturn:
        msg = "Secret cannot be pickled"
        raise TypeError(msg)

    def __bool__(self) -> bool:
        return bool(self.reveal())


def _projected(path: str | Path) -> bool:
    """A file of a Kubernetes Secret/ConfigMap volume: ``name -> ..data/name``, swapped
    atomically by the kubelet. Its mode is the volume's ``defaultMode`` and the container is the
    boundary: a non-root container can only read a root-owned Secret file through its group or
    world bits, so warning there would fire on every correct deployment."""
    try:
        return os.readlink(path).startswith("..data/")
    except OSError:
        return False


def _warn_if_shared(fd: int, path: str | Path, what: str, source: str) -> None:
    """A key others on the host can read is a leak waiting to happen; say so, but go on
    (refusing would be an outage)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) and mode & (stat.S_IRGRP | stat.S_IROTH) and not _projected(path):
        log.warning(
            "%s: %s is readable by group or others (mode %04o); make it 0600 or 0400",
            what,
            source,
            stat.S_IMODE(mode),
        )


def read_private_file(path: str | Path, *, what: str) -> tuple[str, str]:
    """The text of a key or credentials file and a description of its source; a missing or
    unreadable file is a ConfigError naming ``what`` and the file, never its content."""
    source = f"file {path}"
    try:
        with open(path, encoding="utf-8") as fh:
            _warn_if_shared(fh.fileno(), path, what, source)
            return fh.read(), source
    except FileNotFoundError:
        msg = f"{what}: {source} does not exist"
        raise ConfigError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{what}: cannot read {source}: {type(exc).__name__}"
        raise ConfigError(msg) from None


def secret_from_file(path: str | Path, *, what: str = "secret") -> tuple[Secret, str]:
    """Read a secret file (surrounding whitespace stripped, as Kubernetes secret files often end
    with a newline). Returns the secret and a description of its source for error messages."""
    text, source = read_private_file(path, what=what)
    value = text.strip()
    if not value:
        msg = f"{what}: {source} is empty"
        raise ConfigError(msg)
    return Secret(value), source


def secret_from_env(
    name: str, *, what: str = "secret", environ: Mapping[str, str] | None = None
) -> tuple[Secret, str]:
    """Read a secret from an environment variable (whitespace stripped)."""
    env = os.environ if environ is None else environ
    source = f"environment variable {name}"
    raw = env.get(name)
    if raw is None:
        msg = f"{what}: {source} is not set"
        raise ConfigError(msg)
    value = raw.strip()
    if not value:
        msg = f"{what}: {source} is empty"
        raise ConfigError(msg)
    return Secret(value), source


def load_secret(
    *,
    file: str | Path | None = None,
    env: str | None = None,
    what: str = "secret",
    environ: Mapping[str, str] | None = None,
) -> tuple[Secret, str]:
    """Exactly one of ``file``/``env``; returns ``(secret, source description)``."""
    if (file is None) == (env is None):
        msg = f"{what}: give exactly one of a key file or a key environment variable"
        raise ConfigError(msg)
    if file is not None:
        return secret_from_file(file, what=what)
    assert env is not None
    return secret_from_env(env, what=what, environ=environ)
