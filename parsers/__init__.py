"""Bytes to records: Traefik access lines, container log envelopes and CrowdSec payloads.

The bottom layer: parsers import nothing from ``pipeline`` or ``sinks``.
"""

from __future__ import annotations
