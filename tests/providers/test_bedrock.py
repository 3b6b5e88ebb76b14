"""Amazon Bedrock: the bodies of each model family, their answers, the model id rules, the options, and the
SigV4 signature against known vectors (checked again by the fake's own verifier, written without botocore)."""

from __future__ import annotations

import datetime
from datetime import UTC
from typing import Any, get_args

import numpy as np
import pytest
from botocore.credentials import RefreshableCredentials
from multidict import CIMultiDict
from pydantic import ValidationError

from providers import bedrock
from providers.base import EmbedBatch, ErrorKind, ProviderError
from providers.bedrock import BedrockOptions, BedrockProvider, body_format_for, invoke_url
from providers.http import HttpClient
from providers.sigv4 import AwsCredentials, FrozenCredentials, sign
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.sigv4 import verify
from tests.fakes.vendor import serving
from tests.support.vendor_shapes import fixture, vendor_error

TITAN_V2 = "amazon.titan-embed-text-v2:0"
KEY = FrozenCredentials("AKID", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SIGNED_AT = datetime.datetime(2026, 12, 2, 10, 30, 0)
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def options(**fields: Any) -> BedrockOptions:
    return BedrockOptions.model_validate({"region": "us-east-1", **fields})


def payload(model: str, batch: EmbedBatch, **fields: Any) -> dict[str, Any]:
    body_format = body_format_for(model)
    assert body_format is not None
    return bedrock.BODY_FORMATS[body_format].to_payload(batch, options(**fields))


# -- bodies and answers ---------------------------------------------------------------------------------------

def test_titan_v2_request_is_the_documented_one() -> None:
    batch = EmbedBatch(model=TITAN_V2, inputs=["hello world"], dimensions=256)
    assert payload(TITAN_V2, batch) == fixture("bedrock_titan_v2_request.json")
    assert payload(TITAN_V2, EmbedBatch(model=TITAN_V2, inputs=["x"]), normalize=False) == \
        {"inputText": "x", "normalize": False}  # no dimensions unless asked: 1024, the native size


def test_titan_v1_takes_input_text_only() -> None:
    model = "amazon.titan-embed-text-v1"
    assert payload(model, EmbedBatch(model=model, inputs=["hello"])) == {"inputText": "hello"}


def test_titan_takes_one_text_per_call() -> None:
    with pytest.raises(TypeError):
        payload(TITAN_V2, EmbedBatch(model=TITAN_V2, inputs=["a", "b"]))


def test_titan_answer_row_and_token_count() -> None:
    result = bedrock.titan_from_payload(fixture("bedrock_titan_v2_response.json"), 1)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (1, 4)
    np.testing.assert_allclose(result.vectors[0], [0.0234375, -0.0537109375, 0.0810546875, -0.0107421875])
    assert result.prompt_tokens == 3
    assert bedrock.titan_from_payload(fixture("bedrock_titan_v1_response.json"), 1).prompt_tokens == 2


@pytest.mark.parametrize(
    ("model", "asked", "sent"),
    [("cohere.embed-english-v3", None, "search_document"), ("cohere.embed-multilingual-v3", "query", "search_query"),
     ("cohere.embed-english-v3", "classification", "classification")],
)
def test_cohere_request_has_no_model_and_maps_input_type(model: str, asked: str | None, sent: str) -> None:
    body = payload(model, EmbedBatch(model=model, inputs=["hello", "goodbye"], input_type=asked))
    assert body == {**fixture("bedrock_cohere_request.json"), "input_type": sent}


def test_cohere_v4_sizes_and_truncate_words() -> None:
    model = "cohere.embed-v4:0"
    body = payload(model, EmbedBatch(model=model, inputs=["a"], dimensions=512), truncate="END")
    assert (body["output_dimension"], body["truncate"], "model" in body) == (512, "RIGHT", False)
    assert payload(model, EmbedBatch(model=model, inputs=["a"]), truncate="START")["truncate"] == "LEFT"


@pytest.mark.parametrize("name", ["bedrock_cohere_response_by_type.json", "bedrock_cohere_response_floats.json"])
def test_cohere_answer_in_both_documented_forms(name: str) -> None:
    result = bedrock.cohere_from_payload(fixture(name), 2)
    np.testing.assert_allclose(result.vectors[1], [-0.0031585693, 0.0236206055, 0.057434082], rtol=1e-6)
    assert result.prompt_tokens is None  # Bedrock's Cohere answer carries no usage


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (bedrock.titan_from_payload, {"inputTextTokenCount": 3}),
        (bedrock.titan_from_payload, {"embedding": [1.0, None]}),
        (bedrock.titan_from_payload, {"embedding": []}),
        (bedrock.titan_from_payload, {"embedding": [float("nan"), 1.0]}),
        (bedrock.titan_from_payload, {"embedding": [1.0, 0.0], "inputTextTokenCount": -2}),
        (bedrock.titan_from_payload, {"message": "internal error"}),
        (bedrock.titan_from_payload, [[1.0, 0.0]]),
        (bedrock.cohere_from_payload, {"embeddings": {"int8": [[1, 0]]}}),
        (bedrock.cohere_from_payload, {"embeddings": [[1.0, 0.0]]}),  # one row for two texts
        (bedrock.cohere_from_payload, {"embeddings": {"float": [[1.0, 0.0], [1.0]]}}),
        (bedrock.cohere_from_payload, {"embeddings": [["1.0"], ["0.0"]]}),
        (bedrock.cohere_from_payload, ["not", "an", "object"]),
    ],
)
def test_malformed_answers_are_refused(parse: Any, body: Any) -> None:
    with pytest.raises(ProviderError) as exc:
        parse(body, 1 if parse is bedrock.titan_from_payload else 2)
    assert exc.value.kind is ErrorKind.BAD_RESPONSE


# -- model ids ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("model", "body_format"),
    [(TITAN_V2, "titan-v2"), ("amazon.titan-embed-text-v1", "titan-v1"), ("amazon.titan-embed-g1-text-02", "titan-v1"),
     ("cohere.embed-english-v3", "cohere-v3"), ("cohere.embed-multilingual-v3", "cohere-v3"),
     ("cohere.embed-v4:0", "cohere-v4"), ("us.cohere.embed-v4:0", "cohere-v4"), ("eu.amazon.titan-embed-text-v2:0",
                                                                                  "titan-v2"),
     ("arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0", "titan-v2"),
     ("arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.cohere.embed-v4:0", "cohere-v4"),
     ("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123xyz", None),
     ("amazon.titan-embed-image-v1", None), ("anthropic.claude-3-haiku", None)],
)
def test_body_format_from_the_model_id(model: str, body_format: str | None) -> None:
    assert body_format_for(model) == body_format


def test_model_id_is_one_encoded_path_segment() -> None:
    base = "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert invoke_url(base, TITAN_V2) == f"{base}/model/amazon.titan-embed-text-v2%3A0/invoke"
    arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc"
    assert invoke_url(base + "/", arn) == \
        f"{base}/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aprovisioned-model%2Fabc/invoke"


def test_capabilities_per_family() -> None:
    assert set(bedrock.BODY_FORMATS) == set(get_args(bedrock.BodyFormatName)) >= set(bedrock.FAMILIES.values())
    provider = BedrockProvider(options(), HttpClient())
    titan, g1 = provider.capabilities(TITAN_V2), provider.capabilities("amazon.titan-embed-text-v1")
    v3, v4 = provider.capabilities("cohere.embed-english-v3"), provider.capabilities("cohere.embed-v4:0")
    assert (titan.max_inputs, titan.dimensions, titan.input_type) == (1, (256, 512, 1024), False)
    assert (g1.max_inputs, g1.dimensions) == (1, None)
    assert (v3.max_inputs, v3.dimensions, v3.input_type) == (96, None, True)
    assert v4.dimensions == (256, 512, 1024, 1536) and not v4.token_ids
    assert BedrockProvider(options(max_batch_size=10), HttpClient()).capabilities("cohere.embed-v4:0").max_inputs == 10
    provisioned = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc"
    assert BedrockProvider(options(body_format="cohere-v3"), HttpClient()).capabilities(provisioned).max_inputs == 96


@pytest.mark.asyncio
async def test_a_model_id_of_no_known_family_is_refused_with_the_fix() -> None:
    provider = BedrockProvider(options(), HttpClient(), credentials=AwsCredentials.static("AKID", "s"))
    await provider.start()
    with pytest.raises(ProviderError) as exc:
        await provider.embed(EmbedBatch(model="amazon.titan-embed-image-v1", inputs=["x"]))
    assert exc.value.kind is ErrorKind.BAD_REQUEST and "body_format" in exc.value.message


# -- options --------------------------------------------------------------------------------------------------

def test_options_defaults_and_empty_variables() -> None:
    defaults = options(aws_access_key_id="", aws_secret_access_key="", aws_session_token="")  # unset ${VAR}s
    assert (defaults.aws_access_key_id, defaults.truncate, defaults.normalize) == (None, "NONE", True)
    assert BedrockOptions(api_base="http://127.0.0.1:9").region is None  # a VPC endpoint; the chain's region


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [({"region": None}, "region is required"), ({"region": "us-east"}, "region"), ({"region": "US-EAST-1"}, "region"),
     ({"aws_access_key_id": "AKID"}, "both"), ({"aws_secret_access_key": "s"}, "both"),
     ({"aws_session_token": "t"}, "aws_session_token"), ({"api_key": "k"}, "api_key is not used"),
     ({"aws_profile": "p", "aws_access_key_id": "a", "aws_secret_access_key": "s"}, "aws_profile"),
     ({"upstream_model": "amazon.titan-embed-image-v1"}, "body_format"), ({"body_format": "titan-v3"}, "body_format"),
     ({"truncate": "LEFT"}, "truncate")],
)
def test_options_refused(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        options(**fields)


# -- errors ---------------------------------------------------------------------------------------------------

def test_validation_exception_is_relayed_named_and_scrubbed() -> None:
    body = fixture("bedrock_error.json")
    body["message"] += f" (secret {KEY.secret_key})"
    error = vendor_error(400, body, secret=KEY.secret_key,
                         headers={"x-amzn-ErrorType": "ValidationException:http://internal.amazon.com/coral/x/"})
    assert error.kind is ErrorKind.BAD_REQUEST
    assert error.message.startswith("backend HTTP 400: ValidationException: Malformed input request")
    assert KEY.secret_key not in error.message


@pytest.mark.parametrize(
    ("status", "name", "kind"),
    [(403, "AccessDeniedException", ErrorKind.AUTH), (408, "ModelTimeoutException", ErrorKind.TIMEOUT),
     (424, "ModelErrorException", ErrorKind.UNAVAILABLE), (429, "ThrottlingException", ErrorKind.RATE_LIMITED),
     (429, "ModelNotReadyException", ErrorKind.RATE_LIMITED), (503, "ServiceUnavailableException",
                                                                ErrorKind.UNAVAILABLE)],
)
def test_bedrock_statuses(status: int, name: str, kind: ErrorKind) -> None:
    error = vendor_error(status, {"message": f"{name} for AKID"}, headers={"x-amzn-ErrorType": name})
    assert error.kind is kind
    assert kind is not ErrorKind.AUTH or "AKID" not in error.message  # credential errors are never relayed


# -- SigV4 ----------------------------------------------------------------------------------------------------

def received(url: str, headers: dict[str, str]) -> tuple[str, CIMultiDict[str]]:
    """What the service sees: the path as sent and the headers, Host included."""
    host_and_path = url.split("://", 1)[1]
    host, path = host_and_path.split("/", 1)
    return "/" + path, CIMultiDict({**headers, "Host": host})


def test_the_fakes_verifier_agrees_with_aws_published_vector() -> None:
    # AWS's SigV4 test suite, "post-vanilla": POST / to example.amazonaws.com, service "service".
    headers = CIMultiDict({
        "Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                         "SignedHeaders=host;x-amz-date, "
                         "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"})
    check = {"secrets": {"AKIDEXAMPLE": KEY.secret_key}, "service": "service", "region": "us-east-1",
             "now": datetime.datetime(2015, 8, 30, 12, 36, tzinfo=UTC)}
    assert verify("POST", "/", headers, b"", **check) is None
    refusal = verify("POST", "/", headers, b"{}", **check)  # a body that was not signed
    assert refusal is not None and refusal.error_type == "InvalidSignatureException"


@pytest.mark.parametrize(
    ("token", "signed_headers", "signature"),
    [(None, "accept;content-type;host;x-amz-date",
      "b81345076bd983bb384503df37f61e226ea1371598a464ed3e404d9e4015b535"),
     ("session-token-1", "accept;content-type;host;x-amz-date;x-amz-security-token",
      "fddd621c9e09b344eca1e7d70f2eb15cf2fdeae1794b1dcde8f1ad5ca66f9879")],
)
def test_signature_known_vector(monkeypatch: pytest.MonkeyPatch, token: str | None, signed_headers: str,
                                signature: str) -> None:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *args, **kwargs: SIGNED_AT)
    credentials = FrozenCredentials(KEY.access_key, KEY.secret_key, token)
    url = invoke_url("https://bedrock-runtime.us-east-1.amazonaws.com", TITAN_V2)
    body = b'{"inputText":"hello world","normalize":true}'
    headers = sign(credentials, "bedrock", "us-east-1", url, body, JSON_HEADERS)
    assert headers["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential=AKID/20261202/us-east-1/bedrock/aws4_request, "
        f"SignedHeaders={signed_headers}, Signature={signature}")
    assert headers["X-Amz-Date"] == "20261202T103000Z" and headers.get("X-Amz-Security-Token") == token
    path, seen = received(url, headers)
    assert path == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    check = {"secrets": {KEY.access_key: KEY.secret_key}, "service": "bedrock", "region": "us-east-1",
             "now": SIGNED_AT.replace(tzinfo=UTC)}
    assert verify("POST", path, seen, body, **check) is None
    assert verify("POST", path.replace("%3A", ":"), seen, body, **check) is not None  # the path as signed, or 403
    assert verify("POST", path, seen, body, **{**check, "region": "us-west-2"}) is not None
    assert verify("POST", path, seen, body, **{**check, "secrets": {KEY.access_key: "another"}}) is not None


@pytest.mark.asyncio
async def test_expiring_credentials_are_read_again_for_every_call() -> None:
    refreshed: list[str] = []
    with serving(FakeBedrock(session_token="token-0")) as fake:
        def refresh() -> dict[str, str]:  # what an instance role's metadata says: valid for two more minutes
            refreshed.append(fake.session_token or "")
            expiry = datetime.datetime.now(UTC) + datetime.timedelta(minutes=2)
            return {"access_key": fake.access_key, "secret_key": fake.secret_key, "token": fake.session_token or "",
                    "expiry_time": expiry.isoformat()}

        credentials = AwsCredentials(RefreshableCredentials.create_from_metadata(refresh(), refresh, "test-role"))
        refreshed.clear()
        http = HttpClient()
        provider = BedrockProvider(options(api_base=fake.url), http, credentials=credentials)
        await provider.start()
        for turn in range(3):
            fake.session_token = f"token-{turn}"  # the role's token rotates; only the current one is accepted
            result = await provider.embed(EmbedBatch(model=TITAN_V2, inputs=[f"call {turn}"]))
            np.testing.assert_allclose(result.vectors[0], fake.vector(f"call {turn}", 1024), rtol=1e-5, atol=1e-6)
        await http.aclose()
    assert refreshed == ["token-0", "token-1", "token-2"]
