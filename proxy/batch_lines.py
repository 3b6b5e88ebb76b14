"""What a batch's lines go through, in the two kinds of unit the workers run.

validate: every line checked as `POST /v1/embeddings` checks it (JSON, unique custom_id, method, url,
  the body parsed, the model routed and allowed for the batch's key, its limits); bad lines become
  error lines, good ones are written in chunks of `batch.chunk_lines`, with their token counts.
chunk: the chunk's lines grouped by (model, dimensions, input_type, user); each group packed into
  parts that fit the batch's share of the team's limits, each part charged and embedded as one
  request (the cache and the dispatcher, which splits it to the deployment's caps), then answered
  per line in the encoding that line asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from proxy.auth import Principal, authorize_model
from proxy.batches import ENDPOINT, BatchState
from proxy.embeddings import cache_space, embed_charged
from proxy.errors import GatewayError, InvalidRequest, QuotaExceeded, RateLimited, error_object
from proxy.gateway import Gateway
from proxy.quota import KINDS, Charge, limits_from_fields, team_conf_key
from proxy.render import embeddings_body
from proxy.request import MAX_TOKENS_PER_REQUEST, EmbeddingRequest, parse_embedding_request
from proxy.settings import Limits
from proxy.validation import Counted, validate

MAX_WAIT_STEP = 1.0  # a worker waiting on a quota looks this often whether the batch was cancelled


@dataclass(frozen=True, slots=True)
class Planned:
    """One valid line, as a chunk's input file holds it."""

    line: int
    custom_id: str
    body: dict[str, Any]
    tokens: list[int]
    dimensions: int | None
    input_type: str | None  # as it reaches the cache key (None when no deployment takes one)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Planned:
        return cls(**orjson.loads(raw))


def result_line(batch_id: str, line: int, custom_id: str | None, status: int, body: bytes) -> bytes:
    """One line of an output or error file, as OpenAI writes them. Its ids are a function of the batch
    and the line, so a chunk that runs twice writes the same bytes."""
    digest = hashlib.blake2b(f"{batch_id}:{line}".encode(), digest_size=12).hexdigest()
    return orjson.dumps({
        "id": f"batch_req_{digest}", "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"req_{digest}", "body": orjson.Fragment(body)},
        "error": None,
    }) + b"\n"


def error_line(batch_id: str, line: int, custom_id: str | None, err: GatewayError) -> bytes:
    return result_line(batch_id, line, custom_id, err.status, orjson.dumps(error_object(err)))


def _custom_id(item: Any) -> str | None:
    value = item.get("custom_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) and value else None


async def _check(gw: Gateway, owner: Principal | None, number: int, item: Any, seen: set[str]) -> Planned:
    where = f"Line {number + 1}"
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} is not a JSON object.", code="invalid_json")
    custom_id = _custom_id(item)
    if custom_id is None:
        raise InvalidRequest(f"{where}: 'custom_id' must be a non-empty string.", param="custom_id",
                             code="missing_required_parameter")
    if custom_id in seen:
        raise InvalidRequest(f"{where}: custom_id {custom_id!r} is used by an earlier line; each must be unique.",
                             param="custom_id", code="duplicate_custom_id")
    seen.add(custom_id)
    if item.get("method") != "POST":
        raise InvalidRequest(f"{where}: 'method' must be 'POST'.", param="method", code="invalid_value")
    if item.get("url") != ENDPOINT:
        raise InvalidRequest(f"{where}: 'url' must be {ENDPOINT!r}, as the batch's endpoint.", param="url",
                             code="invalid_value")
    body = item.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where}: 'body' must be a JSON object.", param="body", code="invalid_type")
    request = parse_embedding_request(orjson.dumps(body))
    route = gw.router.resolve(request.model)
    authorize_model(owner, request.model, route.entry)
    counted = await validate(request, route, route.target())
    return Planned(number, custom_id, body, list(counted.tokens), counted.dimensions, counted.input_type)


@dataclass
class Plan:
    valid: list[Planned]
    errors: list[bytes]  # error lines
    total: int


async def plan(gw: Gateway, batch_id: str, owner: Principal | None, data: bytes) -> Plan:
    """Check every non-blank line of an input file."""
    result = Plan([], [], 0)
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines()):
        if not raw.strip():
            continue
        result.total += 1
        item: Any = None
        try:
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise InvalidRequest(f"Line {number + 1} is not valid JSON.", code="invalid_json") from None
            result.valid.append(await _check(gw, owner, number, item, seen))
        except GatewayError as err:
            result.errors.append(error_line(batch_id, number, _custom_id(item), err))
        if number % 200 == 199:
            await asyncio.sleep(0)  # a long file: let the loop serve requests between lines
    return result


async def batch_principal(gw: Gateway, state: BatchState, share: float) -> Principal | None:
    """Who a batch's charges go to: key level `batch:<id>`, limited to `share` of its team's limits (and of
    its key's), and the team level itself, so interactive traffic of the team sees what the batch uses."""
    owner = state.meta.owner
    if owner is None or owner.team is None:
        return None  # an open gateway or the master key: no quotas
    raw = await gw.store.client.hgetall(team_conf_key(gw.store, owner.team))
    team = limits_from_fields("team", {k.decode(): v.decode() for k, v in raw.items()}).model_dump()
    key = owner.limits.model_dump()
    scaled: dict[str, int | None] = {}
    for kind in KINDS:
        bounds = [value for value in (team[kind], key[kind]) if value is not None]
        scaled[kind] = max(1, math.floor(min(bounds) * share)) if bounds else None
    return Principal(key_id=f"batch:{state.meta.id}", team=owner.team, limits=Limits(**scaled))


@dataclass(frozen=True, slots=True)
class _Line:
    planned: Planned
    request: EmbeddingRequest

    @property
    def group(self) -> tuple[str, int | None, str | None, str | None]:
        return self.request.model, self.planned.dimensions, self.request.input_type, self.request.user


class ChunkRun:
    """One chunk's lines, embedded; `outputs` and `errors` hold the result lines."""

    def __init__(self, gw: Gateway, state: BatchState, principal: Principal | None) -> None:
        self._gw = gw
        self._state = state
        self._batch = state.meta.id
        self._owner = state.meta.owner.principal() if state.meta.owner is not None else None
        self._principal = principal
        tpm = principal.limits.tpm if principal is not None else None
        self._budget = min(MAX_TOKENS_PER_REQUEST, tpm or MAX_TOKENS_PER_REQUEST)
        self.outputs: list[bytes] = []
        self.errors: list[bytes] = []
        self.stopped = False  # the batch left in_progress (cancelled, expired): lines left are skipped

    async def run(self, planned: Sequence[Planned]) -> None:
        groups: dict[tuple[str, int | None, str | None, str | None], list[_Line]] = {}
        for item in planned:
            line = _Line(item, parse_embedding_request(orjson.dumps(item.body)))
            groups.setdefault(line.group, []).append(line)
        for lines in groups.values():
            for part in self._pack(lines):
                if self.stopped or not await self._running():
                    self.stopped = True
                    return
                await self._part(part)

    def _pack(self, lines: list[_Line]) -> list[list[_Line]]:
        parts: list[list[_Line]] = [[]]
        used = 0
        for line in lines:
            tokens = sum(line.planned.tokens)
            if parts[-1] and used + tokens > self._budget:
                parts.append([])
                used = 0
            parts[-1].append(line)
            used += tokens
        return [part for part in parts if part]

    async def _running(self) -> bool:
        status = await self._gw.store.client.hget(self._gw.batches.key(self._batch), "status")
        return bool(status == b"in_progress")

    async def _part(self, lines: list[_Line]) -> None:
        gw = self._gw
        first = lines[0]
        tokens = [n for line in lines for n in line.planned.tokens]
        if sum(tokens) > self._budget:
            self._fail(first, RateLimited(f"This line needs {sum(tokens)} tokens, more than the batch's share of "
                                          f"its team's tokens per minute ({self._budget}).",
                                          code="batch_share_too_small"))
            return
        try:
            route = gw.router.resolve(first.request.model)
            await route.service.wait_ready()
            charge = await self._charge(sum(tokens))
            if charge is None:
                return
            counted = Counted(tuple(tokens), first.planned.dimensions, first.planned.input_type)
            inputs = [x for line in lines for x in line.request.inputs]
            served = await embed_charged(gw, route, route.target(), inputs, counted, charge, self._owner,
                                         first.request.user, first.request.input_type, requests=len(lines),
                                         space=cache_space(gw, route, counted, self._owner))
        except GatewayError as err:
            if len(lines) == 1:
                self._fail(first, err)
                return
            for line in lines:  # alone, so a refused input or a failing call fails only its own line
                await self._part([line])
            return
        start = 0
        for line in lines:
            count = len(line.request.inputs)
            body = embeddings_body(served.vectors[start:start + count], model=line.request.model,
                                   encoding_format=line.request.encoding_format,
                                   prompt_tokens=sum(line.planned.tokens))
            self.outputs.append(result_line(self._batch, line.planned.line, line.planned.custom_id, 200, body))
            start += count

    def _fail(self, line: _Line, err: GatewayError) -> None:
        if err.input_index is not None:
            err.param = line.request.param(err.input_index)
        self.errors.append(error_line(self._batch, line.planned.line, line.planned.custom_id, err))

    async def _charge(self, tokens: int) -> Charge | None:
        """The charge, once the batch's share has room: a 429 makes the worker wait, never fails a line.
        None when the batch stopped running meanwhile."""
        while True:
            try:
                return await self._gw.quotas.charge(self._principal, None, tokens)
            except (RateLimited, QuotaExceeded) as err:
                wait = float(err.headers.get("Retry-After", "1"))
            while wait > 0:
                await asyncio.sleep(min(wait, MAX_WAIT_STEP))
                wait -= MAX_WAIT_STEP
                if not await self._running():
                    self.stopped = True
                    return None
