"""Usage counters per UTC day: requests, tokens and cache hits by team, key, end user and model.

One hash per team and day, `{p}:{t:<team>}:usage:<YYYYMMDD>`, whose fields are JSON
`[counter, key_id, user, model]`; kept `USAGE_DAYS` days, read back and summed by `GET /admin/usage`.

Written off the response path, as a group commit: a request adds its counts in process and the one
writer sends everything added so far in one MULTI pipeline, then again for what arrived meanwhile. One
request at a time still gets one write each, right after its answer; under concurrency many requests
share one. Nothing waits on a timer, so what a crash can lose is what one round trip holds, as before;
a read (`query`) and shutdown (`aclose`) wait for what is still being written.

The day is the store's (Redis `TIME`), the clock the quota scripts count days and months on, so a
request's usage and its charge fall on the same day whatever the replica's own clock says.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import orjson

from proxy.auth import Principal
from proxy.errors import InvalidRequest
from proxy.ledger import Ledger
from proxy.schema import UsageCounts, UsageDay, UsageFilters, UsageReport
from proxy.store import STORE_ERRORS, Outages, Store
from proxy.wire import Command

COUNTERS = ("requests", "tokens", "cache_hits")
USAGE_DAYS = 400
MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30
DAY_KEYS_KEPT = 4096
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
        self._pending: dict[tuple[str, str], dict[str, int]] = {}  # (team, day hash) → field → amount
        self._writer: asyncio.Task[None] | None = None
        # Kept: every request of a team on one day names the same hash (strftime and the key's format were a
        # measurable share of a cache hit's own work).
        self._day_key = lru_cache(maxsize=DAY_KEYS_KEPT)(self._name_day)

    def _name_day(self, team: str, day: date) -> str:
        return self._store.team_key(team, "usage", day.strftime("%Y%m%d"))

    async def today(self) -> date:
        """The store's UTC day (Redis `TIME`)."""
        seconds, _ = await self._store.client.time()
        return utc_day(int(seconds))

    async def record(self, principal: Principal | None, user: str | None, model: str, *,
                     tokens: int, requests: int = 1, cache_hits: int = 0, at: int | None = None) -> None:
        """Add one request's usage on the store's day of `at` (Redis TIME seconds, such as the quota
        charge's), or of now when not given. Returns once it is queued for the writer; a store failure
        is counted and logged, never raised."""
        if principal is None or principal.team is None:
            return
        key = self._day_key(principal.team, await self._day(at))
        fields = self._pending.setdefault((principal.team, key), {})
        for counter, amount in (("requests", requests), ("tokens", tokens), ("cache_hits", cache_hits)):
            if amount:
                field = orjson.dumps([counter, principal.key_id, user or "", model]).decode()
                fields[field] = fields.get(field, 0) + amount
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="embedgate-usage")

    async def _write(self) -> None:
        """Write what is pending, one MULTI per round, until nothing is."""
        while self._pending:
            pending, self._pending = self._pending, {}
            commands: list[Command] = []
            for (_, key), fields in pending.items():
                commands += [("HINCRBY", key, field, amount) for field, amount in fields.items()]
                commands.append(("EXPIRE", key, USAGE_DAYS * 86400))
            commands.append(("SADD", self._store.key("teams"), *{team for team, _ in pending}))
            try:
                await self._store.send_behind(commands)
            except STORE_ERRORS as err:
                self._outages.failed("usage", err)
                # Kept in process and written when the store returns (proxy/ledger.py). The MULTI runs
                # whole or not at all; only a reply lost after EXEC ran (a timeout at that very moment)
                # could count these requests twice.
                for (team, key), fields in pending.items():
                    self._ledger.add_usage(team, key, [(orjson.loads(f), a) for f, a in fields.items()],
                                           USAGE_DAYS * 86400)

    async def settle(self) -> None:
        """Wait until every usage recorded so far has been written (or handed to the ledger)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

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
        await self.settle()  # this replica's own requests are in what it reports
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
