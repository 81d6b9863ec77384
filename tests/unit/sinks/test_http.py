"""The metrics server under hostile clients: connection cap, head timeout and size, no fds left.

Real sockets on loopback; each test starts its own server with a small cap or timeout so the
limits show within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
from collections.abc import AsyncIterator, Callable

import pytest

import sinks.http
from sinks.http import MetricsServer

Factory = Callable[..., MetricsServer]


@pytest.fixture(name="server")
async def _server() -> AsyncIterator[Factory]:
    started: list[MetricsServer] = []

    def make(**kwargs: object) -> MetricsServer:
        server = MetricsServer(
            "127.0.0.1",
            0,
            lambda: b"auditor_up 1\n",
            lambda: (True, "ready"),
            **kwargs,  # type: ignore[arg-type]
        )
        started.append(server)
        return server

    yield make
    for server in started:
        await server.close()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _get(port: int, path: str = "/healthz") -> bytes:
    reader, writer = await _connect(port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """What the server sent before closing (b"" for nothing); fails if it stays open."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return b""


async def _until(pred: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if pred():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


async def test_connections_over_the_cap_are_closed_at_once(server: Factory) -> None:
    srv = server(max_connections=2, head_timeout=30.0)
    await srv.start()
    idle = [await _connect(srv.port) for _ in range(2)]
    await _until(lambda: srv.active == 2, "two idle connections served")
    extra_reader, extra_writer = await _connect(srv.port)
    # Closed without a response (and without waiting for a request), long before the 30 s
    # head timeout: the excess connection holds no descriptor.
    assert await _closed_by_server(extra_reader, within=2.0) == b""
    extra_writer.close()
    assert srv.refused == 1
    assert srv.active == 2
    # A free slot serves again.
    idle[0][1].close()
    await _until(lambda: srv.active == 1, "the closed idle connection released")
    assert (await _get(srv.port)).startswith(b"HTTP/1.1 200 OK")
    idle[1][1].close()


async def test_an_incomplete_head_is_dropped_after_the_timeout(server: Factory) -> None:
    srv = server(head_timeout=0.3)
    await srv.start()
    reader, writer = await _connect(srv.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # the blank line never comes
    await writer.drain()
    assert await _closed_by_server(reader, within=2.0) == b""
    writer.close()
    await _until(lambda: srv.active == 0, "the slot released")


async def test_a_trickled_head_gets_one_deadline_not_one_per_byte(server: Factory) -> None:
    srv = server(head_timeout=0.5)
    await srv.start()
    reader, writer = await _connect(srv.port)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def trickle() -> None:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        assert await _closed_by_server(reader, within=3.0) == b""
        assert loop.time() - start < 2.0
    finally:
        sender.cancel()
        writer.close()


async def test_an_oversized_head_is_dropped_unanswered(server: Factory) -> None:
    srv = server()
    await srv.start()
    reader, writer = await _connect(srv.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (2 * sinks.http.MAX_HEAD))
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        await writer.drain()
    assert await _closed_by_server(reader, within=2.0) == b""
    writer.close()


async def test_a_failing_route_answers_nothing_and_stays_in_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> bytes:
        raise RuntimeError("collector bug")

    srv = MetricsServer("127.0.0.1", 0, broken, lambda: (True, "ready"))
    await srv.start()
    try:
        assert await _get(srv.port, "/metrics") == b""
        assert await _get(srv.port, "/metrics") == b""
        assert (await _get(srv.port, "/healthz")).startswith(b"HTTP/1.1 200 OK")
        assert srv.request_failures == 2
        warnings = [r for r in caplog.records if r.name == "auditor.metrics"]
        assert len(warnings) == 1  # rate-limited
        assert warnings[0].exc_info is None  # a line, not a traceback
        assert "collector bug" in warnings[0].getMessage()
    finally:
        await srv.close()


def _open_until_none_left(fds: list[int]) -> None:
    while True:
        fds.append(os.open(os.devnull, os.O_RDONLY))


async def test_out_of_descriptors_pauses_accept_then_recovers(
    server: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """accept() failing with EMFILE must neither spin, nor raise, nor log per attempt."""
    caplog.set_level(logging.WARNING, logger="auditor.metrics")
    srv = server()
    await srv.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        # Use up every descriptor below a limit just above what is open now.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
        with pytest.raises(OSError, match="Too many open files"):
            _open_until_none_left(fillers)
        assert client.connect_ex(("127.0.0.1", srv.port)) in (0, errno.EINPROGRESS)
        await asyncio.sleep(1.2)
        assert srv.active == 0
        # Paused between attempts (ACCEPT_PAUSE_S), not thousands of retries a second.
        assert 1 <= srv.accept_failures <= 1.2 / sinks.http.ACCEPT_PAUSE_S + 2
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    loop = asyncio.get_running_loop()
    try:
        # The connection queued in the backlog meanwhile is served once descriptors are back.
        await asyncio.wait_for(
            loop.sock_sendall(client, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 5
        )
        answer = await asyncio.wait_for(loop.sock_recv(client, 4096), 5)
        assert answer.startswith(b"HTTP/1.1 200 OK")
    finally:
        client.close()
    warnings = [r for r in caplog.records if r.name == "auditor.metrics"]
    assert len(warnings) == 1
    assert "Too many open files" in warnings[0].getMessage()
    assert warnings[0].exc_info is None
