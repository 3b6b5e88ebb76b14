"""The cache never returns a wrong vector: random batches with overlaps, duplicates, orders,
sizes, formats and Cache-Control directives, against a fake upstream whose vectors are a known
function of the input. Each response vector must be that function of its own input, and the
upstream must receive exactly the misses, once each."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.openai_upstream import NATIVE_DIMS, FakeOpenAI, expected_vector
from testkit.servers import ThreadedServer
from testkit.vectors import input_key
from tests.support.http import embed_ok

Item = str | tuple[int, ...]


@dataclass(frozen=True)
class Model:
    name: str
    upstream: str
    space: str  # models that share an embedding space share entries
    dimensions: tuple[int | None, ...]
    matryoshka: bool = False


MODELS = (
    Model("text-embedding-3-small", "text-embedding-3-small", "small", (None, 16, 64)),
    Model("matryoshka-small", "text-embedding-3-small", "small", (None, 16), matryoshka=True),
    Model("ada", "text-embedding-ada-002", "ada", (None,)),  # float upstream, 3 inputs per call
)

items = st.one_of(
    st.text(min_size=1, max_size=12),
    st.lists(st.integers(0, 50_000), min_size=1, max_size=4).map(tuple),
)


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[Model, int | None, str, str | None, list[Item]]]:
    pool = draw(st.lists(items, min_size=1, max_size=6, unique_by=input_key))
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        model = draw(st.sampled_from(MODELS))
        dims = draw(st.sampled_from(model.dimensions))
        fmt = draw(st.sampled_from(["float", "base64"]))
        control = draw(st.sampled_from([None, None, "no-cache", "no-store"]))
        batch = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=8))
        steps.append((model, dims, fmt, control, batch))
    return steps


_examples = itertools.count()


def fresh(item: Item, tag: str, number: int) -> Item:
    """The same input in a namespace of this example's own, so examples never share entries."""
    return f"{tag}|{item}" if isinstance(item, str) else (60_000 + number, *item)


def cached(stored: set[tuple[str, int | None, str]], model: Model, size: int | None, key: str) -> str | None:
    """How the cache can answer `key`: 'exact', 'cut' (from the full vector, matryoshka) or None."""
    if (model.space, size, key) in stored:
        return "exact"
    if model.matryoshka and size is not None and (model.space, None, key) in stored:
        return "cut"
    return None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=scenarios())
def test_every_vector_is_its_own_inputs_and_only_misses_go_upstream(
        caching_gateway: ThreadedServer, fake_openai: FakeOpenAI,
        steps: list[tuple[Model, int | None, str, str | None, list[Item]]]) -> None:
    # One gateway serves every example (hence the suppressed health check); the namespace keeps
    # them apart.
    tag, number = uuid.uuid4().hex[:8], next(_examples)
    stored: set[tuple[str, int | None, str]] = set()  # (space, dimensions, input) the cache holds
    for model, dims, fmt, control, raw_batch in steps:
        batch = [fresh(item, tag, number) for item in raw_batch]
        size = None if dims == NATIVE_DIMS else dims  # asking for the native size is not asking
        unique = list(dict.fromkeys(input_key(item) for item in batch))

        answers = {key: cached(stored, model, size, key) if control != "no-cache" else None for key in unique}
        seen_before = len(fake_openai.received)
        headers = {"Cache-Control": control} if control else None
        reply = embed_ok(caching_gateway.url, batch, model=model.name, dimensions=dims,
                         encoding_format=fmt, headers=headers)

        for item, vector in zip(batch, reply.vectors, strict=True):
            expected = expected_vector(item, dims).astype(np.float32)
            if answers[input_key(item)] == "cut":
                np.testing.assert_allclose(vector, expected, atol=1e-6)
            else:
                assert vector.tobytes() == expected.tobytes(), (item, answers[input_key(item)])

        sent = Counter((r.model, r.dimensions, input_key(x))
                       for r in fake_openai.received[seen_before:] for x in r.inputs)
        misses = [key for key in unique if answers[key] is None]
        assert sent == Counter((model.upstream, size, key) for key in misses)

        hits = [key for key in batch if answers[input_key(key)] is not None]
        assert reply.cache == ("hit" if not misses else "miss" if not hits else "partial")
        if control != "no-store":
            stored.update((model.space, size, key) for key in misses)
