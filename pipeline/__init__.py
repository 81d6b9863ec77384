"""ban-auditor: flags CrowdSec bans on internal cluster addresses and client-IP masking."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``__version__`` on first use: ``importlib.metadata`` costs ~45 ms of start-up, most of
    what a short ``auditor replay`` spends before reading (bench/RESULTS.md), and most runs never
    print the version."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    # Written once, in pyproject.toml; an uninstalled source tree says so instead of guessing.
    try:
        value = version("ban-auditor")
    except PackageNotFoundError:  # pragma: no cover - only outside an install
        value = "0+unknown"
    globals()["__version__"] = value
    return value
