"""Addresses from the config and the flags: ``HOST:PORT`` of a listening address (one reading
for ``metrics_listen`` and ``auditor discover --metrics-listen``) and the http(s) URLs the
auditor connects to (``lapi_url``, ``crowdsec_metrics_url`` and ``check``'s flags), so the
commands cannot disagree on what is valid, and a typo stops the command at start instead of
becoming a finding about an unreachable CrowdSec."""

from __future__ import annotations

from urllib.parse import urlsplit

from pipeline.secrets import redact_url


def host_port(text: str) -> tuple[str, int] | None:
    """``(host, port)``, brackets of an IPv6 host removed; None when ``text`` is not
    ``HOST:PORT`` with a port from 0 to 65535 (0: any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)


def url_problem(url: str) -> str | None:
    """Why ``url`` is not an http(s) URL with a host (credentials redacted), or None."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        return f"expected an http(s) URL with a host, got {redact_url(url)[:200]!r}"
    return None


def split_urls(value: str) -> list[str]:
    """``crowdsec_metrics_url`` may list several agents, comma-separated (as kafka_bootstrap);
    blanks between commas are no URL."""
    return [u.strip() for u in value.split(",") if u.strip()]
