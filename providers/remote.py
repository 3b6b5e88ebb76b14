"""What every HTTP vendor shares: no tokenizer of its own, nothing to load, one authenticated POST per batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.http import BodySink, HttpClient, Whole, json_body, secrets_of
from providers.options import DeploymentOptions
from providers.tokenizers import Tokenizer


class RemoteProvider:
    """Base of the vendor classes: they add `capabilities` and `embed` (pure translation around `post`)."""

    def __init__(self, options: DeploymentOptions, http: HttpClient, auth: Mapping[str, str] | None = None) -> None:
        self.options = options
        self._http = http
        self._headers = {**options.headers, **(auth or {})}
        self._secrets = secrets_of(options.secret(), self._headers.values())

    @property
    def tokenizer(self) -> Tokenizer | None:
        return None

    def model_for(self, batch_model: str) -> str:
        return batch_model

    async def post(self, url: str, payload: Any, headers: Mapping[str, str] | None = None) -> Any:
        """`post_into`, the answer read whole and decoded as JSON."""
        whole = Whole()
        await self.post_into(url, payload, whole, headers)
        return json_body(whole.body())

    async def post_into(self, url: str, payload: Any, sink: BodySink, headers: Mapping[str, str] | None = None
                        ) -> None:
        """POST with the configured headers plus `headers` (a per-call signature, say), the answer fed to
        `sink` as it arrives: every value of both is scrubbed from any upstream text passed on."""
        secrets = secrets_of(self.options.secret(), [*self._headers.values(), *headers.values()]) if headers \
            else self._secrets
        await self._http.post_into(url, payload, sink, headers={**self._headers, **(headers or {})},
                                   timeout=self.options.timeout, secrets=secrets)

    async def start(self) -> None:
        return None

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
