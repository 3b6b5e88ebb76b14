"""Counting only where a count is needed (issue 7): with no key, no cache and limits the UTF-8 bytes cannot
cross, the gateway bounds the tokens instead of counting them; whatever needs the count still gets it."""

from __future__ import annotations

import base64
from typing import Any

from testkit.openai_upstream import FakeOpenAI
from tests.conftest import running_gateway
from tests.support.admin import MASTER_KEY, create_key, embed
from tests.support.http import embed_ok

TEXTS = ["alpha beta", "gamma delta"]  # 2 cl100k tokens each; 10 and 11 UTF-8 bytes


def open_config(fake: FakeOpenAI, cache: bool = False, **options: Any) -> dict[str, Any]:
    return {"models": [{"name": "m", "provider": "openai", "api_base": fake.url, "api_key": fake.api_key,
                        "upstream_model": "text-embedding-3-small", "dimensions": fake.dims, **options}],
            "cache": {"enabled": cache}}


def test_usage_is_counted_when_the_backend_reports_none(fake_openai: FakeOpenAI) -> None:
    row = base64.b64encode(bytes(4 * fake_openai.dims)).decode()
    fake_openai.fail_next(200, 1, body={"data": [{"index": i, "embedding": row} for i in range(2)]})  # no usage
    with running_gateway(open_config(fake_openai)) as gw:
        reply = embed_ok(gw.url, TEXTS, model="m")
    assert reply.prompt_tokens == 4  # the cl100k count, never the 21 bytes that bounded it


def test_the_backends_usage_is_the_clients(fake_openai: FakeOpenAI) -> None:
    fake_openai.token_factor = 5
    with running_gateway(open_config(fake_openai)) as gw:
        assert embed_ok(gw.url, TEXTS, model="m").prompt_tokens == 20


def test_a_token_cap_per_call_splits_by_the_count_not_the_bytes(fake_openai: FakeOpenAI) -> None:
    with running_gateway(open_config(fake_openai, max_batch_tokens=5)) as gw:  # 4 tokens fit; 21 bytes would not
        embed_ok(gw.url, TEXTS, model="m")
        embed_ok(gw.url, [*TEXTS, "epsilon zeta"], model="m")
    assert [r.inputs for r in fake_openai.received] == [TEXTS, TEXTS, ["epsilon zeta"]]


def test_a_key_is_charged_the_count_without_a_cache(fake_openai: FakeOpenAI) -> None:
    with running_gateway({**open_config(fake_openai), "auth": {"master_key": MASTER_KEY}}) as gw:
        key = create_key(gw.url, limits={"tpm": 1000})["key"]
        reply = embed(gw.url, key, model="m", input=TEXTS)
    assert reply.status_code == 200, reply.text
    assert int(reply.headers["x-ratelimit-remaining-tokens"]) == 1000 - 4


def test_cache_entries_keep_the_count_without_a_key(fake_openai: FakeOpenAI) -> None:
    """A hit answers with its entry's share of the backend's usage, apportioned by the gateway's counts."""
    texts = ["hello world", "x y z w"]  # 2 and 4 tokens (the fake's usage says 2 and 4 words); 11 and 7 bytes
    with running_gateway(open_config(fake_openai, cache=True)) as gw:
        assert embed_ok(gw.url, texts, model="m").prompt_tokens == 6
        hit = embed_ok(gw.url, texts[:1], model="m")
    assert hit.cache == "hit" and hit.prompt_tokens == 2  # shared by bytes it would be 4
