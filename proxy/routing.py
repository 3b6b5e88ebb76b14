"""Model string → route: exact names and aliases first, then `prefix/*` patterns in config order.

Each config entry owns one started provider (`Backend`); a route pairs it with the
upstream model name for this request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from providers.base import Provider
from providers.http import HttpClient
from providers.registry import build_provider
from providers.tokenizers import Tokenizer, cl100k
from proxy.errors import ModelNotFound, ServiceUnavailable
from proxy.settings import ModelEntry

log = logging.getLogger("embedgate.routing")

START_WAIT_SECONDS = 120.0


class Backend:
    """A provider plus its start-up state, so requests can wait for a loading model."""

    def __init__(self, entry: ModelEntry, provider: Provider) -> None:
        self.entry = entry
        self.provider = provider
        self._started = asyncio.Event()
        self.failure: BaseException | None = None

    @property
    def ready(self) -> bool:
        return self._started.is_set() and self.failure is None

    async def start(self) -> None:
        try:
            await self.provider.start()
        except Exception as err:  # reported by /readyz and on every request; the gateway stays up
            self.failure = err
            log.error("backend for %s failed to start: %s", self.entry.name, err)
        finally:
            self._started.set()

    async def wait_ready(self) -> None:
        try:
            await asyncio.wait_for(self._started.wait(), START_WAIT_SECONDS)
        except TimeoutError:
            raise ServiceUnavailable(f"model {self.entry.name!r} is still loading; retry shortly",
                                     code="model_loading", headers={"Retry-After": "5"}) from None
        if self.failure is not None:
            raise ServiceUnavailable(f"model {self.entry.name!r} failed to start", code="model_unavailable")

    @property
    def tokenizer(self) -> Tokenizer:
        return self.provider.tokenizer or cl100k()


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # what the client sent
    upstream_model: str
    backend: Backend

    @property
    def entry(self) -> ModelEntry:
        return self.backend.entry


class Router:
    def __init__(self, entries: tuple[ModelEntry, ...], http: HttpClient) -> None:
        self.backends = [Backend(entry, build_provider(entry, http)) for entry in entries]
        self._exact: dict[str, Backend] = {}
        self._patterns: list[tuple[str, Backend]] = []
        for backend in self.backends:
            entry = backend.entry
            if entry.is_pattern:
                self._patterns.append((entry.name[:-1], backend))
            else:
                for name in (entry.name, *entry.aliases):
                    self._exact[name] = backend

    def resolve(self, model: str) -> Route:
        backend = self._exact.get(model)
        if backend is not None:
            return Route(model, backend.entry.upstream_model or backend.entry.name, backend)
        for prefix, backend in self._patterns:
            if model.startswith(prefix) and len(model) > len(prefix):
                suffix = model[len(prefix):]
                upstream = backend.entry.upstream_model
                return Route(model, upstream.replace("*", suffix) if upstream else suffix, backend)
        raise ModelNotFound(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )

    def model_ids(self) -> list[str]:
        """Names a client can list: exact names and aliases (patterns have no fixed name)."""
        return list(self._exact)

    def table(self) -> list[tuple[str, str, str]]:
        """(client name, provider, upstream model) for every name and pattern."""
        rows = [(name, b.entry.provider, b.entry.upstream_model or b.entry.name) for name, b in self._exact.items()]
        rows += [(b.entry.name, b.entry.provider, b.entry.upstream_model or "*") for _, b in self._patterns]
        return rows

    async def start(self) -> None:
        await asyncio.gather(*(backend.start() for backend in self.backends))

    async def aclose(self) -> None:
        await asyncio.gather(*(backend.provider.aclose() for backend in self.backends), return_exceptions=True)


def metric_label(router: Router, model: str) -> str:
    """A bounded label for metrics: the config entry's name, never a raw client string."""
    try:
        return router.resolve(model).entry.name
    except ModelNotFound:
        return "unknown"
