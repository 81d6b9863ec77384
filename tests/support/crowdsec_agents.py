"""CrowdSec agents' ``/metrics`` pages on loopback: real HTTP endpoints serving text captured
from the real CrowdSec 1.4.6 agent (tests/data/crowdsec_metrics), so the health and
whitelist_gap tests poll what a real agent exposes, and can change what it exposes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.paths import DATA

CAPTURES = DATA / "crowdsec_metrics"


class Agents:
    """Serves ``/<name>`` as the capture ``<name>.prom``; ``swap`` changes what one serves."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        texts = self.texts

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = texts.get(self.path.strip("/"))
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server.server_port}/{path}"

    def serve(self, path: str, capture: str) -> None:
        self.texts[path] = (CAPTURES / f"{capture}.prom").read_text()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="agents")
def _agents() -> Iterator[Agents]:
    a = Agents()
    try:
        yield a
    finally:
        a.close()
