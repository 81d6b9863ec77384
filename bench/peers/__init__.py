"""Peer implementations of the benchmark question, each run as its own process.

The question, same for every peer and for the hot path: how many lines, how many of them come
from an internal client, and how many requests per client (the client being what CrowdSec bans:
the last element of ``ClientHost``, else the host of ``ClientAddr``).
"""

from __future__ import annotations
