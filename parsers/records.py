"""Record shapes shared by the parsers and the engine.

An access record is a plain tuple, not an object: the benchmark in ``bench/`` shows a per-line
dataclass or NamedTuple costing as much as the JSON parse itself. The index constants below are the
schema; ``AccessRecord`` is its static type.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from itertools import compress
from typing import Final

# The engine's grouping key is the contiguous slice
# (entrypoint, client, host, router, xff, real_ip, user_agent), taken with one C-level slice
# instead of field-by-field indexing. The decoded JSON object is not kept: holding a batch of them
# alive cost more than extracting every field (bench/).
AccessRecord = tuple[float, str, str, str, str, str, str, str, str, str, int, int]

TS: Final = 0  # epoch seconds from StartUTC (or time/StartLocal); 0.0 when the line carries none
ENTRYPOINT: Final = 1  # entryPointName, "-" when absent (common format never has it)
CLIENT: Final = 2  # the address CrowdSec bans: last element of ClientHost, else host of ClientAddr
HOST: Final = 3  # RequestHost, "-" when absent
ROUTER: Final = 4  # RouterName, "-" when absent
XFF: Final = 5  # request_X-Forwarded-For, "" when dropped/absent
REAL_IP: Final = 6  # request_X-Real-Ip, "" when dropped/absent
USER_AGENT: Final = 7  # request_User-Agent, "" when dropped/absent (suspected_hop's diversity)
CLIENT_HOST_RAW: Final = 8  # ClientHost as written (may be an X-Forwarded-For list), "" when absent
PEER: Final = 9  # ClientAddr as written (the TCP peer, ``ip:port``), "" when absent
STATUS: Final = 10  # DownstreamStatus, 0 when absent
DURATION_NS: Final = 11  # Duration in nanoseconds (common format: its ms, converted), 0 when absent
KEY = slice(ENTRYPOINT, USER_AGENT + 1)


class SkipReason(StrEnum):
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


class ParseStats:
    """Counters a parser bumps per batch; the engine folds them into its totals."""

    __slots__ = ("common", "json", "lines", "skipped")

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


def non_blank(lines: Iterable[bytes]) -> tuple[list[bytes], int]:
    """The lines that are not blank (empty or whitespace only, each a ``SkipReason.EMPTY``),
    and how many were.

    In C, not a Python loop per line: the parser and the envelope decoder call it on the rest
    of a batch once they meet a blank line, so a run of millions costs milliseconds.
    """
    left = list(lines)
    if left.count(b"") == len(left):  # identity compares: a run of newlines shares one b""
        return [], len(left)
    kept = list(compress(left, map(bytes.strip, left)))
    return kept, len(left) - len(kept)
