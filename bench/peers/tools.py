"""jq and Miller peers: a program each, run on the file, answering the same question.

Both tally per client while streaming and classify the distinct clients once at the end (as the
hot path does), with ``INTERNAL_REGEX`` standing in for the classifier.
"""

from __future__ import annotations

import json
from typing import Any

from bench.peers.common import INTERNAL_REGEX, answer

JQ_PROGRAM = r"""
[inputs
 | (.ClientHost // "") as $ch
 | if $ch != "" then ($ch | split(",") | .[-1] | ltrimstr(" ") | rtrimstr(" "))
   else (.ClientAddr // ""
         | if startswith("[") then (.[1:] | split("]") | .[0])
           elif (split(":") | length) == 2 then split(":")[0]
           else . end)
   end]
| {lines: length, clients: (group_by(.) | map({key: .[0], value: length}) | from_entries)}
| .internal = ([.clients | to_entries[] | select(.key | test($re)) | .value] | add // 0)
"""
# jq 1.6 copies a large object on every `.[$k] += 1` inside reduce (100 µs per line at 2000
# keys); collecting the client strings and grouping them once is the idiomatic fast form.

MLR_PROGRAM = r"""
var c = "";
ch = is_present($ClientHost) ? $ClientHost : "";
if (ch != "") {
  parts = splitax(ch, ",");
  c = strip(parts[-1]);
} else {
  a = is_present($ClientAddr) ? $ClientAddr : "";
  if (a =~ "^\[(.*)\]:") {
    c = "\1";
  } elif (a =~ "^([^:]*):[0-9]+$") {
    c = "\1";
  } else {
    c = a;
  }
}
@lines += 1;
@clients[c] += 1;
end {
  @internal = 0;
  for (k, v in @clients) {
    if (string(k) =~ "@@RE@@") {
      @internal += v;
    }
  }
  dump;
}
"""


def jq_command(path: str) -> list[str]:
    return ["jq", "-n", "-c", "--arg", "re", INTERNAL_REGEX, JQ_PROGRAM, path]


def mlr_command(path: str) -> list[str]:
    program = MLR_PROGRAM.replace(
        "@@RE@@", INTERNAL_REGEX
    )  # Miller passes "\." through to the regex
    return ["mlr", "--ijsonl", "--ojson", "put", "-q", program, path]


def tool_answer(stdout: bytes) -> dict[str, Any]:
    """Both print one JSON object first (Miller then prints an empty record list)."""
    obj, _ = json.JSONDecoder().raw_decode(stdout.decode().lstrip())
    clients = {str(k): int(v) for k, v in obj["clients"].items()}
    return answer(int(obj["lines"]), int(obj["internal"]), clients)
