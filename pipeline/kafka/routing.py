"""Which aggregator speaks for a finding: the owner of the partition of its target.

Every aggregator's engine holds every finding (the same cluster-wide view); routing by
partition keeps each finding on the findings topic exactly once per owner, across rebalances.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.core.findings import Finding, FindingEvent, State


class FindingRouter:
    """Lets through the finding events of the partitions this aggregator owns.

    Every aggregator's engine holds every finding (same view); the owner of
    ``partition(target)`` speaks for it. A new owner re-announces active findings, and the
    clears it saw in the last ``keep_cleared_s`` (they may have happened while nobody owned the
    partition); consumers key findings, so a repeat is harmless.
    """

    def __init__(
        self,
        partition_of: Callable[[str], int],
        clock: Callable[[], float],
        keep_cleared_s: float = 3600.0,
    ) -> None:
        self.partition_of = partition_of
        self.clock = clock
        self.keep_cleared_s = keep_cleared_s
        self.owned: set[int] = set()
        self._last: dict[str, dict[str, Any]] = {}
        self._cleared: dict[str, tuple[Finding, float]] = {}

    def owner(self, f: Finding) -> int:
        return self.partition_of(f.target or f.key)

    def _remember(self, e: FindingEvent) -> None:
        if e.state is State.CLEARED:
            self._last.pop(e.finding.key, None)
        else:
            self._last[e.finding.key] = e.finding.as_dict()

    def route(self, events: Sequence[FindingEvent]) -> list[FindingEvent]:
        out: list[FindingEvent] = []
        for e in events:
            key = e.finding.key
            if e.state is State.CLEARED:
                self._cleared[key] = (e.finding, e.at)
            else:
                self._cleared.pop(key, None)
            if self.owner(e.finding) in self.owned:
                out.append(e)
                self._remember(e)
        horizon = self.clock() - self.keep_cleared_s
        for key in [k for k, (_, at) in self._cleared.items() if at < horizon]:
            del self._cleared[key]
        return out

    def gain(self, parts: set[int], active: Mapping[str, Finding]) -> list[FindingEvent]:
        self.owned |= parts
        now = self.clock()
        out = [
            FindingEvent(State.RAISED, f, now) for f in active.values() if self.owner(f) in parts
        ]
        out += [
            FindingEvent(State.CLEARED, f, now)
            for key, (f, _) in self._cleared.items()
            if key not in active and self.owner(f) in parts
        ]
        for e in out:
            self._remember(e)
        return out

    def lose(self, parts: set[int]) -> None:
        self.owned -= parts

    def refresh(self, active: Mapping[str, Finding]) -> list[FindingEvent]:
        """Owned findings whose evidence moved since last emitted (sent once at shutdown)."""
        now = self.clock()
        out = [
            FindingEvent(State.UPDATED, f, now)
            for key, f in active.items()
            if self.owner(f) in self.owned and self._last.get(key) != f.as_dict()
        ]
        for e in out:
            self._remember(e)
        return out
