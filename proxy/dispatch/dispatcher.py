"""Send one request's inputs to a model's deployments and bring back every vector, in order.

Splits to each deployment's caps (inputs and tokens per call), runs the parts concurrently
(bounded per deployment), retries a failed part alone with backoff and jitter inside one
deadline, fails over within the model's embedding space, and keeps each deployment's breaker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from providers.base import (
    RETRYABLE,
    Capabilities,
    EmbedBatch,
    EmbedInput,
    ErrorKind,
    ProviderError,
    Vectors,
    normalize,
)
from providers.tokenizers import cl100k
from proxy.dispatch.deployment import Deployment
from proxy.dispatch.errors import to_gateway_error
from proxy.errors import GatewayError, InvalidRequest, ServiceUnavailable, UpstreamError, UpstreamTimeout
from proxy.settings import DispatchSettings
from proxy.tracing import Span, Tracing

T = TypeVar("T")
_ONE_CALL: AbstractAsyncContextManager[Any] = nullcontext()


@dataclass(frozen=True, slots=True)
class Candidate:
    deployment: Deployment
    model: str  # the upstream model name at that deployment
    # What the deployment takes for that model, read once: a provider's capabilities are fixed for a model
    # (providers/base.py), and validation and planning asked for them three times per candidate per request.
    caps: Capabilities = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "caps", self.deployment.provider.capabilities(self.model))


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request may go: tiers of candidates (the model's own deployments, then its fallbacks')."""

    model: str  # the config entry's name, for messages
    tiers: tuple[tuple[Candidate, ...], ...]
    choose: Callable[[Sequence[Deployment]], Deployment]
    matryoshka: bool = False
    native_dimensions: int | None = None
    ignore_input_type: bool = False
    # `plans` of this target by (dimensions, input_type): bounded by the sizes a client may ask of the model.
    plans: dict[tuple[int | None, str | None], tuple[tuple[_Plan, ...], ...]] = field(
        default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Dispatched:
    vectors: Vectors
    prompt_tokens: int | None  # the backends' count, when every call reported one
    deployments: tuple[str, ...] = ()  # which served it, for x-embedgate-deployment


@dataclass(frozen=True, slots=True)
class CallReport:
    """What one upstream call did, for metrics: providers know nothing of Prometheus."""

    deployment: str
    provider: str
    outcome: str  # "ok" or an ErrorKind value
    seconds: float
    retry: bool  # a second or later try of the same inputs
    circuit_open: bool = False  # the deployment's breaker, once this call's outcome is counted


Observer = Callable[[CallReport], None]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A candidate, with how it will serve this request."""

    candidate: Candidate
    caps: Capabilities
    dimensions: int | None  # asked of the backend
    truncate: int | None  # cut the full vector to this size (Matryoshka models only)
    input_type: str | None

    @property
    def deployment(self) -> Deployment:
        return self.candidate.deployment


def plan(candidate: Candidate, target: Target, dimensions: int | None, input_type: str | None) -> _Plan | None:
    """How `candidate` can serve a request, or None when it cannot honour a parameter. Never drop one silently:
    a wrong vector is worse than an error."""
    caps = candidate.caps
    ask = truncate = None
    if dimensions is not None:
        if caps.takes_dimensions(dimensions):
            ask = dimensions
        elif target.matryoshka:
            truncate = dimensions
        else:
            return None
    if input_type is not None and not caps.input_type and not target.ignore_input_type:
        return None
    return _Plan(candidate, caps, ask, truncate, input_type if caps.input_type else None)


def plans(target: Target, dimensions: int | None, input_type: str | None) -> tuple[tuple[_Plan, ...], ...]:
    """Each tier's plans for a request's parameters, tiers with none left out. Plans are pure, so a target
    keeps them per (dimensions, input_type): every request for a configured model asks the same few."""
    key = (dimensions, input_type)
    found = target.plans.get(key)
    if found is None:
        tiers = (tuple(p for c in tier if (p := plan(c, target, dimensions, input_type))) for tier in target.tiers)
        found = target.plans[key] = tuple(tier for tier in tiers if tier)
    return found


def check_servable(target: Target, dimensions: int | None, input_type: str | None) -> None:
    """400 before any charge when no deployment of the model can honour `dimensions` / `input_type`."""
    own = target.tiers[0]
    if dimensions is not None and not any(plan(c, target, dimensions, None) for c in own):
        sizes = sorted({s for c in own for s in c.caps.dimensions or ()})
        hint = f"; it takes {', '.join(map(str, sizes))}" if sizes else ""
        raise InvalidRequest(f"This model ({target.model}) does not support dimensions={dimensions}{hint}.",
                             param="dimensions", code="unsupported_parameter")
    if input_type is not None and not any(plan(c, target, None, input_type) for c in own):
        raise InvalidRequest(f"This model ({target.model}) has no notion of input_type; leave it out.",
                             param="input_type", code="unsupported_parameter")


def split(indices: Sequence[int], tokens: Sequence[int], max_inputs: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive chunks within both caps; an input over the token cap alone goes in a chunk of its own."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in indices:
        if current and (len(current) >= max_inputs or (max_tokens is not None and total + tokens[i] > max_tokens)):
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += tokens[i]
    if current:
        chunks.append(current)
    return chunks


async def gather_or_cancel(coros: Iterable[Awaitable[T]]) -> list[T]:
    """All results in order; the first failure cancels the siblings still running and is raised as itself."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro) for coro in coros]  # type: ignore[arg-type]
    except BaseExceptionGroup as failures:
        raise _first(failures) from None
    return [task.result() for task in tasks]


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


@dataclass(slots=True)
class _Piece:
    indices: list[int]
    vectors: Vectors
    tokens: int | None


class Dispatcher:
    def __init__(self, settings: DispatchSettings, observe: Observer | None = None,
                 tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.observe = observe or (lambda report: None)
        self.tracing = tracing or Tracing()

    async def dispatch(self, target: Target, inputs: Sequence[EmbedInput], tokens: Sequence[int],
                       dimensions: int | None = None, input_type: str | None = None) -> Dispatched:
        """`tokens`: the gateway's count per input, for vendors that cap tokens per call."""
        return await _Run(self, target, inputs, tokens, dimensions, input_type).run()


@dataclass
class _Run:
    dispatcher: Dispatcher
    target: Target
    inputs: Sequence[EmbedInput]
    tokens: Sequence[int]
    dimensions: int | None
    input_type: str | None
    deadline: float = 0.0
    used: dict[str, None] = field(default_factory=dict)
    _plans: tuple[tuple[_Plan, ...], ...] = ()
    _limits: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _parallel: bool = False  # parts run side by side (set before the first of them starts)

    async def run(self) -> Dispatched:
        settings = self.dispatcher.settings
        self.deadline = time.monotonic() + settings.deadline
        self._plans = plans(self.target, self.dimensions, self.input_type)
        pieces = await self._part(list(range(len(self.inputs))), 0, frozenset())
        widths = {piece.vectors.shape[1] for piece in pieces}
        if len(widths) > 1:
            raise UpstreamError("deployments returned embeddings of different sizes", code="upstream_bad_response")
        vectors = pieces[0].vectors if len(pieces) == 1 else np.concatenate([p.vectors for p in pieces])
        counts = [p.tokens for p in pieces]
        total = None if None in counts else sum(c for c in counts if c is not None)
        return Dispatched(vectors, total, tuple(self.used))

    # -- choosing -------------------------------------------------------------------------------------

    def _pick(self, avoid: frozenset[str]) -> _Plan | None:
        """A usable plan from the first tier that has one, preferring deployments not in `avoid`."""
        now = time.monotonic()
        for preferred in (True, False):
            for tier in self._plans:
                usable = [p for p in tier
                          if p.deployment.usable(now) and not (preferred and p.deployment.name in avoid)]
                if len(usable) == 1:  # what any strategy would choose, and leave its state as it was
                    return usable[0]
                if usable:
                    chosen = self.target.choose([p.deployment for p in usable])
                    return next(p for p in usable if p.deployment is chosen)
        return None

    async def _wait_pick(self, avoid: frozenset[str]) -> _Plan:
        """A plan, waiting out cool-downs and open breakers while the deadline allows."""
        while True:
            chosen = self._pick(avoid)
            if chosen is not None:
                return chosen
            soonest = min((p.deployment.usable_at() for tier in self._plans for p in tier), default=float("inf"))
            wait = soonest - time.monotonic()
            if soonest == float("inf") or wait > self.deadline - time.monotonic():
                retry = f"{max(1, round(wait))}" if soonest != float("inf") else "5"
                raise ServiceUnavailable(
                    f"Every deployment of {self.target.model} is unavailable right now (rate-limited, failing "
                    "or down). Please retry shortly.", code="upstream_unavailable", headers={"Retry-After": retry})
            await asyncio.sleep(max(wait, 0.01))

    # -- sending --------------------------------------------------------------------------------------

    async def _part(self, indices: list[int], attempt: int, avoid: frozenset[str]) -> list[_Piece]:
        chosen = await self._wait_pick(avoid)
        max_inputs, max_tokens = chosen.caps.max_inputs, chosen.caps.max_tokens
        chunks = split(indices, self.tokens, max_inputs, max_tokens)
        if len(chunks) == 1:
            return await self._call(chosen, indices, attempt, avoid)
        self._parallel = True
        nested = await gather_or_cancel(self._part(chunk, attempt, avoid) for chunk in chunks)
        return [piece for pieces in nested for piece in pieces]

    def _limit(self, deployment: Deployment) -> AbstractAsyncContextManager[Any]:
        """Each deployment's bound on this request's calls in flight at once; none to keep while the request
        is one call (most are), which saves a semaphore per request."""
        if not self._parallel:
            return _ONE_CALL
        if deployment.name not in self._limits:
            self._limits[deployment.name] = asyncio.Semaphore(deployment.options.max_concurrency)
        return self._limits[deployment.name]

    def _batch(self, chosen: _Plan, indices: list[int]) -> EmbedBatch:
        codec = None if chosen.caps.token_ids else cl100k()
        items = [self.inputs[i] for i in indices]
        # cl100k ids mean nothing to another model's tokenizer: text-only backends get the decoded text.
        sent = [x if isinstance(x, str) or codec is None else codec.decode(x) for x in items]
        return EmbedBatch(model=chosen.candidate.model, inputs=sent, dimensions=chosen.dimensions,
                          input_type=chosen.input_type)

    async def _call(self, chosen: _Plan, indices: list[int], attempt: int, avoid: frozenset[str]) -> list[_Piece]:
        deployment = chosen.deployment
        if not deployment.breaker.acquire():  # another call took the half-open probe meanwhile
            return await self._part(indices, attempt, avoid | {deployment.name})
        batch = self._batch(chosen, indices)
        async with self._limit(deployment):
            with self.dispatcher.tracing.span("upstream", client=True) as span:
                started = time.monotonic()
                deployment.inflight += 1
                try:
                    remaining = self.deadline - started
                    if remaining <= 0:
                        raise ProviderError(ErrorKind.TIMEOUT, "the request's upstream deadline passed")
                    # A timeout scope, not wait_for: on Python 3.11 wait_for wraps the call in a task of its own,
                    # and a task per upstream call was a measurable share of the hot path.
                    async with asyncio.timeout(remaining):
                        result = await deployment.provider.embed(batch)
                    vectors = self._checked(chosen, result.vectors)
                except TimeoutError:
                    error: ProviderError | None = ProviderError(
                        ErrorKind.TIMEOUT, f"{self.target.model}: no answer within the request's deadline")
                except ProviderError as err:
                    error = err
                except BaseException:
                    deployment.breaker.released()
                    raise
                else:
                    error = None
                finally:
                    deployment.inflight -= 1
                outcome = "ok" if error is None else error.kind.value
                if self.dispatcher.tracing.enabled:
                    _describe(span, deployment, outcome, attempt, len(indices))
        seconds = time.monotonic() - started
        _judge(deployment, error)
        self._report(deployment, outcome, seconds, attempt)
        if error is None:
            deployment.observed(seconds)
            self.used[deployment.name] = None
            return [_Piece(indices, vectors, result.prompt_tokens)]
        return await self._recover(chosen, indices, attempt, avoid, error)

    def _checked(self, chosen: _Plan, vectors: Vectors) -> Vectors:
        if chosen.truncate is not None:
            if vectors.shape[1] <= chosen.truncate:
                raise ProviderError(ErrorKind.BAD_RESPONSE, f"backend returned {vectors.shape[1]} dimensions, "
                                                            f"too few to cut to {chosen.truncate}")
            return normalize(vectors[:, :chosen.truncate])  # Matryoshka: the head, at unit length again
        expected = chosen.dimensions or self.target.native_dimensions
        if expected is not None and vectors.shape[1] != expected:
            raise ProviderError(ErrorKind.BAD_RESPONSE,
                                f"backend returned {vectors.shape[1]} dimensions where {expected} were expected")
        return vectors

    async def _recover(self, chosen: _Plan, indices: list[int], attempt: int, avoid: frozenset[str],
                       error: ProviderError) -> list[_Piece]:
        """After a failed call: retry elsewhere or later, or give the client the error."""
        deployment = chosen.deployment
        if error.kind is ErrorKind.BAD_REQUEST:  # the input's fault, not the deployment's: never retried
            blamed = error.input_index
            raise to_gateway_error(error, indices[blamed] if blamed is not None and 0 <= blamed < len(indices)
                                   else None)
        settings = self.dispatcher.settings
        delay = backoff(attempt + 1, settings.backoff_base, settings.backoff_max)
        if error.kind is ErrorKind.RATE_LIMITED:
            deployment.cool_down(error.retry_after if error.retry_after is not None else delay)
        attempt += 1
        avoid = avoid | {deployment.name}
        if attempt >= settings.max_attempts:
            raise self._final(error, attempt)
        elsewhere = self._pick(avoid)
        if elsewhere is not None and elsewhere.deployment.name not in avoid:
            return await self._part(indices, attempt, avoid)  # fail over now: another deployment is healthy
        if error.kind not in RETRYABLE:
            raise self._final(error, attempt)
        now = time.monotonic()
        usable_at = min(p.deployment.usable_at() for tier in self._plans for p in tier)
        wait = max(delay, error.retry_after or 0.0, usable_at - now)
        if now + wait >= self.deadline:  # nothing can serve in time: say what went wrong, not "try later"
            raise self._final(error, attempt)
        await asyncio.sleep(wait)
        return await self._part(indices, attempt, avoid)

    def _final(self, error: ProviderError, attempts: int) -> GatewayError:
        if error.kind is ErrorKind.TIMEOUT and time.monotonic() >= self.deadline:
            return UpstreamTimeout(f"{self.target.model}: no deployment answered within the request's deadline "
                                   f"of {self.dispatcher.settings.deadline:g}s ({attempts} tries).")
        return to_gateway_error(error)

    def _report(self, deployment: Deployment, outcome: str, seconds: float, attempt: int) -> None:
        self.dispatcher.observe(CallReport(deployment.name, deployment.options.provider, outcome, seconds,
                                           attempt > 0, deployment.breaker.is_open))


def _judge(deployment: Deployment, error: ProviderError | None) -> None:
    """The breaker's verdict on one call: a 400 (the input's fault) and a 429 (the vendor asked for a
    pause, honoured by the cool-down) say nothing about the deployment's health."""
    if error is None:
        deployment.breaker.succeeded()
    elif error.kind in (ErrorKind.BAD_REQUEST, ErrorKind.RATE_LIMITED):
        deployment.breaker.released()
    else:
        deployment.breaker.failed()


def _describe(span: Span, deployment: Deployment, outcome: str, attempt: int, inputs: int) -> None:
    span.set_attribute("embedgate.deployment", deployment.name)
    span.set_attribute("embedgate.provider", deployment.options.provider)
    span.set_attribute("embedgate.outcome", outcome)
    if outcome != "ok":
        span.set_attribute("error.type", outcome)
    span.set_attribute("embedgate.attempt", attempt + 1)
    span.set_attribute("embedgate.inputs", inputs)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: concurrent retries spread out instead of arriving together."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))

