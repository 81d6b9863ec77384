"""Remediation against a real CrowdSec 1.4.6 LAPI: watcher login, deletion by value, safety
checks, dry run, rate limit, errors; outcomes applied to a real Runner as its consumer would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from parsers.crowdsec import Decision, parse_decisions
from pipeline.config import RunConfig
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.findings import FindingEvent, Kind, Severity, State
from pipeline.crowdsec.client import CrowdSecAuthError, MachineCredentials
from pipeline.crowdsec.remediate import (
    ACTION,
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
    return sorted(d["value"] for d in inst.active_decisions())


def ban(scope: str, value: str) -> Decision:
    return Decision(None, "crowdsec", "test", scope, value, "ban", 3600.0)


async def test_delete_removes_every_decision_on_exactly_that_value(
    crowdsec_lapi: CrowdSecInstance,
) -> None:
    inst = crowdsec_lapi
    inst.add_decision(ip=HOP, reason="crowdsecurity/http-probing")
    inst.add_decision(ip=HOP, reason="crowdsecurity/http-bad-user-agent")
    inst.add_decision(range="10.42.0.0/16", reason="wider range")
    inst.add_decision(ip=EXTERNAL, reason="external")
    client = WatcherClient(creds_of(inst))
    try:
        assert await client.delete_decisions(ban("Ip", HOP)) == 2
        assert values(inst) == ["10.42.0.0/16", EXTERNAL]
        # Already gone: nothing to delete, not an error.
        assert await client.delete_decisions(ban("Ip", HOP)) == 0
        # An expired/invalid JWT: the client logs in again once.
        client._token = Secret("not.a.jwt")
        assert await client.delete_decisions(ban("Range", "10.42.0.0/16")) == 1
        assert values(inst) == [EXTERNAL]
        # `cscli decisions add --ip 10.42.1.0/24`: an Ip decision on a CIDR is a range.
        inst.add_decision(range="10.42.1.0/24", reason="cidr")
        assert await client.delete_decisions(ban("Ip", "10.42.1.0/24")) == 1
        assert values(inst) == [EXTERNAL]
    finally:
        await client.aclose()


async def test_wrong_password_is_reported_without_it(crowdsec_lapi: CrowdSecInstance) -> None:
    good = creds_of(crowdsec_lapi)
    bad = MachineCredentials(good.url, good.login, Secret("wrong-password-123"), "file x.yaml")
    client = WatcherClient(bad)
    try:
        with pytest.raises(CrowdSecAuthError, match=r"rejected the machine login") as info:
            await client.delete_decisions(ban("Ip", HOP))
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
    ) -> None:
        self.runner = Runner(
            RunConfig(
                node_ip=node_ip,
                access_log=(str(tmp_path / "access.log"),),
                metrics_listen="127.0.0.1:0",
                checkpoint_dir=str(tmp_path / "ckpt"),
                findings=str(tmp_path / "findings.jsonl"),
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
        )
        self.notes: list[FindingEvent] = []
        self.events: list[FindingEvent] = []
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.remediator.run(self.stop, self.post))

    async def post(self, fn: Callable[[Runner], None]) -> None:
        fn(self.runner)
        events = self.runner.engine.drain_events()
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
    inst.add_decision(ip=HOP, reason="crowdsecurity/http-probing")
    inst.add_decision(ip=EXTERNAL, reason="external")
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
    assert note.evidence["target_class"] == "pod"
    assert note.evidence["network"] == "10.42.0.0/16"
    assert note.evidence["decision"]["value"] == HOP
    assert note.summary.startswith("Deleted the CrowdSec decisions on 10.42.0.7 (pod)")
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
    inst.add_decision(ip=HOP, reason="crowdsecurity/http-probing")
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
    inst.add_decision(ip=HOP, reason="crowdsecurity/http-probing")
    inst.add_decision(ip=OTHER_HOP, reason="crowdsecurity/http-probing")
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
    inst.add_decision(ip=HOP, reason="a")
    inst.add_decision(ip=OTHER_HOP, reason="b")
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
    inst.add_decision(ip=EXTERNAL, reason="crowdsecurity/http-probing")
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
    assert "ClientConnectorError" in note.evidence["error"]
    assert h.counted("error") >= 1
