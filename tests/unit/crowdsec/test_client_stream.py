"""The decisions stream read as it arrives, against a real HTTP server on 127.0.0.1 that sends
crafted bodies: endless, oversized, trickling, truncated, malformed, and large but fine."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from parsers.crowdsec import DecisionFormatError
from pipeline.crowdsec import client as client_module
from pipeline.crowdsec.client import (
    DECISIONS_BODY_MAX,
    BouncerKey,
    CrowdSecClient,
    CrowdSecUnavailable,
    ResponseTooLarge,
    RetryPolicy,
)
from pipeline.crowdsec.lapi import LapiConfig, LapiStream
from pipeline.secrets import Secret
from tests.support.engine import ban, make_engine, new

if TYPE_CHECKING:
    from parsers.crowdsec_stream import DeltaPart

KEY = "bouncer-key-stream"
Body = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def decision(i: int, value: str | None = None) -> bytes:
    return json.dumps(
        {
            "duration": "3h59m59.5s",
            "id": i,
            "origin": "CAPI",
            "scenario": "crowdsecurity/ssh-bf",
            "scope": "Ip",
            "type": "ban",
            "value": value or f"198.51.{(i >> 8) & 255}.{i & 255}",
        }
    ).encode()


def body_of(n: int, *, deleted: int = 0) -> bytes:
    gone = b",".join(decision(i) for i in range(1, deleted + 1))
    new = b",".join(decision(i) for i in range(deleted + 1, deleted + n + 1))
    return b'{"deleted":[' + gone + b'],"new":[' + new + b"]}"


@dataclass(slots=True)
class Server:
    """Answers every GET with the body the test gives, written chunk by chunk."""

    url: str = ""
    body: Body | None = None
    content_length: int | None = None
    queries: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if self.content_length is not None:
            resp.content_length = self.content_length
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        assert self.body is not None
        try:
            await self.body(request, resp)
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):  # the client hung up: expected here
            pass
        return resp


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_get("/{tail:.*}", srv.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    srv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        yield srv
    finally:
        await runner.cleanup()


def client(url: str, timeout: float = 20.0) -> CrowdSecClient:
    return CrowdSecClient(
        url, api_key=BouncerKey(Secret(KEY), "test"), timeout=timeout, retry=RetryPolicy()
    )


def fixed(data: bytes, chunk: int = 65536) -> Body:
    async def write(_req: web.Request, resp: web.StreamResponse) -> None:
        for at in range(0, len(data), chunk):
            await resp.write(data[at : at + chunk])

    return write


def endless(head: bytes, unit: bytes, delay: float = 0.0) -> Body:
    async def write(_req: web.Request, resp: web.StreamResponse) -> None:
        await resp.write(head)
        block = unit * max(1, 65536 // len(unit))
        while True:
            await resp.write(block)
            if delay:
                await asyncio.sleep(delay)

    return write


async def parts_of(c: CrowdSecClient, *, startup: bool = True) -> list[DeltaPart]:
    out = []
    async with c:
        async for part in c.stream_parts(startup=startup, scopes=("ip", "range")):
            out.append(part)
    return out


# -- large but fine ---------------------------------------------------------------------------
async def test_a_large_answer_comes_in_parts_first_to_last(server: Server) -> None:
    server.body = fixed(body_of(20_000, deleted=3), chunk=10_000)
    parts = await parts_of(client(server.url))
    assert len(parts) > 10
    assert [p.first for p in parts] == [True] + [False] * (len(parts) - 1)
    assert [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
    assert all(p.startup for p in parts)
    ids = [d.id for p in parts for d in p.new]
    assert ids == list(range(4, 20_004))
    assert [d.id for p in parts for d in p.deleted] == [1, 2, 3]
    assert max(len(p.new) for p in parts) < 500  # a 64 KiB chunk each, never the whole answer
    assert server.queries[-1] == {"startup": "true", "scopes": "ip,range"}


async def test_small_answers_stay_one_delta(server: Server) -> None:
    server.body = fixed(b'{"deleted":null,"new":null}')
    (empty,) = await parts_of(client(server.url))
    assert (empty.new, empty.deleted, empty.first, empty.last) == ((), (), True, True)
    assert await parts_of(client(server.url), startup=False) == []  # nothing changed
    server.body = fixed(body_of(2))
    async with client(server.url) as c:
        delta = await c.stream_decisions(startup=True)
    assert [d.id for d in delta.new] == [1, 2]


# -- hostile ----------------------------------------------------------------------------------
async def test_an_endless_body_fails_cleanly_with_memory_bounded(server: Server) -> None:
    """Valid decisions forever: cut at the cap, holding about a chunk meanwhile (reading it
    whole held the full 64 MiB before failing, and an endless one 9.4 GB within the timeout)."""
    server.body = endless(b'{"deleted":null,"new":[', b" " * 1023 + b"\n")
    tracemalloc.start()
    try:
        async with client(server.url, timeout=60) as c:
            with pytest.raises(ResponseTooLarge, match=f"larger than {DECISIONS_BODY_MAX}"):
                await c.stream_decisions(startup=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak


async def test_endless_decisions_are_cut_at_the_cap(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "DECISIONS_BODY_MAX", 4 * 1024 * 1024)
    server.body = endless(b'{"deleted":null,"new":[', decision(7) + b",")
    parts: list[DeltaPart] = []

    async def collect(c: CrowdSecClient) -> None:
        async for part in c.stream_parts(startup=True):
            parts.append(part)

    async with client(server.url) as c:
        with pytest.raises(ResponseTooLarge):
            await collect(c)
    assert sum(len(p.new) for p in parts) > 10_000  # decisions flowed out as they came...
    assert not any(p.last for p in parts)  # ...but never the `last` part that replaces a state


async def test_an_endless_string_is_a_format_error_at_the_item_cap(server: Server) -> None:
    server.body = endless(b'{"new":[{"value":"', b"{[x]}\\\\" * 100)
    async with client(server.url) as c:
        with pytest.raises(DecisionFormatError, match="longer than"):
            await c.stream_decisions(startup=True)


async def test_a_declared_oversized_body_is_refused_before_reading(server: Server) -> None:
    server.content_length = DECISIONS_BODY_MAX + 1
    server.body = fixed(b"")
    async with client(server.url) as c:
        with pytest.raises(ResponseTooLarge):
            await c.stream_decisions(startup=True)


async def test_a_trickling_body_ends_at_the_timeout(server: Server) -> None:
    server.body = endless(b'{"new":[', decision(1) + b",", delay=0.05)
    started = time.monotonic()
    async with client(server.url, timeout=0.5) as c:
        with pytest.raises(CrowdSecUnavailable, match=r"no complete answer within 0\.5s"):
            await c.stream_decisions(startup=True)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "data",
    [body_of(3)[:-30], b'{"new":[' + decision(1) + b"]", body_of(3) + b"[]", b"<html>hi</html>"],
    ids=["cut-mid-decision", "unclosed-object", "trailing-data", "html"],
)
async def test_a_broken_body_is_a_format_error(server: Server, data: bytes) -> None:
    server.body = fixed(data, chunk=7)
    async with client(server.url) as c:
        with pytest.raises(DecisionFormatError):
            await c.stream_decisions(startup=True)


async def test_a_dropped_connection_is_unavailable(server: Server) -> None:
    async def hang_up(request: web.Request, resp: web.StreamResponse) -> None:
        await resp.write(body_of(3)[:50])
        assert request.transport is not None
        request.transport.close()

    server.content_length = 10_000  # announced, then the server stops short
    server.body = hang_up
    async with client(server.url) as c:
        with pytest.raises(CrowdSecUnavailable):
            await c.stream_decisions(startup=True)


# -- the stream's status and the engine -------------------------------------------------------
async def test_an_oversized_startup_is_counted_and_changes_nothing(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll fails in the stream's status; the engine keeps what it had (a startup answer
    replaces the state only at its end), and the next good answer replaces it."""
    monkeypatch.setattr(client_module, "DECISIONS_BODY_MAX", 1024 * 1024)
    engine, _ = make_engine()
    engine.apply(new(ban("10.42.0.7", 999_999), startup=True))
    server.body = endless(b'{"deleted":null,"new":[', decision(7) + b",")
    stream = LapiStream(
        LapiConfig(
            url=server.url,
            key=Secret(KEY),
            key_source="test",
            poll_interval=0.05,
            backoff_initial=0.05,
            backoff_max=0.1,
        )
    )
    stop = asyncio.Event()

    async def run() -> None:
        async for part in stream.deltas(stop):
            engine.apply(part)
            if part.last:  # type: ignore[attr-defined]
                stop.set()

    task = asyncio.create_task(run())
    while stream.status.polls_failed < 1:
        await asyncio.sleep(0.01)
    assert not stream.status.up
    assert "larger than 1048576 bytes" in stream.status.last_error
    assert "internal_ban:id:999999" in engine.findings  # not dropped by the broken resync
    assert engine.decisions_active > 1  # what arrived was applied: active per the LAPI

    server.body = fixed(body_of(500), chunk=4096)
    await asyncio.wait_for(task, 20)
    assert stream.status.up
    assert engine.decisions_active == 500
    assert engine.findings == {}
