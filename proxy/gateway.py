"""The gateway's long-lived services, built once from settings and closed once."""

from __future__ import annotations

import asyncio
import logging

from providers.http import HttpClient
from proxy.cache import EmbeddingCache
from proxy.metrics import Metrics
from proxy.routing import Router
from proxy.settings import Settings
from proxy.store import Store

log = logging.getLogger("embedgate")


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http = HttpClient()
        self.router = Router(settings.models, self.http)
        self.store = Store(settings.store)
        self.metrics = Metrics()
        self.cache = EmbeddingCache(self.store, self.metrics)
        self._start_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin loading backends in the background; /readyz turns 200 when they are up."""
        self._start_task = asyncio.create_task(self.router.start(), name="embedgate-backends")
        log.info("store: %s", self.store.describe())

    async def ready(self) -> dict[str, bool]:
        checks = {f"model:{b.entry.name}": b.ready for b in self.router.backends}
        checks["store"] = await self.store.ping()
        return checks

    async def aclose(self) -> None:
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        await self.cache.aclose()
        await self.router.aclose()
        await self.http.aclose()
        await self.store.aclose()
