"""A small fake Kubernetes API server (aiohttp) for discovery tests, on 127.0.0.1 and a free port.

It serves list and watch for the resources discovery reads, from JSON fixtures shaped like
``kubectl get <res> -A -o json`` (tests/data/kube/<cluster>/<resource>.json). Lists carry a
``metadata.resourceVersion``; ``?watch=1`` streams JSON lines ``{"type", "object"}`` from a given
version (replaying history) and then live changes. One namespaced object can be read (GET) and
replaced (PUT, refused with 409 unless its ``metadata.resourceVersion`` and ``uid`` are the
current ones), as ``auditor discover`` does with its ConfigMap. Faults on demand: a 410 Gone
ERROR event or an HTTP 410 for old versions (``compact``), dropped watch connections, HTTP 500
for everything, 403 for one method on one path (``forbid``).

``ConfigMapVolume`` is the other side of a ConfigMap: the directory the kubelet projects it
into, updated by the same atomic ``..data`` link swap.

The server runs its own event loop in a thread, so it serves both async tests and the synchronous
``pipeline.cli.main.main`` (which runs ``asyncio.run``). Mutators are thread-safe and return once
applied.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.paths import DATA

DATA = DATA / "kube"
TOKEN = "fake-token-0123456789"  # a test credential for the fake server

# resource -> (API group path, kind, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "nodes": ("/api/v1", "Node", False),
    "namespaces": ("/api/v1", "Namespace", False),
    "services": ("/api/v1", "Service", True),
    "pods": ("/api/v1", "Pod", True),
    "daemonsets": ("/apis/apps/v1", "DaemonSet", True),
    "deployments": ("/apis/apps/v1", "Deployment", True),
    "replicasets": ("/apis/apps/v1", "ReplicaSet", True),
    "configmaps": ("/api/v1", "ConfigMap", True),
}
KIND_TO_RESOURCE = {kind: res for res, (_, kind, _) in RESOURCES.items()}
# Traefik's Middleware CRD, under both API groups it has had; served only once ``add_crd``
# installed the group (else 404, as on a cluster without the CRD).
MIDDLEWARE_GROUPS = ("traefik.io/v1alpha1", "traefik.containo.us/v1alpha1")
_CLOSE = object()
_DROP = object()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _label_match(selector: str, labels: dict[str, str]) -> bool:
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            k, _, v = term.partition("!=")
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, _, v = term.replace("==", "=").partition("=")
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field_match(selector: str, obj: dict[str, Any]) -> bool:
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        neg = "!=" in term
        k, _, v = term.replace("!=", "=").replace("==", "=").partition("=")
        node: Any = obj
        for part in k.split("."):
            node = node.get(part, "") if isinstance(node, dict) else ""
        if (str(node) == v) == neg:
            return False
    return True


@dataclass
class _Watch:
    resource: str
    namespace: str | None
    label_selector: str
    field_selector: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def matches(self, resource: str, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        return (
            resource == self.resource
            and (self.namespace is None or meta.get("namespace") == self.namespace)
            and _label_match(self.label_selector, meta.get("labels") or {})
            and _field_match(self.field_selector, obj)
        )


@dataclass(frozen=True)
class Request:
    path: str
    query: dict[str, str]
    method: str = "GET"

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in {"1", "true"}


class FakeKubeApi:
    """See module docstring. ``start()``, use ``url``/``write_kubeconfig()``, then ``stop()``."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.objects: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.rv = 100
        self.compacted_rv = 0  # watches from a version <= this get 410 Gone
        self.gone_as_http = False  # answer an expired watch with HTTP 410 instead of an ERROR event
        self.fail_status: int | None = None
        self.forbidden: set[tuple[str, str]] = set()  # (method, path) answered with 403
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.requests: list[Request] = []
        self.crds: dict[str, dict[str, dict[str, Any]]] = {}  # API group -> Middlewares by key
        self._watches: list[_Watch] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeKubeApi:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-kube-api", daemon=True)
        self._thread.start()
        self._call(self._start_site)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._stop_site)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    async def _start_site(self) -> None:
        app = web.Application()
        for prefix in ("/api/v1", "/apis/apps/v1"):
            app.router.add_get(prefix + "/{resource}", self._handle)
            app.router.add_get(prefix + "/namespaces/{namespace}/{resource}", self._handle)
            one = prefix + "/namespaces/{namespace}/{resource}/{name}"
            app.router.add_get(one, self._handle_one)
            app.router.add_put(one, self._handle_one)
        for group in MIDDLEWARE_GROUPS:
            app.router.add_get(f"/apis/{group}/middlewares", self._handle_middlewares)
            app.router.add_get(
                f"/apis/{group}/namespaces/{{namespace}}/middlewares", self._handle_middlewares
            )
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp keeps the bound socket here
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop_site(self) -> None:
        for w in self._watches:
            w.queue.put_nowait(_CLOSE)
        if self._runner is not None:
            await self._runner.cleanup()

    def _call(self, fn: Callable[[], Any]) -> Any:
        assert self._loop is not None, "start() the fake API first"

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def write_kubeconfig(
        self, path: Path, *, token: str | None = None, context: str = "fake"
    ) -> Path:
        """A kubeconfig (JSON is valid YAML) with an http cluster and token auth."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake-user", "user": {"token": token or self.token}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake-user"}}],
            "current-context": context,
            "preferences": {},
        }
        path.write_text(json.dumps(doc, indent=2))
        return path

    # -- data -----------------------------------------------------------------------------------
    def load_cluster(self, name: str) -> FakeKubeApi:
        """Load every ``<resource>.json`` of tests/data/kube/<name> (without watch events)."""
        for f in sorted((DATA / name).glob("*.json")):
            for item in json.loads(f.read_text())["items"]:
                self._store(item)
        return self

    def _store(self, obj: dict[str, Any]) -> tuple[str, str]:
        res = KIND_TO_RESOURCE[obj["kind"]]
        meta = obj["metadata"]
        key = f"{meta.get('namespace', '')}/{meta['name']}"
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", f"uid-{res}-{key}")
        self.objects[res][key] = obj
        return res, key

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        return copy.deepcopy(self.objects[KIND_TO_RESOURCE[kind]][f"{namespace}/{name}"])

    def _event(self, kind: str, res: str, obj: dict[str, Any]) -> None:
        snapshot = copy.deepcopy(obj)
        self.history.append((self.rv, res, kind, snapshot))
        for w in self._watches:
            if w.matches(res, snapshot):
                w.queue.put_nowait({"type": kind, "object": snapshot})

    def apply(self, obj: dict[str, Any]) -> None:
        """Create or replace an object (ADDED/MODIFIED event)."""

        def run() -> None:
            res = KIND_TO_RESOURCE[obj["kind"]]
            meta = obj["metadata"]
            existed = f"{meta.get('namespace', '')}/{meta['name']}" in self.objects[res]
            res, key = self._store(copy.deepcopy(obj))
            self._event("MODIFIED" if existed else "ADDED", res, self.objects[res][key])

        self._call(run)

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        def run() -> None:
            res = KIND_TO_RESOURCE[kind]
            obj = self.objects[res].pop(f"{namespace}/{name}")
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._event("DELETED", res, obj)

        self._call(run)

    def add_crd(self, group: str = MIDDLEWARE_GROUPS[0]) -> None:
        """Install Traefik's Middleware CRD under ``group`` (``traefik.io/v1alpha1``...)."""
        self._call(lambda: self.crds.setdefault(group, {}))

    def add_middleware(self, obj: dict[str, Any]) -> None:
        """Store a Middleware under its ``apiVersion`` (the CRD is installed with it)."""

        def run() -> None:
            meta = obj["metadata"]
            key = f"{meta.get('namespace', 'default')}/{meta['name']}"
            self.rv += 1
            stored = copy.deepcopy(obj)
            stored["metadata"].setdefault("uid", f"uid-middleware-{key}")
            stored["metadata"]["resourceVersion"] = str(self.rv)
            self.crds.setdefault(obj["apiVersion"], {})[key] = stored

        self._call(run)

    # -- faults ---------------------------------------------------------------------------------
    def forbid(self, method: str, path: str, *, allowed: bool = False) -> None:
        """Answer ``method`` on ``path`` with 403 (RBAC without that verb), or allow it again."""

        def run() -> None:
            if allowed:
                self.forbidden.discard((method, path))
            else:
                self.forbidden.add((method, path))

        self._call(run)

    def fail(self, status: int | None = 500) -> None:
        """Answer every request with ``status`` (None: recover)."""

        def run() -> None:
            self.fail_status = status

        self._call(run)

    def drop_watches(self) -> int:
        """Cut every open watch connection mid-stream (no clean end); returns how many."""

        def run() -> int:
            n = len(self._watches)
            for w in self._watches:
                w.queue.put_nowait(_DROP)
            return n

        result: int = self._call(run)
        return result

    def expire_watches(self) -> int:
        """Compact history and send a 410 Gone ERROR event on every open watch."""

        def run() -> int:
            self.compacted_rv = self.rv
            self.history.clear()
            n = len(self._watches)
            for w in self._watches:
                w.queue.put_nowait(
                    {
                        "type": "ERROR",
                        "object": _status(
                            410, "Expired", f"too old resource version: 1 ({self.rv})"
                        ),
                    }
                )
                w.queue.put_nowait(_CLOSE)
            return n

        result: int = self._call(run)
        return result

    def compact(self) -> None:
        """Forget history: a later watch from an older version gets 410 Gone."""

        def run() -> None:
            self.compacted_rv = self.rv
            self.history.clear()

        self._call(run)

    def open_watches(self, resource: str | None = None) -> int:
        def run() -> int:
            return sum(1 for w in self._watches if resource in {None, w.resource})

        result: int = self._call(run)
        return result

    def request_log(self) -> list[Request]:
        result: list[Request] = self._call(lambda: list(self.requests))
        return result

    # -- HTTP -----------------------------------------------------------------------------------
    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        if self.fail_status is not None:
            return web.json_response(
                _status(self.fail_status, "InternalError", "injected failure"),
                status=self.fail_status,
            )
        if (request.method, request.path) in self.forbidden:
            message = f"{request.method} {request.path} is forbidden (fake RBAC)"
            return web.json_response(_status(403, "Forbidden", message), status=403)
        return None

    async def _handle_middlewares(self, request: web.Request) -> web.Response:
        """The custom-objects list of Middlewares (cluster-wide or one namespace)."""
        self.requests.append(Request(request.path, dict(request.query)))
        refused = self._refused(request)
        if refused is not None:
            return refused
        group = request.path.removeprefix("/apis/").split("/namespaces/")[0]
        group = group.removesuffix("/middlewares")
        stored = self.crds.get(group)
        if stored is None:
            message = "the server could not find the requested resource"
            return web.json_response(_status(404, "NotFound", message), status=404)
        namespace = request.match_info.get("namespace")
        items = [
            copy.deepcopy(o)
            for o in stored.values()
            if namespace is None or o["metadata"].get("namespace") == namespace
        ]
        body = {
            "kind": "MiddlewareList",
            "apiVersion": group,
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }
        return web.json_response(body)

    async def _handle_one(self, request: web.Request) -> web.Response:
        """GET or PUT of one namespaced object."""
        self.requests.append(Request(request.path, dict(request.query), request.method))
        refused = self._refused(request)
        if refused is not None:
            return refused
        resource = request.match_info["resource"]
        spec = RESOURCES.get(resource)
        prefix = "/api/v1" if request.path.startswith("/api/v1") else "/apis/apps/v1"
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        key = f"{namespace}/{name}"
        if spec is None or spec[0] != prefix or not spec[2] or key not in self.objects[resource]:
            message = f'{resource} "{name}" not found'
            return web.json_response(_status(404, "NotFound", message), status=404)
        current = self.objects[resource][key]
        if request.method == "GET":
            return web.json_response(current)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(_status(400, "BadRequest", "not JSON"), status=400)
        meta = body.get("metadata") if isinstance(body, dict) else None
        if (
            not isinstance(meta, dict)
            or body.get("kind") != spec[1]
            or meta.get("name") != name
            or meta.get("namespace", namespace) != namespace
        ):
            return web.json_response(_status(400, "BadRequest", "wrong object"), status=400)
        cur_meta = current["metadata"]
        if (
            meta.get("resourceVersion") != cur_meta["resourceVersion"]
            or meta.get("uid", cur_meta["uid"]) != cur_meta["uid"]
        ):
            message = (
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )
            return web.json_response(_status(409, "Conflict", message), status=409)
        replaced = copy.deepcopy(body)
        replaced["metadata"] = {**copy.deepcopy(meta), "uid": cur_meta["uid"]}
        replaced["metadata"]["namespace"] = namespace
        res, stored = self._store(replaced)
        self._event("MODIFIED", res, self.objects[res][stored])
        return web.json_response(self.objects[res][stored])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(Request(request.path, query))
        refused = self._refused(request)
        if refused is not None:
            return refused
        resource = request.match_info["resource"]
        namespace = request.match_info.get("namespace")
        spec = RESOURCES.get(resource)
        prefix = "/api/v1" if request.path.startswith("/api/v1") else "/apis/apps/v1"
        if spec is None or spec[0] != prefix or (namespace is not None and not spec[2]):
            return web.json_response(
                _status(404, "NotFound", "the server could not find the requested resource"),
                status=404,
            )
        w = _Watch(
            resource,
            namespace,
            query.get("labelSelector", ""),
            query.get("fieldSelector", ""),
        )
        if query.get("watch") in {"1", "true"}:
            return await self._watch(request, w, query)
        items = []
        for obj in self.objects[resource].values():
            if w.matches(resource, obj):
                item = copy.deepcopy(obj)
                item.pop("kind", None)  # list items carry no kind/apiVersion
                item.pop("apiVersion", None)
                items.append(item)
        body = {
            "kind": f"{spec[1]}List",
            "apiVersion": prefix.removeprefix("/apis/").removeprefix("/api/") or "v1",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }
        return web.json_response(body)

    async def _watch(
        self, request: web.Request, w: _Watch, query: dict[str, str]
    ) -> web.StreamResponse:
        since_raw = query.get("resourceVersion", "")
        since = int(since_raw) if since_raw.isdigit() else 0
        expired = since and since <= self.compacted_rv
        if expired and self.gone_as_http:
            return web.json_response(
                _status(410, "Expired", f"too old resource version: {since}"), status=410
            )
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if expired:
                status = _status(410, "Expired", f"too old resource version: {since}")
                await resp.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                await resp.write_eof()
                return resp
            await self._stream(request, resp, w, since, float(query.get("timeoutSeconds", "1800")))
        except ConnectionResetError:  # the client went away first (relist, shutdown)
            pass
        return resp

    async def _stream(
        self, request: web.Request, resp: web.StreamResponse, w: _Watch, since: int, timeout: float
    ) -> None:
        if since:
            backlog = [(k, o) for rv, r, k, o in self.history if rv > since and w.matches(r, o)]
        else:  # no version: synthetic ADDED for the current state
            backlog = [
                ("ADDED", o) for o in self.objects[w.resource].values() if w.matches(w.resource, o)
            ]
        for kind, obj in backlog:
            w.queue.put_nowait({"type": kind, "object": copy.deepcopy(obj)})
        self._watches.append(w)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(w.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is _CLOSE:
                    break
                if item is _DROP:
                    assert request.transport is not None
                    request.transport.abort()
                    return
                await resp.write(json.dumps(item).encode() + b"\n")
            await resp.write_eof()
        finally:
            self._watches.remove(w)


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume, and updated the way it
    updates one (pkg/volume/util/atomic_writer.go): every version of the payload is written to a
    fresh ``..<timestamp>`` directory, a ``..data_tmp`` link to it is renamed over ``..data``,
    each key is a link ``<key> -> ..data/<key>`` (made once, removed with its key), and the old
    directory is deleted last."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._serial = 0

    def path(self, key: str) -> Path:
        return self.root / key

    def publish(self, payload: dict[str, bytes]) -> None:
        self._serial += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        name = f"..{stamp}.{self._serial:09d}"
        new_dir = self.root / name
        new_dir.mkdir(mode=0o755)
        for key, data in payload.items():
            (new_dir / key).write_bytes(data)
            (new_dir / key).chmod(0o644)
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(name)
        os.rename(tmp_link, data_link)
        for key in payload:
            visible = self.root / key
            if not visible.is_symlink():
                visible.symlink_to(f"..data/{key}")
        for entry in self.root.iterdir():
            if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in payload:
                entry.unlink()
        if old is not None:
            shutil.rmtree(self.root / old)
