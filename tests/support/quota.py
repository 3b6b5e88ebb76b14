"""Builders for the quota tests: a key of team `TEAM` with given limits, every counter a charge touches,
and quotas on a clock the test moves."""

from __future__ import annotations

from proxy.auth import Principal
from proxy.quota import COUNTERS, Quotas, quota_keys
from proxy.settings import Limits
from proxy.store import Outages
from tests.support.services import Services

TEAM = "search"


def key(rpm: int | None = None, tpm: int | None = None, per_day: int | None = None,
        per_month: int | None = None, key_id: str = "key_a") -> Principal:
    return Principal(key_id, TEAM, limits=Limits(rpm=rpm, tpm=tpm, tokens_per_day=per_day,
                                                 tokens_per_month=per_month))


async def counters(s: Services, principal: Principal, user: str | None = None) -> dict[str, dict[str, int]]:
    """Every counter a charge touches, summed: {"key"|"team"|"user": {"rq"|"tk"|"td"|"tm": total}}.
    Each rate window's bookkeeping is checked on the way (see `buckets`)."""
    keys = quota_keys(s.store, TEAM, principal.key_id, user)[1:]
    levels = ["key", "team", "user"][: len(keys) // 4]
    out: dict[str, dict[str, int]] = {}
    for index, level in enumerate(levels):
        hashes = [await s.store.client.hgetall(k) for k in keys[index * 4: index * 4 + 4]]
        values = [buckets(h).values() for h in hashes[:2]] + [[int(v) for v in h.values()] for h in hashes[2:]]
        out[level] = {c: sum(vs) for c, vs in zip(COUNTERS, values, strict=True)}
    return out


SUM, FROM = -1, -2  # a window's bookkeeping fields (proxy/lua/_common.lua)


def buckets(raw: dict[bytes, bytes]) -> dict[int, int]:
    """A rate window's one-second buckets, after checking the fields quota.lua keeps beside them
    (proxy/lua/_common.lua): SUM, their total, and FROM, the oldest of their seconds. A hash
    without them (the old format) is taken as it is. Every field must read as a number, as the
    previous version's script reads them all."""
    out = {int(sec): int(value) for sec, value in raw.items()}
    total, oldest = out.pop(SUM, None), out.pop(FROM, None)
    if total is not None or oldest is not None:
        assert out, f"bookkeeping left in a window without buckets: {raw}"
        assert (total, oldest) == (sum(out.values()), min(out)), f"bookkeeping out of step with the buckets: {raw}"
        assert all(value > 0 for value in out.values()), raw
    return out


class Clock:
    """A test clock for the scripts, in epoch milliseconds, that only moves when told."""

    def __init__(self, start_ms: int) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms


BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, on a second (and minute) boundary


def clocked(s: Services) -> tuple[Quotas, Clock]:
    """The services' quotas, but on a clock the test moves."""
    clock = Clock(BASE_MS)
    return Quotas(s.store, Outages(s.errors), s.ledger, clock=clock), clock
