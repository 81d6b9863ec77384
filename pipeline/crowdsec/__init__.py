"""Everything that talks to CrowdSec: the LAPI decision stream, its health metrics and the
opt-in remediation, plus the plugin that attaches them to ``auditor run``."""

from __future__ import annotations
