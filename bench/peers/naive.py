"""Naive Python: ``json`` and ``ipaddress`` per line, the way a quick script would do it."""

from __future__ import annotations

import ipaddress
import json
import sys

from bench.peers.common import INTERNAL_CIDRS, answer, client_of, emit


def count(path: str) -> dict[str, object]:
    nets = [ipaddress.ip_network(c) for c in INTERNAL_CIDRS]
    lines = internal = 0
    clients: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            client = client_of(d.get("ClientHost", ""), d.get("ClientAddr", ""))
            lines += 1
            clients[client] = clients.get(client, 0) + 1
            try:
                ip = ipaddress.ip_address(client)
            except ValueError:
                continue
            if any(ip in n for n in nets):
                internal += 1
    return answer(lines, internal, clients)


if __name__ == "__main__":
    emit(count(sys.argv[1]))
