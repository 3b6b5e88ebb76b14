"""One deployment at run time: its provider, start-up state, breaker, cool-down and the figures strategies read."""

from __future__ import annotations

import asyncio
import logging
import time

from providers.base import Provider
from providers.options import DeploymentOptions
from proxy.dispatch.breaker import CircuitBreaker
from proxy.errors import ServiceUnavailable
from proxy.settings import DispatchSettings

log = logging.getLogger("embedgate.dispatch")

START_WAIT_SECONDS = 120.0
EWMA_WEIGHT = 0.2  # of the newest call


class Deployment:
    def __init__(self, options: DeploymentOptions, provider: Provider, settings: DispatchSettings) -> None:
        self.name: str = options.name or options.provider
        self.options = options
        self.provider = provider
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown)
        self.cooling_until = 0.0  # after a 429: as long as the vendor asked
        self.inflight = 0
        self.latency: float | None = None
        self._started = asyncio.Event()
        self.failure: BaseException | None = None

    @property
    def weight(self) -> int:
        return self.options.weight

    @property
    def started(self) -> bool:
        return self._started.is_set()

    @property
    def ready(self) -> bool:
        return self._started.is_set() and self.failure is None

    def usable(self, now: float) -> bool:
        return self.ready and now >= self.cooling_until and self.breaker.can_try()

    def usable_at(self) -> float:
        return max(self.cooling_until, self.breaker.retry_at()) if self.ready else float("inf")

    async def start(self) -> None:
        try:
            await self.provider.start()
        except Exception as err:  # reported by /readyz and on every request; the gateway stays up
            self.failure = err
            log.error("deployment %s failed to start: %s", self.name, err)
        finally:
            self._started.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    def cool_down(self, seconds: float) -> None:
        self.cooling_until = max(self.cooling_until, time.monotonic() + seconds)

    def observed(self, seconds: float) -> None:
        self.latency = seconds if self.latency is None else (1 - EWMA_WEIGHT) * self.latency + EWMA_WEIGHT * seconds


async def wait_any_ready(model: str, deployments: list[Deployment]) -> None:
    """Return once the model can serve: every deployment has started (loaded) and one is up."""
    if not all(d.started for d in deployments):  # after start-up, every request skips the wait: no task, no timer
        try:
            await asyncio.wait_for(asyncio.gather(*(d.wait_started() for d in deployments)), START_WAIT_SECONDS)
        except TimeoutError:
            if any(d.ready for d in deployments):
                return
            raise ServiceUnavailable(f"model {model!r} is still loading; retry shortly",
                                     code="model_loading", headers={"Retry-After": "5"}) from None
    if not any(d.ready for d in deployments):
        raise ServiceUnavailable(f"model {model!r} failed to start", code="model_unavailable")
