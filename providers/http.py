"""The one HTTP client all remote providers share: pooled session, timeouts, error mapping."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import orjson

from providers.base import ErrorKind, ProviderError, finite_seconds

# What an upstream status means for the client; any other 4xx is the input's fault, any other 5xx an outage.
_STATUS_KINDS = {400: ErrorKind.BAD_REQUEST, 404: ErrorKind.BAD_REQUEST, 413: ErrorKind.BAD_REQUEST,
                 422: ErrorKind.BAD_REQUEST, 401: ErrorKind.AUTH, 403: ErrorKind.AUTH,
                 402: ErrorKind.BILLING,  # the operator's account must pay; the client can change nothing
                 408: ErrorKind.TIMEOUT,  # the upstream gave up waiting for our request: retryable
                 409: ErrorKind.UNAVAILABLE,  # a conflict in the vendor's own state (a deployment being updated)
                 429: ErrorKind.RATE_LIMITED}


# Shorter header values ("1", "v2") are no secret, and scrubbing them would garble every message.
MIN_SCRUBBED = 4


def secrets_of(credential: str, header_values: Iterable[str]) -> tuple[str, ...]:
    """What to scrub from upstream text: the credential, every configured header value, and the last word of
    one (a vendor may echo the token of `Bearer <token>` alone); longest first, so a secret that contains
    another is scrubbed whole."""
    found = {credential} if credential else set()
    for value in header_values:
        found.update(part for part in (value, *value.split()[-1:]) if len(part) >= MIN_SCRUBBED)
    return tuple(sorted(found, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _upstream_message(body: bytes, secrets: tuple[str, ...]) -> str:
    """Pull a human message out of an error body of any common shape, secrets scrubbed BEFORE it is cut
    short: a secret cut in two by the truncation would no longer match, and its head would leak."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return scrub(body.decode("utf-8", "replace"), secrets)[:200]
    message: Any = data
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or err
        else:
            message = next((data[key] for key in ("message", "detail", "error") if key in data), data)
    return scrub(str(message), secrets)[:500]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return finite_seconds(headers.get("Retry-After"))


_INPUT_PARAM = re.compile(r"^(?:input|texts|inputs|requests|instances)\[(\d+)\]")


def _blamed_input(body: bytes) -> int | None:
    """The batch position an error names (OpenAI's `param: "input[3]"`), so the client hears its own index."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    param = err.get("param") if isinstance(err, dict) else None
    match = _INPUT_PARAM.match(param) if isinstance(param, str) else None
    return int(match.group(1)) if match else None


class HttpClient:
    """Owns the pooled `aiohttp.ClientSession`; created lazily inside the running loop."""

    def __init__(self, *, limit: int = 256) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def post_json(
        self,
        url: str,
        payload: Any,
        *,
        headers: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 -- a per-backend budget passed on to aiohttp, not a cancel scope
        secrets: tuple[str, ...] = (),
    ) -> Any:
        """POST JSON, return the decoded answer, or raise `ProviderError`.

        `secrets` are scrubbed from any upstream message we pass on: a vendor may echo
        part of our key back in its error text.
        """
        session = self._get_session()
        try:
            async with session.post(
                url,
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json", **headers},
                timeout=aiohttp.ClientTimeout(total=timeout),
                # Never followed: aiohttp would forward our custom headers (an api-key among them) to
                # whatever origin the Location names.
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                if 300 <= resp.status < 400:
                    raise ProviderError(ErrorKind.BAD_RESPONSE, f"backend answered HTTP {resp.status}, a redirect; "
                                        "the gateway follows none, so its credentials never reach another "
                                        "origin: set api_base to the final URL")
                if resp.status >= 400:
                    raise self._status_error(resp.status, body, resp.headers, secrets)
        except TimeoutError as err:
            raise ProviderError(ErrorKind.TIMEOUT, f"backend did not answer within {timeout:g}s") from err
        except aiohttp.ClientError as err:
            raise ProviderError(ErrorKind.UNAVAILABLE, f"cannot reach backend: {type(err).__name__}") from err
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ProviderError(ErrorKind.BAD_RESPONSE, "backend answered with invalid JSON") from err

    @staticmethod
    def _status_error(
        status: int, body: bytes, headers: Mapping[str, str], secrets: tuple[str, ...]
    ) -> ProviderError:
        kind = _STATUS_KINDS.get(status, ErrorKind.UNAVAILABLE if status >= 500 else ErrorKind.BAD_REQUEST)
        if kind is ErrorKind.AUTH:
            # Never relay the vendor's text here: it may quote our (masked) credential.
            return ProviderError(kind, f"backend rejected the gateway's credentials (HTTP {status})")
        message = _upstream_message(body, secrets)
        return ProviderError(kind, f"backend HTTP {status}: {message}", retry_after=_retry_after(headers),
                             input_index=_blamed_input(body) if kind is ErrorKind.BAD_REQUEST else None)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
