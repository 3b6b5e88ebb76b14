"""Usage counters per UTC day: requests, tokens and cache hits by team, key, end user and model.

One hash per team and day, `{p}:{t:<team>}:usage:<YYYYMMDD>`, whose fields are JSON
`[counter, key_id, user, model]`; written with one pipeline after a request, kept
`USAGE_DAYS` days, read back and summed by `GET /admin/usage`.

The day is the store's (Redis `TIME`), the clock the quota scripts count days and months on, so a
request's usage and its charge fall on the same day whatever the replica's own clock says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import orjson

from proxy.auth import Principal
from proxy.errors import InvalidRequest
from proxy.ledger import Ledger
from proxy.schema import UsageCounts, UsageDay, UsageFilters, UsageReport
from proxy.store import STORE_ERRORS, Outages, Store

COUNTERS = ("requests", "tokens", "cache_hits")
USAGE_DAYS = 400
MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True, slots=True)
class UsageFilter:
    team: str | None = None
    key: str | None = None
    user: str | None = None
    model: str | None = None

    def matches(self, key_id: str, user: str, model: str) -> bool:
        return ((self.key is None or self.key == key_id) and (self.user is None or self.user == user)
                and (self.model is None or self.model == model))


def utc_day(epoch_seconds: int) -> date:
    return datetime.fromtimestamp(epoch_seconds, UTC).date()


def _day(value: str | None, param: str) -> date | None:
    """A `YYYY-MM-DD` query value (RFC 3339's full-date, what the document promises); None when absent."""
    if value is None:
        return None
    if not _ISO_DAY.fullmatch(value):
        raise InvalidRequest(f"'{param}' must be a date like 2024-05-31, got {value!r}.", param=param,
                             code="invalid_value")
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise InvalidRequest(f"'{param}' is not a date: {err}.", param=param, code="invalid_value") from err


def parse_range(start: str | None, end: str | None, today: date) -> tuple[date, date]:
    """`start`/`end` as YYYY-MM-DD, both inclusive; by default the 30 days up to `today`."""
    last = _day(end, "end") or today
    first = _day(start, "start") or last - timedelta(days=DEFAULT_RANGE_DAYS - 1)
    if first > last:
        raise InvalidRequest("start is after end.", param="start", code="invalid_value")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise InvalidRequest(f"The range may span at most {MAX_RANGE_DAYS} days.", param="start", code="invalid_value")
    return first, last


class Usage:
    def __init__(self, store: Store, outages: Outages, ledger: Ledger) -> None:
        self._store = store
        self._outages = outages
        self._ledger = ledger

    def _day_key(self, team: str, day: date) -> str:
        return self._store.team_key(team, "usage", day.strftime("%Y%m%d"))

    async def today(self) -> date:
        """The store's UTC day (Redis `TIME`)."""
        seconds, _ = await self._store.client.time()
        return utc_day(int(seconds))

    async def record(self, principal: Principal | None, user: str | None, model: str, *,
                     tokens: int, requests: int = 1, cache_hits: int = 0, at: int | None = None) -> None:
        """Add one request's usage on the store's day of `at` (Redis TIME seconds, such as the quota
        charge's), or of now when not given. A store failure is counted and logged, never raised."""
        if principal is None or principal.team is None:
            return
        key = self._day_key(principal.team, await self._day(at))
        fields = [([counter, principal.key_id, user or "", model], amount)
                  for counter, amount in (("requests", requests), ("tokens", tokens), ("cache_hits", cache_hits))
                  if amount]
        pipe = self._store.pipeline()
        for parts, amount in fields:
            pipe.hincrby(key, orjson.dumps(parts).decode(), amount)
        pipe.expire(key, USAGE_DAYS * 86400)
        pipe.sadd(self._store.key("teams"), principal.team)
        try:
            await pipe.execute()
        except STORE_ERRORS as err:
            self._outages.failed("usage", err)
            # Kept in process and written when the store returns (proxy/ledger.py). The MULTI runs
            # whole or not at all; only a reply lost after EXEC ran (a timeout at that very moment)
            # could count this request twice.
            self._ledger.add_usage(principal.team, key, fields, USAGE_DAYS * 86400)

    async def _day(self, at: int | None) -> date:
        """The store's UTC day of `at` (Redis TIME seconds), or of now; the process's own day only while
        the store does not answer (the only clock there is then)."""
        if at is not None:
            return utc_day(at)
        if not self._outages.down:
            try:
                return await self.today()
            except STORE_ERRORS as err:
                self._outages.failed("usage", err)
        return datetime.now(UTC).date()

    async def query(self, where: UsageFilter, first: date, last: date) -> UsageReport:
        if where.team:
            teams = [where.team]
        else:
            teams = sorted(t.decode() for t in await self._store.client.smembers(self._store.key("teams")))
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        pipe = self._store.pipeline(transaction=False)
        for team in teams:
            for day in days:
                pipe.hgetall(self._day_key(team, day))
        replies = await pipe.execute()
        per_day = {day: dict.fromkeys(COUNTERS, 0) for day in days}
        for index, fields in enumerate(replies):
            sums = per_day[days[index % len(days)]]
            for field, value in fields.items():
                counter, key_id, user, model = orjson.loads(field)
                if where.matches(key_id, user, model):
                    sums[counter] += int(value)
        total = {counter: sum(sums[counter] for sums in per_day.values()) for counter in COUNTERS}
        return UsageReport(
            start=first, end=last,
            filters=UsageFilters(team=where.team, key=where.key, user=where.user, model=where.model),
            data=[UsageDay(date=day, **sums) for day, sums in per_day.items()], total=UsageCounts(**total),
        )
