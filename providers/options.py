"""The options every deployment has, whatever its vendor; each provider module extends them with its own.

A deployment is one place a model is served (OpenAI itself, an Azure region, a TEI box). The
gateway's config composes these models; providers never see the gateway's config.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# OpenAI's own embedding models read cl100k token ids, wherever they are served (OpenAI, Azure).
CL100K_MODELS = frozenset({"text-embedding-ada-002", "text-embedding-3-small", "text-embedding-3-large"})


class DeploymentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    name: str | None = Field(None, min_length=1, description="shown in x-embedgate-deployment and metrics")
    upstream_model: str | None = None
    api_base: str | None = None
    api_key: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(60.0, gt=0, description="seconds per upstream call")
    max_batch_size: int | None = Field(None, ge=1, description="inputs per call; default: the vendor's cap")
    max_batch_tokens: int | None = Field(None, ge=1, description="tokens per call; default: the vendor's cap")
    max_concurrency: int = Field(8, ge=1, description="calls in flight to this deployment per request")
    weight: int = Field(1, ge=0, description="share of traffic under weighted round-robin")
    token_ids: Literal["pass", "decode"] | None = Field(
        None, description="send token-id inputs as they are, or decode them with cl100k first; "
                          "default: pass for OpenAI's own models, decode for every other")

    # Set by vendors that authenticate every call with the key: why it is required, for the config error.
    key_required: ClassVar[str | None] = None

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _needs_key(self) -> DeploymentOptions:
        if self.key_required and self.api_key is None:
            raise ValueError(f"api_key is required: {self.key_required}")
        return self

    def secret(self) -> str:
        return self.api_key.get_secret_value() if self.api_key else ""

    def passes_token_ids(self, upstream_model: str) -> bool:
        """Whether cl100k ids mean the same to this model: the tokenizer is the model's, not the host's."""
        if self.token_ids is not None:
            return self.token_ids == "pass"
        return upstream_model in CL100K_MODELS

    def batch_caps(self, max_inputs: int, max_tokens: int | None) -> tuple[int, int | None]:
        """The vendor's caps, narrowed by what the config says."""
        inputs = min(max_inputs, self.max_batch_size or max_inputs)
        tokens = min(t for t in (max_tokens, self.max_batch_tokens) if t is not None) \
            if (max_tokens or self.max_batch_tokens) else None
        return inputs, tokens
