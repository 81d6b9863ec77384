"""The metrics port: ``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (sources healthy).

A few dozen lines of asyncio instead of a web framework: three GET routes do not justify the
memory of one on a node that has little to spare.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

_MAX_REQUEST = 8192
WRITE_TIMEOUT_S = 10.0


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        exposition: Callable[[], bytes],
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self.host = host
        self.port = port
        self._exposition = exposition
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            writer.close()
            return
        parts = head[:_MAX_REQUEST].split(b" ", 2)
        method = parts[0] if parts else b""
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if method not in (b"GET", b"HEAD"):
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        elif path == b"/metrics":
            status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self._exposition()
        elif path == b"/healthz":
            status, ctype, body = "200 OK", "text/plain", b"ok\n"
        elif path == b"/readyz":
            ok, why = self._ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            ctype, body = "text/plain", (why + "\n").encode()
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(header if method == b"HEAD" else header + body)
            # A client that stops reading must not hold the connection (and the body) forever.
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except TimeoutError:
            writer.transport.abort()
        except ConnectionError:
            pass
        finally:
            writer.close()
