"""CrowdSec decision payloads to ``Decision`` records.

Accepted shapes (all seen in the wild, see tests/data/corpus/SOURCES.md):
- LAPI stream body ``{"new": [...], "deleted": [...]}`` (either list, or the body, may be
  ``null``);
- ``GET /v1/decisions`` body: an array of decisions, or ``null``;
- ``cscli decisions list -o json`` / ``cscli alerts list -o json`` / ``GET /v1/alerts``: an array of
  alerts, each with a nested ``decisions`` array;
- a JSON-lines file of any of the above, one body per line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_SCOPES = {"ip": "Ip", "range": "Range", "country": "Country", "as": "AS", "filter": "Filter"}


class DecisionFormatError(ValueError):
    """The payload is none of the known decision shapes."""


_HMS = re.compile(r"(-?)([0-9]+)h([0-9]+)m([0-9]+(?:\.[0-9]+)?)s")


def _hms(s: str) -> float | None:
    """The form the LAPI writes for every decision, ``[-]XhYmZ[.F]s``, without the regex loop
    (a startup answer carries tens of thousands). The same float operations in the same order
    as ``parse_go_duration``'s general path, so the same result; None when not that form."""
    m = _HMS.fullmatch(s)
    if m is None:
        return None
    neg, hours, minutes, seconds = m.groups()
    total = float(hours) * 3600.0 + float(minutes) * 60.0 + float(seconds) * 1.0
    return -total if neg else total


def parse_go_duration(text: str) -> float | None:
    """Go ``time.Duration.String()`` to seconds (``-18897h25m52.8s`` is negative), else None."""
    s = text.strip()
    fast = _hms(s)
    if fast is not None:
        return fast
    sign = 1.0
    if s.startswith("-"):
        sign, s = -1.0, s[1:]
    elif s.startswith("+"):
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    for m in _GO_DURATION.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        return None
    return sign * total


# Scopes as the LAPI writes them, and their lower-case forms: ``normalize_scope`` without
# ``lower`` for nearly every decision.
_CANONICAL_SCOPE = {**_SCOPES, **{v: v for v in _SCOPES.values()}}


def normalize_scope(scope: str) -> str:
    """CrowdSec's ``NormalizeScope``: any case of ip/range/country/as to its canonical form."""
    return _SCOPES.get(scope.lower(), scope)


@dataclass(frozen=True, slots=True)
class Decision:
    """One CrowdSec decision as the LAPI reports it."""

    id: int | None
    origin: str
    scenario: str
    scope: str  # normalised: Ip, Range, Country, AS, or as given
    value: str
    type: str
    duration_s: float | None  # remaining seconds when reported; negative means expired
    simulated: bool = False

    @property
    def key(self) -> str:
        """Identity across new/deleted: the LAPI id, else scope+value+type+origin."""
        if self.id is not None:
            return f"id:{self.id}"
        return f"{self.scope}:{self.value}:{self.type}:{self.origin}"

    @property
    def is_range(self) -> bool:
        """A range, whether scoped ``Range`` or an ``Ip`` decision written as a CIDR (cscli and
        some bouncers send ``--ip 10.0.0.0/8``; CrowdSec stores it as a range)."""
        return self.scope == "Range" or (self.scope == "Ip" and "/" in self.value)

    @property
    def expired(self) -> bool:
        return self.duration_s is not None and self.duration_s <= 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "origin": self.origin,
            "scenario": self.scenario,
            "scope": self.scope,
            "value": self.value,
            "type": self.type,
            "duration_s": self.duration_s,
            "simulated": self.simulated,
        }


@dataclass(frozen=True, slots=True)
class DecisionDelta:
    """What changed: decisions that are (still) active and decisions that went away."""

    new: tuple[Decision, ...]
    deleted: tuple[Decision, ...]
    startup: bool = False


def _simulated(obj: dict[Any, Any]) -> bool:
    """The ``simulated`` flag: a JSON boolean, or ``"true"``/``"false"`` in any case from a
    hand-written or re-encoded file; absent or null is false (Go's nil ``*bool``). Anything
    else is no answer: guessing either way would hide a real ban or act on a simulated one."""
    raw = obj.get("simulated")
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:40] + "..."
    msg = f"decision 'simulated' is not true or false: {shown}"
    raise DecisionFormatError(msg)


def decision_from_obj(obj: object) -> Decision:
    """One decision object. Runs once per decision of a startup answer (100,000 with a
    blocklist): the common types are tested exactly first, each general rule stays behind."""
    if not isinstance(obj, dict):
        msg = f"decision is not an object: {type(obj).__name__}"
        raise DecisionFormatError(msg)
    get = obj.get
    value = get("value")
    scope = get("scope")
    if not isinstance(value, str) or not isinstance(scope, str):
        msg = "decision lacks a string 'value' or 'scope'"
        raise DecisionFormatError(msg)
    raw_id = get("id")
    if type(raw_id) is not int:
        raw_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
    origin = get("origin") or ""
    if type(origin) is not str:
        origin = str(origin)
    scenario = get("scenario") or ""
    if type(scenario) is not str:
        scenario = str(scenario)
    dtype = get("type") or "ban"
    if type(dtype) is not str:
        dtype = str(dtype)
    duration = get("duration")
    seconds = None
    if isinstance(duration, str):
        seconds = _hms(duration)
        if seconds is None:
            seconds = parse_go_duration(duration)
    simulated = get("simulated")
    if simulated is not True and simulated is not False:
        simulated = False if simulated is None else _simulated(obj)
    d = _new(Decision)
    _set_id(d, raw_id)
    _set_origin(d, origin)
    _set_scenario(d, scenario)
    _set_scope(d, _CANONICAL_SCOPE.get(scope) or normalize_scope(scope))
    _set_value(d, value.strip())
    _set_type(d, dtype)
    _set_duration(d, seconds)
    _set_simulated(d, simulated)
    return d


# ``Decision(...)`` through the frozen dataclass's ``__init__`` (one ``object.__setattr__`` call a
# field) is half of ``decision_from_obj``; the slots' own setters fill the same fields at half
# the cost. Only here, for records just built; a test checks it against ``Decision(...)``.
_new = object.__new__


def _setter(name: str) -> Callable[[Decision, object], None]:
    setter: Callable[[Decision, object], None] = vars(Decision)[name].__set__
    return setter


_set_id = _setter("id")
_set_origin = _setter("origin")
_set_scenario = _setter("scenario")
_set_scope = _setter("scope")
_set_value = _setter("value")
_set_type = _setter("type")
_set_duration = _setter("duration_s")
_set_simulated = _setter("simulated")


def _decision_list(items: object) -> list[Decision]:
    if items is None:
        return []
    if not isinstance(items, list):
        msg = f"expected a list of decisions, got {type(items).__name__}"
        raise DecisionFormatError(msg)
    return [decision_from_obj(item) for item in items]


def delta_from_obj(body: object, *, startup: bool = False) -> DecisionDelta:
    """Any known decision shape, already JSON-decoded, to a delta."""
    if body is None:
        return DecisionDelta((), (), startup)
    if isinstance(body, dict):
        if "new" in body or "deleted" in body:
            return DecisionDelta(
                tuple(_decision_list(body.get("new"))),
                tuple(_decision_list(body.get("deleted"))),
                startup,
            )
        if "value" in body and "scope" in body:
            return DecisionDelta((decision_from_obj(body),), (), startup)
        msg = "object is neither a stream body ({new, deleted}) nor a decision"
        raise DecisionFormatError(msg)
    if isinstance(body, list):
        new: list[Decision] = []
        for item in body:
            if isinstance(item, dict) and "decisions" in item:  # an alert
                new.extend(_decision_list(item.get("decisions")))
            else:
                new.append(decision_from_obj(item))
        # Expired decisions reported as active (cscli lists, old snapshots) count as deleted.
        return DecisionDelta(
            tuple(d for d in new if not d.expired),
            tuple(d for d in new if d.expired),
            startup,
        )
    msg = f"a decisions payload must be an object, a list or null, not {type(body).__name__}"
    raise DecisionFormatError(msg)


def parse_decisions(data: bytes, *, startup: bool = False) -> DecisionDelta:
    """Parse a payload: one JSON document, or JSON lines of documents (merged in order)."""
    try:
        return delta_from_obj(orjson.loads(data), startup=startup)
    except orjson.JSONDecodeError:
        pass
    # JSON lines are a recording: replay them in order, so a later line wins over an earlier one.
    active: dict[str, Decision] = {}
    deleted: dict[str, Decision] = {}
    seen_line = False
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        seen_line = True
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            msg = f"line {lineno}: not JSON ({exc})"
            raise DecisionFormatError(msg) from None
        delta = delta_from_obj(doc)
        for d in delta.deleted:
            active.pop(d.key, None)
            deleted[d.key] = d
        for d in delta.new:
            active[d.key] = d
    if not seen_line:
        msg = "empty decisions payload"
        raise DecisionFormatError(msg)
    return DecisionDelta(tuple(active.values()), tuple(deleted.values()), startup)
