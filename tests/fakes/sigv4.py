"""SigV4 checked the way an AWS service checks it, written from AWS's description and not with botocore, so
a fake proves the gateway's signatures rather than botocore agreeing with itself.

The service rebuilds the canonical request from what it received (method, the path as sent with every
segment encoded once more, query, the signed headers, the body's SHA-256), derives the signing key from the
secret it holds for the access key, and compares signatures.
https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=5)  # AWS refuses a request signed further from its own clock
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r" ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?Signature=(?P<signature>[0-9a-f]{64})")


@dataclass(frozen=True)
class Refusal:
    """Why AWS would refuse the request: its error type and message (HTTP 403)."""

    error_type: str
    message: str


def canonical_uri(raw_path: str) -> str:
    """The path as received, each segment encoded again: every AWS service but S3 signs it that way."""
    return quote(raw_path, safe="/~")


def canonical_query(query: str) -> str:
    pairs = sorted(tuple(part.split("=", 1)) if "=" in part else (part, "") for part in query.split("&") if part)
    return "&".join(f"{k}={v}" for k, v in pairs)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def verify(method: str, raw_target: str, headers: Mapping[str, str], body: bytes, *, secrets: Mapping[str, str],
           service: str, region: str, now: datetime | None = None) -> Refusal | None:
    """None when the request is signed by a known key for `service` in `region`; else AWS's refusal.
    `headers` must look names up case-insensitively (aiohttp's and multidict's do)."""
    match = _AUTHORIZATION.fullmatch(headers.get("Authorization", ""))
    if match is None:
        return Refusal("MissingAuthenticationTokenException", "Missing Authentication Token")
    if match["key"] not in secrets:
        return Refusal("UnrecognizedClientException", "The security token included in the request is invalid.")
    stamp = headers.get("X-Amz-Date", "")
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return Refusal("IncompleteSignatureException", "Authorization header requires existence of X-Amz-Date.")
    if not stamp.startswith(match["date"]) or (match["region"], match["service"]) != (region, service):
        return Refusal("InvalidSignatureException", f"Credential should be scoped to {region}/{service} "
                                                    f"on the date of X-Amz-Date.")
    if abs((now or datetime.now(UTC)) - signed_at) > MAX_SKEW:
        return Refusal("InvalidSignatureException", "Signature expired: the request time is too far from ours.")
    signed = match["signed"].split(";")
    unsigned = {"host", "x-amz-date"} - set(signed)
    unsigned |= {name.lower() for name in headers if name.lower().startswith("x-amz-")} - set(signed)
    if unsigned:
        return Refusal("InvalidSignatureException", f"Headers that must be signed are not: {sorted(unsigned)}")
    if any(name not in headers for name in signed):
        return Refusal("InvalidSignatureException", "A signed header is missing from the request.")
    path, _, query = raw_target.partition("?")
    canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed)
    canonical_request = "\n".join([method.upper(), canonical_uri(path), canonical_query(query), canonical_headers,
                                   match["signed"], hashlib.sha256(body).hexdigest()])
    scope = f"{match['date']}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = signing_key(secrets[match["key"]], match["date"], region, service)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["signature"]):
        return Refusal("InvalidSignatureException", "The request signature we calculated does not match the "
                                                    "signature you provided. Check your AWS Secret Access Key "
                                                    "and signing method.")
    return None
