"""The Traefik bouncer plugin's Middlewares, read from the cluster for ``auditor check``.

Middlewares are custom objects: Traefik v3 (and v2.10+) serves them as ``traefik.io/v1alpha1``,
older Traefik v2 as ``traefik.containo.us/v1alpha1``; a cluster may have either, both or none.
They are listed cluster-wide through the custom-objects endpoint of each group. A group whose
CRD is not installed (404) or that RBAC hides (403) is a note, not a failure: the rest of
``check`` still stands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.core.bouncer import BouncerSettings, SettingsError, settings_from_block
from pipeline.kube.api import KubeApiError

GROUPS = ("traefik.io/v1alpha1", "traefik.containo.us/v1alpha1")
MAX_MIDDLEWARES = 100  # bouncer Middlewares reported; a cluster has one or a few


class Lister(Protocol):
    async def list(
        self, path: str, params: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], str]: ...


@dataclass(frozen=True, slots=True)
class BouncerMiddleware:
    """One Middleware that configures the bouncer plugin, and its effective settings."""

    ref: str  # namespace/name
    api: str  # the API group/version it was read from
    plugin: str  # the plugin's name under spec.plugin
    settings: BouncerSettings

    def as_dict(self) -> dict[str, Any]:
        return {
            "middleware": self.ref,
            "api": self.api,
            "plugin": self.plugin,
            "settings": self.settings.as_dict(),
            "judgeable": self.settings.judgeable,
        }


@dataclass(frozen=True, slots=True)
class MiddlewareScan:
    found: tuple[BouncerMiddleware, ...]
    notes: tuple[str, ...]  # groups not installed or hidden, Middlewares with bad options


def _is_bouncer(block: Mapping[str, Any]) -> bool:
    """The plugin's options: any ``crowdsec*`` key or one of the address settings."""
    keys = {str(k).lower() for k in block}
    return any(k.startswith("crowdsec") for k in keys) or bool(
        keys & {"forwardedheaderstrustedips", "clienttrustedips", "forwardedheaderscustomname"}
    )


def bouncer_middlewares(
    items: Sequence[Mapping[str, Any]], api: str
) -> tuple[list[BouncerMiddleware], list[str]]:
    """The bouncer Middlewares among ``items`` (a list answer), and notes on the bad ones."""
    found: list[BouncerMiddleware] = []
    notes: list[str] = []
    for item in items:
        meta = item.get("metadata")
        spec = item.get("spec")
        if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
            continue
        ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"[:256]
        plugins = spec.get("plugin")
        if not isinstance(plugins, Mapping):
            continue
        for name, block in plugins.items():
            if not isinstance(block, Mapping) or not _is_bouncer(block):
                continue
            try:
                settings = settings_from_block(block, f"Middleware {ref}")
            except SettingsError as exc:
                notes.append(f"Middleware {ref} ({api}): spec.plugin.{name}.{exc}")
                continue
            found.append(BouncerMiddleware(ref, api, str(name)[:128], settings))
    return found, notes


async def list_bouncer_middlewares(client: Lister) -> MiddlewareScan:
    found: list[BouncerMiddleware] = []
    notes: list[str] = []
    for api in GROUPS:
        try:
            items, _ = await client.list(f"/apis/{api}/middlewares", {})
        except KubeApiError as exc:
            if exc.status == 404:
                notes.append(f"{api} middlewares: not served (the CRD is not installed)")
            elif exc.status in (401, 403):
                notes.append(f"{api} middlewares: not allowed to list them ({exc})")
            else:
                notes.append(f"{api} middlewares: cannot list them ({exc})")
            continue
        more, bad = bouncer_middlewares(items, api)
        found += more
        notes += bad
    if not found and not any("not allowed" in n for n in notes):
        notes.append("no Middleware configures the CrowdSec bouncer plugin")
    return MiddlewareScan(tuple(found[:MAX_MIDDLEWARES]), tuple(notes))
