"""Where findings and figures go: JSON lines, Prometheus, the replay report, the metrics HTTP
server and GeoIP enrichment. Sinks depend on ``pipeline.core`` only."""

from __future__ import annotations
