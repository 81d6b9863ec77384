"""Kubernetes discovery and config audit.

Only ``client`` imports ``kubernetes_asyncio`` and aiohttp (~60 MB RSS); everything else here
(``model``, ``extract``, ``discovery``, ``networks``, ``checks``, ``attach``) is cheap to import,
and the commands import ``client`` only when they talk to a cluster.
"""

from __future__ import annotations
