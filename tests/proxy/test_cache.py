"""proxy/cache.py on its own: keys, entry format, token apportioning, and the cache's
behaviour around a scripted backend (single flight, failures, store errors, the write behind the answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from providers.base import EmbedInput
from proxy.cache import (
    ALLOW_ALL,
    CacheControl,
    EmbeddingCache,
    Entry,
    Space,
    _space_hasher,
    apportion,
    decode_entry,
    encode_entry,
    input_digest,
    space_for,
    truncate,
)
from proxy.dispatch import Dispatched
from proxy.errors import UpstreamError
from proxy.metrics import Metrics
from proxy.settings import CacheSettings, ModelEntry, StoreSettings
from proxy.store import Store
from testkit.openai_upstream import expected_vector
from testkit.vectors import input_key, vector_for

DIMS = 8


def make_space(**changes: object) -> Space:
    base: dict[str, object] = dict(
        model="m", identity=("model", "m", "team", "a"), revision="1", dimensions=None,
        native_dimensions=DIMS, matryoshka=False, ttl=60, max_entry_bytes=4096,
    )
    return Space(**{**base, **changes})  # type: ignore[arg-type]


def digest(item: EmbedInput, **changes: object) -> str:
    space = make_space(**changes)
    return input_digest(_space_hasher(space, space.dimensions), item)


# --- keys -----------------------------------------------------------------------------------

def test_key_depends_on_everything_that_decides_the_vector() -> None:
    reference = digest("hello")
    assert digest("hello") == reference
    for changed in (digest("hello "), digest("hello", identity=("model", "other", "team", "a")),
                    digest("hello", identity=("model", "m", "team", "b")),
                    digest("hello", identity=("pattern", "openai/*", "https://api.openai.com/v1", "m")),
                    digest("hello", revision="2"), digest("hello", dimensions=4),
                    digest("hello", options=(("input_type", "query"),))):
        assert changed != reference


def test_key_ignores_what_does_not_decide_the_vector() -> None:
    assert digest("hi", model="alias", ttl=5, max_entry_bytes=99, matryoshka=True) == digest("hi")


def test_text_and_token_ids_never_share_a_key() -> None:
    assert digest("1,2") != digest((1, 2))
    assert digest((1, 2)) == digest([1, 2])
    assert digest((1, 23)) != digest((12, 3))


def test_fields_are_delimited_so_they_cannot_run_together() -> None:
    assert digest("x", identity=("ab", "c")) != digest("x", identity=("a", "bc"))


# --- entries --------------------------------------------------------------------------------

def test_entry_round_trips_bit_for_bit() -> None:
    vector = vector_for("round trip", DIMS)
    entry = decode_entry(encode_entry(Entry(vector, 7)), DIMS)
    assert entry is not None and entry.tokens == 7
    assert entry.vector.tobytes() == vector.astype("<f4").tobytes()
    assert len(encode_entry(Entry(vector, 7))) == 8 + 4 * DIMS


@pytest.mark.parametrize("raw", [None, b"", b"\x01\x00\x00\x00\x07\x00\x00\x00", b"\x01" * 11,
                                 b"\x02\x00\x00\x00\x07\x00\x00\x00" + b"\x00" * 4 * DIMS])
def test_malformed_entries_read_as_misses(raw: bytes | None) -> None:
    assert decode_entry(raw, DIMS) is None


def test_entry_of_another_width_reads_as_a_miss() -> None:
    raw = encode_entry(Entry(vector_for("w", DIMS), 1))
    assert decode_entry(raw, DIMS + 1) is None
    assert decode_entry(raw, None) is not None


# --- tokens, matryoshka, control --------------------------------------------------------------

@pytest.mark.parametrize(("total", "counts"), [(None, [3, 4]), (7, [3, 4]), (10, [3, 4]), (5, [0, 0, 0]),
                                               (2, [5, 5, 5]), (100, [1]), (0, [2, 2])])
def test_apportion_sums_to_the_backends_total(total: int | None, counts: list[int]) -> None:
    shares = apportion(total, counts)
    assert len(shares) == len(counts) and all(s >= 0 for s in shares)
    assert sum(shares) == (sum(counts) if total is None else total)
    if total is None or total == sum(counts):
        assert shares == counts


def test_truncate_is_matryoshka_of_the_full_vector() -> None:
    full = expected_vector("matryoshka", native=DIMS * 8)
    short = truncate(full, DIMS)
    assert short.dtype == np.float32 and short.shape == (DIMS,)
    assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(short, expected_vector("matryoshka", DIMS, native=DIMS * 8), atol=1e-6)


@pytest.mark.parametrize(("header", "read", "write"), [
    (None, True, True), ("", True, True), ("no-cache", False, True), ("no-store", True, False),
    ("No-Cache, no-store", False, False), ("max-age=0, no-store", True, False), ("public", True, True),
])
def test_cache_control(header: str | None, read: bool, write: bool) -> None:
    assert CacheControl.parse(header) == CacheControl(read, write)


def test_space_for_applies_model_overrides() -> None:
    settings = CacheSettings(ttl=100, max_entry_bytes=1000)
    plain = ModelEntry.model_validate({"name": "a", "provider": "openai", "revision": "3"})
    space = space_for(plain, ("model", "a"), 16, settings)
    assert space is not None and (space.ttl, space.max_entry_bytes, space.revision, space.dimensions) == \
        (100, 1000, "3", 16)
    tuned = ModelEntry.model_validate({"name": "b", "provider": "openai", "cache": {"ttl": 5, "max_entry_bytes": 99}})
    space = space_for(tuned, ("model", "b"), None, settings)
    assert space is not None and (space.ttl, space.max_entry_bytes) == (5, 99)
    opted_out = ModelEntry.model_validate({"name": "c", "provider": "openai", "cache": {"enabled": False}})
    assert space_for(opted_out, ("model", "c"), None, settings) is None
    opted_in = ModelEntry.model_validate({"name": "d", "provider": "openai", "cache": {"enabled": True}})
    assert space_for(opted_in, ("model", "d"), None, CacheSettings(enabled=False)) is not None
    assert space_for(plain, ("model", "a"), None, CacheSettings(enabled=False)) is None


# --- the cache around a scripted backend ------------------------------------------------------

@dataclass
class ScriptedBackend:
    """A `fetch` that answers `vector_for(input)`, counts like the fake upstream, and can stall or fail."""

    calls: list[list[str]] = field(default_factory=list)
    delay: float = 0.0
    failure: Exception | None = None
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, inputs: Sequence[EmbedInput], tokens: Sequence[int]) -> Dispatched:
        self.calls.append([input_key(x) for x in inputs])
        self.called.set()
        await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure
        vectors = np.stack([vector_for(x, DIMS) for x in inputs])
        return Dispatched(vectors, sum(len(x) if not isinstance(x, str) else 1 for x in inputs))


@pytest.fixture
def cache() -> EmbeddingCache:
    return EmbeddingCache(Store(StoreSettings(url="memory://", prefix="t")), Metrics())


def tokens_of(inputs: Sequence[EmbedInput]) -> list[int]:
    return [2] * len(inputs)


async def serve(cache: EmbeddingCache, backend: ScriptedBackend, inputs: list[EmbedInput],
                control: CacheControl = ALLOW_ALL) -> tuple[str, list[np.ndarray]]:
    served = await cache.embed(make_space(), inputs, tokens_of(inputs), backend, control)
    for item, row in zip(inputs, served.vectors, strict=True):
        assert np.array_equal(row, vector_for(item, DIMS))
    return served.status, list(served.vectors)


@pytest.mark.asyncio
async def test_partial_hits_send_only_misses_and_keep_order(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()
    assert (await serve(cache, backend, ["a", "b"]))[0] == "miss"
    status, _ = await serve(cache, backend, ["c", "a", (1, 2), "c", "b"])
    assert status == "partial"
    assert backend.calls == [["a", "b"], ["c", "ids:1,2"]]
    assert (await serve(cache, backend, ["b", (1, 2), "a"]))[0] == "hit"
    assert len(backend.calls) == 2


@pytest.mark.asyncio
async def test_usage_and_hit_counts(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()  # reports 1 token per text; the gateway counted 2
    first = await cache.embed(make_space(), ["a", "b", "a"], [2, 2, 2], backend)
    assert (first.prompt_tokens, first.hits) == (3, ())
    second = await cache.embed(make_space(), ["a", "x", "a"], [2, 2, 2], backend)
    assert (second.prompt_tokens, second.hits, second.status) == (3, (0, 2), "partial")


@pytest.mark.asyncio
async def test_concurrent_identical_misses_make_one_call(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend(delay=0.05)
    results = await asyncio.gather(*(serve(cache, backend, ["same", f"own-{i}"]) for i in range(5)))
    assert sorted(map(sorted, backend.calls)) == sorted([["own-0", "same"]] + [[f"own-{i}"] for i in range(1, 5)])
    assert [status for status, _ in results] == ["miss"] * 5


@pytest.mark.asyncio
async def test_a_failed_call_reaches_every_waiter_and_stores_nothing(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend(delay=0.05, failure=UpstreamError("boom"))
    outcomes = await asyncio.gather(*(serve(cache, backend, ["doomed"]) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, UpstreamError) for o in outcomes)
    assert len(backend.calls) == 1
    assert await cache.store.client.keys("t:emb:*") == []
    backend.failure = None
    assert (await serve(cache, backend, ["doomed"]))[0] == "miss"  # nothing poisoned: called again
    assert len(backend.calls) == 2


@pytest.mark.asyncio
async def test_a_waiter_that_hangs_up_does_not_cancel_the_shared_call(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend(delay=0.1)
    first = asyncio.create_task(serve(cache, backend, ["shared"]))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(serve(cache, backend, ["shared"]))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second)[0] == "miss"
    assert len(backend.calls) == 1
    assert (await serve(cache, backend, ["shared"]))[0] == "hit"


@pytest.mark.asyncio
async def test_no_cache_and_no_store(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()
    await serve(cache, backend, ["kept"], CacheControl(write=False))
    assert (await serve(cache, backend, ["kept"]))[0] == "miss"  # the no-store request wrote nothing
    assert (await serve(cache, backend, ["kept"], CacheControl(read=False)))[0] == "miss"
    assert len(backend.calls) == 3
    assert (await serve(cache, backend, ["kept"]))[0] == "hit"


@pytest.mark.asyncio
async def test_entries_over_max_entry_bytes_are_not_stored(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()
    small = make_space(max_entry_bytes=8 + 4 * DIMS - 1)
    for _ in range(2):
        served = await cache.embed(small, ["big"], [1], backend)
        assert served.status == "miss"
        await cache.settled()  # the write behind it, which stores nothing (until then its flight answers)
    assert len(backend.calls) == 2


class BrokenClient:
    async def execute_command(self, *command: object) -> object:
        raise RedisConnectionError("store is down")


@pytest.mark.asyncio
async def test_a_store_error_bypasses_the_cache_and_is_counted(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()
    cache.store.client = BrokenClient()
    assert (await serve(cache, backend, ["x", "x"]))[0] == "bypass"
    assert (await serve(cache, backend, ["x"]))[0] == "bypass"  # within the retry window: not even tried
    assert cache.metrics.registry.get_sample_value("embedgate_store_errors_total", {"operation": "cache_read"}) == 1
    assert len(backend.calls) == 2


# --- the write, behind the answer -------------------------------------------------------------

class HeldWrites:
    """Holds the cache's store writes until `release` (a slow store, as the cache sees it); each
    write then goes on to the store, or raises `failure` instead."""

    def __init__(self, store: Store, failure: Exception | None = None) -> None:
        self.started = 0
        self.released = asyncio.Event()
        self.failure = failure
        self._set_many = store.set_many
        store.set_many = self._held  # type: ignore[method-assign]

    async def _held(self, items: Mapping[str, bytes], ttl: int) -> None:
        self.started += 1
        await self.released.wait()
        if self.failure is not None:
            raise self.failure
        await self._set_many(items, ttl)


def stored(cache: EmbeddingCache, item: EmbedInput) -> Awaitable[list[bytes | None]]:
    return cache.store.get_many([cache.store.key("emb", digest(item))])


def lookups(cache: EmbeddingCache, result: str) -> float | None:
    return cache.metrics.registry.get_sample_value("embedgate_cache_lookups_total", {"model": "m", "result": result})


@pytest.mark.asyncio
async def test_the_answer_does_not_wait_for_the_write(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()
    held = HeldWrites(cache.store)
    # Bounded so that an answer that waits for the held write fails the test instead of hanging it.
    assert (await asyncio.wait_for(serve(cache, backend, ["behind"]), 10))[0] == "miss"
    assert held.started == 1 and await stored(cache, "behind") == [None]
    # The same input while its write is held: found in memory, a hit like a store hit, no second call.
    served = await asyncio.wait_for(cache.embed(make_space(), ["fresh", "behind"], [2, 2], backend), 10)
    assert (served.status, served.hits) == ("partial", (1,))
    assert backend.calls == [["behind"], ["fresh"]]
    assert (lookups(cache, "hit"), lookups(cache, "miss")) == (1, 2)
    held.released.set()
    await cache.settled()
    assert await stored(cache, "behind") != [None] and await stored(cache, "fresh") != [None]
    assert (await serve(cache, backend, ["behind", "fresh"]))[0] == "hit"  # now from the store
    assert len(backend.calls) == 2


@pytest.mark.asyncio
async def test_no_cache_does_not_take_an_answer_whose_write_is_held(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()
    held = HeldWrites(cache.store)
    await serve(cache, backend, ["again"])
    assert (await serve(cache, backend, ["again"], CacheControl(read=False)))[0] == "miss"
    assert len(backend.calls) == 2  # `no-cache`: every input goes upstream, as documented
    held.released.set()
    await cache.settled()


@pytest.mark.asyncio
async def test_aclose_waits_for_a_held_write(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()
    held = HeldWrites(cache.store)
    await serve(cache, backend, ["last words"])
    closing = asyncio.create_task(cache.aclose())
    for _ in range(20):  # many turns of the loop: aclose has every chance to return, and must not
        await asyncio.sleep(0)
    assert not closing.done()
    held.released.set()
    await asyncio.wait_for(closing, 10)
    assert await stored(cache, "last words") != [None]


@pytest.mark.asyncio
async def test_aclose_gives_up_on_a_write_held_past_its_grace(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend()
    HeldWrites(cache.store)  # never released
    await serve(cache, backend, ["stuck"])
    await asyncio.wait_for(cache.aclose(grace=0.01), 10)
    assert await stored(cache, "stuck") == [None]


@pytest.mark.asyncio
async def test_aclose_cancels_calls_still_under_way(cache: EmbeddingCache) -> None:
    backend = ScriptedBackend(delay=30)
    waiting = asyncio.create_task(serve(cache, backend, ["never"]))
    await backend.called.wait()
    await asyncio.wait_for(cache.aclose(), 10)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await stored(cache, "never") == [None]


@pytest.mark.asyncio
async def test_a_failed_write_still_answers_and_is_counted(cache: EmbeddingCache,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    backend = ScriptedBackend()
    held = HeldWrites(cache.store, failure=RedisConnectionError("store went away"))
    assert (await serve(cache, backend, ["unwritten"]))[0] == "miss"
    held.released.set()
    await cache.settled()
    assert cache.metrics.registry.get_sample_value("embedgate_store_errors_total", {"operation": "cache_write"}) == 1
    assert any("cache store cache_write failed" in r.getMessage() for r in caplog.records)
    assert await stored(cache, "unwritten") == [None]
    assert (await serve(cache, backend, ["unwritten"]))[0] == "bypass"  # the store rests, as after a failed read
    assert len(backend.calls) == 2
