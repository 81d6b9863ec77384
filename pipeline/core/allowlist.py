"""What to trust, as one model rendered for CrowdSec and Traefik.

Three artefacts from one list of internal networks:
(a) a CrowdSec s02-enrich whitelist parser (shape of the hub's crowdsecurity/whitelists) so
    events from internal addresses never feed a scenario; for CrowdSec >= 1.6.6 also the
    ``cscli allowlists create/add`` commands of a centralized allowlist, which the LAPI applies
    to every agent's alerts (after the scenarios, so it complements the parser, it does not
    replace it);
(b) the maxlerebourg bouncer plugin's ``forwardedHeadersTrustedIPs`` (the forwarding hops) and
    ``clientTrustedIPs`` (never block these), as a Traefik Middleware;
(c) Traefik entry point ``forwardedHeaders.trustedIPs`` / ``proxyProtocol.trustedIPs`` flags.
Pure: ``auditor allowlist`` and ``auditor check`` decide where the networks come from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pipeline
from pipeline.core.addresses import INTERNAL_CLASSES, WELL_KNOWN, AddrClass, Network
from pipeline.core.networks import with_k3s_defaults
from pipeline.errors import UsageError

WHITELIST_NAME = "ban-auditor/cluster-whitelist"
WHITELIST_PATH = "/etc/crowdsec/parsers/s02-enrich/ban-auditor-cluster-whitelist.yaml"
PLUGIN_NAME = "bouncer"  # the name under --experimental.plugins.<name> in Traefik's static config
DEFAULT_ENTRYPOINTS = ("web", "websecure")
HOP_CLASSES = frozenset({AddrClass.POD, AddrClass.NODE})
SECTIONS = ("whitelist", "middleware", "entrypoints", "allowlists")
ALLOWLIST_NAME = "ban-auditor-cluster"  # the centralized allowlist (cscli allowlists, >= 1.6.6)
ALLOWLIST_DESCRIPTION = "Internal cluster addresses (ban-auditor)"
ALLOWLIST_MIN_VERSION = "1.6.6"
# cscli parses --expiration with go-cs-lib's cstime.ParseDuration: an optional whole number of
# days first, then a Go duration (units h, m, s, ms, us, ns; fractions allowed).
_EXPIRATION = re.compile(r"(?:(\d+)d)?((?:\d+(?:\.\d+)?(?:h|m|s|ms|us|µs|ns))*)")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def check_expiration(text: str) -> str:
    """An allowlist entry's lifetime as cscli accepts it (``30d``, ``12h``, ``1d12h``): the
    text itself, stripped. ``ValueError`` when cscli would reject it or it is under a second."""
    value = text.strip()
    m = _EXPIRATION.fullmatch(value)
    if not value or m is None:
        msg = f"not a duration cscli accepts (e.g. 30d, 12h, 1d12h): {text!r}"
        raise ValueError(msg)
    seconds = int(m.group(1) or 0) * 86400.0
    seconds += sum(float(n) * _UNIT_S[u] for n, u in _GO_PART.findall(m.group(2)))
    if seconds < 1:
        msg = f"an expiration must be at least one second: {text!r}"
        raise ValueError(msg)
    return value


_HOP_CAVEAT = (
    "Trust these hops only if every connection from them carries a header set by a proxy you "
    "control. k3s servicelb is an L4 hop that masquerades: behind it a client's own "
    "X-Forwarded-For would be trusted (spoofable), so fix the path first "
    "(externalTrafficPolicy: Local, see `auditor check`)."
)


def _host_route(net: Network) -> bool:
    return net.length == (32 if net.version == 4 else 128)


@dataclass(frozen=True, slots=True)
class Entry:
    """A network to list, with what it stands for and how many listed ones it swallowed."""

    network: Network
    covers: int = 0

    @property
    def value(self) -> str:
        n = self.network
        return n.cidr.partition("/")[0] if _host_route(n) else n.cidr

    @property
    def comment(self) -> str:
        n = self.network
        extra = f"; covers {self.covers} more" if self.covers else ""
        return f"{n.cls.value}: {n.provenance}{extra}"


def collapse(networks: Iterable[Network]) -> tuple[Entry, ...]:
    """Drop networks inside another listed one; IPv4 first, then by address."""
    ordered = sorted(networks, key=lambda n: (n.version, n.length, n.prefix))
    kept: list[Network] = []
    covers: dict[int, int] = {}
    for net in ordered:
        holder = next((i for i, k in enumerate(kept) if k.contains(net)), None)
        if holder is None:
            kept.append(net)
        elif (kept[holder].prefix, kept[holder].length) != (net.prefix, net.length):
            covers[holder] = covers.get(holder, 0) + 1
    entries = [Entry(k, covers.get(i, 0)) for i, k in enumerate(kept)]
    return tuple(sorted(entries, key=lambda e: (e.network.version, e.network.prefix)))


@dataclass(frozen=True, slots=True)
class Allowlist:
    internal: tuple[Entry, ...]  # CrowdSec whitelist and the bouncer's clientTrustedIPs
    hops: tuple[Entry, ...]  # forwarding hops: forwardedHeaders / proxyProtocol trust
    entrypoints: tuple[str, ...]
    namespace: str  # where Traefik (and so its Middleware) lives
    source: str
    expiration: str = ""  # of the centralized allowlist's entries; "" never expire

    # -- (a) CrowdSec whitelist ---------------------------------------------------------------
    def whitelist_doc(self) -> dict[str, Any]:
        wl: dict[str, Any] = {"reason": "internal cluster address (ban-auditor)"}
        ips = [e.value for e in self.internal if _host_route(e.network)]
        cidrs = [e.value for e in self.internal if not _host_route(e.network)]
        if ips:
            wl["ip"] = ips
        if cidrs:
            wl["cidr"] = cidrs
        return {
            "name": WHITELIST_NAME,
            "description": "Whitelist events from the cluster's internal addresses "
            "(pods, services, nodes, load balancers, private ranges)",
            "whitelist": wl,
        }

    def whitelist_yaml(self) -> str:
        doc = self.whitelist_doc()
        lines = [
            f"# CrowdSec whitelist parser from ban-auditor {pipeline.__version__} ({self.source}).",
            f"# Save as {WHITELIST_PATH} and reload CrowdSec.",
            f"# CrowdSec >= {ALLOWLIST_MIN_VERSION}: add the centralized allowlist too (--only "
            "allowlists).",
            "# It stops events from these sources reaching scenarios; it does not remove existing",
            "# decisions nor filter those from CAPI, blocklists or cscli.",
            f"name: {doc['name']}",
            f"description: {json.dumps(doc['description'])}",
            "whitelist:",
            f"  reason: {json.dumps(doc['whitelist']['reason'])}",
        ]
        for key, host in (("ip", True), ("cidr", False)):
            entries = [e for e in self.internal if _host_route(e.network) == host]
            if entries:
                lines.append(f"  {key}:")
                lines += [f'    - "{e.value}"  # {e.comment}' for e in entries]
        return "\n".join(lines) + "\n"

    # -- (a') CrowdSec >= 1.6.6 centralized allowlist ----------------------------------------
    def allowlist_values(self) -> list[str]:
        return [e.value for e in self.internal]

    def allowlist_options(self) -> list[str]:
        """``add``'s options: the entries' comment and, when asked, their expiration. Our
        own text, which needs no shell quoting beyond the double quotes."""
        out = ["-d", f'"{ALLOWLIST_DESCRIPTION}"']
        if self.expiration:
            out += ["--expiration", self.expiration]
        return out

    def allowlist_commands(self) -> list[str]:
        """``cscli allowlists create`` then one ``add`` with every value (cscli skips values
        already listed, so rerunning ``add`` is harmless)."""
        add = ["cscli", "allowlists", "add", ALLOWLIST_NAME, *self.allowlist_values()]
        return [
            f'cscli allowlists create {ALLOWLIST_NAME} -d "{ALLOWLIST_DESCRIPTION}"',
            " ".join([*add, *self.allowlist_options()]),
        ]

    def allowlist_doc(self) -> dict[str, Any]:
        return {
            "name": ALLOWLIST_NAME,
            "description": ALLOWLIST_DESCRIPTION,
            "values": self.allowlist_values(),
            "expiration": self.expiration or None,
            "min_crowdsec_version": ALLOWLIST_MIN_VERSION,
            "commands": self.allowlist_commands(),
        }

    def allowlist_script(self, *, commented: bool = False) -> str:
        """The commands as a shell script; ``commented`` turns them into comments as well, for
        the YAML stream (where they ride as a document of comments only)."""
        cmd = "# " if commented else ""
        about = (
            f"CrowdSec >= {ALLOWLIST_MIN_VERSION}: a centralized allowlist on the LAPI "
            f"(ban-auditor {pipeline.__version__}, {self.source}). Run where cscli reaches the "
            "LAPI's database (the LAPI pod). The LAPI drops alerts on these addresses from every "
            "agent, so none becomes a decision; the agents' scenarios still count the events: "
            "keep the whitelist parser on each agent too. `create` fails when the allowlist "
            "exists: then run `add` alone."
        )
        lines = [
            *(f"# {ln}" for ln in _wrap(about, 76)),
            f"{cmd}cscli allowlists create {ALLOWLIST_NAME} \\",
            f'{cmd}  -d "{ALLOWLIST_DESCRIPTION}"',
            f"{cmd}cscli allowlists add {ALLOWLIST_NAME} \\",
            *(f"{cmd}  {v} \\" for v in self.allowlist_values()),
            f"{cmd}  {' '.join(self.allowlist_options())}",
        ]
        return "\n".join(lines) + "\n"

    # -- (b) bouncer plugin -------------------------------------------------------------------
    def bouncer_settings(self) -> dict[str, list[str]]:
        return {
            "forwardedHeadersTrustedIPs": [e.network.cidr for e in self.hops],
            "clientTrustedIPs": [e.network.cidr for e in self.internal],
        }

    def middleware_doc(self) -> dict[str, Any]:
        return {
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "Middleware",
            "metadata": {"name": "crowdsec-bouncer", "namespace": self.namespace},
            "spec": {"plugin": {PLUGIN_NAME: {"enabled": True, **self.bouncer_settings()}}},
        }

    def middleware_yaml(self) -> str:
        s = self.bouncer_settings()
        lines = [
            "# maxlerebourg/crowdsec-bouncer-traefik-plugin: merge these keys into your bouncer",
            "# Middleware (keep its crowdsecLapiKey/crowdsecMode...). The key under spec.plugin is",
            "# the name given by --experimental.plugins.<name>.modulename.",
            "# Traefik < 2.10 (k3s < 1.27): apiVersion traefik.containo.us/v1alpha1.",
            "apiVersion: traefik.io/v1alpha1",
            "kind: Middleware",
            "metadata:",
            "  name: crowdsec-bouncer",
            f"  namespace: {self.namespace}",
            "spec:",
            "  plugin:",
            f"    {PLUGIN_NAME}:",
            "      enabled: true",
            "      # The hops that forward requests (X-Forwarded-For is read right to left,",
            "      # skipping these).",
            *(f"      # {ln}" for ln in _wrap(_HOP_CAVEAT, 86)),
            "      forwardedHeadersTrustedIPs:",
            *(
                f'        - "{c}"  # {e.comment}'
                for c, e in zip(s["forwardedHeadersTrustedIPs"], self.hops, strict=True)
            ),
            "      # Never blocked: a ban on an internal hop cannot lock everyone out.",
            "      clientTrustedIPs:",
            *(
                f'        - "{c}"  # {e.comment}'
                for c, e in zip(s["clientTrustedIPs"], self.internal, strict=True)
            ),
        ]
        return "\n".join(lines) + "\n"

    # -- (c) Traefik entry points -------------------------------------------------------------
    def entrypoint_args(self) -> dict[str, list[str]]:
        hops = ",".join(e.network.cidr for e in self.hops)
        return {
            "forwardedHeaders": [
                f"--entryPoints.{ep}.forwardedHeaders.trustedIPs={hops}" for ep in self.entrypoints
            ],
            "proxyProtocol": [
                f"--entryPoints.{ep}.proxyProtocol.trustedIPs={hops}" for ep in self.entrypoints
            ],
        }

    def entrypoints_doc(self) -> dict[str, Any]:
        return {
            "entryPoints": list(self.entrypoints),
            "trustedIPs": [e.network.cidr for e in self.hops],
            "args": self.entrypoint_args(),
            "caveat": _HOP_CAVEAT,
        }

    def entrypoints_yaml(self) -> str:
        args = self.entrypoint_args()
        lines = [
            "# Traefik static configuration: entry points that accept forwarded client addresses.",
            *(f"# {ln}" for ln in _wrap(_HOP_CAVEAT, 94)),
            "# k3s: /var/lib/rancher/k3s/server/manifests/traefik-config.yaml (merge with an",
            "# existing HelmChartConfig); other installs: the chart's additionalArguments.",
            "apiVersion: helm.cattle.io/v1",
            "kind: HelmChartConfig",
            "metadata:",
            "  name: traefik",
            f"  namespace: {self.namespace}",
            "spec:",
            "  valuesContent: |-",
            "    additionalArguments:",
            *(f'      - "{a}"' for a in args["forwardedHeaders"]),
            "      # Only behind a load balancer that sends PROXY protocol (instead of the above):",
            *(f'      # - "{a}"' for a in args["proxyProtocol"]),
        ]
        return "\n".join(lines) + "\n"

    # -- output -------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "crowdsec_whitelist": self.whitelist_doc(),
            "crowdsec_allowlist": self.allowlist_doc(),
            "bouncer_middleware": self.middleware_doc(),
            "traefik_entrypoints": self.entrypoints_doc(),
        }

    def to_yaml(self, only: str | None = None) -> str:
        parts = {
            "whitelist": self.whitelist_yaml,
            "middleware": self.middleware_yaml,
            "entrypoints": self.entrypoints_yaml,
            "allowlists": self.allowlist_script,
        }
        if only is not None:
            return parts[only]()
        docs = [render() for name, render in parts.items() if name != "allowlists"]
        return "---\n".join([*docs, self.allowlist_script(commented=True)])


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines


def build_allowlist(
    networks: Iterable[Network],
    *,
    defaults: bool = True,
    entrypoints: Sequence[str] = DEFAULT_ENTRYPOINTS,
    namespace: str = "kube-system",
    source: str = "",
) -> Allowlist:
    """``defaults`` adds the well-known internal ranges, and k3s' pod/service CIDRs for any of
    those classes that ``networks`` does not already provide."""
    internal = [n for n in networks if n.cls in INTERNAL_CLASSES]
    if defaults:
        internal = with_k3s_defaults(internal)
        internal += [n for n in WELL_KNOWN if n.cls in INTERNAL_CLASSES]
    if not internal:
        msg = "no internal networks to allow: pass --internal-cidr or drop --no-defaults"
        raise UsageError(msg)
    hops = [n for n in internal if n.cls in HOP_CLASSES]
    return Allowlist(
        internal=collapse(internal),
        hops=collapse(hops),
        entrypoints=tuple(entrypoints) or DEFAULT_ENTRYPOINTS,
        namespace=namespace,
        source=source or ("k3s defaults" if defaults else "given networks"),
    )
