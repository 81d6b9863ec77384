"""The API surface discovery needs, free of heavy imports (``client`` implements it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol


class KubeApiError(Exception):
    """An API call failed: ``status`` is the HTTP/Status code, 0 for transport errors."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def conflict(self) -> bool:
        """An update lost a race: the object changed since it was read."""
        return self.status == 409


class KubeApi(Protocol):
    """Raw list/watch of collections, get/replace of one object; objects are decoded JSON dicts."""

    description: str  # names the kubeconfig/context/server for messages

    async def list(
        self, path: str, params: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], str]: ...

    def watch(
        self, path: str, params: Mapping[str, str], resource_version: str, timeout_s: float
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]: ...

    async def get(self, path: str) -> dict[str, Any]: ...

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...
