"""The one HTTP client all remote providers share: pooled session, timeouts, error mapping."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp.typedefs import StrOrURL

from providers.base import ErrorKind, ProviderError, finite_seconds

# What an upstream status means for the client; any other 4xx is the input's fault, any other 5xx an outage.
_STATUS_KINDS = {400: ErrorKind.BAD_REQUEST, 404: ErrorKind.BAD_REQUEST, 413: ErrorKind.BAD_REQUEST,
                 422: ErrorKind.BAD_REQUEST, 401: ErrorKind.AUTH, 403: ErrorKind.AUTH,
                 402: ErrorKind.BILLING,  # the operator's account must pay; the client can change nothing
                 408: ErrorKind.TIMEOUT,  # the upstream gave up waiting (Bedrock's ModelTimeoutException): retryable
                 409: ErrorKind.UNAVAILABLE,  # a conflict in the vendor's own state (a deployment being updated)
                 424: ErrorKind.UNAVAILABLE,  # a dependency behind the server failed (Bedrock's ModelErrorException)
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


_UNDECODABLE = object()


def _decoded(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _UNDECODABLE


def _upstream_message(body: bytes, data: Any, secrets: tuple[str, ...]) -> str:
    """Pull a human message out of an error body of any common shape (OpenAI's and Google's
    `{"error": {"message"}}`, Cohere's `{"message"}`, Voyage's `{"detail"}`), secrets scrubbed BEFORE it is
    cut short: a secret cut in two by the truncation would no longer match, and its head would leak."""
    if data is _UNDECODABLE:
        return scrub(body.decode("utf-8", "replace"), secrets)[:200]
    message: Any = data
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or err
        else:
            message = next((data[key] for key in ("message", "detail", "error") if key in data), data)
    return scrub(str(message), secrets)[:500]


def _google_details(data: Any) -> list[dict[str, Any]]:
    """The typed `details` of a Google API error (`google.rpc.ErrorInfo`, `RetryInfo`...), else none."""
    err = data.get("error") if isinstance(data, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _refuses_credentials(data: Any) -> bool:
    """Google answers a bad API key with 400 INVALID_ARGUMENT: only its ErrorInfo reason tells it apart."""
    return any(detail.get("reason") == "API_KEY_INVALID" for detail in _google_details(data))


def _retry_after(headers: Mapping[str, str], data: Any) -> float | None:
    """The `Retry-After` header, else Google's `RetryInfo.retryDelay` (a JSON Duration such as "37s")."""
    seconds = finite_seconds(headers.get("Retry-After"))
    if seconds is not None:
        return seconds
    for detail in _google_details(data):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            return finite_seconds(delay[:-1])
    return None


def _error_type(headers: Mapping[str, str]) -> str:
    """AWS names its errors in `x-amzn-ErrorType` ("ThrottlingException:http://..."): the name, or ""."""
    return headers.get("x-amzn-ErrorType", "").split(":", 1)[0].strip()


_INPUT_PARAM = re.compile(r"^(?:input|texts|inputs|requests|instances)\[(\d+)\]")


def _blamed_input(data: Any) -> int | None:
    """The batch position an error names (OpenAI's `param: "input[3]"`), so the client hears its own index."""
    err = data.get("error") if isinstance(data, dict) else None
    param = err.get("param") if isinstance(err, dict) else None
    match = _INPUT_PARAM.match(param) if isinstance(param, str) else None
    return int(match.group(1)) if match else None


def json_body(body: bytes) -> Any:
    """A 2xx answer's body as JSON; not JSON at all is the backend's fault (502), never ours."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ProviderError(ErrorKind.BAD_RESPONSE, "backend answered with invalid JSON") from err


_READ_WHOLE_BELOW = 1 << 16  # bytes: a smaller answer (nearly every one) comes in one socket read


class BodySink(Protocol):
    """What reads a 2xx answer a chunk at a time, as it arrives (`providers/openai_answer.py`'s reader)."""

    def feed(self, chunk: bytes) -> None: ...


class Whole:
    """The sink that keeps the whole body, for a caller that reads it at the end (`json_body`, say)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def body(self) -> bytes:
        return b"".join(self._chunks)  # one chunk, the usual small answer: that chunk, not a copy


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

    async def post_into(
        self,
        url: StrOrURL,
        payload: Any,
        sink: BodySink,
        *,
        headers: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 -- a per-backend budget passed on to aiohttp, not a cancel scope
        secrets: tuple[str, ...] = (),
    ) -> None:
        """POST JSON and feed a 2xx answer's body to `sink` a chunk at a time as it arrives, or raise
        `ProviderError` (an error's body is read whole, to map it).

        `payload` goes as JSON, or as it is when already `bytes` (a signed body must be the bytes signed).

        `secrets` are scrubbed from any upstream message we pass on: a vendor may echo
        part of our key back in its error text.
        """
        session = self._get_session()
        try:
            async with session.post(
                url,
                data=payload if isinstance(payload, bytes) else orjson.dumps(payload),
                headers={"Content-Type": "application/json", **headers},
                timeout=aiohttp.ClientTimeout(total=timeout),
                # Never followed: aiohttp would forward our custom headers (an api-key among them) to
                # whatever origin the Location names.
                allow_redirects=False,
            ) as resp:
                if 200 <= resp.status < 300:
                    length = resp.content_length
                    if length is not None and length < _READ_WHOLE_BELOW:
                        sink.feed(await resp.read())  # one chunk anyway, at less cost than iterating
                        return
                    async for chunk in resp.content.iter_any():
                        sink.feed(chunk)
                    return
                body = await resp.read()
                if 300 <= resp.status < 400:
                    raise ProviderError(ErrorKind.BAD_RESPONSE, f"backend answered HTTP {resp.status}, a redirect; "
                                        "the gateway follows none, so its credentials never reach another "
                                        "origin: set api_base to the final URL")
                raise self._status_error(resp.status, body, resp.headers, secrets)
        except TimeoutError as err:
            raise ProviderError(ErrorKind.TIMEOUT, f"backend did not answer within {timeout:g}s") from err
        except aiohttp.ClientError as err:
            raise ProviderError(ErrorKind.UNAVAILABLE, f"cannot reach backend: {type(err).__name__}") from err

    @staticmethod
    def _status_error(
        status: int, body: bytes, headers: Mapping[str, str], secrets: tuple[str, ...]
    ) -> ProviderError:
        data = _decoded(body)
        kind = _STATUS_KINDS.get(status, ErrorKind.UNAVAILABLE if status >= 500 else ErrorKind.BAD_REQUEST)
        if kind is ErrorKind.BAD_REQUEST and _refuses_credentials(data):
            kind = ErrorKind.AUTH
        if kind is ErrorKind.AUTH:
            # Never relay the vendor's text here: it may quote our (masked) credential.
            return ProviderError(kind, f"backend rejected the gateway's credentials (HTTP {status})")
        message = _upstream_message(body, data, secrets)
        if name := _error_type(headers):
            message = f"{name}: {message}"
        return ProviderError(kind, f"backend HTTP {status}: {message}", retry_after=_retry_after(headers, data),
                             input_index=_blamed_input(data) if kind is ErrorKind.BAD_REQUEST else None)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
