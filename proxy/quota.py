"""Quotas at key, team and user level, checked and charged by one atomic Lua call per request.

The scripts (proxy/lua/) take time from Redis `TIME`, so every replica sees one clock.
rpm/tpm are sliding 60-second windows of one-second buckets; tokens_per_day/month are
UTC calendar periods. A rejected request charges nothing at any level; a refund gives
back exactly the buckets a charge filled, never driving one below zero.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from proxy.auth import Principal
from proxy.errors import GatewayError, QuotaExceeded, RateLimited, ServiceUnavailable
from proxy.settings import Limits
from proxy.store import STORE_ERRORS, Outages, Store

log = logging.getLogger("embedgate.quota")

KINDS = ("rpm", "tpm", "tokens_per_day", "tokens_per_month")
COUNTERS = ("rq", "tk", "td", "tm")  # request window, token window, day budget, month budget
NO_LIMIT = -1
_DESCRIBE = {
    "rpm": "requests per minute (rpm)",
    "tpm": "tokens per minute (tpm)",
    "tokens_per_day": "tokens per day (tokens_per_day)",
    "tokens_per_month": "tokens per month (tokens_per_month)",
}


def _script(name: str) -> str:
    lua = resources.files("proxy") / "lua"
    return (lua / "_common.lua").read_text() + "\n" + (lua / name).read_text()


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


def _headers(reply: list[Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, (limit, remaining, reset) in (("requests", reply[6:9]), ("tokens", reply[9:12])):
        if int(limit) >= 0:
            headers[f"x-ratelimit-limit-{name}"] = str(int(limit))
            headers[f"x-ratelimit-remaining-{name}"] = str(int(remaining))
            headers[f"x-ratelimit-reset-{name}"] = format_reset(int(reset))
    return headers


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request was charged, to refund it if the backend fails, and its headers."""

    keys: tuple[str, ...] = ()
    tokens: int = 0
    has_user: bool = False
    charged_at: int | None = None  # Redis TIME seconds of the charge; None = nothing charged
    headers: dict[str, str] = field(default_factory=dict)


NOTHING = Charge()


class Quotas:
    def __init__(self, store: Store, outages: Outages) -> None:
        self._store = store
        self._outages = outages
        self._deny_on_error = store.settings.on_error == "deny"
        self._charge = store.client.register_script(_script("quota.lua"))
        self._refund = store.client.register_script(_script("refund.lua"))

    async def charge(self, principal: Principal | None, user: str | None, tokens: int) -> Charge:
        """Check and charge every level at once; raise 429 (nothing charged) when one is over."""
        return await self._run(principal, user, tokens, commit=True)

    async def headers(self, principal: Principal | None, user: str | None) -> dict[str, str]:
        """The rate-limit headers for a response that charged nothing (an error before the charge).
        None while the store is down: an error response need not wait on it."""
        if self._outages.down:
            return {}
        try:
            return (await self._run(principal, user, 0, commit=False)).headers
        except GatewayError as err:
            return err.headers

    async def refund(self, charge: Charge, tokens: int | None = None) -> None:
        """Give back `tokens` of a charge (all of them by default), from the buckets it filled."""
        amount = charge.tokens if tokens is None else min(tokens, charge.tokens)
        if charge.charged_at is None or amount <= 0:
            return
        try:
            await self._refund(keys=list(charge.keys), args=[charge.charged_at, amount, int(charge.has_user)])
        except STORE_ERRORS as err:  # the original failure matters more; the metric and log record this one
            self._outages.failed("refund", err)

    async def _run(self, principal: Principal | None, user: str | None, tokens: int, *, commit: bool) -> Charge:
        if principal is None or principal.team is None:
            return NOTHING
        keys = quota_keys(self._store, principal.team, principal.key_id, user)
        limits = principal.limits.model_dump()
        args = [tokens, int(commit), int(user is not None),
                *(NO_LIMIT if limits[kind] is None else limits[kind] for kind in KINDS)]
        try:
            reply = await self._charge(keys=keys, args=args)
        except STORE_ERRORS as err:
            self._outages.failed("quota", err)
            if self._deny_on_error:
                raise ServiceUnavailable("The quota store is unavailable; requests are refused until it returns "
                                         "(store.on_error: deny).") from err
            return NOTHING
        self._outages.succeeded()
        headers = _headers(reply)
        if commit and int(reply[0]) != 1:
            raise _rejection(principal, user, reply, headers)
        return Charge(tuple(keys), tokens, user is not None, int(reply[1]) if commit else None, headers)


def _rejection(principal: Principal, user: str | None, reply: list[Any], headers: dict[str, str]) -> GatewayError:
    level, kind, limit, wait_ms = _text(reply[2]), _text(reply[3]), int(reply[4]), int(reply[5])
    where = {
        "key": f"API key {principal.key_id}",
        "team": f"team '{principal.team}'",
        "user": f"user '{user}' of team '{principal.team}'",
    }[level]
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
