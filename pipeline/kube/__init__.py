"""Kubernetes discovery and config audit.

Only ``client`` imports ``kubernetes_asyncio`` and aiohttp (~60 MB RSS); everything else here
(``model``, ``extract``, ``discovery``, ``networks``, ``checks``, ``attach``, ``publish``,
``from_file``) is cheap to import, and the commands import ``client`` only when they talk to a
cluster. ``publish`` is the ``auditor discover`` watcher, the one process that does; the
sidecars and node agents follow the file it publishes (``from_file``) without the client.
"""

from __future__ import annotations
