"""``auditor discover``: the cluster watcher, one per cluster (a small Deployment).

It is the only process that imports the Kubernetes client (~52 MB): it watches the API and
publishes the internal networks and the config findings to a ConfigMap (``--configmap``) that
the sidecars and node agents mount and read (their ``networks_file``), so they need no API
access at all. It serves ``/metrics`` (``auditor_kubernetes_up`` and
``auditor_kubernetes_sync_timestamp_seconds``), ``/healthz`` and ``/readyz`` on
``--metrics-listen``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
from pathlib import Path

from pipeline.cli.args import add_cluster_args
from pipeline.errors import EXIT_OK, UsageError
from pipeline.listen import host_port

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The manifests ship this ConfigMap (deploy/kustomize/base/networks-configmap.yaml).
DEFAULT_CONFIGMAP = "ban-auditor-networks"
DEFAULT_KEY = "networks.json"
REFRESH_S = 300.0
REFRESH_RANGE = (10.0, 86400.0)

log = logging.getLogger("auditor.discover")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "discover",
        help="watch the Kubernetes API and publish the internal networks for the sidecars",
        description="Watch the cluster (nodes, services, Traefik and servicelb pods...) and "
        "publish its internal networks, with their provenance, and the config findings as a "
        "JSON file in a ConfigMap that the sidecars and node agents mount (their "
        "networks_file). Run one per cluster: it is the only part that needs the Kubernetes "
        "API. Exit 2 on a usage error, a bad kubeconfig or a ConfigMap that is not the "
        "auditor's.",
    )
    add_cluster_args(p)
    p.add_argument(
        "--configmap",
        default=DEFAULT_CONFIGMAP,
        metavar="NAME",
        help="ConfigMap to publish to; it must exist and carry the labels "
        "app.kubernetes.io/name=ban-auditor and app.kubernetes.io/component=networks "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--namespace",
        metavar="NS",
        help="namespace of the ConfigMap (default: the pod's own, in a cluster)",
    )
    p.add_argument(
        "--key",
        default=DEFAULT_KEY,
        metavar="NAME",
        help="key of the file in the ConfigMap (default: %(default)s)",
    )
    p.add_argument(
        "--output-file",
        metavar="PATH",
        help="write the networks file here (replaced atomically) instead of to a ConfigMap",
    )
    p.add_argument(
        "--refresh-interval",
        type=float,
        default=REFRESH_S,
        metavar="SECONDS",
        help="rewrite the file this often while in sync, even without a change, so readers "
        "see it is fresh; a number from 10 to 86400 (default: %(default)g)",
    )
    p.add_argument(
        "--metrics-listen",
        default="127.0.0.1:9977",
        metavar="HOST:PORT",
        help="address of /metrics, /healthz and /readyz (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log level (default: %(default)s)",
    )
    p.set_defaults(func=main_discover)


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    try:
        found = IN_CLUSTER_NAMESPACE.read_text(encoding="utf-8").strip()
    except OSError:
        found = ""
    if not found:
        msg = "--namespace: required outside a pod (the ConfigMap's namespace)"
        raise UsageError(msg)
    return found


def _check_args(args: argparse.Namespace) -> None:
    low, high = REFRESH_RANGE
    if not (math.isfinite(args.refresh_interval) and low <= args.refresh_interval <= high):
        msg = f"--refresh-interval: must be a number from {low:g} to {high:g}"
        raise UsageError(msg)
    if host_port(args.metrics_listen) is None:
        msg = f"--metrics-listen: expected HOST:PORT, got {args.metrics_listen!r}"
        raise UsageError(msg)
    if args.output_file and not Path(args.output_file).parent.is_dir():
        msg = f"--output-file {args.output_file}: its directory does not exist"
        raise UsageError(msg)


def main_discover(args: argparse.Namespace) -> int:
    _check_args(args)
    from pipeline.cli.run import setup_logging

    setup_logging(args.log_level)
    return asyncio.run(_discover(args))


async def _discover(args: argparse.Namespace) -> int:
    # Lazy: the Kubernetes client costs ~52 MB, and `auditor --help` must not pay for it.
    from prometheus_client import CollectorRegistry, generate_latest

    from pipeline.kube import extract
    from pipeline.kube.client import connect
    from pipeline.kube.discovery import Discovery, DiscoveryOptions
    from pipeline.kube.publish import ConfigMapTarget, FileTarget, Target, Watcher, WatcherOptions
    from pipeline.live.lifecycle import Lifecycle
    from sinks.prometheus import kube_gauges

    api = await connect(args.kubeconfig, args.context)  # UsageError: bad kubeconfig
    try:
        target: Target = (
            FileTarget(args.output_file)
            if args.output_file
            else ConfigMapTarget(api, _namespace(args), args.configmap, args.key)
        )
        options = DiscoveryOptions(
            facts=extract.FactOptions(traefik_selector=args.traefik_selector)
        )
        discovery = Discovery(api, options)
        watcher = Watcher(
            discovery, target, api.description, WatcherOptions(refresh_s=args.refresh_interval)
        )
        registry = CollectorRegistry()
        up, synced = kube_gauges(registry)

        def exposition() -> bytes:
            status = discovery.status
            up.set(1 if status.up else 0)
            if status.last_sync:
                synced.set(status.last_sync)
            return generate_latest(registry)

        stop = asyncio.Event()
        lifecycle = Lifecycle.at(
            args.metrics_listen, "--metrics-listen", exposition, watcher.ready, stop
        )
        await lifecycle.start()
        log.info(
            "watching %s; publishing to %s; metrics on %s:%d",
            api.description,
            target.description,
            lifecycle.host,
            lifecycle.port,
        )
        task = asyncio.create_task(discovery.run(), name="kube-discovery")
        try:
            await watcher.run(stop)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await lifecycle.close()
            lifecycle.release()
    finally:
        await api.close()
    return EXIT_OK
