"""Command-line entry points: one module per ``auditor`` sub-command, plus shared arguments.

The top of the layering: nothing imports ``pipeline.cli``. Modules keep heavy imports inside
their handlers, so ``auditor replay`` never loads Kafka, Kubernetes or aiohttp.
"""

from __future__ import annotations
