"""Provider name (the config's `provider:`) → class. The one place that knows them all."""

from __future__ import annotations

from collections.abc import Callable

from providers.base import Provider
from providers.http import HttpClient
from providers.local import LocalProvider
from providers.openai import OpenAIProvider
from proxy.settings import ModelEntry

ProviderFactory = Callable[[ModelEntry, HttpClient], Provider]

PROVIDERS: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
    "local": LocalProvider,
}


def build_provider(entry: ModelEntry, http: HttpClient) -> Provider:
    try:
        factory = PROVIDERS[entry.provider]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"model {entry.name!r}: unknown provider {entry.provider!r} (known: {known})") from None
    return factory(entry, http)
