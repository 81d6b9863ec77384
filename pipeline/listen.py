"""``HOST:PORT`` of a listening address: one reading for ``metrics_listen`` (config and flag)
and ``auditor discover --metrics-listen``, so the commands cannot disagree on what is valid."""

from __future__ import annotations


def host_port(text: str) -> tuple[str, int] | None:
    """``(host, port)``, brackets of an IPv6 host removed; None when ``text`` is not
    ``HOST:PORT`` with a port from 0 to 65535 (0: any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)
