"""Checks for what the aggregator reads from Kafka: every field typed, every size bounded.

The events and totals topics are outside input (CONTRIBUTING: hostile until validated): a sidecar
of another version, a misconfigured producer, or anyone with write access can put anything
there. A message that fails a check is a *dead letter*: the reader skips the whole message (a
message is the unit of an offset, so "skip" is always exact), counts it in
``auditor_kafka_dead_letters_total{topic, reason}`` and moves past it, so one bad message can
neither stop the aggregator nor block its partition for whoever owns it next.

The reason is a small fixed class, never a value from the message: it is a metric label, and
the detail text that goes to the log names fields and positions, not contents.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NoReturn

import orjson

# Bounds. Generous for anything our own producers write, small enough that a hostile message
# cannot make one decode cost more than its (already bounded) size.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # the aggregator's fetch size and the totals topic's limit
MAX_TS = 253402300799.0  # 9999-12-31T23:59:59Z: the parser maps anything later to 0.0
MAX_OFFSET = (1 << 63) - 1  # Kafka offsets and file offsets are signed 64-bit
MAX_COUNT = 1 << 53  # tallies: exact in a float (Prometheus), far beyond any real count
MAX_NAME_CHARS = 4096  # node names, file keys, paths (PATH_MAX), sources
MAX_FIELD_CHARS = 1 << 20  # a record field: at most one log line (max_line_bytes)
MAX_ITEMS = 1 << 19  # entries of one list or map in a message


class Topic(StrEnum):
    """Which kind of topic a dead letter came from (a metric label: not the topic's name)."""

    EVENTS = "events"
    TOTALS = "totals"


class Reason(StrEnum):
    """Why a message was dead-lettered (a metric label)."""

    EMPTY = "empty"  # no value at all
    TOO_LARGE = "too_large"  # more bytes than MAX_MESSAGE_BYTES
    NOT_JSON = "not_json"  # orjson rejects it (this includes NaN and Infinity literals)
    VERSION = "unknown_version"  # a JSON object, but not a message version this build reads
    SCHEMA = "bad_schema"  # a field missing, of the wrong type or shape, or out of order
    TIMESTAMP = "bad_timestamp"  # a time that is not a finite number of epoch seconds
    RANGE = "out_of_range"  # a number, string or list beyond its bound
    APPLY = "apply_error"  # passed every check but could not be applied (a bug): skipped too


class DeadLetter(ValueError):
    """A message that must be skipped; ``reason`` is its bounded class."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def fail(reason: Reason, detail: str) -> NoReturn:
    raise DeadLetter(reason, detail)


def load(data: bytes | None) -> Any:
    """The JSON value of a message, within the size bound."""
    if not data:
        fail(Reason.EMPTY, "empty message")
    if len(data) > MAX_MESSAGE_BYTES:
        fail(Reason.TOO_LARGE, f"{len(data)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        fail(Reason.NOT_JSON, f"not JSON: {exc}")


def version_of(d: Any, version: int, what: str) -> dict[str, Any]:
    """``d`` as an object carrying ``"v": version`` (``true`` is not 1)."""
    if type(d) is not dict:
        fail(Reason.SCHEMA, f"not a JSON object ({what})")
    v = d.get("v")
    if type(v) is not int or v != version:
        fail(Reason.VERSION, f"not {what} of version {version}")
    return d


def version_in(d: Any, versions: tuple[int, ...], what: str) -> tuple[dict[str, Any], int]:
    """``d`` as an object whose ``"v"`` is one of ``versions`` (a reader of several formats
    during a rolling upgrade), and that version."""
    if type(d) is not dict:
        fail(Reason.SCHEMA, f"not a JSON object ({what})")
    v = d.get("v")
    if type(v) is not int or v not in versions:
        fail(Reason.VERSION, f"not {what} of version {', '.join(map(str, versions))}")
    return d, v


def need_int(v: Any, lo: int, hi: int, what: str) -> int:
    if type(v) is not int:  # bool is not an int here; big numbers orjson read as floats neither
        fail(Reason.SCHEMA, f"{what}: not an integer")
    if not lo <= v <= hi:
        fail(Reason.RANGE, f"{what}: out of range")
    return v


def need_count(v: Any, what: str) -> int:
    return need_int(v, 0, MAX_COUNT, what)


def need_count_map(v: Any, what: str) -> dict[str, int]:
    """A JSON object of counts: the common case checked in C (one ``set`` of the value types,
    ``min``, ``max``), the per-value check only to name what is wrong."""
    body = need_dict(v, what)
    values = body.values()
    if values and not (
        set(map(type, values)) == {int} and min(values) >= 0 and max(values) <= MAX_COUNT
    ):
        for x in values:
            need_count(x, what)  # raises with the reason
    return dict(body)


def need_ts(v: Any, what: str) -> float:
    """Epoch seconds: an int or float, finite, in the parser's range (0.0 is "no time")."""
    t = type(v)
    # Comparisons are False for NaN, and inf is past MAX_TS: both fail the range check.
    if (t is not float and t is not int) or not 0.0 <= v <= MAX_TS:
        fail(Reason.TIMESTAMP, f"{what}: not a finite time in epoch seconds")
    return float(v)


def need_str(v: Any, max_chars: int, what: str) -> str:
    if type(v) is not str:
        fail(Reason.SCHEMA, f"{what}: not a string")
    if len(v) > max_chars:
        fail(Reason.RANGE, f"{what}: longer than {max_chars} characters")
    return v


def need_list(v: Any, what: str, max_items: int = MAX_ITEMS) -> list[Any]:
    if type(v) is not list:
        fail(Reason.SCHEMA, f"{what}: not a list")
    if len(v) > max_items:
        fail(Reason.RANGE, f"{what}: more than {max_items} entries")
    return v


def need_tuple(v: Any, n: int, what: str) -> list[Any]:
    """A fixed-length JSON array (a row)."""
    if type(v) is not list or len(v) != n:
        fail(Reason.SCHEMA, f"{what}: not a list of {n}")
    return v


def need_dict(v: Any, what: str, max_items: int = MAX_ITEMS) -> dict[str, Any]:
    if type(v) is not dict:
        fail(Reason.SCHEMA, f"{what}: not an object")
    if len(v) > max_items:
        fail(Reason.RANGE, f"{what}: more than {max_items} entries")
    if v and max(map(len, v)) > MAX_FIELD_CHARS:  # keys: JSON object keys are strings
        fail(Reason.RANGE, f"{what}: a key longer than {MAX_FIELD_CHARS} characters")
    return v


def field(d: dict[str, Any], key: str, what: str) -> Any:
    if key not in d:
        fail(Reason.SCHEMA, f"{what}: missing {key!r}")
    return d[key]
