"""The embedding cache: one entry per input, keyed by a hash of the embedding space and the input.

A request's inputs are deduplicated, looked up with one MGET, and only the misses go to the
backend (through the `fetch` function the pipeline passes in); results merge back in input
order. Concurrent identical misses in one process share one backend call ("flight",
proxy/flights.py). The new entries are written with one pipeline after the answer, in the
background: until that write lands, a request for one of them finds it in memory, as a hit. A
store error never fails a request: the cache steps aside. See docs/cache.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Literal, Protocol

import numpy as np

from providers.base import EmbedInput, Vectors, normalize, stack_rows
from proxy.errors import GatewayError, InvalidRequest, UpstreamError
from proxy.flights import WRITE_GRACE_SECONDS, Flight, Flights, Write
from proxy.metrics import Metrics
from proxy.settings import CacheSettings, ModelEntry
from proxy.store import STORE_ERRORS, Store
from proxy.tracing import Tracing

log = logging.getLogger("embedgate.cache")

KEY_SCHEME = b"embedgate-emb-v2"  # bump to orphan every entry if the key layout ever changes
ENTRY_HEADER = struct.Struct("<BxxxI")  # format version, padding, token count; then float32 LE
ENTRY_VERSION = 1
STORE_RETRY_SECONDS = 1.0  # after a store error, leave the store alone this long

Status = Literal["hit", "miss", "partial", "bypass"]


@dataclass(frozen=True, slots=True)
class CacheControl:
    """What the client allows: `Cache-Control: no-cache` skips the read, `no-store` the write."""

    read: bool = True
    write: bool = True

    @classmethod
    def parse(cls, header: str | None) -> CacheControl:
        if not header:
            return cls()
        directives = {part.strip().split("=", 1)[0].lower() for part in header.split(",")}
        return cls(read="no-cache" not in directives, write="no-store" not in directives)


ALLOW_ALL = CacheControl()


@dataclass(frozen=True, slots=True)
class Space:
    """Everything besides the input that decides a vector, and this model's cache policy."""

    model: str  # the config entry's name, for metrics
    identity: tuple[str, ...]  # the embedding space (routing.Route.space_identity), plus the team's scope
    revision: str
    dimensions: int | None  # asked for; None = the model's native size
    native_dimensions: int | None
    matryoshka: bool
    ttl: int
    max_entry_bytes: int
    options: tuple[tuple[str, str], ...] = ()  # request options that change the vector (input_type)

    @property
    def width(self) -> int | None:
        return self.dimensions or self.native_dimensions


def caching(entry: ModelEntry, settings: CacheSettings) -> bool:
    """Whether `entry`'s answers go through the cache: its own setting, else the global one."""
    override = entry.cache
    return override.enabled if override and override.enabled is not None else settings.enabled


def space_for(entry: ModelEntry, identity: tuple[str, ...], dimensions: int | None, settings: CacheSettings, *,
              team: str | None = None, input_type: str | None = None) -> Space | None:
    """The cache space of one request, or None when caching is off for this model.

    Entries are per team unless `cache.scope: global`: otherwise any key holder could learn, from
    a hit, that another team embedded a text."""
    if not caching(entry, settings):
        return None
    override = entry.cache
    scope = ("global",) if settings.scope == "global" else ("team", team or "")
    return Space(
        model=entry.name, identity=(*identity, *scope), revision=entry.revision,
        dimensions=dimensions, native_dimensions=entry.dimensions, matryoshka=entry.matryoshka,
        ttl=override.ttl if override and override.ttl else settings.ttl,
        max_entry_bytes=override.max_entry_bytes if override and override.max_entry_bytes else settings.max_entry_bytes,
        options=(("input_type", input_type),) if input_type is not None else (),
    )


@lru_cache(maxsize=4096)
def _space_hasher(space: Space, dimensions: int | None) -> hashlib.blake2b:
    """A hasher already fed the space, every field length-prefixed so no two spaces collide. Kept per space
    (a model, per team unless the scope is global): every request of that space starts from a copy of it
    (`input_digest`), never from itself."""
    hasher = hashlib.blake2b(KEY_SCHEME, digest_size=32)
    options = (f"{name}={value}" for name, value in space.options)
    for part in (*space.identity, space.revision, str(dimensions or "native"), *options):
        raw = part.encode()
        hasher.update(len(raw).to_bytes(4, "little"))
        hasher.update(raw)
    return hasher


def input_digest(space_hasher: hashlib.blake2b, item: EmbedInput) -> str:
    """The hex digest of one input in a space: text and token ids are tagged apart."""
    hasher = space_hasher.copy()
    if isinstance(item, str):
        hasher.update(b"t")
        hasher.update(item.encode("utf-8", "surrogatepass"))
    else:
        hasher.update(b"i")
        hasher.update(",".join(map(str, item)).encode())
    return hasher.hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    vector: Vectors  # float32 [d]
    tokens: int


def encode_entry(entry: Entry) -> bytes:
    return ENTRY_HEADER.pack(ENTRY_VERSION, entry.tokens) + np.ascontiguousarray(entry.vector, "<f4").tobytes()


def decode_entry(raw: bytes | None, width: int | None) -> Entry | None:
    """The entry in `raw`, or None when it is absent, malformed or of another width."""
    if raw is None or len(raw) <= ENTRY_HEADER.size or (len(raw) - ENTRY_HEADER.size) % 4:
        return None
    version, tokens = ENTRY_HEADER.unpack_from(raw)
    vector = np.frombuffer(raw, dtype="<f4", offset=ENTRY_HEADER.size).astype(np.float32, copy=False)
    if version != ENTRY_VERSION or (width is not None and vector.shape[0] != width):
        return None
    return Entry(vector, tokens)


def truncate(vector: Vectors, dimensions: int) -> Vectors:
    """Matryoshka: the first `dimensions` values, L2-normalised (in float64, stored as float32)."""
    head: Vectors = normalize(vector[np.newaxis, :dimensions])[0]
    return head


def apportion(total: int | None, counts: Sequence[int]) -> list[int]:
    """Per-input token counts summing to the backend's `total` for the batch (it reports no
    per-input counts): the gateway's own counts, scaled, largest remainders first."""
    if total is None or total == sum(counts) or not counts:
        return list(counts)
    weights = list(counts) if sum(counts) > 0 else [1] * len(counts)
    whole = sum(weights)
    shares = [divmod(total * w, whole) for w in weights]
    result = [q for q, _ in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: -shares[i][1])
    for i in by_remainder[: total - sum(result)]:
        result[i] += 1
    return result


class Fetched(Protocol):
    """What the pipeline's fetch returns (proxy.dispatch.Dispatched)."""

    @property
    def vectors(self) -> Vectors: ...

    @property
    def prompt_tokens(self) -> int | None: ...

    @property
    def deployments(self) -> tuple[str, ...]: ...


# The inputs to embed and the gateway's token count of each.
Fetch = Callable[[Sequence[EmbedInput], Sequence[int]], Awaitable[Fetched]]


@dataclass(frozen=True, slots=True)
class Served:
    vectors: Vectors  # float32 [n, d], row i answers inputs[i]
    prompt_tokens: int  # the whole request's, hits included
    hits: tuple[int, ...]  # positions whose vector came from the cache (the store, or a write still under way)
    status: Status
    deployments: tuple[str, ...] = ()  # which served the misses
    upstream_seconds: float = 0.0  # how long the request waited on backends (gateway overhead is the rest)

    @property
    def cache_hits(self) -> int:
        return len(self.hits)


@dataclass(frozen=True, slots=True)
class _Landed:
    entries: dict[str, Entry]
    deployments: tuple[str, ...]
    seconds: float  # the backend calls' wall time, the cache write left out


class _Refused(Exception):
    """A flight's input was refused by the backend (a 400): `key` names which, when the backend said."""

    def __init__(self, key: str | None, error: GatewayError) -> None:
        super().__init__(error.message)
        self.key = key
        self.error = error


@dataclass(slots=True)
class _Wanted:
    item: EmbedInput
    tokens: int  # the gateway's count


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache held for one request's inputs (in the store, or answered with the write behind),
    before any backend call."""

    space: Space
    keys: list[str]  # per input, in order
    wanted: dict[str, _Wanted]  # per distinct key
    joined: dict[str, Flight[_Landed]]  # keys whose backend call is under way in this process: not read
    found: dict[str, Entry]  # from the store, or from a call that answered and whose write has not landed
    use_store: bool  # False: the store failed or is resting; neither read nor written
    control: CacheControl

    @property
    def looked(self) -> int:
        """Keys looked up (read from the store or found in memory): every wanted one not joined, when the
        read was made and answered."""
        return len(self.wanted) - len(self.joined) if self.use_store and self.control.read else 0


class EmbeddingCache:
    def __init__(self, store: Store, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        self._flights: Flights[_Landed] = Flights()
        self._store_down_until = 0.0

    async def lookup(self, space: Space, inputs: Sequence[EmbedInput], tokens: Sequence[int],
                     control: CacheControl = ALLOW_ALL) -> Lookup:
        """The store's entries for `inputs` (one MGET): the first half of `embed`, which the pipeline runs
        beside the quota charge so the two round trips overlap."""
        hasher = _space_hasher(space, space.dimensions)
        keys = [self.store.key("emb", input_digest(hasher, item)) for item in inputs]
        wanted: dict[str, _Wanted] = {}
        for key, item, count in zip(keys, inputs, tokens, strict=True):
            wanted.setdefault(key, _Wanted(item, count))

        flying = {key: flight for key in wanted if (flight := self._flights.get(key)) is not None}
        use_store = time.monotonic() >= self._store_down_until
        found: dict[str, Entry] = {}
        if use_store and control.read:
            # A flight that has answered holds entries the store may not have yet (the write is behind):
            # they are found here, as hits. Inputs still on their way from the backend are joined, not
            # read: their flight may land (and write) while our read is under way.
            for key, flight in flying.items():
                if (landed := flight.landed) is not None:
                    found[key] = landed.entries[key]
            read = await self._read(space, {k: w for k, w in wanted.items() if k not in flying})
            if read is None:
                use_store, found = False, {}
            else:
                found.update(read)
        # A no-cache request shares a call under way, never one that answered before it came.
        joined = {key: flight for key, flight in flying.items()
                  if key not in found and (control.read or flight.under_way)}
        return Lookup(space, keys, wanted, joined, found, use_store, control)

    async def embed(self, space: Space | None, inputs: Sequence[EmbedInput], tokens: Sequence[int],
                    fetch: Fetch, control: CacheControl = ALLOW_ALL, looked_up: Lookup | None = None) -> Served:
        """Vectors for `inputs` in order; `tokens` are the gateway's per-input counts. `looked_up`: what
        `lookup` found for these inputs, when the caller read the store already."""
        if space is None:
            started = time.perf_counter()
            result = await fetch(inputs, tokens)
            total = result.prompt_tokens if result.prompt_tokens is not None else sum(tokens)
            return Served(result.vectors, total, (), "bypass", result.deployments, time.perf_counter() - started)
        looked = looked_up if looked_up is not None else await self.lookup(space, inputs, tokens, control)
        keys, wanted, joined, found, use_store = (looked.keys, looked.wanted, looked.joined, dict(looked.found),
                                                  looked.use_store)
        control = looked.control
        if looked.looked:  # counted here, not in `lookup`: a request the quota refused has looked up nothing
            self.metrics.cache_lookups.labels(space.model, "hit").inc(len(found))
            self.metrics.cache_lookups.labels(space.model, "miss").inc(looked.looked - len(found))
        misses = {key: w for key, w in wanted.items() if key not in found}
        deployments: tuple[str, ...] = ()
        upstream = 0.0
        if misses:
            started = time.perf_counter()
            try:
                landed = await self._fetch(space, misses, joined, fetch, write=use_store and control.write)
            except _Refused as refused:  # name the client's own input, not a position in the miss batch
                refused.error.input_index = keys.index(refused.key) if refused.key in keys else None
                raise refused.error from None
            found.update(landed.entries)
            deployments = landed.deployments
            # A joined flight may have started before this request asked: count only this request's wait.
            upstream = min(time.perf_counter() - started, landed.seconds)

        entries = [found[key] for key in keys]
        widths = {e.vector.shape[0] for e in entries}
        if len(widths) != 1:  # only possible when the config gives no native size and the backend changed it
            raise UpstreamError("cached and fresh embeddings differ in size; set the model's `dimensions`",
                                code="upstream_bad_response")
        hits = tuple(i for i, key in enumerate(keys) if key not in misses)
        status: Status = ("bypass" if not use_store and control.read else
                          "hit" if not misses else "miss" if not hits else "partial")
        return Served(
            vectors=stack_rows([e.vector for e in entries]),
            prompt_tokens=sum(e.tokens for e in entries),
            hits=hits,
            status=status,
            deployments=deployments,
            upstream_seconds=upstream,
        )

    async def _read(self, space: Space, wanted: Mapping[str, _Wanted]) -> dict[str, Entry] | None:
        """The entries found, with one MGET (asking for full-size vectors too on a matryoshka
        model); None when the store failed."""
        if not wanted:
            return {}
        keys = list(wanted)
        full_keys: list[str] = []
        if space.matryoshka and space.dimensions is not None:
            full = _space_hasher(space, None)
            full_keys = [self.store.key("emb", input_digest(full, w.item)) for w in wanted.values()]
        try:
            with self.tracing.span("cache.read"):
                raw = await self.store.get_many(keys + full_keys)
        except STORE_ERRORS as err:
            self._store_failed("cache_read", err)
            return None
        found: dict[str, Entry] = {}
        for i, key in enumerate(keys):
            entry = decode_entry(raw[i], space.width)
            if entry is None and full_keys:
                full_entry = decode_entry(raw[len(keys) + i], space.native_dimensions)
                if full_entry is not None and space.dimensions is not None \
                        and full_entry.vector.shape[0] > space.dimensions:
                    entry = Entry(truncate(full_entry.vector, space.dimensions), full_entry.tokens)
            if entry is not None:
                found[key] = entry
        return found

    async def _fetch(self, space: Space, misses: dict[str, _Wanted], joined: Mapping[str, Flight[_Landed]],
                     fetch: Fetch, write: bool) -> _Landed:
        """Entries for the misses: join the flights under way, start one for the rest."""
        waits: dict[Flight[_Landed], list[str]] = {}
        own: dict[str, _Wanted] = {}
        for key, wanted in misses.items():
            flight = joined.get(key) or self._flights.under_way(key)  # or one started since the lookup
            if flight is None:
                own[key] = wanted
            else:
                waits.setdefault(flight, []).append(key)
        mine: Flight[_Landed] | None = None
        if own:
            mine = self._flights.launch(list(own), self._fly(own, fetch), self._writer(space, write))
            waits[mine] = list(own)
        joins = [self._join(space, flight, {k: misses[k] for k in keys}, fetch, write, owner=flight is mine)
                 for flight, keys in waits.items()]
        # One flight (the usual case) is awaited as it is: gathering it would cost a task for nothing.
        results = [await joins[0]] if len(joins) == 1 else await asyncio.gather(*joins)
        merged = {key: entry for result in results for key, entry in result.entries.items()}
        used = dict.fromkeys(name for result in results for name in result.deployments)
        return _Landed({key: merged[key] for key in misses}, tuple(used), max(r.seconds for r in results))

    async def _join(self, space: Space, flight: Flight[_Landed], wanted: dict[str, _Wanted], fetch: Fetch,
                    write: bool, owner: bool) -> _Landed:
        try:
            return await flight.join()
        except _Refused:
            if owner:
                raise
            # Another request's bad input does not fail ours: our inputs go on their own.
            landed = await self._fly(wanted, fetch)
            if write:
                self._flights.write_behind(self._write(space, landed))
            return landed

    async def _fly(self, own: dict[str, _Wanted], fetch: Fetch) -> _Landed:
        wanted = list(own.values())
        keys = list(own)
        started = time.perf_counter()
        try:
            result = await fetch([w.item for w in wanted], [w.tokens for w in wanted])
        except InvalidRequest as err:
            index = err.input_index
            raise _Refused(keys[index] if index is not None and 0 <= index < len(keys) else None, err) from None
        seconds = time.perf_counter() - started
        counts = apportion(result.prompt_tokens, [w.tokens for w in wanted])
        entries = {key: Entry(result.vectors[i], counts[i]) for i, key in enumerate(keys)}
        return _Landed(entries, result.deployments, seconds)

    def _writer(self, space: Space, write: bool) -> Write[_Landed] | None:
        return partial(self._write, space) if write else None

    async def _write(self, space: Space, landed: _Landed) -> None:
        """The entries of an answered flight, in one pipeline: run in the background, after the answer."""
        values = {key: encode_entry(entry) for key, entry in landed.entries.items()}
        values = {key: raw for key, raw in values.items() if len(raw) <= space.max_entry_bytes}
        try:
            with self.tracing.span("cache.write"):
                await self.store.set_many(values, space.ttl)
        except STORE_ERRORS as err:
            self._store_failed("cache_write", err)

    def _store_failed(self, operation: str, err: BaseException) -> None:
        self.metrics.store_errors.labels(operation).inc()
        self._store_down_until = time.monotonic() + STORE_RETRY_SECONDS
        log.warning("cache store %s failed (%s: %s); bypassing the cache for %.0fs",
                    operation, type(err).__name__, err, STORE_RETRY_SECONDS)

    async def settled(self) -> None:
        """Return once the writes under way have landed (or failed): for shutdown, and for tests that
        read the store right after an answer."""
        await self._flights.settled()

    async def aclose(self, grace: float = WRITE_GRACE_SECONDS) -> None:
        """Cancel the backend calls still under way; wait up to `grace` seconds for the writes."""
        await self._flights.aclose(grace)
