"""Remediation against a real CrowdSec 1.4.6 LAPI: watcher login, deletion of one decision by
id with a read-back before and after, origin and simulation policy, mapped-IPv6 ranges, dry run,
rate limit, errors; outcomes applied to a real Runner as its consumer would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from parsers.crowdsec import parse_decisions
from pipeline.config import RunConfig
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.findings import FindingEvent, Kind, Severity, State
from pipeline.crowdsec.client import CrowdSecAuthError, MachineCredentials
from pipeline.crowdsec.remediate import (
    ACTION,
    DEFAULT_ORIGINS,
    Remediator,
    TokenBucket,
    WatcherClient,
    internal_network_of,
    load_credentials,
)
from pipeline.errors import ConfigError
from pipeline.live.runner import Runner
from pipeline.secrets import Secret
from tests.support.crowdsec import CrowdSecInstance, free_port
from tests.support.lapi_alerts import Ban, push_bans
from tests.support.waiting import until as _wait

HOP = "10.42.0.7"
OTHER_HOP = "10.42.0.8"
EXTERNAL = "203.0.113.50"
WAIT = 20.0


# -- credentials --------------------------------------------------------------------------------
def test_load_crowdsec_credentials_file(crowdsec_lapi: CrowdSecInstance) -> None:
    creds = load_credentials(str(crowdsec_lapi.credentials_path))
    raw = crowdsec_lapi.machine_credentials()
    assert creds.url == crowdsec_lapi.lapi_url
    assert creds.login == raw["login"]
    assert creds.password.reveal() == raw["password"]
    assert raw["password"] not in repr(creds)
    assert str(crowdsec_lapi.credentials_path) in creds.source


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "does not exist"),
        ("url: [unclosed\n", "not valid YAML"),
        ("- a list\n", "not a mapping"),
        ("url: http://127.0.0.1:8080/\nlogin: m\n", "no 'password'"),
        ("login: m\npassword: hunter2hunter2\n", "no 'url'"),
    ],
)
def test_bad_credentials_files(tmp_path: Path, content: str | None, why: str) -> None:
    path = tmp_path / "local_api_credentials.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=why) as info:
        load_credentials(str(path))
    assert str(path) in str(info.value)
    assert "hunter2" not in str(info.value)


def test_url_falls_back_to_lapi_url(tmp_path: Path) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text("login: m\npassword: pw\n")
    assert load_credentials(str(path), fallback_url="http://127.0.0.1:1/").url == (
        "http://127.0.0.1:1/"
    )


# -- rate limit and safety ----------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(3, clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s() == pytest.approx(20.0)
    clock.now += 20
    assert bucket.take()
    assert not bucket.take()
    clock.now += 3600
    assert sum(bucket.take() for _ in range(10)) == 3  # never more than the burst
    with pytest.raises(ConfigError, match="remediate_max_per_minute"):
        TokenBucket(0, clock)


def test_only_wholly_internal_targets_are_deletable() -> None:
    c = Classifier(k3s_defaults())
    assert internal_network_of(c, "Ip", HOP) == "10.42.0.0/16"
    assert internal_network_of(c, "Ip", "::ffff:10.42.0.7") == "10.42.0.0/16"
    assert internal_network_of(c, "Range", "10.42.0.0/24") == "10.42.0.0/16"
    assert internal_network_of(c, "Range", "10.0.0.0/8") == "10.0.0.0/8"
    assert internal_network_of(c, "Ip", "10.42.1.0/32") == "10.42.0.0/16"
    assert internal_network_of(c, "Ip", EXTERNAL) is None
    assert internal_network_of(c, "Range", "0.0.0.0/1") is None  # contains 10/8, and the world
    assert internal_network_of(c, "Range", "8.0.0.0/6") is None
    assert internal_network_of(c, "Country", "DE") is None
    assert internal_network_of(c, "Ip", "not-an-ip") is None


# -- the LAPI client ----------------------------------------------------------------------------
def creds_of(inst: CrowdSecInstance) -> MachineCredentials:
    return load_credentials(str(inst.credentials_path))


def values(inst: CrowdSecInstance) -> list[str]:
    """Values with an active decision, every origin (``-a``: lists and CAPI too)."""
    alerts = json.loads(inst.cscli("decisions", "list", "-a", "-o", "json").stdout or "null")
    return sorted(d["value"] for a in alerts or [] for d in a.get("decisions") or [])


def ids_on(inst: CrowdSecInstance) -> list[int]:
    alerts = json.loads(inst.cscli("decisions", "list", "-a", "-o", "json").stdout or "null")
    return sorted(int(d["id"]) for a in alerts or [] for d in a.get("decisions") or [])


async def test_delete_removes_exactly_one_decision_by_id(crowdsec_lapi: CrowdSecInstance) -> None:
    inst = crowdsec_lapi
    first, second, wider, outside = push_bans(
        inst, [Ban(HOP), Ban(HOP, scenario="other"), Ban("10.42.0.0/16", "Range"), Ban(EXTERNAL)]
    )
    client = WatcherClient(creds_of(inst))
    try:
        on_hop = await client.decisions_on("Ip", HOP)
        assert sorted(d.id for d in on_hop) == [first, second]  # not the wider range
        assert await client.delete_decision(first) == 1
        assert ids_on(inst) == sorted([second, wider, outside])
        # A range is deleted as itself: what it contains stays.
        client._token = Secret("not.a.jwt")  # an expired/invalid JWT: one new login
        assert await client.delete_decision(wider) == 1
        assert ids_on(inst) == sorted([second, outside])
        assert [d.id for d in await client.decisions_on("Ip", HOP)] == [second]
    finally:
        await client.aclose()


async def test_wrong_password_is_reported_without_it(crowdsec_lapi: CrowdSecInstance) -> None:
    good = creds_of(crowdsec_lapi)
    bad = MachineCredentials(good.url, good.login, Secret("wrong-password-123"), "file x.yaml")
    client = WatcherClient(bad)
    try:
        with pytest.raises(CrowdSecAuthError, match=r"rejected the machine login") as info:
            await client.decisions_on("Ip", HOP)
    finally:
        await client.aclose()
    assert "file x.yaml" in str(info.value)
    assert "wrong-password-123" not in str(info.value)


# -- the remediator, driven like the runner drives it ---------------------------------------
def bouncer_decisions(inst: CrowdSecInstance, key: str, ip: str) -> bytes:
    req = urllib.request.Request(f"{inst.lapi_url}v1/decisions?ip={ip}", headers={"X-Api-Key": key})
    with urllib.request.urlopen(req, timeout=5) as resp:
        body: bytes = resp.read()
        return body


class Harness:
    """A real Runner (engine, metrics) plus a Remediator fed from that engine's events."""

    def __init__(
        self,
        tmp_path: Path,
        inst: CrowdSecInstance | None,
        *,
        node_ip: tuple[str, ...] = (),
        dry_run: bool = True,
        max_per_minute: int = 6,
        origins: frozenset[str] = DEFAULT_ORIGINS,
    ) -> None:
        self.runner = Runner(
            RunConfig(
                node_ip=node_ip,
                access_log=(str(tmp_path / "access.log"),),
                metrics_listen="127.0.0.1:0",
                checkpoint_dir=str(tmp_path / "ckpt"),
                findings=str(tmp_path / "findings.jsonl"),
                remediate=True,  # exports the remediation counters
            ),
            registry=CollectorRegistry(),
            attach=None,  # the remediator under test is driven by hand below
        )
        creds = (
            creds_of(inst)
            if inst is not None
            else MachineCredentials(
                f"http://127.0.0.1:{free_port()}/", "m", Secret("pw"), "file test"
            )
        )
        self.remediator = Remediator(
            WatcherClient(creds, timeout=2.0),
            self.runner.engine.classifier,
            dry_run=dry_run,
            max_per_minute=max_per_minute,
            origins=origins,
        )
        self.notes: list[FindingEvent] = []
        self.events: list[FindingEvent] = []
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.remediator.run(self.stop, self.post))

    async def post(self, fn: Callable[[Runner], None]) -> None:
        fn(self.runner)
        events = self.runner.engine.drain_events()
        self.remediator.emit(events)  # the runner's consumer hands every event to every sink
        self.events += events
        self.notes += [
            e for e in events if e.finding.kind is Kind.REMEDIATION and e.state is State.RAISED
        ]

    def feed(self, body: bytes) -> list[FindingEvent]:
        """Apply a LAPI decisions body to the engine and pass its events to the remediator."""
        self.runner.engine.apply(parse_decisions(body))
        events = self.runner.engine.drain_events()
        self.remediator.emit(events)
        return events

    def results(self) -> list[str]:
        return [e.finding.evidence["result"] for e in self.notes]

    def counted(self, result: str) -> float:
        value = self.runner.metrics.registry.get_sample_value(
            "auditor_remediations_total", {"action": ACTION, "result": result}
        )
        return value or 0.0

    async def until(self, pred: Callable[[], bool], what: str) -> None:
        await _wait(pred, what, timeout=WAIT, detail=lambda: f"notes: {self.results()}")

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)
        await self.remediator.aclose()


@pytest.fixture
def bouncer(crowdsec_lapi: CrowdSecInstance, request: pytest.FixtureRequest) -> str:
    return crowdsec_lapi.add_bouncer(f"remediate-{request.node.name[:40]}")


async def test_internal_ban_is_deleted_and_noted(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    inst = crowdsec_lapi
    hop_id, _ = push_bans(inst, [Ban(HOP), Ban(EXTERNAL)])
    h = Harness(tmp_path, inst, dry_run=False, max_per_minute=6)
    try:
        events = h.feed(bouncer_decisions(inst, bouncer, HOP))
        assert [(e.state, e.finding.kind) for e in events] == [(State.RAISED, Kind.INTERNAL_BAN)]
        h.feed(bouncer_decisions(inst, bouncer, EXTERNAL))  # no finding, nothing to do
        await h.until(lambda: "done" in h.results(), "the deletion")
    finally:
        await h.close()
    assert values(inst) == [EXTERNAL]
    note = h.notes[0].finding
    assert note.kind is Kind.REMEDIATION
    assert note.severity is Severity.INFO
    assert note.target == HOP
    assert note.check == ACTION
    assert note.evidence["deleted"] == 1
    assert note.evidence["decision_id"] == hop_id
    assert note.evidence["still_on_value"] == 0
    assert note.evidence["target_class"] == "pod"
    assert note.evidence["network"] == "10.42.0.0/16"
    assert note.evidence["decision"]["value"] == HOP
    assert note.summary == f"Deleted CrowdSec decision {hop_id} on 10.42.0.7 (pod) through the LAPI"
    assert h.counted("done") == 1
    assert h.remediator.pending == 0
    # A note is a one-off: counted, not left active; the deleted ban is forgotten at once.
    assert [(e.state, e.finding.kind) for e in h.events] == [
        (State.RAISED, Kind.REMEDIATION),
        (State.CLEARED, Kind.REMEDIATION),
        (State.CLEARED, Kind.INTERNAL_BAN),
    ]
    assert h.runner.engine.findings == {}
    assert [a.decision.value for a in h.runner.engine.decisions.values()] == [EXTERNAL]


async def test_dry_run_deletes_nothing(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    inst = crowdsec_lapi
    push_bans(inst, [Ban(HOP)])
    h = Harness(tmp_path, inst)  # dry_run defaults to True
    try:
        h.feed(bouncer_decisions(inst, bouncer, HOP))
        await h.until(lambda: "dry_run" in h.results(), "the dry-run note")
    finally:
        await h.close()
    assert values(inst) == [HOP]
    assert h.notes[0].finding.summary.startswith("Dry run: would delete")
    assert h.counted("dry_run") == 1
    assert h.counted("done") == 0


async def test_rate_limit_defers_the_rest(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    inst = crowdsec_lapi
    push_bans(inst, [Ban(HOP), Ban(OTHER_HOP)])
    h = Harness(tmp_path, inst, dry_run=False, max_per_minute=1)
    try:
        h.feed(bouncer_decisions(inst, bouncer, HOP))
        h.feed(bouncer_decisions(inst, bouncer, OTHER_HOP))
        await h.until(
            lambda: sorted(h.results()) == ["done", "rate_limited"], "one deletion, one deferral"
        )
        assert h.remediator.pending == 1  # retried when the bucket refills (in a minute)
        assert len(values(inst)) == 1
    finally:
        await h.close()
    assert h.counted("done") == 1
    assert h.counted("rate_limited") == 1
    deferred = next(e.finding for e in h.notes if e.finding.evidence["result"] == "rate_limited")
    assert "more than 1 deletions per minute" in deferred.summary


async def test_cleared_ban_is_not_deleted(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    """Rate-limited, then the ban goes away by itself: the job is dropped."""
    inst = crowdsec_lapi
    push_bans(inst, [Ban(HOP, scenario="a"), Ban(OTHER_HOP, scenario="b")])
    h = Harness(tmp_path, inst, dry_run=False, max_per_minute=1)
    try:
        h.feed(bouncer_decisions(inst, bouncer, HOP))
        h.feed(bouncer_decisions(inst, bouncer, OTHER_HOP))
        await h.until(lambda: "rate_limited" in h.results(), "the deferral")
        deferred = next(
            e.finding.target for e in h.notes if e.finding.evidence["result"] == "rate_limited"
        )
        body = bouncer_decisions(inst, bouncer, deferred)
        inst.delete_decision(ip=deferred)  # an operator ran cscli
        deleted = json.loads(body)
        h.feed(json.dumps({"new": None, "deleted": deleted}).encode())
        assert h.remediator.pending == 0
    finally:
        await h.close()


async def test_reclassified_target_is_refused(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    """A node with a public address was banned (internal_ban: node); before the remediator acts,
    discovery drops that node, so the address is public again: it is not ours to unban."""
    inst = crowdsec_lapi
    push_bans(inst, [Ban(EXTERNAL)])
    h = Harness(tmp_path, inst, node_ip=(EXTERNAL,), dry_run=False)
    try:
        h.runner.engine.apply(parse_decisions(bouncer_decisions(inst, bouncer, EXTERNAL)))
        events = h.runner.engine.drain_events()
        assert events[0].finding.evidence["class"] == "node"
        h.runner.engine.set_networks(k3s_defaults())  # the node is gone
        h.remediator.emit(events)
        await h.until(lambda: "refused" in h.results(), "the refusal")
    finally:
        await h.close()
    assert values(inst) == [EXTERNAL]
    assert h.counted("done") == 0
    assert "not entirely inside an internal network" in h.notes[0].finding.summary
    assert h.remediator.pending == 0


async def test_lapi_down_is_an_error_and_retried(tmp_path: Path) -> None:
    h = Harness(tmp_path, None, dry_run=False)
    try:
        body = json.dumps(
            [
                {
                    "duration": "3h59m0s",
                    "id": 7,
                    "origin": "crowdsec",
                    "scenario": "crowdsecurity/http-probing",
                    "scope": "Ip",
                    "type": "ban",
                    "value": HOP,
                }
            ]
        ).encode()
        h.feed(body)
        await h.until(lambda: "error" in h.results(), "the error note")
        assert h.remediator.pending == 1  # kept for a retry with backoff
    finally:
        await h.close()
    note = h.notes[0].finding
    assert note.severity is Severity.MEDIUM
    assert "Could not delete" in note.summary
    assert "ConnectError: Cannot connect to host" in note.evidence["error"]
    assert h.counted("error") >= 1


# -- what is and is not deleted (issue 12: mapped ranges, by id, origins) -------------------------
def stream_startup(inst: CrowdSecInstance, key: str) -> bytes:
    """What the sidecar's LAPI stream sees first: every active decision, one per value."""
    req = urllib.request.Request(
        f"{inst.lapi_url}v1/decisions/stream?startup=true", headers={"X-Api-Key": key}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        body: bytes = resp.read()
        return body


async def test_mapped_ipv6_range_is_not_internal_and_public_bans_survive(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    """CrowdSec reads ``::ffff:10.0.0.0/8`` as the IPv6 ``::/8``, which holds NAT64 and
    IPv4-compatible addresses: deleting it (let alone with what it contains) unbans the world."""
    inst = crowdsec_lapi
    made = push_bans(
        inst,
        [
            Ban("::ffff:10.0.0.0/8", "Range"),
            Ban("64:ff9b::808:808"),
            Ban("::0.8.8.4"),
            Ban(EXTERNAL),
        ],
    )
    h = Harness(tmp_path, inst, dry_run=False, max_per_minute=60)
    try:
        h.feed(stream_startup(inst, bouncer))
        await h.until(lambda: "refused" in h.results(), "the refusal of the mapped range")
        await asyncio.sleep(0.5)  # anything else queued would have run by now
    finally:
        await h.close()
    assert ids_on(inst) == sorted(made)
    assert h.counted("done") == 0
    refused = next(e.finding for e in h.notes if e.finding.evidence["result"] == "refused")
    assert refused.target == "::ffff:10.0.0.0/8"
    assert "not entirely inside an internal network" in refused.summary


async def test_a_range_is_deleted_alone_and_what_it_holds_stays_known(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    """Deleting the range by id leaves a manual ban inside it, in CrowdSec and in the engine."""
    inst = crowdsec_lapi
    (range_id,) = push_bans(inst, [Ban("10.42.0.0/24", "Range")])
    inst.add_decision(ip=HOP, reason="manual")  # origin cscli: reported, left alone
    h = Harness(tmp_path, inst, dry_run=False, max_per_minute=60)
    try:
        h.feed(stream_startup(inst, bouncer))
        await h.until(lambda: sorted(h.results()) == ["done", "skipped"], "one deletion, one skip")
    finally:
        await h.close()
    assert values(inst) == [HOP]
    done = next(e.finding for e in h.notes if e.finding.evidence["result"] == "done")
    assert done.evidence["decision_id"] == range_id
    skipped = next(e.finding for e in h.notes if e.finding.evidence["result"] == "skipped")
    assert skipped.target == HOP
    assert "origin is 'cscli'" in skipped.summary
    # The engine still knows the ban that is still there: the metric does not say 0.
    active = [a.decision for a in h.runner.engine.decisions.values() if a.target.internal]
    assert [(d.value, d.origin) for d in active] == [(HOP, "cscli")]
    h.runner._refresh()  # what the runner does before every scrape
    bans = h.runner.metrics.registry.get_sample_value(
        "auditor_internal_bans_active", {"target_class": "pod"}
    )
    assert bans == 1.0


async def test_every_decision_on_the_value_is_deleted_one_by_one(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    """CrowdSec 1.4 streams one decision per value; the read-back after a delete finds the
    others, which are then judged and deleted on their own ids."""
    inst = crowdsec_lapi
    made = push_bans(inst, [Ban(HOP), Ban(HOP, scenario="crowdsecurity/http-bad-user-agent")])
    h = Harness(tmp_path, inst, dry_run=False, max_per_minute=60)
    try:
        h.feed(stream_startup(inst, bouncer))
        await h.until(lambda: h.results().count("done") == 2, "both deletions")
    finally:
        await h.close()
    assert values(inst) == []
    deleted = sorted(e.finding.evidence["decision_id"] for e in h.notes)
    assert deleted == sorted(made)
    assert not any(a.target.internal for a in h.runner.engine.decisions.values())


async def test_origins_and_simulation_decide_what_is_deleted(
    crowdsec_lapi: CrowdSecInstance, bouncer: str, tmp_path: Path
) -> None:
    inst = crowdsec_lapi
    inst.add_decision(ip=HOP, reason="manual")
    (listed,) = push_bans(inst, [Ban(OTHER_HOP, origin="lists", scenario="list:firehol")])
    simulated = {
        "duration": "3h",
        "id": 99999,
        "origin": "crowdsec",
        "scenario": "crowdsecurity/http-probing",
        "scope": "Ip",
        "type": "ban",
        "value": "10.42.0.9",
        "simulated": True,
    }
    h = Harness(tmp_path, inst, dry_run=False, max_per_minute=60)
    try:
        h.feed(stream_startup(inst, bouncer))
        h.feed(json.dumps([simulated]).encode())
        await h.until(lambda: h.results().count("skipped") == 3, "three skips")
    finally:
        await h.close()
    assert sorted(values(inst)) == sorted([HOP, OTHER_HOP])
    why = {e.finding.target: e.finding.summary for e in h.notes}
    assert "origin is 'cscli'" in why[HOP]
    assert "origin is 'lists'" in why[OTHER_HOP]
    assert "simulated decision" in why["10.42.0.9"]
    assert h.counted("skipped") == 3
    assert h.counted("done") == 0
    # Listed explicitly, an origin is remediated like the agent's own decisions.
    h2 = Harness(tmp_path / "2", inst, dry_run=False, origins=frozenset({"crowdsec", "lists"}))
    try:
        h2.feed(stream_startup(inst, bouncer))
        await h2.until(lambda: sorted(h2.results()) == ["done", "skipped"], "delete + skip")
    finally:
        await h2.close()
    assert values(inst) == [HOP]
    done = next(e.finding for e in h2.notes if e.finding.evidence["result"] == "done")
    assert done.evidence["decision_id"] == listed
