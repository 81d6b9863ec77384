"""``decision_from_obj``'s quick paths (exact type tests, the scope table, the slots' own
setters instead of the frozen ``__init__``) give the record the plain rules give, for any
object: the same ``Decision``, or a ``DecisionFormatError`` where they raise one."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.crowdsec import (
    Decision,
    DecisionFormatError,
    _simulated,
    decision_from_obj,
    normalize_scope,
    parse_go_duration,
)

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Sub(str):
    """A ``str`` subclass: ``isinstance`` says str, ``type(...) is str`` does not."""


def plain(obj: object) -> Decision:
    """The rules, written the plain way (as before the quick paths)."""
    if not isinstance(obj, dict):
        raise DecisionFormatError
    value, scope = obj.get("value"), obj.get("scope")
    if not isinstance(value, str) or not isinstance(scope, str):
        raise DecisionFormatError
    raw_id, duration = obj.get("id"), obj.get("duration")
    return Decision(
        id=raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None,
        origin=str(obj.get("origin") or ""),
        scenario=str(obj.get("scenario") or ""),
        scope=normalize_scope(scope),
        value=value.strip(),
        type=str(obj.get("type") or "ban"),
        duration_s=parse_go_duration(duration) if isinstance(duration, str) else None,
        simulated=_simulated(obj),
    )


ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.builds(Sub, st.sampled_from(["Ip", "ip", "x", ""])),
    st.lists(st.integers(), max_size=2),
)
DURATION = st.one_of(
    ANY,
    st.sampled_from(["3h59m59.5s", " 1h2m3s ", "-1h0m0.000000001s", "4h", "0", "1h2m.5s"]),
    st.builds(
        lambda h, m, s, f: f"{h}h{m}m{s}{f}s",
        st.integers(0, 10**6),
        st.integers(0, 59),
        st.integers(0, 59),
        st.sampled_from(["", ".5", ".123456789"]),
    ),
)
OBJ = st.fixed_dictionaries(
    {},
    optional={
        "id": ANY,
        "origin": ANY,
        "scenario": ANY,
        "scope": st.one_of(ANY, st.sampled_from(["Ip", "ip", "IP", "Range", "rAnGe", "AS"])),
        "value": st.one_of(ANY, st.sampled_from(["1.2.3.4", " 10.42.0.7\n", "2001:db8::/32"])),
        "type": ANY,
        "duration": DURATION,
        "simulated": st.one_of(ANY, st.sampled_from(["true", " FALSE ", "yes"])),
    },
)


def outcome(fn: Any, obj: object) -> object:
    try:
        return fn(obj)
    except DecisionFormatError:
        return DecisionFormatError


@FAST
@given(st.one_of(OBJ, ANY))
def test_the_quick_paths_give_what_the_plain_rules_give(obj: object) -> None:
    got = outcome(decision_from_obj, obj)
    assert got == outcome(plain, obj)
    if isinstance(got, Decision):
        assert {f.name: type(getattr(got, f.name)) for f in dataclasses.fields(got)} == {
            f.name: type(getattr(plain(obj), f.name)) for f in dataclasses.fields(got)
        }


def test_every_field_is_set_and_the_record_stays_frozen() -> None:
    d = decision_from_obj({"id": 7, "scope": "ip", "value": "1.2.3.4", "duration": "1h0m1s"})
    assert d == Decision(7, "", "", "Ip", "1.2.3.4", "ban", 3601.0, False)
    assert hash(d) == hash(Decision(7, "", "", "Ip", "1.2.3.4", "ban", 3601.0, False))
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.value = "5.6.7.8"  # type: ignore[misc]
