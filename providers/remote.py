"""What every HTTP vendor shares: no tokenizer of its own, nothing to load, one authenticated POST per batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.http import HttpClient
from providers.options import DeploymentOptions
from providers.tokenizers import Tokenizer


class RemoteProvider:
    """Base of the vendor classes: they add `capabilities` and `embed` (pure translation around `post`)."""

    def __init__(self, options: DeploymentOptions, http: HttpClient, auth: Mapping[str, str] | None = None) -> None:
        self.options = options
        self._http = http
        self._headers = {**options.headers, **(auth or {})}
        self._secrets = tuple(v for v in (options.secret(), *(auth or {}).values()) if v)

    @property
    def tokenizer(self) -> Tokenizer | None:
        return None

    def model_for(self, batch_model: str) -> str:
        return batch_model

    async def post(self, url: str, payload: Any, headers: Mapping[str, str] | None = None) -> Any:
        return await self._http.post_json(url, payload, headers={**self._headers, **(headers or {})},
                                          timeout=self.options.timeout, secrets=self._secrets)

    async def start(self) -> None:
        return None

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
