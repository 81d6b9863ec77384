"""Regenerate deploy/kustomize/components/prometheus-operator/prometheusrule.yaml from
deploy/prometheus/rules.yaml.

promtool only reads plain rule files and kustomize cannot turn a file into a CRD's spec without
plugins, so the PrometheusRule is a generated copy: rules.yaml indented under `spec:`, comments
kept. `--check` exits 1 when the copy is stale
(tests/integration/deploy/test_alert_rules.py runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent
RULES = DEPLOY / "prometheus" / "rules.yaml"
TARGET = DEPLOY / "kustomize" / "components" / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules.yaml by deploy/prometheus/sync_prometheusrule.py.
# Do not edit: change rules.yaml and rerun the script.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: ban-auditor
  labels:
    app.kubernetes.io/name: ban-auditor
spec:
"""


def render(rules_text: str) -> str:
    """Indent the rule file under `spec:`; leading header comments are left to rules.yaml."""
    lines = rules_text.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    body = "\n".join(f"  {line}" if line.strip() else "" for line in lines)
    return HEADER + body + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the copy is stale")
    args = parser.parse_args(argv)
    wanted = render(RULES.read_text(encoding="utf-8"))
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if args.check:
        if current != wanted:
            print(f"{TARGET} is stale: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        TARGET.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
