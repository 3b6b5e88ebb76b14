"""Provider name (a deployment's `provider:`) → its options model and class. The one place that knows them all.

Adding a vendor means one module (options + translation + class) and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from providers.azure import AzureOptions, AzureProvider
from providers.base import Provider
from providers.bedrock import BedrockOptions, BedrockProvider
from providers.cohere import CohereOptions, CohereProvider
from providers.gemini import GeminiOptions, GeminiProvider
from providers.http import HttpClient
from providers.local import LocalOptions, LocalProvider
from providers.openai import OpenAIOptions, OpenAIProvider
from providers.options import DeploymentOptions
from providers.voyage import VoyageOptions, VoyageProvider


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    options: type[DeploymentOptions]
    build: Callable[[Any, HttpClient], Provider]


PROVIDERS: dict[str, ProviderSpec] = {
    "openai": ProviderSpec(OpenAIOptions, OpenAIProvider),
    "local": ProviderSpec(LocalOptions, LocalProvider),
    "azure": ProviderSpec(AzureOptions, AzureProvider),
    "cohere": ProviderSpec(CohereOptions, CohereProvider),
    "voyage": ProviderSpec(VoyageOptions, VoyageProvider),
    "gemini": ProviderSpec(GeminiOptions, GeminiProvider),
    "bedrock": ProviderSpec(BedrockOptions, BedrockProvider),
}

# What a config's deployment parses into: the right options model, picked by `provider`.
if TYPE_CHECKING:
    AnyDeployment = DeploymentOptions
else:
    AnyDeployment = Annotated[Union[tuple(spec.options for spec in PROVIDERS.values())],  # noqa: UP007
                              Field(discriminator="provider")]


def build_provider(options: DeploymentOptions, http: HttpClient) -> Provider:
    return PROVIDERS[options.provider].build(options, http)
