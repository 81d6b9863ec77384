"""ban-auditor: flags CrowdSec bans on internal cluster addresses and client-IP masking."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# Written once, in pyproject.toml; an uninstalled source tree says so instead of guessing.
try:
    __version__ = version("ban-auditor")
except PackageNotFoundError:  # pragma: no cover - only outside an install
    __version__ = "0+unknown"
