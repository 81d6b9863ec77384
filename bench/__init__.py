"""Benchmark of the replay hot path against a JSON-decode floor and peer tools (``make bench``)."""

from __future__ import annotations
