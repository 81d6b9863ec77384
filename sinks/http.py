"""The metrics port: ``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (sources healthy).

A few dozen lines of asyncio instead of a web framework: three GET routes do not justify the
memory of one on a node that has little to spare.

The port is reachable by whoever the network lets in, so a flood of idle connections must not
cost the process more than a fixed number of file descriptors: every descriptor the server holds
is one the tailer cannot use to open a rotated log or write its checkpoint. Hence our own accept
loop rather than ``asyncio.start_server``: at most ``max_connections`` requests are served at
once, an excess connection is closed as soon as it is accepted (nothing read, nothing counted),
a request head must arrive whole within ``head_timeout`` seconds and fit in ``MAX_HEAD`` bytes,
and when ``accept()`` itself runs out of descriptors the loop pauses instead of spinning or
logging a traceback per attempt. One request per connection (``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger("auditor.metrics")

# Module constants rather than config keys: they bound a hostile client, not a deployment
# choice. Prometheus and the kubelet probes need a handful of connections at a time.
MAX_CONNECTIONS = 32
HEAD_TIMEOUT_S = 5.0
MAX_HEAD = 8192
WRITE_TIMEOUT_S = 10.0
# How long accept() rests after the process ran out of descriptors (EMFILE and friends).
ACCEPT_PAUSE_S = 0.5
# At most one warning per this many seconds, however long a flood lasts.
WARN_INTERVAL_S = 60.0
_BACKLOG = 128
# The peer gave up between the kernel's handshake and our accept(): nothing to do.
_PEER_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ETIMEDOUT})
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a RST, no TIME_WAIT kept


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        exposition: Callable[[], bytes],
        ready: Callable[[], tuple[bool, str]],
        *,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self._exposition = exposition
        self._ready = ready
        self._listeners: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._active: set[asyncio.Task[None]] = set()
        # Totals for tests and debugging; ``_pending`` counts what the next warning reports.
        self.refused = 0
        self.accept_failures = 0
        self.request_failures = 0
        self._pending: dict[str, int] = {}
        self._last_warning = float("-inf")

    @property
    def active(self) -> int:
        """Connections being served right now (never more than ``max_connections``)."""
        return len(self._active)

    async def start(self) -> None:
        self._listeners = await _listen(self.host, self.port)
        self.port = int(self._listeners[0].getsockname()[1])
        self._acceptors = [asyncio.create_task(self._accept(s)) for s in self._listeners]

    async def close(self) -> None:
        tasks = [*self._acceptors, *self._active]
        for task in tasks:
            task.cancel()
        for sock in self._listeners:
            sock.close()
        self._listeners, self._acceptors = [], []
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # -- accepting ---------------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if exc.errno in _PEER_GONE:
                    continue
                if listener.fileno() < 0:  # closed under us: the server is stopping
                    return
                self.accept_failures += 1
                self._note("accept() failed", f"{exc.strerror or exc}")
                # Out of descriptors (EMFILE, ENFILE) or kernel memory: the listening socket
                # stays readable, so retrying at once would spin. The kernel keeps queueing
                # new connections in the backlog meanwhile.
                await asyncio.sleep(ACCEPT_PAUSE_S)
                continue
            if len(self._active) >= self.max_connections:
                self.refused += 1
                self._note("connections over the cap refused", None)
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                conn.close()
                continue
            task = asyncio.create_task(self._serve(conn))
            self._active.add(task)
            task.add_done_callback(self._active.discard)

    def _note(self, what: str, detail: str | None) -> None:
        """Count a flood symptom; warn about all of them at most once per ``WARN_INTERVAL_S``."""
        self._pending[what] = self._pending.get(what, 0) + 1
        now = time.monotonic()
        if now - self._last_warning < WARN_INTERVAL_S:
            return
        self._last_warning = now
        counts = ", ".join(f"{n} {w}" for w, n in self._pending.items())
        self._pending.clear()
        log.warning(
            "metrics port %s:%d under pressure: %s%s (at most %d connections served at once; "
            "next warning in %.0f s at the earliest)",
            self.host,
            self.port,
            counts,
            f": {detail}" if detail else "",
            self.max_connections,
            WARN_INTERVAL_S,
        )

    # -- serving -----------------------------------------------------------------------------

    async def _serve(self, conn: socket.socket) -> None:
        try:
            head = await self._read_head(conn)
            if head is not None:
                response = self._respond(head)
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_sendall(conn, response), WRITE_TIMEOUT_S
                )
        except (TimeoutError, ConnectionError):
            pass  # a client that stops reading must not hold the connection (and the body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing from the port may reach the runner
            self.request_failures += 1
            self._note("requests failed", repr(exc))
        finally:
            conn.close()

    async def _read_head(self, conn: socket.socket) -> bytes | None:
        """The request head, or None when it is too slow, too large or never completes."""
        loop = asyncio.get_running_loop()
        buf = b""
        try:
            async with asyncio.timeout(self.head_timeout):
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    if len(buf) >= MAX_HEAD:
                        return None
                    chunk = await loop.sock_recv(conn, MAX_HEAD - len(buf))
                    if not chunk:
                        return None
                    buf += chunk
        except TimeoutError:
            return None
        return buf[:end]

    def _respond(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
        method = parts[0]
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
        return header if method == b"HEAD" else header + body


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (all interfaces when empty), as ``asyncio`` would bind."""
    if not 0 <= port <= 0xFFFF:
        msg = f"port must be 0-65535, not {port}"
        raise OverflowError(msg)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    seen: set[tuple[int, object]] = set()
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
