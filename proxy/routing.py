"""Model string → route: exact names and aliases first, then `prefix/*` patterns in config order.

Each config entry becomes a `ModelService`: its started deployments, the fallbacks that share its
embedding space, and its choice strategy. A route pairs it with what this request asked for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from providers.http import HttpClient
from providers.registry import build_provider
from providers.tokenizers import Tokenizer, cl100k
from proxy.dispatch import Candidate, Deployment, Target, wait_any_ready
from proxy.dispatch.strategy import make_strategy
from proxy.errors import ModelNotFound
from proxy.settings import DispatchSettings, ModelEntry, space_root


class ModelService:
    """One config entry at run time."""

    def __init__(self, entry: ModelEntry, http: HttpClient, settings: DispatchSettings) -> None:
        self.entry = entry
        self.deployments = [Deployment(options, build_provider(options, http), settings)
                            for options in entry.deployments]
        self.fallbacks: list[ModelService] = []
        self.space = entry.name  # the space root's name; set by the router once every entry exists
        self.choose = make_strategy(entry.strategy)
        self._target: Target | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        return self.deployments[0].provider.tokenizer or cl100k()

    def upstream_model(self, deployment: Deployment, suffix: str | None) -> str:
        configured = deployment.options.upstream_model
        if suffix is None:
            return configured or self.entry.name
        return configured.replace("*", suffix) if configured else suffix

    def candidates(self, suffix: str | None) -> tuple[Candidate, ...]:
        return tuple(Candidate(d, self.upstream_model(d, suffix)) for d in self.deployments)

    def target(self, suffix: str | None) -> Target:
        """Where a request for this entry may go; a configured name's is built once, a pattern's per request."""
        if suffix is None and self._target is not None:
            return self._target
        tiers = (self.candidates(suffix), *(f.candidates(None) for f in self.fallbacks))
        target = Target(model=self.entry.name, tiers=tiers, choose=self.choose, matryoshka=self.entry.matryoshka,
                        native_dimensions=self.entry.dimensions, ignore_input_type=self.entry.ignore_input_type)
        if suffix is None:  # asked only once the router has set `fallbacks`
            self._target = target
        return target

    async def wait_ready(self) -> None:
        await wait_any_ready(self.entry.name, self.deployments)

    def check(self) -> None:
        """Refuse at start-up what no request could be served right: a `dimensions` a deployment can't honour."""
        entry = self.entry
        if not entry.supports_dimensions or entry.matryoshka or entry.is_pattern:
            return
        for deployment in self.deployments:
            caps = deployment.provider.capabilities(self.upstream_model(deployment, None))
            if caps.dimensions is None:
                raise ValueError(
                    f"model {entry.name!r}: deployment {deployment.name!r} cannot take `dimensions`; set "
                    "matryoshka: true (served by truncating the full vector) or supports_dimensions: false")


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # what the client sent
    service: ModelService
    suffix: str | None = None  # what a pattern's `*` matched

    @property
    def entry(self) -> ModelEntry:
        return self.service.entry

    def target(self) -> Target:
        return self.service.target(self.suffix)

    def space_identity(self) -> tuple[str, ...]:
        """What names this route's embedding space in cache keys: never anything only the client chooses.
        A configured model is its space root; a pattern is the entry, where it sends, and the upstream model."""
        if self.suffix is None:
            return ("model", self.service.space)
        bases = ",".join(d.options.api_base or d.options.provider for d in self.service.deployments)
        return ("pattern", self.entry.name, bases, self.service.upstream_model(self.service.deployments[0],
                                                                                 self.suffix))


class Router:
    def __init__(self, entries: tuple[ModelEntry, ...], http: HttpClient, settings: DispatchSettings) -> None:
        self.services = [ModelService(entry, http, settings) for entry in entries]
        self._exact: dict[str, ModelService] = {}
        self._patterns: list[tuple[str, ModelService]] = []
        for service in self.services:
            entry = service.entry
            if entry.is_pattern:
                self._patterns.append((entry.name[:-1], service))
            else:
                for name in (entry.name, *entry.aliases):
                    self._exact[name] = service
        by_name = {s.entry.name: s for s in self.services if not s.entry.is_pattern}
        entries_by_name = {name: s.entry for name, s in by_name.items()}
        for service in by_name.values():
            service.space = space_root(entries_by_name, service.entry)
            service.fallbacks = [by_name[name] for name in service.entry.fallbacks]
            service.check()

    @property
    def deployments(self) -> list[Deployment]:
        return [d for s in self.services for d in s.deployments]

    def resolve(self, model: str) -> Route:
        service = self._exact.get(model)
        if service is not None:
            return Route(model, service)
        for prefix, service in self._patterns:
            if model.startswith(prefix) and len(model) > len(prefix):
                return Route(model, service, model[len(prefix):])
        raise ModelNotFound(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )

    def model_ids(self) -> list[str]:
        """Names a client can list: exact names and aliases (patterns have no fixed name)."""
        return list(self._exact)

    def table(self) -> list[tuple[str, str, str]]:
        """(client name, deployment, upstream model) for every name, pattern and deployment."""
        rows = []
        for name, service in [*self._exact.items(), *((s.entry.name, s) for _, s in self._patterns)]:
            suffix = "*" if service.entry.is_pattern else None
            rows += [(name, d.name, service.upstream_model(d, suffix)) for d in service.deployments]
        return rows

    async def start(self) -> None:
        await asyncio.gather(*(d.start() for d in self.deployments))

    async def aclose(self) -> None:
        await asyncio.gather(*(d.provider.aclose() for d in self.deployments), return_exceptions=True)


def metric_label(router: Router, model: str) -> str:
    """A bounded label for metrics: the config entry's name, never a raw client string (else `other`)."""
    try:
        return router.resolve(model).entry.name
    except ModelNotFound:
        return "other"
