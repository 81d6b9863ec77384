"""A small HTTP/1.1 client on asyncio streams, for the few calls the auditor makes to CrowdSec.

aiohttp and its dependencies cost a sidecar ~9.5 MB of RSS (bench/RESULTS.md), a quarter of
its 40 MB budget, for one GET every 10 s. The calls to CrowdSec need little: GET, POST and
DELETE with a few headers, http and https, bodies framed by Content-Length, chunked encoding or
the end of the connection, read as they arrive.

Every answer is hostile until read. Each read is bounded in size (a line, the head, a piece of
body) and in time (the caller's deadline, in loop time, covers the connection, the TLS
handshake, the request and every read, so a slow or silent peer costs at most that). Callers
cap the body's total size. Failures are ``HttpError`` (the peer does not answer HTTP/1.x as
expected; ``ConnectError`` when there is no connection at all), ``OSError`` (a reset, TLS),
``TimeoutError`` (the deadline) and ``ValueError`` (a URL or header this client cannot send);
never anything else, and never a message holding a header's value (keys travel in headers).

One connection per request (``Connection: close``): reusing it would save a TCP (and TLS)
handshake every 10 s and bring stale-connection retries that a poll every 10 s does not need.
No redirects are followed, no compression is asked for, and an encoded body (``Content-Encoding``
that is not ``identity``) is an error rather than something to guess at.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode, urlsplit

if TYPE_CHECKING:
    import ssl

MAX_LINE = 8190  # a status, header, chunk-size or trailer line (aiohttp's limit too)
MAX_HEAD = 64 * 1024  # the status line and headers together; also the stream buffer's limit
MAX_FIELDS = 100  # header (or trailer) lines
MAX_INTERIM = 8  # 1xx answers skipped before the real one
READ_SIZE = 65536

_STATUS = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: ([^\r\n]*))?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_NO_BODY = frozenset({204, 304})

_default_tls: ssl.SSLContext | None = None


class HttpError(Exception):
    """The peer's answer is not HTTP/1.x as this client reads it, or it ended too early."""


class ConnectError(HttpError):
    """No connection (refused, unresolvable, TLS handshake failed); the cause is chained."""


def _shown(data: bytes) -> str:
    """Peer bytes quoted in a message: short, and printable whatever they hold."""
    return repr(data[:60])


class Response:
    """The status and headers of an answer; its body comes from ``iter_body``, read once."""

    __slots__ = ("_body_read", "_deadline", "_reader", "headers", "method", "reason", "status")

    def __init__(self, reader: asyncio.StreamReader, deadline: float, method: str) -> None:
        self._reader = reader
        self._deadline = deadline
        self._body_read = False
        self.method = method
        self.status = 0
        self.reason = ""
        # Lower-case names; repeated fields joined with ", " (RFC 9110 5.3).
        self.headers: dict[str, str] = {}

    @property
    def content_length(self) -> int | None:
        """The declared length when the body is framed by it, else None."""
        if self._chunked() or "content-length" not in self.headers:
            return None
        values = {v.strip() for v in self.headers["content-length"].split(",")}
        if len(values) != 1:
            msg = f"conflicting Content-Length values {_shown(str(values).encode())}"
            raise HttpError(msg)
        (value,) = values
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            msg = f"bad Content-Length {_shown(value.encode())}"
            raise HttpError(msg)
        return int(value)

    def _chunked(self) -> bool:
        codings = [c.strip().lower() for c in self.headers.get("transfer-encoding", "").split(",")]
        codings = [c for c in codings if c]
        if not codings:
            return False
        if codings != ["chunked"]:
            msg = f"unsupported Transfer-Encoding {_shown(', '.join(codings).encode())}"
            raise HttpError(msg)
        return True

    async def iter_body(self, size: int = READ_SIZE) -> AsyncGenerator[bytes, None]:
        """The body in pieces of ``size`` bytes (the last may be shorter), as they arrive."""
        if self._body_read:
            msg = "the body was already read"
            raise RuntimeError(msg)
        self._body_read = True
        if self.method == "HEAD" or self.status in _NO_BODY:
            return
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            msg = f"unsupported Content-Encoding {_shown(encoding.encode())} (none was asked for)"
            raise HttpError(msg)
        if self._chunked():
            pieces = self._chunks(size)
        elif (length := self.content_length) is not None:
            pieces = self._sized(length, size)
        else:
            pieces = self._until_closed(size)
        async for piece in pieces:
            yield piece

    # -- framing ---------------------------------------------------------------------------------
    async def _sized(self, length: int, size: int) -> AsyncIterator[bytes]:
        got = 0
        while got < length:
            try:
                piece = await self._exactly(min(size, length - got))
            except asyncio.IncompleteReadError as exc:
                got += len(exc.partial)
                msg = f"connection closed after {got} of {length} body bytes (Content-Length)"
                raise HttpError(msg) from None
            got += len(piece)
            yield piece

    async def _until_closed(self, size: int) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self._exactly(size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    yield exc.partial
                return

    async def _chunks(self, size: int) -> AsyncIterator[bytes]:
        pending = bytearray()  # pieces of ``size`` whatever the peer's chunk sizes
        while (left := await self._chunk_size()) > 0:
            while left:
                take = min(left, size - len(pending))
                try:
                    pending += await self._exactly(take)
                except asyncio.IncompleteReadError:
                    msg = "connection closed inside a chunk"
                    raise HttpError(msg) from None
                left -= take
                if len(pending) >= size:
                    yield bytes(pending)
                    pending.clear()
            try:
                end = await self._exactly(2)
            except asyncio.IncompleteReadError:
                end = b""
            if end != b"\r\n":
                msg = f"chunk data not followed by CRLF but {_shown(end)} (wrong chunk size?)"
                raise HttpError(msg)
        await self._fields("trailer")
        if pending:
            yield bytes(pending)

    async def _chunk_size(self) -> int:
        line = await self._line("chunk-size line")
        text = line.split(b";", 1)[0].strip()  # chunk extensions are ignored
        if not _HEX.fullmatch(text):
            msg = f"bad chunk-size line {_shown(line)}"
            raise HttpError(msg)
        return int(text, 16)

    # -- the head --------------------------------------------------------------------------------
    async def read_head(self) -> None:
        """Status line and headers, skipping interim (1xx) answers."""
        for _ in range(MAX_INTERIM + 1):
            line = await self._line("status line")
            matched = _STATUS.fullmatch(line.rstrip(b"\r\n"))
            if matched is None:
                msg = f"not an HTTP/1.x answer: {_shown(line)}"
                raise HttpError(msg)
            self.status = int(matched.group(1))
            self.reason = (matched.group(2) or b"").decode("latin-1")[:200]
            self.headers = await self._fields("header")
            if not 100 <= self.status < 200:
                return
        msg = f"more than {MAX_INTERIM} interim (1xx) answers"
        raise HttpError(msg)

    async def _fields(self, what: str) -> dict[str, str]:
        fields: dict[str, str] = {}
        size = count = 0
        while True:
            line = await self._line(f"{what} line")
            size += len(line)
            if size > MAX_HEAD:
                msg = f"{what}s longer than {MAX_HEAD} bytes"
                raise HttpError(msg)
            line = line.rstrip(b"\r\n")
            if not line:
                return fields
            count += 1
            if count > MAX_FIELDS:
                msg = f"more than {MAX_FIELDS} {what} lines"
                raise HttpError(msg)
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not _TOKEN.fullmatch(name):
                msg = f"bad {what} line {_shown(line)}"
                raise HttpError(msg)
            key = name.lower()
            value = value.strip(" \t")
            fields[key] = f"{fields[key]}, {value}" if key in fields else value

    # -- bounded reads ---------------------------------------------------------------------------
    async def _line(self, what: str) -> bytes:
        too_long = f"{what} longer than {MAX_LINE} bytes"
        try:
            async with asyncio.timeout_at(self._deadline):
                line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:  # no line end within the buffer's limit
            raise HttpError(too_long) from None
        except asyncio.IncompleteReadError as exc:
            where = "in" if exc.partial else "before"
            msg = f"connection closed {where} the {what}"
            raise HttpError(msg) from None
        if len(line) > MAX_LINE:
            raise HttpError(too_long)
        return line

    async def _exactly(self, n: int) -> bytes:
        async with asyncio.timeout_at(self._deadline):
            return await self._reader.readexactly(n)


# -- the request ---------------------------------------------------------------------------------
def _request(
    method: str,
    url: str,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str],
    body: bytes | None,
) -> tuple[str, str, int, bytes]:
    """(scheme, host, port, the request's bytes); a ValueError for what cannot be sent."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        msg = f"not an http(s) URL (scheme {scheme!r})"
        raise ValueError(msg)
    host = parts.hostname
    if not host:
        msg = "URL without a host"
        raise ValueError(msg)
    port = parts.port or (443 if scheme == "https" else 80)  # .port: ValueError when bad
    if not _TOKEN.fullmatch(method):
        msg = f"bad method {method!r}"
        raise ValueError(msg)
    target = quote(parts.path or "/", safe=_PATH_SAFE)
    query = parts.query
    if params:
        query = "&".join(filter(None, (query, urlencode(params, safe=","))))
    if query:
        target += "?" + quote(query, safe=_PATH_SAFE + "?")
    authority = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        authority += f":{port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or name.lower() in ("host", "content-length", "connection"):
            msg = f"header {name!r} cannot be sent"
            raise ValueError(msg)
        if any((c < " " and c != "\t") or c == "\x7f" for c in value):
            msg = f"header {name}: the value holds a line break or a control character"
            raise ValueError(msg)
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        msg = "a header or the URL is not Latin-1 text"
        raise ValueError(msg) from None
    return scheme, host, port, head + (body or b"")


def default_tls() -> ssl.SSLContext:
    """The system's CA store with hostname checks, made once (loading the store costs time)."""
    global _default_tls  # noqa: PLW0603 - one per process, like aiohttp's
    if _default_tls is None:
        import ssl

        _default_tls = ssl.create_default_context()
    return _default_tls


@asynccontextmanager
async def request(
    method: str,
    url: str,
    *,
    deadline: float,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Response]:
    """Send one request and yield the answer once its head is read; the connection closes on
    leaving. ``deadline`` (``loop.time()``) bounds everything, the body's reads included;
    ``tls`` verifies an https peer (default: the system's CA store)."""
    scheme, host, port, data = _request(method, url, params, headers or {}, body)
    context = (tls or default_tls()) if scheme == "https" else None
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=context,
                server_hostname=host if context is not None else None,
                limit=MAX_HEAD,
            )
    except TimeoutError:  # an OSError too: not a refusal
        raise
    except OSError as exc:
        msg = f"Cannot connect to host {host}:{port}: {exc}"
        raise ConnectError(msg) from exc
    try:
        async with asyncio.timeout_at(deadline):
            writer.write(data)
            await writer.drain()
        response = Response(reader, deadline, method)
        await response.read_head()
        yield response
    finally:
        # No graceful close: the answer was read, or is not wanted, and a hostile peer must not
        # keep this side waiting for its close.
        writer.transport.abort()
        await asyncio.sleep(0)  # let the transport's connection_lost run now
