"""Azure OpenAI embeddings: OpenAI's body and answer (the translation is `providers.openai`'s), Azure's
URL and credentials.

Two API styles. `deployments` (the default): `POST {api_base}/openai/deployments/{deployment}/embeddings
?api-version=...`, whose documented body has no `model` (the path names the deployment). `v1`: `POST
{api_base}/openai/v1/embeddings`, no api-version, the deployment name as `model` in the body.
Credentials: an `api-key` header, or a Microsoft Entra ID token as `Authorization: Bearer`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal
from urllib.parse import quote, urlencode

from pydantic import Field, SecretStr, field_validator, model_validator

from providers.base import ANY_DIMENSIONS, Capabilities, EmbedBatch, EmbedResult
from providers.http import HttpClient
from providers.openai import to_payload as openai_to_payload
from providers.openai_answer import AnswerReader
from providers.options import DeploymentOptions
from providers.remote import RemoteProvider

DEFAULT_API_VERSION = "2024-10-21"  # the latest GA data-plane inference version for the deployments style
MAX_INPUTS = 2048  # Azure: "any array must be 2048 dimensions or less"
MAX_TOKENS = 300_000  # summed over one request's inputs, as at OpenAI


class AzureOptions(DeploymentOptions):
    provider: Literal["azure"] = "azure"
    api_base: str = Field(min_length=1, description="the resource endpoint, https://<resource>.openai.azure.com")
    api_style: Literal["deployments", "v1"] = "deployments"
    api_version: str = Field(DEFAULT_API_VERSION, min_length=1, description="deployments style only")
    deployment: str | None = Field(None, min_length=1, description="default: the upstream model")
    # A Microsoft Entra ID access token, as configured: it expires (about an hour) and is not refreshed here.
    entra_token: SecretStr | None = None
    upstream_encoding: Literal["base64", "float"] = "base64"
    send_dimensions: bool = True  # text-embedding-3 deployments take `dimensions`; ada-002 ones do not

    @field_validator("entra_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # an unset `${VAR}` is "no token", not an empty one

    @model_validator(mode="after")
    def _one_credential(self) -> AzureOptions:
        if (self.api_key is None) == (self.entra_token is None):
            raise ValueError("set exactly one of api_key (sent as the api-key header) or entra_token "
                             "(a Microsoft Entra ID token, sent as Authorization: Bearer)")
        return self

    def secret(self) -> str:
        """Whichever credential is set: scrubbed from any upstream text the gateway passes on."""
        token = self.entra_token.get_secret_value() if self.entra_token else ""
        return super().secret() or token

    def auth_headers(self) -> dict[str, str]:
        if self.entra_token is not None:
            return {"Authorization": f"Bearer {self.entra_token.get_secret_value()}"}
        return {"api-key": self.secret()}


def deployment_for(options: AzureOptions, model: str) -> str:
    return options.deployment or model


def endpoint(options: AzureOptions, model: str) -> str:
    base = options.api_base.rstrip("/")
    if options.api_style == "v1":
        return f"{base}/openai/v1/embeddings"
    name = quote(deployment_for(options, model), safe="")
    return f"{base}/openai/deployments/{name}/embeddings?{urlencode({'api-version': options.api_version})}"


def to_payload(batch: EmbedBatch, options: AzureOptions) -> dict[str, Any]:
    if options.api_style == "v1":  # v1 routes by the body's model, which is the deployment's name
        named = replace(batch, model=deployment_for(options, batch.model))
        return openai_to_payload(named, options.upstream_encoding)
    return openai_to_payload(batch, options.upstream_encoding, send_model=False)


class AzureProvider(RemoteProvider):
    options: AzureOptions

    def __init__(self, options: AzureOptions, http: HttpClient) -> None:
        super().__init__(options, http, options.auth_headers())

    def capabilities(self, model: str) -> Capabilities:
        inputs, tokens = self.options.batch_caps(MAX_INPUTS, MAX_TOKENS)
        return Capabilities(
            max_inputs=inputs, max_tokens=tokens,
            dimensions=ANY_DIMENSIONS if self.options.send_dimensions else None,
            token_ids=self.options.passes_token_ids(model),
        )

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        reader = AnswerReader(len(batch.inputs))
        await self.post_into(endpoint(self.options, batch.model), to_payload(batch, self.options), reader)
        return reader.result()
