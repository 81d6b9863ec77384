"""msgspec decoding only the fields the parser uses into a Struct (unknown keys skipped in C).

A reference for what a schema-driven partial decode costs against ``orjson.loads`` of the whole
object; reads with the same chunked reader as the hot path and classifies distinct clients with
the project's classifier.
"""

from __future__ import annotations

import sys

import msgspec

from bench.peers.common import answer, client_of, emit
from pipeline.core.addresses import Classifier
from pipeline.core.networks import build_networks
from pipeline.sources.readfile import line_batches


class Line(
    msgspec.Struct,
    rename={
        "xff": "request_X-Forwarded-For",
        "real_ip": "request_X-Real-Ip",
        "user_agent": "request_User-Agent",
    },
):
    ClientAddr: str = ""
    ClientHost: str = ""
    StartUTC: str = ""
    entryPointName: str = "-"
    RequestHost: str = "-"
    RouterName: str = "-"
    DownstreamStatus: int = 0
    Duration: int = 0
    xff: str = ""
    real_ip: str = ""
    user_agent: str = ""


def count(path: str) -> dict[str, object]:
    decode = msgspec.json.Decoder(Line).decode
    lines = 0
    clients: dict[str, int] = {}
    with open(path, "rb") as fh:
        for batch in line_batches(fh):
            for raw in batch:
                rec = decode(raw)
                client = client_of(rec.ClientHost, rec.ClientAddr)
                clients[client] = clients.get(client, 0) + 1
            lines += len(batch)
    classify = Classifier(build_networks({})).classify
    internal = sum(n for c, n in clients.items() if classify(c).internal)
    return answer(lines, internal, clients)


if __name__ == "__main__":
    emit(count(sys.argv[1]))
