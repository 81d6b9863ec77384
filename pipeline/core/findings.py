"""Finding records: what is wrong, the evidence, and the fix.

The JSON shape (``Finding.as_dict``) is a contract shared by ``replay --format json``, the findings
JSONL sink, ``auditor check`` and the Kafka findings topic; see README "JSON output".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}


class Kind(StrEnum):
    INTERNAL_BAN = "internal_ban"
    MASKED_CLIENT_IP = "masked_client_ip"
    LOG_FORMAT = "log_format"
    CONFIG = "config"
    CROWDSEC_HEALTH = "crowdsec_health"
    REMEDIATION = "remediation"
    SUSPECTED_HOP = "suspected_hop"
    MASKING_STARTED = "masking_started"
    BAN_MISMATCH = "ban_mismatch"
    WHITELIST_GAP = "whitelist_gap"


class State(StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem. ``key`` is its identity across updates (kind + what it is about)."""

    kind: Kind
    severity: Severity
    target: str
    summary: str
    evidence: Mapping[str, Any]
    fix: str
    key: str = ""
    check: str = ""  # sub-kind for config/health findings (a bounded code), "" otherwise

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "target": self.target,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "fix": self.fix,
        }
        if self.check:
            out["check"] = self.check
        return out


@dataclass(frozen=True, slots=True)
class FindingEvent:
    """A state change of a finding, stamped with the time it happened (epoch seconds)."""

    state: State
    finding: Finding
    at: float = field(default=0.0)

    def as_dict(self) -> dict[str, Any]:
        out = self.finding.as_dict()
        out["state"] = self.state.value
        out["at"] = self.at
        return out


def at_or_above(findings: list[Finding], threshold: Severity) -> list[Finding]:
    return [f for f in findings if f.severity.rank >= threshold.rank]


class EventSink(Protocol):
    """Receives finding state changes (JSONL file, Kafka findings topic, remediation...).

    Defined beside the events it receives, so sinks, integrations and the live commands can all
    name it without depending on one another.
    """

    def emit(self, events: Sequence[FindingEvent]) -> None: ...

    async def aclose(self) -> None: ...
