"""What the store says about itself in logs: its URL, never a credential in any form."""

from __future__ import annotations

import pytest

from proxy.settings import StoreSettings
from proxy.store import Store

SECRET = "p@ss/w?rd#1"  # every character that can end a URL part, unencoded, as an operator may write it

MASKED = [
    ("memory://", "memory://"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:p@ss@cache.internal:6379/0", "redis://***@cache.internal:6379/0"),
    ("redis://default:p@ss@cache.internal:6379/0", "redis://***@cache.internal:6379/0"),
    ("rediss://user:s3cret-pw@cache.internal:6380/1", "rediss://***@cache.internal:6380/1"),
    (f"redis://:{SECRET}@cache.internal:6379/0", "redis://***@cache.internal:6379/0"),
    ("redis://:p%40ss@cache.internal", "redis://***@cache.internal"),
    ("redis://cache.internal:6379/0?password=s3cret-pw", "redis://cache.internal:6379/0?password=***"),
    ("redis://cache.internal/0?db=2&password=p@ss&ssl_cert_reqs=none",
     "redis://cache.internal/0?db=2&password=***&ssl_cert_reqs=none"),
    ("rediss://cache.internal?username=u&Password=s3cret-pw", "rediss://cache.internal?username=u&Password=***"),
    ("redis://:pw-in-userinfo@cache.internal/0?password=p@ss", "redis://***@cache.internal/0?password=***"),
    ("unix://:s3cret-pw@/run/redis.sock?db=0", "unix://***@/run/redis.sock?db=0"),
    ("unix:///run/redis.sock?db=0&password=s3cret-pw", "unix:///run/redis.sock?db=0&password=***"),
    ("redis+cluster://:s3cret-pw@node1:7000", "redis+cluster://***@node1:7000"),
    ("redis+sentinel://:p@ss@s1:26379,s2:26379/mymaster/0", "redis+sentinel://***@s1:26379,s2:26379/mymaster/0"),
    ("redis+sentinel://s1:26379/mymaster?sentinel_password=s3cret-pw&password=p@ss",
     "redis+sentinel://s1:26379/mymaster?sentinel_password=***&password=***"),
    ("redis://cache.internal/0?auth_token=s3cret-pw#frag", "redis://cache.internal/0?auth_token=***"),
]


@pytest.mark.parametrize(("url", "shown"), MASKED)
def test_describe_masks_every_credential_form(url: str, shown: str) -> None:
    """Issue 11 item 11: `describe` is logged at start-up; a password must not reach the log in any form."""
    described = Store(StoreSettings(url=url), client=object()).describe()
    assert described == shown
    for secret in ("p@ss", "s3cret", "pw-in-userinfo", "w?rd", "p%40ss", "ss/w"):
        assert secret not in described
