"""Builders for the quota tests: a key of team `TEAM` with given limits, and every counter a charge touches."""

from __future__ import annotations

from proxy.auth import Principal
from proxy.quota import COUNTERS, quota_keys
from proxy.settings import Limits
from tests.support.services import Services

TEAM = "search"


def key(rpm: int | None = None, tpm: int | None = None, per_day: int | None = None,
        per_month: int | None = None, key_id: str = "key_a") -> Principal:
    return Principal(key_id, TEAM, limits=Limits(rpm=rpm, tpm=tpm, tokens_per_day=per_day,
                                                 tokens_per_month=per_month))


async def counters(s: Services, principal: Principal, user: str | None = None) -> dict[str, dict[str, int]]:
    """Every counter a charge touches, summed: {"key"|"team"|"user": {"rq"|"tk"|"td"|"tm": total}}."""
    keys = quota_keys(s.store, TEAM, principal.key_id, user)[1:]
    levels = ["key", "team", "user"][: len(keys) // 4]
    out: dict[str, dict[str, int]] = {}
    for index, level in enumerate(levels):
        values = [await s.store.client.hvals(k) for k in keys[index * 4: index * 4 + 4]]
        out[level] = {c: sum(int(v) for v in vs) for c, vs in zip(COUNTERS, values, strict=True)}
    return out
