"""Traefik static configuration as far as a pod spec shows it (CLI flags and TRAEFIK_* env).

Traefik option names are case-insensitive, so keys are lower-cased and stripped of ``--``:
``--entryPoints.web.proxyProtocol.trustedIPs=a`` -> ``entrypoints.web.proxyprotocol.trustedips``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.kube.model import PodInfo

DEFAULT_ENTRYPOINTS = ("web", "websecure")
_INTERNAL_ENTRYPOINTS = frozenset({"traefik", "metrics"})


@dataclass(frozen=True, slots=True)
class TraefikFlags:
    values: Mapping[str, str]

    @property
    def visible(self) -> bool:
        """False when the pod shows no static config (it lives in a file or the defaults)."""
        return bool(self.values)

    @property
    def from_file(self) -> bool:
        return "configfile" in self.values

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key.lower(), default)

    def enabled(self, section: str) -> bool:
        """A section is on when set to true or when any of its sub-options is set."""
        section = section.lower()
        value = self.values.get(section)
        if value is not None:
            return value.lower() != "false"
        return any(k.startswith(section + ".") for k in self.values)

    def entrypoints(self) -> tuple[str, ...]:
        """User-facing entry points (``--entrypoints.<name>.address``), original case kept."""
        names = {
            k.split(".")[1]
            for k in self.values
            if k.startswith("entrypoints.") and k.count(".") >= 2 and k.endswith(".address")
        }
        return tuple(sorted(n for n in names if n not in _INTERNAL_ENTRYPOINTS))

    def list_value(self, key: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in self.get(key).split(",") if v.strip())


def _pairs(args: Iterable[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1
        if not arg.startswith("-"):
            continue
        name, sep, value = arg.lstrip("-").partition("=")
        if not sep:
            # "--flag value" (paerser accepts it) unless the next token is another flag.
            if i < len(items) and not items[i].startswith("-"):
                value = items[i]
                i += 1
            else:
                value = "true"
        out.append((name, value))
    return out


def traefik_flags(pod: PodInfo) -> TraefikFlags:
    values: dict[str, str] = {}
    for name, value in pod.env:
        key = name[len("TRAEFIK_") :].replace("_", ".").lower()
        values[key] = value
    for name, value in _pairs(pod.args):  # flags win over env, as in Traefik
        values[name.lower()] = value
    return TraefikFlags(values)
