"""The shared CrowdSec client's policy (retries, backoff, time budget, body caps, error mapping)
against a real HTTP server on 127.0.0.1 that answers as scripted."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import pytest
from aiohttp import web

import pipeline
from pipeline.crowdsec.client import (
    METRICS_BODY_MAX,
    BouncerKey,
    CrowdSecAuthError,
    CrowdSecClient,
    CrowdSecStatusError,
    CrowdSecUnavailable,
    MachineCredentials,
    ResponseTooLarge,
    RetryPolicy,
    fetch_decisions,
)
from pipeline.errors import UsageError
from pipeline.secrets import Secret
from tests.support.crowdsec import free_port
from tests.support.paths import ROOT

KEY = "bouncer-key-0f9e8d"
FAST = RetryPolicy(initial_s=0.1, max_s=1.0, attempts=3)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    chunked: bool = False


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    at: float


@dataclass(slots=True)
class FakeCrowdSec:
    """Answers each (method, path) with its scripted replies in turn, repeating the last."""

    url: str = ""
    script: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def on(self, method: str, path: str, *replies: Reply) -> None:
        self.script[(method, path)] = list(replies)

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if (s.method, s.path) == (method, path)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
                time.monotonic(),
            )
        )
        queue = self.script.get((request.method, request.path)) or [Reply(404, b"404 not found")]
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if not reply.chunked:
            return web.Response(status=reply.status, body=reply.body)
        resp = web.StreamResponse(status=reply.status)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(reply.body), 65536):
            await resp.write(reply.body[i : i + 65536])
        await resp.write_eof()
        return resp


@pytest.fixture
async def fake() -> AsyncIterator[FakeCrowdSec]:
    server = FakeCrowdSec()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/"
    try:
        yield server
    finally:
        await runner.cleanup()


def bouncer(url: str, *, timeout: float = 5.0, retry: RetryPolicy = FAST) -> CrowdSecClient:
    return CrowdSecClient(
        url, api_key=BouncerKey(Secret(KEY), "file /run/key"), timeout=timeout, retry=retry
    )


def decisions_body(*values: str, duration: str = "3h59m0s") -> bytes:
    return json.dumps(
        [
            {
                "id": i,
                "origin": "crowdsec",
                "scenario": "crowdsecurity/http-probing",
                "scope": "Ip",
                "value": v,
                "type": "ban",
                "duration": duration,
            }
            for i, v in enumerate(values, 1)
        ]
    ).encode()


# -- the policy -------------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap_with_equal_jitter() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=4.0)
    rng = random.Random(7)
    for failures, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (60, 4.0)):
        delays = [policy.delay(failures, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) <= max(delays) <= ceiling, failures
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not a fixed step


async def test_transient_answers_are_retried_with_backoff(fake: FakeCrowdSec) -> None:
    fake.on(
        "GET",
        "/v1/decisions",
        Reply(503, b"overloaded"),
        Reply(502),
        Reply(200, decisions_body("10.42.0.7")),
    )
    async with bouncer(fake.url) as client:
        delta = await client.decisions()
    assert [d.value for d in delta.new] == ["10.42.0.7"]
    calls = fake.calls("GET", "/v1/decisions")
    assert len(calls) == 3
    # Equal jitter: at least half of 0.1 s, then at least half of 0.2 s between tries.
    assert calls[1].at - calls[0].at >= 0.05
    assert calls[2].at - calls[1].at >= 0.1
    for c in calls:
        assert c.headers["User-Agent"] == f"ban-auditor/{pipeline.__version__}"
        assert c.headers["X-Api-Key"] == KEY


async def test_retries_end_after_the_attempts(fake: FakeCrowdSec) -> None:
    fake.on("GET", "/v1/decisions", Reply(503, b"still overloaded"))
    async with bouncer(fake.url) as client:
        with pytest.raises(CrowdSecUnavailable) as info:
            await client.decisions()
    assert info.value.status == 503
    assert str(info.value) == f"GET {fake.url}v1/decisions: HTTP 503 still overloaded"
    assert len(fake.calls("GET", "/v1/decisions")) == FAST.attempts


async def test_the_stream_tries_once_per_poll(fake: FakeCrowdSec) -> None:
    """The stream counts each poll in its status, so the client must not hide failures."""
    fake.on("GET", "/v1/decisions/stream", Reply(503))
    async with bouncer(fake.url) as client:
        with pytest.raises(CrowdSecUnavailable):
            await client.stream_decisions(startup=True, scopes=("ip", "range"))
    (call,) = fake.calls("GET", "/v1/decisions/stream")
    assert call.query == {"startup": "true", "scopes": "ip,range"}


async def test_refused_key_is_an_auth_error_at_once(fake: FakeCrowdSec) -> None:
    fake.on("GET", "/v1/decisions", Reply(403, b'{"message":"access forbidden"}'))
    async with bouncer(fake.url) as client:
        with pytest.raises(CrowdSecAuthError) as info:
            await client.decisions()
    message = str(info.value)
    assert info.value.status == 403
    assert "rejected the bouncer API key from file /run/key (HTTP 403)" in message
    assert KEY not in message
    assert len(fake.calls("GET", "/v1/decisions")) == 1


async def test_unexpected_answer_is_not_retried(fake: FakeCrowdSec) -> None:
    async with bouncer(fake.url + "nope/") as client:
        with pytest.raises(CrowdSecStatusError, match=r"unexpected HTTP 404 404 not found"):
            await client.decisions()
    assert len(fake.seen) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_the_cap_is_refused(fake: FakeCrowdSec, chunked: bool) -> None:
    fake.on("GET", "/metrics", Reply(200, b"#" * (METRICS_BODY_MAX + 1), chunked=chunked))
    async with CrowdSecClient(fake.url + "metrics", retry=FAST) as client:
        with pytest.raises(ResponseTooLarge) as info:
            await client.metrics_text()
    assert str(info.value) == f"GET {fake.url}metrics: body larger than {METRICS_BODY_MAX} bytes"
    assert isinstance(info.value, CrowdSecUnavailable)  # a later poll may do better...
    assert len(fake.seen) == 1  # ...an immediate retry would not


async def test_body_at_the_cap_is_read(fake: FakeCrowdSec) -> None:
    fake.on("GET", "/metrics", Reply(200, b"#" * METRICS_BODY_MAX, chunked=True))
    async with CrowdSecClient(fake.url + "metrics") as client:
        assert len(await client.metrics_text()) == METRICS_BODY_MAX


async def test_timeout_bounds_the_whole_call(fake: FakeCrowdSec) -> None:
    """Retries and backoff included: a hanging LAPI costs a caller its timeout, not 3 x it."""
    fake.on("GET", "/v1/decisions", Reply(200, b"[]", delay=1.5))
    started = time.monotonic()
    async with bouncer(fake.url, timeout=0.4) as client:
        with pytest.raises(CrowdSecUnavailable) as info:
            await client.decisions()
    assert time.monotonic() - started < 1.0  # three tries of 0.4 s each would take 1.35 s
    assert str(info.value) == f"GET {fake.url}v1/decisions: no answer within 0.4s"
    assert info.value.status is None


async def test_nothing_listening() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    async with bouncer(url) as client:
        with pytest.raises(CrowdSecUnavailable, match="ConnectError: Cannot connect to") as info:
            await client.decisions()
    assert info.value.status is None
    assert str(info.value).startswith(f"GET {url}v1/decisions: ")


# -- as a watcher -----------------------------------------------------------------------------
def watcher(url: str) -> CrowdSecClient:
    creds = MachineCredentials(url, "machine-1", Secret("pw-5a4b3c"), "file creds.yaml")
    return CrowdSecClient(url, machine=creds, retry=FAST)


async def test_delete_logs_in_again_once_on_an_expired_token(fake: FakeCrowdSec) -> None:
    fake.on(
        "POST",
        "/v1/watchers/login",
        Reply(200, b'{"code":200,"token":"jwt-1"}'),
        Reply(200, b'{"code":200,"token":"jwt-2"}'),
    )
    fake.on(
        "DELETE",
        "/v1/decisions/41",
        Reply(401, b'{"message":"token expired"}'),
        Reply(200, b'{"nbDeleted":"1"}'),
    )
    async with watcher(fake.url) as client:
        assert await client.delete_decision(41) == 1
    logins = fake.calls("POST", "/v1/watchers/login")
    assert [json.loads(c.body)["machine_id"] for c in logins] == ["machine-1", "machine-1"]
    deletes = fake.calls("DELETE", "/v1/decisions/41")
    assert [c.headers["Authorization"] for c in deletes] == ["Bearer jwt-1", "Bearer jwt-2"]
    assert deletes[-1].query == {}  # by id only: no value, range or contains
    assert fake.calls("DELETE", "/v1/decisions") == []


@pytest.mark.parametrize("bad", [0, -3, True, "7", None])
async def test_delete_takes_only_a_decision_id(fake: FakeCrowdSec, bad: object) -> None:
    async with watcher(fake.url) as client:
        with pytest.raises(ValueError, match="not a decision id"):
            await client.delete_decision(bad)  # type: ignore[arg-type]
    assert fake.calls("POST", "/v1/watchers/login") == []


@pytest.mark.parametrize("body", [b"{}", b'{"nbDeleted":"many"}', b"[]", b"not json"])
async def test_delete_answer_without_a_count_is_an_error(fake: FakeCrowdSec, body: bytes) -> None:
    fake.on("POST", "/v1/watchers/login", Reply(200, b'{"token":"jwt"}'))
    fake.on("DELETE", "/v1/decisions/5", Reply(200, body))
    async with watcher(fake.url) as client:
        with pytest.raises(CrowdSecStatusError, match="nbDeleted"):
            await client.delete_decision(5)


async def test_decisions_on_keeps_exactly_that_value(fake: FakeCrowdSec) -> None:
    def dec(i: int, scope: str, value: str, duration: str = "3h", **kw: object) -> object:
        common = {"origin": "crowdsec", "scenario": "s", "type": "ban"}
        return {"id": i, "scope": scope, "value": value, "duration": duration, **common, **kw}

    alerts = [
        {"decisions": [dec(1, "Ip", "10.42.0.7"), dec(2, "Ip", "10.42.0.7", "-1s")]},
        {"decisions": [dec(3, "Ip", "10.42.0.7", simulated=True), dec(4, "Ip", "10.42.0.70")]},
        {"decisions": [dec(5, "Range", "10.42.0.0/16")]},
    ]
    fake.on("POST", "/v1/watchers/login", Reply(200, b'{"token":"jwt"}'))
    fake.on("GET", "/v1/alerts", Reply(200, json.dumps(alerts).encode()))
    async with watcher(fake.url) as client:
        found = await client.decisions_on("Ip", "10.42.0.7")
    # Active, on this exact value, simulated included; not the expired one, not the range.
    assert sorted((d.id, d.simulated) for d in found) == [(1, False), (3, True)]
    query = fake.calls("GET", "/v1/alerts")[-1].query
    assert query["scope"] == "Ip"
    assert query["value"] == "10.42.0.7"
    assert query["has_active_decision"] == "true"


async def test_refused_login_names_the_credentials_file(fake: FakeCrowdSec) -> None:
    fake.on("POST", "/v1/watchers/login", Reply(403, b'{"message":"bad password"}'))
    async with watcher(fake.url) as client:
        with pytest.raises(CrowdSecAuthError) as info:
            await client.delete_decision(7)
    assert str(info.value) == (
        f"CrowdSec LAPI {fake.url} rejected the machine login 'machine-1' from file creds.yaml "
        "(HTTP 403)"
    )
    assert fake.calls("DELETE", "/v1/decisions/7") == []


# -- `auditor check` --------------------------------------------------------------------------
async def test_fetch_decisions_lists_the_active_ones(fake: FakeCrowdSec) -> None:
    active = json.loads(decisions_body("10.42.0.7"))
    expired = json.loads(decisions_body("10.42.0.8", duration="-1s"))
    fake.on("GET", "/v1/decisions", Reply(200, json.dumps(active + expired).encode()))
    assert [d.value for d in await fetch_decisions(fake.url, KEY)] == ["10.42.0.7"]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(403), "--lapi-key-file: the LAPI at {url} rejected the key (403)"),
        (Reply(401), "--lapi-url {url}: GET /v1/decisions answered HTTP 401"),
        (Reply(500), "--lapi-url {url}: GET /v1/decisions answered HTTP 500"),
        (
            Reply(200, b'{"x": 1}'),
            "--lapi-url {url}: unexpected decisions payload: object is neither a stream body "
            "({{new, deleted}}) nor a decision",
        ),
    ],
)
async def test_fetch_decisions_errors_name_the_flag(
    fake: FakeCrowdSec, reply: Reply, message: str
) -> None:
    fake.on("GET", "/v1/decisions", reply)
    with pytest.raises(UsageError) as info:
        await fetch_decisions(fake.url, KEY)
    assert str(info.value) == message.format(url=fake.url)
    assert KEY not in str(info.value)


async def test_fetch_decisions_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UsageError, match=f"^--lapi-url {url}: cannot reach the LAPI: Cannot"):
        await fetch_decisions(url, KEY)


# -- the import cost --------------------------------------------------------------------------
async def test_talking_to_crowdsec_loads_no_aiohttp(fake: FakeCrowdSec) -> None:
    """aiohttp costs ~10 MB RSS: neither importing the CrowdSec modules nor a request loads it
    (the requests go through ``http1``)."""
    fake.on("GET", "/v1/decisions", Reply(200, decisions_body("10.42.0.7")))
    code = (
        "import asyncio, sys\n"
        "import pipeline.crowdsec.client, pipeline.crowdsec.lapi\n"
        "import pipeline.crowdsec.health, pipeline.crowdsec.remediate\n"
        "from pipeline.crowdsec.client import fetch_decisions\n"
        f"found = asyncio.run(fetch_decisions({fake.url!r}, {KEY!r}))\n"
        "assert [d.value for d in found] == ['10.42.0.7'], found\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp'))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"
