"""The dispatcher around scripted deployments: splitting to caps, retries, failover, breakers, deadline,
cancellation, and what it refuses to do (mix sizes, drop a parameter)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from providers.base import (
    ANY_DIMENSIONS,
    Capabilities,
    EmbedBatch,
    EmbedResult,
    ErrorKind,
    ProviderError,
)
from providers.openai import OpenAIOptions
from providers.tokenizers import Tokenizer, cl100k
from proxy.dispatch import Candidate, Deployment, Dispatcher, Target, check_servable
from proxy.dispatch.dispatcher import CallReport, split
from proxy.dispatch.strategy import make_strategy
from proxy.errors import InvalidRequest, ServiceUnavailable, UpstreamError, UpstreamTimeout
from proxy.settings import DispatchSettings
from testkit.vectors import vector_for

DIMS = 8
FAST = DispatchSettings(backoff_base=0.001, backoff_max=0.01, breaker_failures=2, breaker_cooldown=0.2, deadline=5)


@dataclass
class Scripted:
    """A provider whose calls succeed with known vectors unless the script says otherwise."""

    caps: Capabilities = field(default_factory=lambda: Capabilities(max_inputs=100))
    script: list[ProviderError | float] = field(default_factory=list)  # an error to raise, or seconds to stall
    width: int = DIMS
    calls: list[EmbedBatch] = field(default_factory=list)
    cancelled: int = 0

    @property
    def tokenizer(self) -> Tokenizer | None:
        return None

    def capabilities(self, model: str) -> Capabilities:
        return self.caps

    async def start(self) -> None:
        return None

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        self.calls.append(batch)
        step = self.script.pop(0) if self.script else None
        if isinstance(step, ProviderError):
            raise step
        if step:
            try:
                await asyncio.sleep(step)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        rows = [vector_for(x, self.width)[: batch.dimensions or self.width] for x in batch.inputs]
        return EmbedResult(np.stack(rows).astype(np.float32), prompt_tokens=len(batch.inputs))

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


async def deployment(name: str, provider: Scripted, settings: DispatchSettings = FAST, **options: object) -> Deployment:
    made = Deployment(OpenAIOptions.model_validate({"name": name, **options}), provider, settings)
    await made.start()
    return made


def target(*tiers: Sequence[Deployment], **extra: object) -> Target:
    return Target(model="m", tiers=tuple(tuple(Candidate(d, "up") for d in tier) for tier in tiers),
                  choose=make_strategy("weighted"), **extra)  # type: ignore[arg-type]


def texts(n: int) -> list[str]:
    return [f"text {i}" for i in range(n)]


def rows_match(vectors: np.ndarray, inputs: Sequence[str]) -> bool:
    return all(np.array_equal(row, vector_for(x, DIMS)) for row, x in zip(vectors, inputs, strict=True))


def fail(kind: ErrorKind, retry_after: float | None = None, index: int | None = None) -> ProviderError:
    return ProviderError(kind, f"scripted {kind.value}", retry_after=retry_after, input_index=index)


def test_split_respects_both_caps_and_keeps_order() -> None:
    tokens = [5, 5, 5, 50, 5, 5]
    assert split(range(6), tokens, 3, None) == [[0, 1, 2], [3, 4, 5]]
    assert split(range(6), tokens, 100, 12) == [[0, 1], [2], [3], [4, 5]]  # 50 over the cap goes alone


@pytest.mark.asyncio
async def test_a_big_request_is_split_to_the_caps_and_joined_in_order() -> None:
    provider = Scripted(Capabilities(max_inputs=3, max_tokens=7))
    items = texts(10)
    result = await Dispatcher(FAST).dispatch(target([await deployment("a", provider)]), items, [2] * 10)
    assert [len(c.inputs) for c in provider.calls] == [3, 3, 3, 1]
    assert rows_match(result.vectors, items)
    assert result.prompt_tokens == 10 and result.deployments == ("a",)


@pytest.mark.asyncio
async def test_retryable_failures_are_retried_with_the_same_inputs() -> None:
    provider = Scripted(script=[fail(ErrorKind.UNAVAILABLE), fail(ErrorKind.TIMEOUT)])
    reports: list[CallReport] = []
    result = await Dispatcher(FAST, reports.append).dispatch(target([await deployment("a", provider)]),
                                                             ["x", "y"], [1, 1])
    assert rows_match(result.vectors, ["x", "y"])
    assert [list(c.inputs) for c in provider.calls] == [["x", "y"]] * 3
    assert [(r.outcome, r.retry) for r in reports] == [("unavailable", False), ("timeout", True), ("ok", True)]


@pytest.mark.asyncio
async def test_a_429_cools_the_deployment_for_as_long_as_it_asked() -> None:
    rate_limited = Scripted(script=[fail(ErrorKind.RATE_LIMITED, retry_after=30)])
    healthy = Scripted()
    a, b = await deployment("a", rate_limited), await deployment("b", healthy)
    dispatcher = Dispatcher(FAST)
    first = await dispatcher.dispatch(target([a, b]), ["x"], [1])
    assert first.deployments == ("b",)
    for _ in range(4):  # weighted round-robin would alternate; a is cooling for 30 s
        assert (await dispatcher.dispatch(target([a, b]), ["y"], [1])).deployments == ("b",)
    assert len(rate_limited.calls) == 1 and not a.breaker.is_open  # a 429 is not a failure


@pytest.mark.asyncio
async def test_failover_to_a_healthy_deployment_and_breaker_open_then_closed() -> None:
    broken = Scripted(script=[fail(ErrorKind.UNAVAILABLE)] * 2)
    healthy = Scripted()
    a, b = await deployment("a", broken), await deployment("b", healthy)
    dispatcher = Dispatcher(FAST)
    for _ in range(2):
        result = await dispatcher.dispatch(target([a, b]), ["x"], [1])
        assert result.deployments == ("b",) and rows_match(result.vectors, ["x"])
    assert a.breaker.is_open  # two failures in a row: FAST opens after 2
    for _ in range(4):
        await dispatcher.dispatch(target([a, b]), ["z"], [1])
    assert len(broken.calls) == 2  # open: nothing sent there
    await asyncio.sleep(FAST.breaker_cooldown)
    served_by = {(await dispatcher.dispatch(target([a, b]), ["w"], [1])).deployments for _ in range(2)}
    assert ("a",) in served_by and not a.breaker.is_open  # the probe succeeded: closed again


@pytest.mark.asyncio
async def test_fallback_tier_only_when_the_model_s_own_deployments_cannot_serve() -> None:
    own = Scripted(script=[fail(ErrorKind.UNAVAILABLE)] * 10)
    same_space = Scripted()
    a, b = await deployment("own", own), await deployment("fallback", same_space)
    dispatcher = Dispatcher(FAST)
    assert (await dispatcher.dispatch(target([a], [b]), ["x"], [1])).deployments == ("fallback",)
    healthy_own = Scripted()
    c = await deployment("own2", healthy_own)
    assert (await dispatcher.dispatch(target([c], [b]), ["x"], [1])).deployments == ("own2",)


@pytest.mark.asyncio
async def test_client_errors_are_never_retried_and_name_the_dispatched_input() -> None:
    provider = Scripted(Capabilities(max_inputs=2), script=[0.0, fail(ErrorKind.BAD_REQUEST, index=1)])
    with pytest.raises(InvalidRequest) as exc:
        await Dispatcher(FAST).dispatch(target([await deployment("a", provider)]), texts(4), [1] * 4)
    assert exc.value.input_index == 3  # second part, its second input
    assert len(provider.calls) == 2


@pytest.mark.asyncio
async def test_a_failed_part_cancels_its_siblings() -> None:
    provider = Scripted(Capabilities(max_inputs=1), script=[fail(ErrorKind.BAD_REQUEST), 5.0, 5.0])
    with pytest.raises(InvalidRequest):
        await Dispatcher(FAST).dispatch(target([await deployment("a", provider)]), texts(3), [1] * 3)
    await asyncio.sleep(0)
    assert provider.cancelled == 2


@pytest.mark.asyncio
async def test_the_overall_deadline_bounds_retries_and_slow_calls() -> None:
    slow = Scripted(script=[5.0])
    settings = DispatchSettings(deadline=0.2, backoff_base=0.001)
    with pytest.raises(UpstreamTimeout) as exc:
        await Dispatcher(settings).dispatch(target([await deployment("a", slow, settings)]), ["x"], [1])
    # Every call that had started was cancelled (on a loaded machine the deadline can pass before one starts).
    assert "deadline" in exc.value.message and slow.cancelled == len(slow.calls) <= 1


@pytest.mark.asyncio
async def test_every_deployment_down_is_a_503_with_retry_after() -> None:
    broken = Scripted(script=[fail(ErrorKind.UNAVAILABLE)] * 10)
    settings = DispatchSettings(breaker_failures=1, breaker_cooldown=60, backoff_base=0.001, deadline=1)
    a = await deployment("a", broken, settings)
    dispatcher = Dispatcher(settings)
    with pytest.raises(UpstreamError):
        await dispatcher.dispatch(target([a]), ["x"], [1])
    with pytest.raises(ServiceUnavailable) as exc:  # breaker open for 60 s, longer than the deadline
        await dispatcher.dispatch(target([a]), ["x"], [1])
    assert int(exc.value.headers["Retry-After"]) > 1


@pytest.mark.asyncio
async def test_dimensions_native_or_matryoshka_never_dropped() -> None:
    native = Scripted(Capabilities(max_inputs=10, dimensions=ANY_DIMENSIONS))
    fixed = Scripted(Capabilities(max_inputs=10, dimensions=None), width=DIMS)
    a, b = await deployment("native", native), await deployment("fixed", fixed)
    result = await Dispatcher(FAST).dispatch(target([a]), ["x"], [1], dimensions=4)
    assert native.calls[0].dimensions == 4 and result.vectors.shape == (1, 4)
    truncated = await Dispatcher(FAST).dispatch(target([b], matryoshka=True, native_dimensions=DIMS), ["x"], [1],
                                                dimensions=4)
    assert fixed.calls[0].dimensions is None
    head = vector_for("x", DIMS)[:4]
    np.testing.assert_allclose(truncated.vectors[0], head / np.linalg.norm(head), rtol=1e-6)
    with pytest.raises(InvalidRequest) as exc:
        check_servable(target([b]), 4, None)
    assert exc.value.param == "dimensions"


@pytest.mark.asyncio
async def test_capabilities_are_read_once_and_plans_made_once_per_parameters() -> None:
    asked: list[str] = []

    class Counted(Scripted):
        def capabilities(self, model: str) -> Capabilities:
            asked.append(model)
            return self.caps

    provider = Counted(Capabilities(max_inputs=10, dimensions=ANY_DIMENSIONS))
    routed = target([await deployment("a", provider)])
    dispatcher = Dispatcher(FAST)
    for dimensions in (None, None, 4, 4):
        result = await dispatcher.dispatch(routed, ["x"], [1], dimensions=dimensions)
        assert result.vectors.shape == (1, dimensions or DIMS)
    assert asked == ["up"]  # when the candidate was made, not per request
    assert set(routed.plans) == {(None, None), (4, None)}
    assert [c.dimensions for c in provider.calls] == [None, None, 4, 4]


@pytest.mark.asyncio
async def test_input_type_refused_where_no_deployment_knows_it_unless_ignored() -> None:
    plain = await deployment("plain", Scripted())
    with pytest.raises(InvalidRequest) as exc:
        check_servable(target([plain]), None, "query")
    assert exc.value.param == "input_type"
    check_servable(target([plain], ignore_input_type=True), None, "query")
    typed = Scripted(Capabilities(max_inputs=10, input_type=True))
    await Dispatcher(FAST).dispatch(target([await deployment("typed", typed)]), ["x"], [1], input_type="query")
    assert typed.calls[0].input_type == "query"


@pytest.mark.asyncio
async def test_token_ids_are_decoded_for_text_only_backends() -> None:
    ids = cl100k()._enc.encode("hello world")
    text_only = Scripted()
    await Dispatcher(FAST).dispatch(target([await deployment("t", text_only)]), [ids], [len(ids)])
    assert list(text_only.calls[0].inputs) == ["hello world"]
    takes_ids = Scripted(Capabilities(max_inputs=10, token_ids=True))
    await Dispatcher(FAST).dispatch(target([await deployment("i", takes_ids)]), [ids], [len(ids)])
    assert list(takes_ids.calls[0].inputs) == [ids]


@pytest.mark.asyncio
async def test_a_width_other_than_asked_is_a_bad_response_not_a_wrong_vector() -> None:
    liar = Scripted(width=DIMS + 1, script=[])
    a = await deployment("liar", liar)
    with pytest.raises(UpstreamError) as exc:
        await Dispatcher(FAST).dispatch(target([a], native_dimensions=DIMS), ["x"], [1])
    assert exc.value.code == "upstream_bad_response"
