"""Record shapes shared by the parsers and the engine.

An access record is a plain tuple, not an object: the benchmark in ``bench/`` shows a per-line
dataclass or NamedTuple costing as much as the JSON parse itself. The index constants below are the
schema; ``AccessRecord`` is its static type.
"""

from __future__ import annotations

from enum import Enum

# The engine's grouping key is the contiguous prefix (ts, entrypoint, client, host, router), so it can
# take C-level slices instead of indexing field by field.
AccessRecord = tuple[float, str, str, str, str, str, str, int, str, str, str, int]

TS = 0  # epoch seconds from StartUTC (or time/StartLocal); 0.0 when the line carries none
ENTRYPOINT = 1  # entryPointName, "-" when absent (common format never has it)
CLIENT = 2  # the address CrowdSec bans: last element of ClientHost, else host of ClientAddr
HOST = 3  # RequestHost, "-" when absent
ROUTER = 4  # RouterName, "-" when absent
CLIENT_HOST_RAW = 5  # ClientHost as written (may be an X-Forwarded-For list), "" when absent
PEER = 6  # ClientAddr as written (the TCP peer, ``ip:port``), "" when absent
STATUS = 7  # DownstreamStatus, 0 when absent
XFF = 8  # request_X-Forwarded-For, "" when dropped/absent
REAL_IP = 9  # request_X-Real-Ip, "" when dropped/absent
USER_AGENT = 10  # request_User-Agent, "" when dropped/absent
DURATION_NS = 11  # Duration in nanoseconds, 0 when absent


class SkipReason(str, Enum):
    """Bounded codes for lines that did not yield an access record (a metric label)."""

    EMPTY = "empty"
    TOO_LONG = "too_long"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_ACCESS_LOG = "not_access_log"
    BAD_FIELD = "bad_field"
    UNRECOGNIZED = "unrecognized"
    BAD_ENVELOPE = "bad_envelope"
    PARTIAL_OVERFLOW = "partial_overflow"


class LineFormat(str, Enum):
    JSON = "json"
    COMMON = "common"


class ParseStats:
    """Counters a parser bumps per batch; the engine folds them into its totals."""

    __slots__ = ("json", "common", "lines", "skipped")

    def __init__(self) -> None:
        self.lines = 0
        self.json = 0
        self.common = 0
        self.skipped: dict[SkipReason, int] = dict.fromkeys(SkipReason, 0)

    def skip(self, reason: SkipReason, n: int = 1) -> None:
        self.skipped[reason] += n

    def merge(self, other: ParseStats) -> None:
        self.lines += other.lines
        self.json += other.json
        self.common += other.common
        for reason, n in other.skipped.items():
            self.skipped[reason] += n

    @property
    def parsed(self) -> int:
        return self.json + self.common

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())
