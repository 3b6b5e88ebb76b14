"""Amazon Bedrock's InvokeModel for embedding models: `POST {endpoint}/model/{modelId}/invoke`, signed with SigV4.

The endpoint is `https://bedrock-runtime.{region}.amazonaws.com` (`api_base` overrides it: a VPC endpoint, a
test server); the model id is one path segment, percent-encoded as AWS SDKs encode it (`:` → `%3A`). The
body is the model's own, chosen by the model id's family (or `body_format` where the id names none, as a
provisioned-throughput ARN does):
- Titan Text Embeddings V2 (`amazon.titan-embed-text-v2:0`): `{"inputText", "dimensions": 256|512|1024,
  "normalize"}`, one text per call (so the dispatcher fans calls out, bounded by `max_concurrency`); the
  answer is `{"embedding": [...], "inputTextTokenCount": n}`. Titan Embeddings G1 - Text
  (`amazon.titan-embed-text-v1`) takes `inputText` only.
- Cohere Embed v3 (`cohere.embed-english-v3`, `cohere.embed-multilingual-v3`) and v4 (`cohere.embed-v4:0`):
  Cohere's own body without `model` (`texts` ≤ 96, `input_type`, `truncate`, `embedding_types`, and
  `output_dimension` 256/512/1024/1536 on v4, whose `truncate` says LEFT/RIGHT for START/END); the answer is
  `{"embeddings": {"float": [...]}}` or, without embedding_types, `{"embeddings": [[...]]}`; no usage.
Errors are `{"message": ...}` with their name in `x-amzn-ErrorType`: ValidationException and
ServiceQuotaExceededException 400, AccessDeniedException 403, ResourceNotFoundException 404,
ModelTimeoutException 408, ModelErrorException 424, ThrottlingException and ModelNotReadyException 429,
InternalServerException 500, ServiceUnavailableException 503 (`providers.http` maps the statuses).

https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html
https://docs.aws.amazon.com/bedrock/latest/APIReference/CommonErrors.html
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-text.html
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed-v3.html
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed-v4.html
https://docs.aws.amazon.com/bedrock/latest/userguide/inference-profiles-support.html
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

import orjson
from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from providers import cohere
from providers.base import (
    Capabilities,
    EmbedBatch,
    EmbedResult,
    ErrorKind,
    ProviderError,
    bad_response,
    check_tokens,
    normalize,
    number_rows,
)
from providers.http import HttpClient, Whole, json_body
from providers.options import DeploymentOptions
from providers.remote import RemoteProvider
from providers.sigv4 import AwsCredentials, FrozenCredentials, chain_region, sign

SIGNING_NAME = "bedrock"  # the SigV4 service name of bedrock-runtime
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-\d+$"  # us-east-1, eu-central-2, us-gov-west-1
TITAN_V2_DIMENSIONS = (256, 512, 1024)  # 1024 is the default and native size
BodyFormatName = Literal["titan-v2", "titan-v1", "cohere-v3", "cohere-v4"]


class BedrockOptions(DeploymentOptions):
    provider: Literal["bedrock"] = "bedrock"
    region: str | None = Field(None, pattern=REGION_PATTERN, description="signs every call; sets the endpoint")
    # Unset: the usual AWS chain (environment, shared files of `aws_profile`, SSO, container or instance role).
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None  # temporary credentials: they expire and are not refreshed
    aws_profile: str | None = Field(None, min_length=1)
    body_format: BodyFormatName | None = Field(None, description="default: from the model id")
    # Cohere models: NONE refuses an over-long text (400) rather than embedding part of it unseen.
    truncate: Literal["NONE", "START", "END"] = "NONE"
    # Rows at unit length (Titan V2 is asked to normalise, other rows are scaled here) unless this is false.
    normalize: bool = True

    @field_validator("aws_access_key_id", "aws_secret_access_key", "aws_session_token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # an unset `${VAR}` is "not configured"

    @model_validator(mode="after")
    def _check(self) -> BedrockOptions:
        if self.region is None and self.api_base is None:
            raise ValueError("region is required (bedrock-runtime.<region>.amazonaws.com, and SigV4 signs for it)")
        if self.api_key is not None:
            raise ValueError("api_key is not used by bedrock: set aws_access_key_id and aws_secret_access_key, "
                             "or leave them out to use the AWS credential chain")
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("set both aws_access_key_id and aws_secret_access_key, or neither (the AWS chain)")
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ValueError("aws_session_token goes with aws_access_key_id and aws_secret_access_key")
        if self.aws_profile is not None and self.aws_access_key_id is not None:
            raise ValueError("set aws_profile or configured keys, not both")
        if self.upstream_model is not None and body_format_for(self.upstream_model, self.body_format) is None:
            raise ValueError(f"upstream_model {self.upstream_model!r} names no body format embedgate knows "
                             f"({', '.join(FAMILIES)}): set body_format")
        return self

    def secret(self) -> str:
        return self.aws_secret_access_key.get_secret_value() if self.aws_secret_access_key else ""


def resolve_credentials(options: BedrockOptions) -> AwsCredentials:
    """Configured keys, else the AWS chain. Blocking (files, perhaps the instance metadata service)."""
    if options.aws_access_key_id is not None and options.aws_secret_access_key is not None:
        token = options.aws_session_token.get_secret_value() if options.aws_session_token else None
        return AwsCredentials.static(options.aws_access_key_id.get_secret_value(),
                                     options.aws_secret_access_key.get_secret_value(), token)
    return AwsCredentials.from_chain(options.aws_profile)


# -- the bodies, one translator pair per model family ------------------------------------------------------

def _one_text(batch: EmbedBatch) -> str:
    if len(batch.inputs) != 1 or not isinstance(batch.inputs[0], str):  # capabilities say one text per call
        raise TypeError("Titan embedding models take exactly one text per call")
    return batch.inputs[0]


def titan_v2_payload(batch: EmbedBatch, options: BedrockOptions) -> dict[str, Any]:
    payload: dict[str, Any] = {"inputText": _one_text(batch), "normalize": options.normalize}
    if batch.dimensions is not None:
        payload["dimensions"] = batch.dimensions
    return payload


def titan_v1_payload(batch: EmbedBatch, options: BedrockOptions) -> dict[str, Any]:
    return {"inputText": _one_text(batch)}


def titan_from_payload(body: Any, expected: int) -> EmbedResult:
    if not isinstance(body, dict) or "embedding" not in body:
        raise bad_response("backend answer is not a Titan embedding")
    return EmbedResult(vectors=number_rows([body["embedding"]], expected),
                       prompt_tokens=check_tokens(body.get("inputTextTokenCount")))


def cohere_v3_payload(batch: EmbedBatch, options: BedrockOptions) -> dict[str, Any]:
    return cohere.embed_body(batch, options.truncate)


_V4_TRUNCATE = {"NONE": "NONE", "START": "LEFT", "END": "RIGHT"}


def cohere_v4_payload(batch: EmbedBatch, options: BedrockOptions) -> dict[str, Any]:
    return cohere.embed_body(batch, _V4_TRUNCATE[options.truncate])


def cohere_from_payload(body: Any, expected: int) -> EmbedResult:
    """`embeddings` by type, as `embedding_types` asks (Cohere's own shape), or a plain list (Embed Floats)."""
    embeddings = body.get("embeddings") if isinstance(body, dict) else None
    if isinstance(embeddings, list):
        return EmbedResult(vectors=number_rows(embeddings, expected))
    return cohere.from_payload(body, expected)  # no `meta` on Bedrock: no usage


@dataclass(frozen=True, slots=True)
class BodyFormat:
    to_payload: Callable[[EmbedBatch, BedrockOptions], dict[str, Any]]
    from_payload: Callable[[Any, int], EmbedResult]
    max_inputs: int
    dimensions: tuple[int, ...] | None = None
    input_type: bool = False


BODY_FORMATS: dict[str, BodyFormat] = {
    "titan-v2": BodyFormat(titan_v2_payload, titan_from_payload, 1, TITAN_V2_DIMENSIONS),
    "titan-v1": BodyFormat(titan_v1_payload, titan_from_payload, 1),
    "cohere-v3": BodyFormat(cohere_v3_payload, cohere_from_payload, cohere.MAX_INPUTS, input_type=True),
    "cohere-v4": BodyFormat(cohere_v4_payload, cohere_from_payload, cohere.MAX_INPUTS, cohere.OUTPUT_DIMENSIONS,
                            input_type=True),
}

# Model id prefix → body format; the first that matches wins.
FAMILIES: dict[str, str] = {
    "amazon.titan-embed-text-v2": "titan-v2",
    "amazon.titan-embed-text-v1": "titan-v1",
    "amazon.titan-embed-g1-text": "titan-v1",
    "cohere.embed-v": "cohere-v4",  # embed-v4 and later
    "cohere.embed-": "cohere-v3",  # embed-english-v3, embed-multilingual-v3
}


def body_format_for(model: str, configured: str | None = None) -> str | None:
    """The body format of a model id, a cross-region inference profile id (`us.cohere.embed-v4:0`) or an ARN."""
    if configured is not None:
        return configured
    name = model.rsplit("/", 1)[-1]  # arn:aws:bedrock:<region>:<account>:inference-profile/<id>
    for candidate in (name, name.partition(".")[2]):  # with and without a geography prefix
        for prefix, body_format in FAMILIES.items():
            if candidate.startswith(prefix):
                return body_format
    return None


def invoke_url(base: str, model: str) -> str:
    return f"{base.rstrip('/')}/model/{quote(model, safe='')}/invoke"


class BedrockProvider(RemoteProvider):
    options: BedrockOptions

    def __init__(self, options: BedrockOptions, http: HttpClient, credentials: AwsCredentials | None = None) -> None:
        super().__init__(options, http)
        self._credentials = credentials
        self._region = options.region
        self._base = options.api_base or f"https://bedrock-runtime.{options.region}.amazonaws.com"

    async def start(self) -> None:
        # Once, off the loop: reading shared files or the instance metadata service blocks.
        if self._credentials is None:
            self._credentials = await asyncio.to_thread(resolve_credentials, self.options)
        if self._region is None:
            self._region = await asyncio.to_thread(chain_region, self.options.aws_profile)
            if self._region is None:
                raise RuntimeError("no region to sign for: set region (AWS_REGION is not set either)")

    def _format(self, model: str) -> BodyFormat | None:
        name = body_format_for(model, self.options.body_format)
        return BODY_FORMATS[name] if name is not None else None

    def capabilities(self, model: str) -> Capabilities:
        body_format = self._format(model)
        if body_format is None:
            return Capabilities(max_inputs=1)  # embed() refuses the call, saying what to configure
        inputs, tokens = self.options.batch_caps(body_format.max_inputs, None)
        return Capabilities(max_inputs=inputs, max_tokens=tokens, dimensions=body_format.dimensions,
                            input_type=body_format.input_type)

    async def _signing(self) -> tuple[FrozenCredentials, str]:
        """The credentials and region to sign this call with."""
        if self._credentials is None or self._region is None:
            raise RuntimeError("BedrockProvider.start() resolves the credentials and region before any call")
        if self._credentials.refresh_due():  # an expiring role: botocore calls AWS to refresh it
            return await asyncio.to_thread(self._credentials.frozen), self._region
        return self._credentials.frozen(), self._region

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        body_format = self._format(batch.model)
        if body_format is None:
            raise ProviderError(ErrorKind.BAD_REQUEST, f"Bedrock model {batch.model!r} names no body format "
                                f"embedgate knows ({', '.join(FAMILIES)}); the gateway's config must set body_format")
        credentials, region = await self._signing()
        url = invoke_url(self._base, batch.model)
        body = orjson.dumps(body_format.to_payload(batch, self.options))
        headers = sign(credentials, SIGNING_NAME, region, url, body,
                       {**self._headers, "Content-Type": "application/json", "Accept": "application/json"})
        # encoded=True: sent as signed; yarl would otherwise decode %3A back to ':' and the signature would not match.
        answer = Whole()
        await self._http.post_into(URL(url, encoded=True), body, answer, headers=headers,
                                   timeout=self.options.timeout, secrets=credentials.secrets())
        result = body_format.from_payload(json_body(answer.body()), len(batch.inputs))
        return replace(result, vectors=normalize(result.vectors)) if self.options.normalize else result
