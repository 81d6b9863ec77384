"""Connection to the Kubernetes API: config loading and raw list/watch calls.

``kubernetes_asyncio`` loads kubeconfig/in-cluster credentials (token refresh, exec plugins,
client certificates) and owns the HTTP session; responses are read raw and decoded with orjson
instead of being turned into generated model objects, which are slow and large.

Importing this module costs ~60 MB RSS (kubernetes_asyncio + aiohttp): import it only where
discovery is enabled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from pipeline.errors import UsageError
from pipeline.kube.api import KubeApiError
from pipeline.secrets import redact_url

IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
DEFAULT_KUBECONFIG = Path("~/.kube/config")


def _status_reason(body: bytes, fallback: str) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return fallback
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return fallback


class KubeClient:
    """Raw GETs through a ``kubernetes_asyncio.client.ApiClient`` (auth, TLS, proxies)."""

    def __init__(self, api_client: Any, description: str, request_timeout_s: float = 30.0) -> None:
        self._api = api_client
        self.description = description
        self._timeout = request_timeout_s

    async def _get(
        self,
        path: str,
        params: Mapping[str, str],
        limits: Any,
        *,
        method: str = "GET",
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            return await self._api.call_api(
                path,
                method,
                query_params=list(params.items()),
                header_params=headers,
                body=dict(body) if body is not None else None,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=limits,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeApiError(
                0, f"cannot reach the API server: {exc or type(exc).__name__}"
            ) from None

    @staticmethod
    async def _raise_for_status(resp: Any) -> None:
        if 200 <= resp.status < 300:
            return
        body = await resp.read()
        raise KubeApiError(resp.status, _status_reason(body, str(resp.reason or "")))

    async def _json(
        self, what: str, path: str, method: str = "GET", body: Mapping[str, Any] | None = None
    ) -> Any:
        """One request whose answer is a JSON document (a list, an object)."""
        limits = aiohttp.ClientTimeout(total=self._timeout)
        resp = await self._get(path, {}, limits, method=method, body=body)
        try:
            await self._raise_for_status(resp)
            try:
                data = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise KubeApiError(0, f"{what} {path} interrupted: {exc}") from None
        finally:
            resp.release()
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise KubeApiError(0, f"{what} {path}: response is not JSON") from None

    async def get(self, path: str) -> dict[str, Any]:
        doc = await self._json("get", path)
        if not isinstance(doc, dict):
            raise KubeApiError(0, f"get {path}: response is not an object")
        return doc

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: the API refuses it (409) unless ``metadata.resourceVersion`` is still current."""
        doc = await self._json("update", path, "PUT", body)
        if not isinstance(doc, dict):
            raise KubeApiError(0, f"update {path}: response is not an object")
        return doc

    async def list(self, path: str, params: Mapping[str, str]) -> tuple[list[dict[str, Any]], str]:
        resp = await self._get(path, params, aiohttp.ClientTimeout(total=self._timeout))
        try:
            await self._raise_for_status(resp)
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise KubeApiError(0, f"list {path} interrupted: {exc}") from None
        finally:
            resp.release()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise KubeApiError(0, f"list {path}: response is not JSON") from None
        items = doc.get("items") if isinstance(doc, dict) else None
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(items, list):
            items = []
        return [i for i in items if isinstance(i, dict)], rv if isinstance(rv, str) else ""

    @contextlib.asynccontextmanager
    async def watch(
        self, path: str, params: Mapping[str, str], resource_version: str, timeout_s: float
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        query = {
            **params,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(max(1, int(timeout_s))),
        }
        if resource_version:
            query["resourceVersion"] = resource_version
        # The server ends the watch after timeoutSeconds; a read stalled well past that is dead.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._timeout, sock_read=timeout_s + self._timeout
        )
        resp = await self._get(path, query, timeout)
        try:
            await self._raise_for_status(resp)
            yield self._events(resp)
        finally:
            resp.close()  # never drain an endless stream

    @staticmethod
    async def _events(resp: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            async for line in resp.content:
                if not line.strip():
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise KubeApiError(0, "malformed watch event (not JSON)") from None
                if isinstance(event, dict):
                    yield event
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, TimeoutError):
            return  # a dropped or stalled watch: the caller re-watches from its resourceVersion
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: line too long
            raise KubeApiError(0, f"watch interrupted: {exc}") from None

    async def close(self) -> None:
        await self._api.close()


def _config_source(
    kubeconfig: str | None, context: str | None, environ: Mapping[str, str]
) -> str | None:
    """The kubeconfig path to load, or None for the in-cluster service account."""
    if kubeconfig:
        if not Path(kubeconfig).expanduser().is_file():
            msg = f"--kubeconfig {kubeconfig}: no such file"
            raise UsageError(msg)
        return kubeconfig
    env = environ.get("KUBECONFIG", "")
    if env:
        if not any(Path(p).expanduser().is_file() for p in env.split(os.pathsep) if p):
            msg = f"KUBECONFIG={env}: no such file"
            raise UsageError(msg)
        return env
    if environ.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.is_file() and not context:
        return None
    default = DEFAULT_KUBECONFIG.expanduser()
    if default.is_file():
        return str(default)
    msg = (
        "no Kubernetes credentials: pass --kubeconfig PATH, set KUBECONFIG, or run in a pod "
        "with a service account"
    )
    raise UsageError(msg)


async def connect(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    request_timeout_s: float = 30.0,
) -> KubeClient:
    """Load credentials (``--kubeconfig`` > ``KUBECONFIG`` > in-cluster > ``~/.kube/config``).

    Raises ``UsageError`` naming the file or flag when they cannot be used; does not call the API.
    """
    env = os.environ if environ is None else environ
    source = _config_source(kubeconfig, context, env)
    cfg = k8s_client.Configuration()
    if source is None:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except Exception as exc:  # noqa: BLE001 - any loader failure is a config error
            msg = f"in-cluster service account: {exc}"
            raise UsageError(msg) from None
        description = f"in-cluster service account ({redact_url(str(cfg.host))})"
    else:
        try:
            await k8s_config.load_kube_config(
                config_file=source,
                context=context,
                client_configuration=cfg,
                persist_config=False,
            )
        except Exception as exc:  # noqa: BLE001 - yaml, ConfigException, missing keys...
            where = (
                f"--context {context} in kubeconfig {source}" if context else f"kubeconfig {source}"
            )
            msg = f"{where}: {exc or type(exc).__name__}"
            raise UsageError(msg) from None
        ctx = f"context {context}, " if context else ""
        description = f"kubeconfig {source} ({ctx}server {redact_url(str(cfg.host))})"
    return KubeClient(k8s_client.ApiClient(cfg), description, request_timeout_s)
