"""The engine's decision state after the compact table: what it holds, counts and flags must be
what the whole-record engine did, whether a poll arrives whole or in pieces, and a decision kept
compactly must be judged like a new one when the networks change."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.crowdsec import Decision, DecisionDelta
from parsers.crowdsec_stream import DeltaPart
from pipeline.core.addresses import AddrClass, Classifier, k3s_defaults, make_network
from pipeline.core.engine import Engine
from pipeline.core.findings import Kind
from tests.support.engine import T0, FakeClock, ban, make_engine, new

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALUES = ["10.42.0.7", "10.42.0.0/24", "203.0.113.9", "2001:db8::1", "2001:DB8::1", "CN",
          "192.168.1.10", "198.51.100.7"]  # fmt: skip
DECISION = st.builds(
    Decision,
    id=st.one_of(st.none(), st.integers(1, 8)),
    origin=st.sampled_from(["crowdsec", "CAPI"]),
    scenario=st.sampled_from(["a", "b"]),
    scope=st.sampled_from(["Ip", "Range", "Country"]),
    value=st.sampled_from(VALUES),
    type=st.sampled_from(["ban", "captcha", "throttle"]),
    duration_s=st.sampled_from([None, 60.0, 3600.0, -1.0, 0.0]),
    simulated=st.booleans(),
)
DELTA = st.builds(
    DecisionDelta,
    st.lists(DECISION, max_size=6).map(tuple),
    st.lists(DECISION, max_size=4).map(tuple),
    st.booleans(),
)


def reference(state: dict[str, Decision], delta: DecisionDelta) -> dict[str, Decision]:
    """``Engine.apply`` as it was with a dict of whole records."""
    state = dict(state)
    if delta.startup:
        incoming = {d.key for d in delta.new if not d.expired}
        state = {k: v for k, v in state.items() if k in incoming}
    for d in delta.deleted:
        if d.key in state:
            del state[d.key]
            continue
        for k, a in list(state.items()):
            if (a.scope, a.value, a.type) == (d.scope, d.value, d.type):
                del state[k]
    for d in delta.new:
        if d.expired:
            state.pop(d.key, None)
        else:
            state[d.key] = d
    return state


def parts(delta: DecisionDelta, cuts: list[int]) -> list[DeltaPart]:
    """The delta as the stream client hands it over: deleted before new (the LAPI's order),
    cut into pieces anywhere."""
    items = [("deleted", d) for d in delta.deleted] + [("new", d) for d in delta.new]
    edges = [0, *sorted({c % (len(items) + 1) for c in cuts}), len(items)]
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        chunk = items[a:b]
        out.append(
            DeltaPart(
                tuple(d for w, d in chunk if w == "new"),
                tuple(d for w, d in chunk if w == "deleted"),
                delta.startup,
                first=i == 0,
                last=b == len(items),
            )
        )
    return out


def state(engine: Engine) -> tuple[object, ...]:
    return (
        {k: (a.decision, a.target, a.expires_at) for k, a in engine.decisions.items()},
        dict(engine.decision_counts),
        dict(engine.findings),
        dict(engine.internal_decisions),
        engine.decisions_active,
    )


@FAST
@given(st.lists(DELTA, max_size=6), st.lists(st.integers(0, 20), max_size=5))
def test_pieces_whole_deltas_and_the_old_engine_agree(
    deltas: list[DecisionDelta], cuts: list[int]
) -> None:
    whole, _ = make_engine()
    pieces, _ = make_engine()
    model: dict[str, Decision] = {}
    for delta in deltas:
        whole.apply(delta)
        for part in parts(delta, cuts):
            pieces.apply(part)
        model = reference(model, delta)
        assert state(pieces) == state(whole)
        assert {k: a.decision for k, a in whole.decisions.items()} == model
        counts = Counter(
            (a.decision.scope, a.decision.type, a.target.cls) for a in whole.decisions.values()
        )
        assert whole.decision_counts == counts
        flagged = {
            f"internal_ban:{k}"
            for k, a in whole.decisions.items()
            if a.target.internal and a.decision.type in ("ban", "captcha")
        }
        assert {k for k in whole.findings if k.startswith("internal_ban:")} == flagged
        assert set(whole.internal_decisions) == {
            k for k, a in whole.decisions.items() if a.target.internal
        }


def test_a_startup_poll_cut_short_drops_nothing() -> None:
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.7", 1), ban("203.0.113.9", 2), startup=True))
    engine.apply(DeltaPart((ban("203.0.113.9", 2),), (), True, first=True, last=False))
    assert engine.decisions_active == 2  # the rest of the answer never came
    assert "internal_ban:id:1" in engine.findings
    engine.apply(DeltaPart((ban("198.51.100.7", 3),), (), True, first=True, last=False))
    engine.apply(DeltaPart((), (), True, first=False, last=True))
    assert sorted(engine.decisions) == ["id:3"]
    assert engine.findings == {}


def test_a_whole_delta_between_the_pieces_of_a_resync_leaves_it_alone() -> None:
    """Remediation's read-back applies a whole delta whenever it finishes, also between two
    pieces of a startup answer: what the answer listed before it must survive the answer's end."""
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.7", 1), ban("203.0.113.9", 2), ban("198.51.100.7", 3)))
    engine.apply(DeltaPart((ban("10.42.0.7", 1), ban("203.0.113.9", 2)), (), True, True, False))
    engine.apply(DecisionDelta((ban("10.42.0.8", 4),), (ban("10.42.0.7", 1),)))
    engine.apply(DeltaPart((ban("198.51.100.7", 3),), (), True, first=False, last=True))
    assert sorted(engine.decisions) == ["id:2", "id:3", "id:4"]
    assert set(engine.internal_decisions) == {"id:4"}


def test_a_deletion_after_a_new_entry_of_the_same_poll_does_not_undo_it() -> None:
    """A body that lists ``new`` before ``deleted``: deletions still count first."""
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.7", 1), ban("10.42.0.7", 2, type_="captcha")))
    engine.apply(new(ban("10.42.0.7", 3), ban("10.42.0.8", 4)))
    # id 1 is listed again, then deleted: as in one delta, it is deleted, then re-added; the
    # deletion of id 1 (still known) takes nothing else on the value.
    engine.apply(DeltaPart((ban("10.42.0.7", 1),), (), False, first=True, last=False))
    engine.apply(DeltaPart((), (ban("10.42.0.7", 1),), False, first=False, last=True))
    assert sorted(engine.decisions) == ["id:1", "id:2", "id:3", "id:4"]
    # id 5 is new in this poll, then deleted: unknown before the poll, so the deletion is the
    # 1.4.6 kind and takes the other bans on the value (id 1 and 3), not id 5 itself.
    engine.apply(DeltaPart((ban("10.42.0.7", 5),), (), False, first=True, last=False))
    engine.apply(DeltaPart((), (ban("10.42.0.7", 5),), False, first=False, last=True))
    assert sorted(engine.decisions) == ["id:2", "id:4", "id:5"]
    whole, _ = make_engine()
    whole.apply(new(ban("10.42.0.7", 1), ban("10.42.0.7", 2, type_="captcha")))
    whole.apply(new(ban("10.42.0.7", 3), ban("10.42.0.8", 4)))
    whole.apply(DecisionDelta((ban("10.42.0.7", 1),), (ban("10.42.0.7", 1),)))
    whole.apply(DecisionDelta((ban("10.42.0.7", 5),), (ban("10.42.0.7", 5),)))
    assert state(engine) == state(whole)


@FAST
@given(st.lists(DELTA, min_size=1, max_size=4))
def test_a_compact_decision_turned_internal_is_judged_as_if_new(
    deltas: list[DecisionDelta],
) -> None:
    """Discovery makes 203.0.113.0/24 (a node's public IP) internal: every decision already
    held must then look exactly as if it had arrived after the change."""
    node = [make_network("203.0.113.0/24", AddrClass.NODE, "discovered node")]
    before, _ = make_engine(FakeClock(T0))
    after, _ = make_engine(FakeClock(T0), Classifier([*k3s_defaults(), *node]))
    for delta in deltas:
        before.apply(delta)
        after.apply(delta)
    before.set_networks([*k3s_defaults(), *node])
    assert state(before) == state(after)


def test_the_node_ip_ban_becomes_an_internal_ban_when_discovered() -> None:
    engine, _ = make_engine()
    engine.apply(new(ban("203.0.113.9", 7), ban("198.51.100.7", 8), startup=True))
    assert engine.findings == {}
    assert engine.internal_decisions == {}
    engine.set_networks([*k3s_defaults(), make_network("203.0.113.9/32", AddrClass.NODE, "n")])
    (finding,) = engine.findings.values()
    assert finding.kind is Kind.INTERNAL_BAN
    assert finding.evidence["decision"] == ban("203.0.113.9", 7).as_dict()
    assert finding.evidence["class"] == "node"
    assert set(engine.internal_decisions) == {"id:7"}
    engine.set_networks(k3s_defaults())  # the node left: back to a compact public decision
    assert engine.findings == {}
    assert engine.internal_decisions == {}
    assert engine.decisions_active == 2
