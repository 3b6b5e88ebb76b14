"""The gateway's long-lived services, built once from settings and closed once."""

from __future__ import annotations

import asyncio
import logging

from providers.http import HttpClient
from providers.local import LocalProvider
from providers.tokenizers import Cl100k, cl100k
from proxy.accounts import Accounts
from proxy.auth import Authenticator
from proxy.batches import Batches
from proxy.cache import EmbeddingCache
from proxy.dispatch import Dispatcher
from proxy.files import Files
from proxy.ledger import Ledger
from proxy.metrics import Metrics
from proxy.observe import AccessLog, LocalQueueWatch
from proxy.quota import Quotas
from proxy.routing import Router
from proxy.settings import Settings
from proxy.store import Outages, Store
from proxy.tracing import Tracing, build_tracing
from proxy.usage import Usage

log = logging.getLogger("embedgate")


class Gateway:
    def __init__(self, settings: Settings, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.http = HttpClient()
        self.router = Router(settings.models, self.http, settings.dispatch)
        self.store = Store(settings.store)
        self.metrics = Metrics([s.entry.name for s in self.router.services],
                               [(d.name, d.options.provider) for d in self.router.deployments])
        self.tracing = tracing or build_tracing(settings.tracing)
        self.access = AccessLog()
        self.dispatcher = Dispatcher(settings.dispatch, self.metrics.observe_call, self.tracing)
        self.outages = Outages(self.metrics.store_errors)
        self.auth = Authenticator(settings.auth, self.store, self.outages)
        self.ledger = Ledger(self.store, settings.store.max_pending, settings.store.spill_dir)
        self.quotas = Quotas(self.store, self.outages, self.ledger, rejected=self.metrics.rejected,
                             budget=self.metrics.budget)
        self.usage = Usage(self.store, self.outages, self.ledger)
        self.accounts = Accounts(self.store)
        self.cache_store = Store(settings.cache.store) if settings.cache.store is not None else self.store
        self.cache = EmbeddingCache(self.cache_store, self.metrics, self.tracing)
        for deployment in self.router.deployments:
            if isinstance(deployment.provider, LocalProvider):
                deployment.provider.observer = LocalQueueWatch(self.metrics, self.tracing, deployment.name)
        self.files = Files(settings.files, self.store)
        self.batches = Batches(self.store, self.files)
        self._start_task: asyncio.Task[None] | None = None
        self._tokenizer_task: asyncio.Task[Cl100k] | None = None
        self._ledger_task: asyncio.Task[None] | None = None
        self.draining = False  # set on SIGTERM: /readyz answers 503 so load balancers stop sending

    def start(self) -> None:
        """Begin loading backends in the background; /readyz turns 200 when they are up."""
        self._start_task = asyncio.create_task(self.router.start(), name="embedgate-backends")
        # Every request's validation needs cl100k, and loading it takes seconds: not on the first request.
        self._tokenizer_task = asyncio.create_task(asyncio.to_thread(cl100k), name="embedgate-tokenizer")
        self.ledger.replay()
        self._ledger_task = asyncio.create_task(self.ledger.run(), name="embedgate-ledger")
        log.info("store: %s", self.store.describe())
        if self.cache_store is not self.store:
            log.info("cache store: %s", self.cache_store.describe())
        if not self.auth.enabled:
            log.warning("auth: no master key and no API keys configured: the gateway runs OPEN, "
                        "without authentication or quotas")

    async def ready(self) -> dict[str, bool]:
        checks = {f"deployment:{d.name}": d.ready for d in self.router.deployments}
        loaded = self._tokenizer_task
        checks["tokenizer"] = loaded is not None and loaded.done() and loaded.exception() is None
        checks["store"] = await self.store.ping()
        if self.cache_store is not self.store:
            checks["cache_store"] = await self.cache_store.ping()
        checks["accepting"] = not self.draining
        return checks

    async def aclose(self) -> None:
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        if self._ledger_task is not None:
            self._ledger_task.cancel()
        await self.quotas.settle()  # cancelled requests' refunds, before the ledger's last flush
        await self.usage.settle()  # what it could not write goes to the ledger, flushed or spilled below
        if self.ledger.pending and not await self.ledger.flush():
            self.ledger.spill()
        await self.cache.aclose()
        await self.router.aclose()
        await self.http.aclose()
        await self.store.aclose()
        if self.cache_store is not self.store:
            await self.cache_store.aclose()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes spans still buffered
        self.access.flush()  # the last requests' lines (every request has finished by now)
