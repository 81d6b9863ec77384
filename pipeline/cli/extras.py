"""Optional dependencies: a feature that needs an extra that is not installed stops at once
with exit 2 and the exact ``pip install`` line, instead of an ImportError deep in a task.

``pip install ban-auditor`` is enough for ``replay`` and a plain sidecar; Kafka, Kubernetes and
GeoIP come with ``ban-auditor[kafka]``, ``[kube]``, ``[geoip]`` (or ``[all]``).
"""

from __future__ import annotations

import importlib.util

from pipeline.errors import UsageError

# importable module -> the extra that installs it
EXTRAS: dict[str, str] = {
    "aiokafka": "kafka",
    "kubernetes_asyncio": "kube",
    "maxminddb": "geoip",
}


def missing_extra_message(module: str, why: str) -> str:
    extra = EXTRAS[module]
    return (
        f"{why} needs the [{extra}] extra, which is not installed: "
        f"pip install 'ban-auditor[{extra}]' (or 'ban-auditor[all]')"
    )


def require(module: str, why: str) -> None:
    """Exit 2 naming the extra when ``module`` cannot be imported (without importing it)."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(missing_extra_message(module, why))
