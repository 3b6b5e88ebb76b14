"""Quotas at key, team and user level, checked and charged by one atomic Lua call per request.

The scripts (proxy/lua/) take time from Redis `TIME`, so every replica sees one clock.
rpm/tpm are sliding 60-second windows of one-second buckets, each counted until all it holds is
60 s old, so no 60 s span admits more than the limit; tokens_per_day/month are UTC calendar
periods. A rejected request charges nothing at any level (a request larger than a token limit
itself is a 400, not a 429); a refund gives back exactly the buckets a charge filled, never
driving one below zero.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

from redis.exceptions import NoScriptError

from proxy.auth import Principal
from proxy.errors import GatewayError, InvalidRequest, QuotaExceeded, RateLimited, ServiceUnavailable
from proxy.ledger import HASH, WINDOW, Increment, Ledger
from proxy.lua import counter_script
from proxy.settings import Limits
from proxy.store import STORE_ERRORS, Outages, Store

log = logging.getLogger("embedgate.quota")

KINDS = ("rpm", "tpm", "tokens_per_day", "tokens_per_month")
COUNTERS = ("rq", "tk", "td", "tm")  # request window, token window, day budget, month budget
NO_LIMIT = -1
MEMO_SIZE = 10_000  # callers (key, user) whose script KEYS and limits are kept
_DESCRIBE = {
    "rpm": "requests per minute (rpm)",
    "tpm": "tokens per minute (tpm)",
    "tokens_per_day": "tokens per day (tokens_per_day)",
    "tokens_per_month": "tokens per month (tokens_per_month)",
}


def team_conf_key(store: Store, team: str) -> str:
    return store.team_key(team, "conf")


def limits_fields(scope: Literal["team", "user"], limits: Limits) -> dict[str, int]:
    """The team config hash's fields for one scope; -1 stands for no limit."""
    values = limits.model_dump()
    return {f"{scope}.{kind}": NO_LIMIT if values[kind] is None else int(values[kind]) for kind in KINDS}


def limits_from_fields(scope: Literal["team", "user"], fields: dict[str, str]) -> Limits:
    values = {kind: int(fields.get(f"{scope}.{kind}", NO_LIMIT)) for kind in KINDS}
    return Limits(**{kind: None if value < 0 else value for kind, value in values.items()})


def quota_keys(store: Store, team: str, key_id: str, user: str | None) -> list[str]:
    """KEYS of both scripts: the team config, then four counters per level. The entity id comes
    last in each name, so no key id or user string can collide with another key."""
    keys = [team_conf_key(store, team)]
    levels = [("k", key_id), ("team", None), ("u", user)] if user is not None else [("k", key_id), ("team", None)]
    for level, ident in levels:
        keys += [store.team_key(team, counter, level, *(() if ident is None else (ident,))) for counter in COUNTERS]
    return keys


def _periods(sec: int) -> tuple[str, int, str, int]:
    """The day and month fields of `sec` and when each ends, as _common.lua's `periods` has them."""
    day = datetime.fromtimestamp(sec, UTC)
    next_month = (day.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day_end = (sec // 86400 + 1) * 86400
    return day.strftime("%Y%m%d"), day_end, day.strftime("%Y%m"), int(next_month.timestamp())


def missed_charge(keys: list[str], tokens: int, now: int) -> list[tuple[Increment, int, int]]:
    """The counter increments quota.lua would have made for this charge at `now` (the process clock,
    since the store's is out of reach), for the ledger to apply when the store returns."""
    day, day_end, month, month_end = _periods(now)
    out: list[tuple[Increment, int, int]] = []
    for first in range(1, len(keys), len(COUNTERS)):
        rq, tk, td, tm = keys[first:first + len(COUNTERS)]
        out += [(Increment(WINDOW, rq), 1, now), (Increment(WINDOW, tk), tokens, now),
                (Increment(HASH, td, day), tokens, day_end + 86400 - now),
                (Increment(HASH, tm, month), tokens, month_end + 86400 - now)]
    return out


def format_reset(ms: int) -> str:
    """OpenAI's duration format: "20ms", "1s", "6m0s", "1h2m3s"."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(math.ceil(ms / 1000), 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Verdict(NamedTuple):
    """quota.lua's reply, decoded once by name: the script returns name/value pairs. -1 or '' where
    there is nothing to report."""

    ok: int
    charged_at: int  # Redis TIME seconds of the charge
    failed_level: str  # the level and limit that refused the request, the most distant wait among them
    failed_kind: str
    failed_limit: int
    retry_after_ms: int
    req_limit: int  # the most restrictive request limit: the one with the least left
    req_remaining: int
    req_reset_ms: int
    tok_limit: int  # the same for tokens
    tok_remaining: int
    tok_reset_ms: int
    too_big_level: str  # a token limit smaller than the request itself, which no wait can help
    too_big_kind: str
    too_big_limit: int
    team_day_used: int  # the team's tokens_per_day budget after this call (-1: no such limit)
    team_day_limit: int

    @classmethod
    def decode(cls, reply: list[Any]) -> Verdict:
        # Names come as bytes from Redis (as str from some clients): look them up as they come.
        named = dict(zip(reply[::2], reply[1::2], strict=True))
        fields = _FIELDS_BYTES if reply and isinstance(reply[0], bytes) else _FIELDS_STR
        return cls._make(_text(named[name]) if text else int(named[name]) for name, text in fields)

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, limit, remaining, reset in (("requests", self.req_limit, self.req_remaining, self.req_reset_ms),
                                              ("tokens", self.tok_limit, self.tok_remaining, self.tok_reset_ms)):
            if limit >= 0:
                headers[f"x-ratelimit-limit-{name}"] = str(limit)
                headers[f"x-ratelimit-remaining-{name}"] = str(remaining)
                headers[f"x-ratelimit-reset-{name}"] = format_reset(reset)
        return headers


_TEXT_FIELDS = frozenset({"failed_level", "failed_kind", "too_big_level", "too_big_kind"})
_FIELDS_STR = [(name, name in _TEXT_FIELDS) for name in Verdict._fields]
_FIELDS_BYTES = [(name.encode(), text) for name, text in _FIELDS_STR]


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request was charged, to refund it if the backend fails, and its headers."""

    keys: tuple[str, ...] = ()
    tokens: int = 0
    has_user: bool = False
    charged_at: int | None = None  # Redis TIME seconds of the charge; None = nothing charged
    headers: dict[str, str] = field(default_factory=dict)
    missed_at: int | None = None  # process-clock seconds of a charge kept in the ledger (store down)
    team: str = ""


NOTHING = Charge()


Rejected = Callable[[Principal, str], None]  # (caller, which limit: rpm, tpm, tokens_per_day, tokens_per_month)
Budget = Callable[[Principal, float], None]  # (caller, share of its team's day budget used, 0..1+)


class Quotas:
    def __init__(self, store: Store, outages: Outages, ledger: Ledger, clock: Callable[[], int] | None = None,
                 rejected: Rejected | None = None, budget: Budget | None = None) -> None:
        """`clock` (epoch milliseconds) is for tests only: in service the scripts read Redis TIME."""
        self._store = store
        self._outages = outages
        self._ledger = ledger
        self._clock = clock
        self._rejected = rejected
        self._budget = budget
        self._deny_on_error = store.settings.on_error == "deny"
        self._memo: dict[tuple[Principal, str | None], tuple[list[str], list[int]]] = {}
        self._behind: set[asyncio.Future[Any]] = set()  # cancelled requests' charges and their refunds, under way
        self._charge = store.client.register_script(counter_script("quota.lua"))
        self._refund = store.client.register_script(counter_script("refund.lua"))

    @staticmethod
    def charges(principal: Principal | None) -> bool:
        """Whether a request of `principal` is checked and charged on the store (the master key and an open
        gateway are not)."""
        return principal is not None and principal.team is not None

    async def charge(self, principal: Principal | None, user: str | None, tokens: int) -> Charge:
        """Check and charge every level at once; raise 429 (nothing charged) when one is over.

        The charge runs as a task of its own: a caller cancelled while it is under way (its client hung up)
        cannot tell whether Redis applied it, so it goes on to its end and, if it landed, its tokens are given
        back (the request still counts, as a request that failed after its charge does)."""
        if not self.charges(principal):
            return NOTHING
        charging = asyncio.ensure_future(self._run(principal, user, tokens, commit=True))
        try:
            return await asyncio.shield(charging)
        except asyncio.CancelledError:
            self._behind.add(charging)
            charging.add_done_callback(self._charged_for_nobody)
            raise

    def _charged_for_nobody(self, charging: asyncio.Future[Charge]) -> None:
        if not charging.cancelled() and charging.exception() is None:  # refused or failed: nothing to give back
            refund = asyncio.ensure_future(self.refund(charging.result()))
            self._behind.add(refund)  # before the charge leaves the set, so `settle` never sees it empty between
            refund.add_done_callback(self._behind.discard)
        self._behind.discard(charging)

    async def settle(self) -> None:
        """Return once the charges of cancelled requests have landed and been given back (for shutdown)."""
        while self._behind:
            await asyncio.wait(set(self._behind))

    async def headers(self, principal: Principal | None, user: str | None) -> dict[str, str]:
        """The rate-limit headers for a response that charged nothing (an error before the charge).
        None while the store is down: an error response need not wait on it."""
        if self._outages.down:
            return {}
        try:
            return (await self._run(principal, user, 0, commit=False)).headers
        except GatewayError as err:
            return err.headers

    async def count_refused(self, principal: Principal | None, user: str | None, err: GatewayError) -> None:
        """Count a request refused after authentication (a 400) against rpm: a refused request is still
        a request. It charges no tokens; its error gets the rate-limit headers. Raises 429 instead when
        the caller is already over a limit. A store outage leaves the client's own error as it is."""
        if self._outages.down:
            return
        try:
            charge = await self._run(principal, user, 0, commit=True)
        except ServiceUnavailable:
            return
        err.headers.update(charge.headers)

    async def refund(self, charge: Charge, tokens: int | None = None, *, request: bool = False) -> None:
        """Give back `tokens` of a charge (all of them by default), from the buckets it filled. A request
        whose backend failed still counts for rpm; `request` gives that back too, for a charge that should
        never have been made (its key proved revoked or changed)."""
        amount = charge.tokens if tokens is None else min(tokens, charge.tokens)
        if amount <= 0 and not request:
            return
        if charge.missed_at is not None:
            requests = set(charge.keys[1::len(COUNTERS)])
            self._ledger.take(charge.team, ((inc, 1 if inc.key in requests else amount) for inc, _, _ in
                                            missed_charge(list(charge.keys), amount, charge.missed_at)
                                            if request or inc.key not in requests))
            return
        if charge.charged_at is None:
            return
        try:
            await self._refund(keys=list(charge.keys),
                               args=[charge.charged_at, amount, int(charge.has_user), int(request)])
        except STORE_ERRORS as err:  # the original failure matters more; the metric and log record this one
            self._outages.failed("refund", err)

    async def _check(self, keys: list[str], args: list[int]) -> Any:
        """quota.lua, sent with the request's other store reads (proxy/coalesce.py); loaded first where Redis
        does not have it yet (a restart, a SCRIPT FLUSH)."""
        try:
            return await self._store.batched.call("EVALSHA", self._charge.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._charge(keys=keys, args=args)

    def _keys_and_limits(self, principal: Principal, user: str | None) -> tuple[list[str], list[int]]:
        """The scripts' KEYS and the key's limits as ARGV: the same few callers ask again and again, so they
        are kept (bounded) rather than built on every request."""
        memo = (principal, user)
        known = self._memo.get(memo)
        if known is None:
            assert principal.team is not None
            limits = principal.limits.model_dump()
            known = (quota_keys(self._store, principal.team, principal.key_id, user),
                     [NO_LIMIT if limits[kind] is None else limits[kind] for kind in KINDS])
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[memo] = known
        return known

    async def _run(self, principal: Principal | None, user: str | None, tokens: int, *, commit: bool) -> Charge:
        if not self.charges(principal):
            return NOTHING
        assert principal is not None and principal.team is not None
        keys, limits = self._keys_and_limits(principal, user)
        args = [tokens, int(commit), int(user is not None), *limits,
                *(() if self._clock is None else (self._clock(),))]
        try:
            verdict = Verdict.decode(await self._check(keys, args))
        except STORE_ERRORS as err:
            self._outages.failed("quota", err)
            if self._deny_on_error:
                raise ServiceUnavailable("The quota store is unavailable; requests are refused until it returns "
                                         "(store.on_error: deny).") from err
            if not commit:
                return NOTHING
            # Served without a check, but counted: the ledger charges it when the store returns.
            now = int(time.time())
            self._ledger.add(principal.team, missed_charge(keys, tokens, now))
            return Charge(tuple(keys), tokens, user is not None, missed_at=now, team=principal.team)
        self._outages.succeeded()
        headers = verdict.headers()
        if self._budget is not None and verdict.team_day_limit > 0:
            self._budget(principal, verdict.team_day_used / verdict.team_day_limit)
        if commit and verdict.ok != 1:
            error = _rejection(principal, user, tokens, verdict, headers)
            if self._rejected is not None and not verdict.too_big_level:
                self._rejected(principal, verdict.failed_kind)
            raise error
        return Charge(tuple(keys), tokens, user is not None, verdict.charged_at if commit else None, headers)


def _where(level: str, principal: Principal, user: str | None, key: str) -> str:
    return {"key": key, "team": f"team '{principal.team}'", "user": f"user '{user}' of team '{principal.team}'"}[level]


def _rejection(principal: Principal, user: str | None, tokens: int, verdict: Verdict,
               headers: dict[str, str]) -> GatewayError:
    if verdict.too_big_level:  # a 429 would send the client back, with a Retry-After, for something that never fits
        where = _where(verdict.too_big_level, principal, user, "this API key")
        return InvalidRequest(f"This request's {tokens} tokens exceed the {_DESCRIBE[verdict.too_big_kind]} limit of "
                              f"{verdict.too_big_limit} on {where}, so it can never be admitted: send fewer or "
                              "shorter inputs per request.", param="input", code="request_exceeds_limit",
                              headers=headers)
    kind, limit, wait_ms = verdict.failed_kind, verdict.failed_limit, verdict.retry_after_ms
    where = _where(verdict.failed_level, principal, user, f"API key {principal.key_id}")
    retry = {**headers, "Retry-After": str(max(1, math.ceil(wait_ms / 1000)))}
    if kind in ("rpm", "tpm"):
        return RateLimited(f"Rate limit reached for {_DESCRIBE[kind]} on {where}: limit {limit}. "
                           f"Please try again in {format_reset(wait_ms)}.", headers=retry)
    return QuotaExceeded(f"You exceeded your quota of {_DESCRIBE[kind]} on {where}: limit {limit}. "
                         f"It resets in {format_reset(wait_ms)}.", headers=retry)


# What a rate-limit pair says where no limit applies (none set, the master key, or the store down under
# on_error: allow): numeric, so clients that parse the headers keep working, and exact in every JSON/JS client.
UNLIMITED = 2**53 - 1


def with_rate_limit_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with both of OpenAI's pairs, as OpenAI always sends them: a pair that no limit
    applies to reads limit = remaining = UNLIMITED, reset 0s."""
    out = dict(headers)
    for name in ("requests", "tokens"):
        if f"x-ratelimit-limit-{name}" not in out:
            out |= {f"x-ratelimit-limit-{name}": str(UNLIMITED), f"x-ratelimit-remaining-{name}": str(UNLIMITED),
                    f"x-ratelimit-reset-{name}": "0s"}
    return out
