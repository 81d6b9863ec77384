"""CrowdSec decision payloads from the shared corpus and the shapes the LAPI/cscli really emit."""

from __future__ import annotations

import json
import re

import pytest

from parsers.crowdsec import (
    Decision,
    DecisionDelta,
    DecisionFormatError,
    decision_from_obj,
    delta_from_obj,
    normalize_scope,
    parse_decisions,
    parse_go_duration,
)
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.engine import Engine, EngineConfig
from tests.support.paths import CORPUS


def read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def decision(
    value: str, *, id_: int | None = 1, duration: str = "4h", **kw: object
) -> dict[str, object]:
    d: dict[str, object] = {
        "duration": duration,
        "origin": "crowdsec",
        "scenario": "crowdsecurity/http-probing",
        "scope": "Ip",
        "type": "ban",
        "value": value,
    }
    if id_ is not None:
        d["id"] = id_
    d.update(kw)
    return d


# -- corpus -----------------------------------------------------------------------------------


def test_lapi_responses_jsonl_merged_in_order() -> None:
    """JSON lines replay in order: one decision per key, the latest line's copy wins."""
    delta = parse_decisions(read("crowdsec-lapi-responses.jsonl"))
    assert delta.deleted == ()
    assert not delta.startup
    assert [(d.id, d.scope, d.value, d.type) for d in delta.new] == [
        (4, "Ip", "1.2.3.4", "ban"),  # lines 1 and 3 (pre-1.5 stream, deleted null)
        (2336, "Ip", "192.168.1.1", "ban"),  # lines 5 and 7
        (2337, "Range", "2.2.3.0/24", "ban"),  # lines 6 and 8
        (2338, "username", "myuser", "enforce_mfa"),  # non-IP scope kept as given
    ]
    # Line 7's later copy of 2336 replaced line 5's.
    assert delta.new[1].duration_s == pytest.approx(3 * 3600 + 48 * 60 + 7.676653651)
    assert delta.new[0].duration_s == pytest.approx(3 * 3600 + 59 * 60 + 55.756182786)
    assert delta.new[0].origin == "cscli"
    assert delta.new[0].scenario.startswith("manual 'ban' from ")


@pytest.mark.parametrize(
    ("lineno", "n_new"),
    [(1, 1), (2, 0), (3, 1), (4, 0), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1)],
)
def test_lapi_responses_each_line_alone(lineno: int, n_new: int) -> None:
    line = read("crowdsec-lapi-responses.jsonl").splitlines()[lineno - 1]
    delta = parse_decisions(line)
    assert len(delta.new) == n_new
    assert delta.deleted == ()


def test_get_decisions_null_body() -> None:
    assert parse_decisions(b"null") == DecisionDelta((), (), False)
    assert parse_decisions(b"null", startup=True) == DecisionDelta((), (), True)


def test_pre_1_5_stream_both_null() -> None:
    assert parse_decisions(b'{"deleted":null,"new":null}') == DecisionDelta((), ())


def test_post_1_5_stream_shape_with_spaces_and_empty_arrays() -> None:
    body = b'{"new": [' + json.dumps(decision("10.42.0.9")).encode() + b'], "deleted": []}'
    delta = parse_decisions(body, startup=True)
    assert [d.value for d in delta.new] == ["10.42.0.9"]
    assert delta.deleted == ()
    assert delta.startup


def test_stream_delta_docs_pretty_printed() -> None:
    delta = parse_decisions(read("crowdsec-decisions-stream-delta-docs.json"))
    assert [(d.id, d.value, d.scope) for d in delta.new] == [(2410, "3.3.3.4", "Ip")]
    assert delta.new[0].duration_s == pytest.approx(3 * 3600 + 59 * 60 + 57.641708614)
    assert delta.deleted == ()


def test_alerts_get_response_nested_decisions() -> None:
    delta = parse_decisions(read("crowdsec-alerts-get-response.json"))
    assert delta.new == (
        Decision(
            id=1,
            origin="crowdsec",
            scenario="crowdsecurity/ssh-bf",
            scope="Ip",
            value="1.1.1.172",
            type="ban",
            duration_s=pytest.approx(59 * 60 + 49.264032632),  # type: ignore[arg-type]
            simulated=False,
        ),
    )
    assert delta.deleted == ()


def test_alert_sample_three_decisions() -> None:
    delta = parse_decisions(read("crowdsec-alert-sample.json"))
    assert [(d.id, d.value, d.duration_s) for d in delta.new] == [
        (1, "127.0.0.1", 3600.0),
        (2, "127.0.0.1", 7200.0),
        (3, "127.0.0.1", 10800.0),
    ]
    assert len({d.key for d in delta.new}) == 3


def test_startup_docs_text_is_not_json() -> None:
    with pytest.raises(DecisionFormatError, match="line 1: not JSON"):
        parse_decisions(read("crowdsec-decisions-stream-startup-docs.txt"))


def _startup_doc_objects() -> list[dict[str, object]]:
    """The two complete decision objects inside the (elided, invalid) docs example."""
    text = read("crowdsec-decisions-stream-startup-docs.txt").decode()
    return [json.loads(m) for m in re.findall(r"\{[^{}]*\}", text)]


def test_startup_docs_expired_deleted_and_lowercase_ip_scope_with_cidr() -> None:
    expired_obj, capi_obj = _startup_doc_objects()
    expired = decision_from_obj(expired_obj)
    assert expired.value == "123.206.50.249"
    assert expired.duration_s == pytest.approx(-(18897 * 3600 + 25 * 60 + 52.809576151))
    assert expired.expired
    capi = decision_from_obj(capi_obj)
    assert capi.scope == "Ip"  # lowercase "ip" normalised
    assert capi.value == "91.241.19.122/32"
    assert capi.origin == "CAPI"
    assert not capi.expired
    delta = delta_from_obj({"deleted": [expired_obj], "new": [capi_obj]}, startup=True)
    assert delta.startup
    assert [d.key for d in delta.new] == ["id:2266"]
    assert [d.key for d in delta.deleted] == ["id:1"]


def test_expired_decisions_in_a_list_count_as_deleted() -> None:
    body = [decision("10.42.0.9", id_=1), decision("10.42.0.8", id_=2, duration="-5m3s")]
    delta = delta_from_obj(body)
    assert [d.value for d in delta.new] == ["10.42.0.9"]
    assert [d.value for d in delta.deleted] == ["10.42.0.8"]


def test_expired_in_stream_new_stays_in_new_for_the_engine() -> None:
    delta = delta_from_obj({"new": [decision("10.42.0.8", duration="-1s")], "deleted": None})
    assert [d.expired for d in delta.new] == [True]


def test_single_decision_object_and_empty_alerts() -> None:
    assert [d.value for d in delta_from_obj(decision("1.2.3.4")).new] == ["1.2.3.4"]
    alerts = [{"id": 1, "decisions": None}, {"id": 2, "decisions": []}]
    assert delta_from_obj(alerts) == DecisionDelta((), ())
    assert parse_decisions(b"[]") == DecisionDelta((), ())


# -- fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3h59m55.756182786s", 14395.756182786),
        ("-18897h25m52.809576151s", -68030752.809576151),
        ("59m49.264032632s", 3589.264032632),
        ("4h", 14400.0),
        ("3h59m56s", 14396.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("-0s", 0.0),
        ("+5m", 300.0),
        ("500ms", 0.5),
        ("2us", 2e-6),
        ("2µs", 2e-6),
        ("7ns", 7e-9),
        (" 4h ", 14400.0),
        ("", None),
        ("-", None),
        ("h", None),
        ("4", None),
        ("4d", None),
        ("1h-1m", None),
        ("1 h", None),
        ("²h", None),
        ("4h garbage", None),
    ],
)
def test_parse_go_duration(text: str, seconds: float | None) -> None:
    got = parse_go_duration(text)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("ip", "Ip"),
        ("IP", "Ip"),
        ("Ip", "Ip"),
        ("range", "Range"),
        ("RANGE", "Range"),
        ("country", "Country"),
        ("as", "AS"),
        ("filter", "Filter"),
        ("username", "username"),
    ],
)
def test_normalize_scope(scope: str, expected: str) -> None:
    assert normalize_scope(scope) == expected


def test_decision_fields_are_tolerant() -> None:
    d = decision_from_obj(
        {"scope": "ip", "value": " 10.42.0.9 ", "id": True, "duration": 5, "simulated": True}
    )
    assert d.value == "10.42.0.9"
    assert d.id is None  # a bool is not an id
    assert d.duration_s is None  # not a Go duration string: never expires
    assert d.type == "ban"
    assert d.simulated
    assert d.key == "Ip:10.42.0.9:ban:"
    assert not d.expired
    assert decision_from_obj(decision("1.2.3.4", id_=7)).key == "id:7"


def test_as_dict_round_trip_fields() -> None:
    d = decision_from_obj(decision("10.42.0.9", id_=3))
    assert d.as_dict() == {
        "id": 3,
        "origin": "crowdsec",
        "scenario": "crowdsecurity/http-probing",
        "scope": "Ip",
        "value": "10.42.0.9",
        "type": "ban",
        "duration_s": 14400.0,
        "simulated": False,
    }


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "empty decisions payload"),
        (b"\n \n", "empty decisions payload"),
        (b"42", "object, a list or null"),
        (b'"ban"', "object, a list or null"),
        (b"true", "object, a list or null"),
        (b"[1]", "not an object"),
        (b"[null]", "not an object"),
        (b'{"foo": 1}', "neither a stream body"),
        (b'{"new": 5}', "expected a list of decisions"),
        (b'{"new": {"value": "1.2.3.4"}}', "expected a list of decisions"),
        (b'{"new": [{"scope": "Ip"}]}', "string 'value' or 'scope'"),
        (b'{"new": [{"scope": "Ip", "value": 1}]}', "string 'value' or 'scope'"),
        (b'[{"decisions": "x"}]', "expected a list of decisions"),
        (b'[{"decisions": [1]}]', "not an object"),
        (b"{not json", "line 1: not JSON"),
        (b'null\n{"new": null}\n{broken\n', "line 3: not JSON"),
        (b'null\n"str"\n', "object, a list or null"),
        (b"\xef\xbb\xbf[]", "not JSON"),
        (b"\xff\xfe[]", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"new": [' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"]}", "not JSON"),
        (b"[NaN]", "not JSON"),
        (b"time=x level=info msg=started", "not JSON"),
    ],
)
def test_unknown_shapes_raise_decision_format_error(payload: bytes, match: str) -> None:
    with pytest.raises(DecisionFormatError, match=match):
        parse_decisions(payload)


def test_decision_format_error_is_a_value_error() -> None:
    assert issubclass(DecisionFormatError, ValueError)


# -- JSON lines are a recording: later lines win ----------------------------------------------


def _engine() -> Engine:
    return Engine(EngineConfig(), Classifier(k3s_defaults()), lambda: 1_700_000_000.0)


def _lines(*docs: object) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


def test_jsonl_add_then_delete_leaves_nothing_active() -> None:
    x = decision("10.42.0.9", id_=7)
    engine = _engine()
    engine.apply(
        parse_decisions(_lines({"new": [x], "deleted": None}, {"new": None, "deleted": [x]}))
    )
    assert engine.decisions == {}
    assert engine.findings == {}


def test_jsonl_delete_then_re_add_stays_active() -> None:
    x = decision("10.42.0.9", id_=7)
    engine = _engine()
    engine.apply(
        parse_decisions(_lines({"new": None, "deleted": [x]}, {"new": [x], "deleted": None}))
    )
    assert list(engine.decisions) == ["id:7"]
