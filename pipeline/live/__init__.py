"""The long-running commands' machinery: the sidecar runner, the Kafka aggregator and the
lifecycle they share (metrics server, signals, readiness, finding logs)."""

from __future__ import annotations
