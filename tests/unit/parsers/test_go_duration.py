"""The fast path for the LAPI's ``[-]XhYmZ[.F]s`` durations gives exactly the general
parser's float (it runs once per decision of a startup answer: 100,000 with a blocklist)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parsers import crowdsec
from parsers.crowdsec import parse_go_duration


def general(text: str, monkeypatch: pytest.MonkeyPatch) -> float | None:
    with monkeypatch.context() as m:
        m.setattr(crowdsec, "_hms", lambda _s: None)
        return parse_go_duration(text)


@given(
    st.booleans(),
    st.integers(0, 10**6),
    st.integers(0, 59),
    st.integers(0, 59),
    st.one_of(st.none(), st.text("0123456789", min_size=1, max_size=9)),
)
def test_fast_path_equals_the_general_parser(
    neg: bool, h: int, m: int, sec: int, frac: str | None
) -> None:
    text = f"{'-' if neg else ''}{h}h{m}m{sec}{'.' + frac if frac else ''}s"
    with pytest.MonkeyPatch.context() as mp:
        assert parse_go_duration(text) == general(text, mp)
    assert crowdsec._hms(text) is not None


@pytest.mark.parametrize(
    "text", ["4h", "1m2s", "59.5s", "1h2m", "1h2m3", "1h2m.5s", "1h2m3.s", "１h2m3s", "1h-2m3s"]
)
def test_other_forms_go_the_general_way(text: str) -> None:
    assert crowdsec._hms(text) is None
    with pytest.MonkeyPatch.context() as mp:
        assert parse_go_duration(text) == general(text, mp)
