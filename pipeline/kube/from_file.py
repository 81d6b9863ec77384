"""``auditor run`` with ``networks_file``: the cluster's networks without any Kubernetes API access.

The watcher (``auditor discover``) publishes what it sees to a ConfigMap; the sidecars and node
agents mount it and follow the file here. On every new good copy the service posts what
discovery used to post itself: swap the engine's networks (the static ones from the config plus
the published ones; the engine re-judges active decisions) and hand the published config audit
to the engine as the ``kube`` finding group. Each poll also posts the copy's age for
``auditor_networks_file_age_seconds``. Nothing here imports the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.contracts import Plugin, PluginContext
from pipeline.sources.networks_file import NetworksFileReader

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.contracts import LiveState, Post
    from pipeline.core.addresses import Network
    from pipeline.core.networks_file import NetworksDoc

log = logging.getLogger("auditor.networks")
# The engine's finding group of the config audit, whether it comes from this file or from
# discovery in the process (``pipeline.kube.attach``): the same findings either way.
FINDING_GROUP = "kube"
POLL_S = 2.0  # one open+fstat per poll; the kubelet refreshes ConfigMap volumes every ~60 s


class NetworksFileService:
    """A runner ``Service`` that follows one networks file (see module docstring)."""

    def __init__(
        self,
        path: str,
        static_networks: tuple[Network, ...],
        clock: Callable[[], float],
        *,
        poll_s: float = POLL_S,
    ) -> None:
        self.reader = NetworksFileReader(path)
        self._static = static_networks
        self._clock = clock
        self._poll_s = poll_s

    async def run(self, stop: asyncio.Event, post: Post) -> None:
        while not stop.is_set():
            now = self._clock()
            doc = self.reader.poll(now)
            if doc is not None:
                self._log(doc)
                await post(self._apply(doc))
            await post(self._age(self.reader.age(self._clock())))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_s)

    def _apply(self, doc: NetworksDoc) -> Callable[[LiveState], None]:
        networks = [*self._static, *doc.networks]
        findings = list(doc.findings)

        def apply(state: LiveState) -> None:
            state.engine.set_networks(networks)
            state.engine.replace_findings(FINDING_GROUP, findings)

        return apply

    @staticmethod
    def _age(age: float) -> Callable[[LiveState], None]:
        def apply(state: LiveState) -> None:
            state.metrics.set_networks_file_age(age)

        return apply

    def _log(self, doc: NetworksDoc) -> None:
        n = doc.findings_omitted
        omitted = f" ({n} more left out by the watcher)" if n else ""
        log.info(
            "networks file %s: %d networks, %d config findings%s, from %s",
            self.reader.path,
            len(doc.networks),
            len(doc.findings),
            omitted,
            doc.source,
        )


def attach_networks_file(config: RunConfig, ctx: PluginContext) -> Plugin:
    assert config.networks_file is not None
    service = NetworksFileService(config.networks_file, tuple(ctx.classifier.networks), ctx.clock)
    return Plugin(services=(service,))
