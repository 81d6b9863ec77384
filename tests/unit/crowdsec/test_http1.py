"""The small HTTP/1.1 client against real asyncio servers on 127.0.0.1: what a LAPI sends
(Content-Length, chunked, read to the close, TLS with a certificate made here) and what a
hostile or broken peer sends, each of which must end in a clear error, bounded in time and
memory."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.crowdsec import http1
from pipeline.crowdsec.client import (
    BouncerKey,
    CrowdSecClient,
    CrowdSecUnavailable,
    RetryPolicy,
    fetch_decisions,
)
from pipeline.crowdsec.http1 import ConnectError, HttpError
from pipeline.errors import UsageError
from pipeline.secrets import Secret
from tests.support.crowdsec import free_port

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Received:
    head: bytes
    body: bytes


@dataclass(slots=True)
class RawServer:
    """Reads each request (head, and a body by its Content-Length), then runs ``answer``."""

    answer: Answer
    received: list[Received] = field(default_factory=list)
    port: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.received.append(Received(head, await reader.readexactly(length)))
            await self.answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up, as it should on a hostile answer
        except asyncio.CancelledError:
            pass  # the fixture's teardown stops a silent or endless answer
        finally:
            writer.close()
            self.closed.set()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[tuple[asyncio.Server, RawServer]] = []

    async def start(answer: Answer, tls: ssl.SSLContext | None = None) -> RawServer:
        raw = RawServer(answer)
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=tls)
        servers.append((server, raw))
        raw.port = server.sockets[0].getsockname()[1]
        return raw

    yield start
    for server, raw in servers:
        server.close()
        for task in raw.handlers:  # a silent or endless answer is still running
            task.cancel()
        await asyncio.gather(*raw.handlers, return_exceptions=True)
        await server.wait_closed()


def sends(*parts: bytes, delay: float = 0.0) -> Answer:
    async def answer(writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if delay:
                await asyncio.sleep(delay)

    return answer


def forever(head: bytes, unit: bytes, delay: float = 0.0) -> Answer:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        while True:
            writer.write(unit)
            await writer.drain()
            await asyncio.sleep(delay)

    return answer


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def fetch(
    url: str, *, within: float = 5.0, size: int = 65536, **kw: object
) -> tuple[http1.Response, list[bytes]]:
    async with http1.request("GET", url, deadline=deadline(within), **kw) as resp:  # type: ignore[arg-type]
        return resp, [piece async for piece in resp.iter_body(size)]


def url(server: RawServer, path: str = "/v1/decisions") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


# -- what a LAPI sends ----------------------------------------------------------------------------
async def test_request_line_headers_and_a_sized_body(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await serve(
        sends(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello")
    )
    resp, body = await fetch(
        url(server, "/v1/decisions/stream"),
        params={"startup": "true", "scopes": "ip,range"},
        headers={"X-Api-Key": "k-1", "User-Agent": "ban-auditor/test"},
    )
    assert (resp.status, resp.reason, b"".join(body)) == (200, "OK", b"hello")
    assert resp.headers["x-a"] == "1, 2"
    (seen,) = server.received
    lines = seen.head.decode().split("\r\n")
    assert lines[0] == "GET /v1/decisions/stream?startup=true&scopes=ip,range HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert {"X-Api-Key: k-1", "User-Agent: ban-auditor/test", "Connection: close"} <= set(lines)
    assert not any(line.lower().startswith("accept-encoding") for line in lines)


async def test_post_and_delete_carry_their_method_and_body(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await serve(sends(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    async with http1.request(
        "POST", url(server, "/v1/watchers/login"), deadline=deadline(), body=b'{"a":1}'
    ) as resp:
        assert resp.status == 200
    async with http1.request("DELETE", url(server, "/v1/decisions/7"), deadline=deadline()) as resp:
        assert resp.status == 200
    post, delete = server.received
    assert post.head.startswith(b"POST /v1/watchers/login HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 7\r\n" in post.head
    assert post.body == b'{"a":1}'
    assert delete.head.startswith(b"DELETE /v1/decisions/7 HTTP/1.1\r\n")


async def test_chunked_body_comes_in_pieces_of_the_asked_size(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    data = bytes(range(256)) * 300  # 76,800 bytes in chunks of odd sizes
    chunks = [data[i : i + 7001] for i in range(0, len(data), 7001)]
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
    server = await serve(
        sends(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            framed,
            b"0\r\nX-Trailer: t\r\n\r\n",
        )
    )
    resp, body = await fetch(url(server), size=16384)
    assert resp.content_length is None
    assert b"".join(body) == data
    assert [len(p) for p in body[:-1]] == [16384] * (len(body) - 1)


async def test_body_read_to_the_close(serve: Callable[..., Awaitable[RawServer]]) -> None:
    server = await serve(sends(b"HTTP/1.0 200 OK\r\n\r\n", b"a" * 100_000, b"tail"))
    _, body = await fetch(url(server))
    assert b"".join(body) == b"a" * 100_000 + b"tail"


async def test_interim_answers_are_skipped_and_204_has_no_body(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await serve(sends(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"))
    resp, body = await fetch(url(server))
    assert (resp.status, body) == (204, [])


async def test_a_longer_body_is_cut_at_its_content_length(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await serve(sends(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef"))
    _, body = await fetch(url(server))
    assert body == [b"abc"]


# -- TLS ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Pki:
    cert: Path
    key: Path

    def server(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A self-signed certificate for 127.0.0.1 and localhost, made for this module."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ban-auditor test LAPI")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    out = tmp_path_factory.mktemp("pki")
    (out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(out / "cert.pem", out / "key.pem")


async def test_https_with_the_servers_ca(
    serve: Callable[..., Awaitable[RawServer]], pki: Pki
) -> None:
    body = b'{"new":[],"deleted":[]}'
    server = await serve(
        sends(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (len(body), body)
        ),
        tls=pki.server(),
    )
    resp, got = await fetch(f"https://127.0.0.1:{server.port}/v1/decisions", tls=pki.client())
    assert (resp.status, b"".join(got)) == (200, body)
    assert server.received[0].head.startswith(b"GET /v1/decisions HTTP/1.1\r\n")


async def test_https_refuses_an_unknown_certificate(
    serve: Callable[..., Awaitable[RawServer]], pki: Pki
) -> None:
    server = await serve(sends(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), tls=pki.server())
    with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await fetch(f"https://127.0.0.1:{server.port}/")  # the system's CA store
    assert server.received == []


# -- hostile or broken peers ----------------------------------------------------------------------
HEAD_OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED = HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n"

HOSTILE: list[tuple[str, Answer, str]] = [
    ("non-http", sends(b"SSH-2.0-OpenSSH_9.2p1\r\n"), "not an HTTP/1.x answer: b'SSH-2.0-OpenSSH"),
    ("http2-preface", sends(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "not an HTTP/1.x answer"),
    ("closed-at-once", sends(), "connection closed before the status line"),
    ("closed-mid-line", sends(b"HTTP/1.1 20"), "connection closed in the status line"),
    ("binary-no-newline", sends(b"\x00\xff" * 40_000), "status line longer than 8190 bytes"),
    ("huge-header-line", sends(HEAD_OK + b"X: " + b"a" * 100_000), "header line longer than"),
    (
        "endless-headers",
        forever(HEAD_OK, b"X-Pad: " + b"p" * 1000 + b"\r\n"),
        "headers longer than 65536 bytes",
    ),
    ("many-headers", sends(HEAD_OK + b"A: 1\r\n" * 101 + b"\r\n"), "more than 100 header lines"),
    ("folded-header", sends(HEAD_OK + b"A: 1\r\n  folded\r\n\r\n"), "bad header line"),
    ("header-no-colon", sends(HEAD_OK + b"no colon here\r\n\r\n"), "bad header line"),
    ("endless-interim", forever(b"", b"HTTP/1.1 103 Early Hints\r\n\r\n"), "interim"),
    ("bad-chunk-size", sends(CHUNKED + b"zz\r\nab\r\n"), "bad chunk-size line b'zz"),
    ("negative-chunk-size", sends(CHUNKED + b"-1\r\n"), "bad chunk-size line"),
    ("huge-chunk-size", sends(CHUNKED + b"1" * 17 + b"\r\n"), "bad chunk-size line"),
    (
        "chunk-longer-than-its-size",
        sends(CHUNKED + b"2\r\nabc\r\n0\r\n\r\n"),
        "not followed by CRLF",
    ),
    ("chunk-cut-short", sends(CHUNKED + b"ff\r\nabc"), "connection closed inside a chunk"),
    ("no-last-chunk", sends(CHUNKED + b"3\r\nabc\r\n"), "connection closed before the chunk-size"),
    ("endless-chunk-size-line", forever(CHUNKED, b"0" * 4096), "chunk-size line longer than"),
    (
        "short-content-length",
        sends(HEAD_OK + b"Content-Length: 100\r\n\r\n" + b"x" * 40),
        "connection closed after 40 of 100 body bytes",
    ),
    ("bad-content-length", sends(HEAD_OK + b"Content-Length: -5\r\n\r\n"), "bad Content-Length"),
    (
        "conflicting-content-lengths",
        sends(HEAD_OK + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        "conflicting Content-Length",
    ),
    (
        "unasked-compression",
        sends(HEAD_OK + b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd"),
        "unsupported Content-Encoding b'gzip' (none was asked for)",
    ),
    (
        "unknown-transfer-coding",
        sends(HEAD_OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n"),
        "unsupported Transfer-Encoding",
    ),
]


@pytest.mark.parametrize(
    ("answer", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
async def test_a_hostile_answer_is_a_clear_error(
    serve: Callable[..., Awaitable[RawServer]], answer: Answer, message: str
) -> None:
    server = await serve(answer)
    started = time.monotonic()
    with pytest.raises(HttpError) as info:
        await fetch(url(server), within=10)
    assert message in str(info.value)
    assert time.monotonic() - started < 5  # refused on sight, not at the deadline


@pytest.mark.parametrize(
    "answer",
    [
        sends(b"H", b"T", b"T", b"P", b"/", b"1", delay=0.2),  # slowloris status line
        forever(HEAD_OK, b"X: y\r\n", delay=0.2),  # a header line every 0.2 s
        forever(CHUNKED, b"1\r\nx\r\n", delay=0.05),  # a byte a chunk, forever
        sends(HEAD_OK + b"Content-Length: 10\r\n\r\nab", delay=30),  # then silence
        sends(b"", delay=30),  # accepts, says nothing
    ],
    ids=["slow-status", "slow-headers", "trickling-chunks", "silent-body", "silent"],
)
async def test_a_slow_peer_ends_at_the_deadline(
    serve: Callable[..., Awaitable[RawServer]], answer: Answer
) -> None:
    server = await serve(answer)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await fetch(url(server), within=0.6)
    assert 0.5 < time.monotonic() - started < 3.0


async def test_an_endless_chunked_body_holds_a_piece_at_a_time(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    """The caller stops where its cap says; the client never held more than about a piece."""
    server = await serve(forever(CHUNKED, b"4000\r\n" + b"d" * 0x4000 + b"\r\n"))
    tracemalloc.start()
    try:
        got = 0
        async with http1.request("GET", url(server), deadline=deadline(30)) as resp:
            async for piece in resp.iter_body(16384):
                got += len(piece)
                if got >= 32 * 1024 * 1024:
                    break
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got >= 32 * 1024 * 1024
    assert peak < 2 * 1024 * 1024, peak
    await asyncio.wait_for(server.closed.wait(), 5)  # leaving the request closed the connection


async def test_nothing_listening_is_a_connect_error() -> None:
    port = free_port()
    with pytest.raises(ConnectError, match=rf"^Cannot connect to host 127\.0\.0\.1:{port}: "):
        await fetch(f"http://127.0.0.1:{port}/")


# -- what cannot be sent --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "headers", "message"),
    [
        ("ftp://127.0.0.1/", {}, "not an http(s) URL"),
        ("http:///v1", {}, "URL without a host"),
        ("http://127.0.0.1:99999/", {}, "out of range"),
        ("http://127.0.0.1:1/", {"X-Api-Key": "secret\r\nX-Evil: 1"}, "X-Api-Key: the value"),
        ("http://127.0.0.1:1/", {"Bad Name": "v"}, "cannot be sent"),
        ("http://127.0.0.1:1/", {"Host": "elsewhere"}, "cannot be sent"),
    ],
)
async def test_what_cannot_be_sent_is_a_value_error(
    target: str, headers: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        await fetch(target, headers=headers)
    assert message in str(info.value)
    assert "secret" not in str(info.value)


# -- through the CrowdSec client ------------------------------------------------------------------
KEY = "bouncer-key-http1"


def bouncer(
    target: str, *, timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> CrowdSecClient:
    return CrowdSecClient(
        target,
        api_key=BouncerKey(Secret(KEY), "test"),
        timeout=timeout,
        retry=RetryPolicy(initial_s=0.05, max_s=0.1, attempts=2),
        tls=tls,
    )


@pytest.mark.parametrize(
    "name",
    ["non-http", "endless-headers", "bad-chunk-size", "short-content-length", "chunk-cut-short"],
)
async def test_the_client_words_a_hostile_answer_as_unavailable(
    serve: Callable[..., Awaitable[RawServer]], name: str
) -> None:
    answer, message = next((a, m) for n, a, m in HOSTILE if n == name)
    server = await serve(answer)
    base = f"http://127.0.0.1:{server.port}/"
    async with bouncer(base) as client:
        with pytest.raises(CrowdSecUnavailable) as info:
            await client.stream_decisions(startup=True)
        with pytest.raises(CrowdSecUnavailable) as again:
            await client.decisions()
    assert str(info.value).startswith(f"GET {base}v1/decisions/stream: HttpError: ")
    assert message in str(info.value)
    assert str(again.value).startswith(f"GET {base}v1/decisions: HttpError: ")
    assert KEY not in str(info.value) + str(again.value)
    assert len(server.received) == 3  # one stream poll, two tries of the plain GET


async def test_the_client_over_https(serve: Callable[..., Awaitable[RawServer]], pki: Pki) -> None:
    body = b'{"new":[{"id":1,"origin":"crowdsec","scenario":"s","scope":"Ip","value":"10.42.0.7",'
    body += b'"type":"ban","duration":"3h"}],"deleted":null}'
    server = await serve(
        sends(HEAD_OK + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)), tls=pki.server()
    )
    async with bouncer(f"https://127.0.0.1:{server.port}/", tls=pki.client()) as client:
        delta = await client.stream_decisions(startup=True)
    assert [d.value for d in delta.new] == ["10.42.0.7"]
    assert f"X-Api-Key: {KEY}".encode() in server.received[0].head


async def test_auditor_check_names_the_flag_for_a_non_http_peer(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await serve(sends(b"SSH-2.0-OpenSSH_9.2p1\r\n"))
    base = f"http://127.0.0.1:{server.port}"
    with pytest.raises(UsageError) as info:
        await fetch_decisions(base, KEY)
    assert str(info.value) == (
        f"--lapi-url {base}: cannot reach the LAPI: not an HTTP/1.x answer: "
        "b'SSH-2.0-OpenSSH_9.2p1\\r\\n'"
    )
