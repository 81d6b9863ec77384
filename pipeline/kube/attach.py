"""``auditor run`` with discovery: keeps the classifier current and reports config findings.

``attach_discovery`` returns a plugin with one background service. On every cluster snapshot it
posts to the runner's single consumer: swap the engine's networks (static ones from config plus
the discovered ones; the engine re-judges active decisions), and hand the config audit to the
engine as the ``kube`` finding group (raised/updated/cleared like any other finding). The
plugin's ``kube_status`` exposes ``up`` and ``last_sync`` for the exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from pipeline.contracts import Plugin, PluginContext
from pipeline.kube.checks import check_cluster
from pipeline.kube.discovery import Discovery, DiscoveryOptions
from pipeline.kube.from_file import FINDING_GROUP
from pipeline.kube.model import ClusterFacts
from pipeline.kube.networks import cluster_networks

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.contracts import LiveState, Post
    from pipeline.core.addresses import Network

log = logging.getLogger("auditor.kube")


class DiscoveryService:
    """A runner ``Service``; also the runner's ``kube_status`` (``up``, ``last_sync``)."""

    def __init__(
        self,
        kubeconfig: str | None,
        context: str | None,
        static_networks: tuple[Network, ...],
        options: DiscoveryOptions | None = None,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._context = context
        self._static = static_networks
        self._options = options or DiscoveryOptions()
        self._discovery: Discovery | None = None
        self.facts: ClusterFacts | None = None

    @property
    def up(self) -> bool:
        return self._discovery is not None and self._discovery.status.up

    @property
    def last_sync(self) -> float | None:
        return self._discovery.status.last_sync if self._discovery is not None else None

    @property
    def errors(self) -> int:
        return self._discovery.status.errors if self._discovery is not None else 0

    async def run(self, stop: asyncio.Event, post: Post) -> None:
        from pipeline.kube.client import connect  # ~60 MB: only once discovery is on

        api = await connect(self._kubeconfig, self._context)  # UsageError: bad kubeconfig
        log.info("kubernetes discovery: %s", api.description)

        async def on_change(facts: ClusterFacts) -> None:
            self.facts = facts
            networks = [*self._static, *cluster_networks(facts)]
            findings = check_cluster(facts)

            def apply(state: LiveState) -> None:
                state.engine.set_networks(networks)
                state.engine.replace_findings(FINDING_GROUP, findings)

            await post(apply)

        self._discovery = Discovery(api, self._options, on_change=on_change)
        task = asyncio.create_task(self._discovery.run(), name="kube-discovery")
        try:
            await stop.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await api.close()


def attach_discovery(config: RunConfig, ctx: PluginContext) -> Plugin:
    service = DiscoveryService(
        config.kubeconfig,
        config.kube_context,
        tuple(ctx.classifier.networks),
    )
    return Plugin(services=(service,), kube_status=service)
