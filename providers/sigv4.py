"""AWS Signature Version 4 and AWS credentials, through botocore, behind a narrow typed wrapper.

botocore is an optional extra (`pip install 'embedgate[bedrock]'`): it is imported here only, on first use,
so a gateway without AWS deployments never needs it. botocore computes the signature (`SigV4Auth`, the
canonical request with its twice-encoded path) and finds credentials the way every AWS SDK does.
https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html
https://docs.aws.amazon.com/sdkref/latest/guide/standardized-credentials.html
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

EXTRA_HINT = "the bedrock provider signs with botocore: pip install 'embedgate[bedrock]'"


def _botocore() -> Any:
    """botocore's auth, awsrequest, credentials and session modules, or an ImportError naming the extra."""
    try:
        import botocore.auth
        import botocore.awsrequest
        import botocore.credentials
        import botocore.session
    except ImportError as err:
        raise ImportError(EXTRA_HINT) from err
    return SimpleNamespace(auth=botocore.auth, awsrequest=botocore.awsrequest,
                           credentials=botocore.credentials, session=botocore.session)


@dataclass(frozen=True, slots=True)
class FrozenCredentials:
    """One consistent reading of a set of credentials, good for one signature."""

    access_key: str
    secret_key: str
    token: str | None = None

    def secrets(self) -> tuple[str, ...]:
        """What must never appear in text the gateway passes on."""
        return tuple(s for s in (self.secret_key, self.token) if s)


class AwsCredentials:
    """Credentials as botocore holds them: fixed ones, or ones it refreshes before they expire
    (an instance or container role, SSO, an assumed role)."""

    def __init__(self, source: Any) -> None:
        self._source = source

    @classmethod
    def static(cls, access_key: str, secret_key: str, token: str | None = None) -> AwsCredentials:
        return cls(_botocore().credentials.Credentials(access_key, secret_key, token))

    @classmethod
    def from_chain(cls, profile: str | None = None) -> AwsCredentials:
        """The usual AWS chain: environment variables, shared credentials and config files (`profile`),
        SSO, container and instance roles. Blocking: it may ask the instance metadata service."""
        found = _botocore().session.Session(profile=profile).get_credentials()
        if found is None:
            raise RuntimeError("no AWS credentials found: set aws_access_key_id and aws_secret_access_key, or "
                               "provide them the usual AWS way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                               "~/.aws/credentials, an instance or container role)")
        return cls(found)

    def refresh_due(self) -> bool:
        """Whether reading them now would refresh them (a blocking call to AWS): read those off the loop."""
        due = getattr(self._source, "refresh_needed", None)
        return bool(due()) if callable(due) else False

    def frozen(self) -> FrozenCredentials:
        current = self._source.get_frozen_credentials()
        return FrozenCredentials(current.access_key, current.secret_key, current.token or None)


def chain_region(profile: str | None = None) -> str | None:
    """The region the AWS environment names: AWS_REGION, else what botocore reads (AWS_DEFAULT_REGION, the profile)."""
    region = os.environ.get("AWS_REGION") or _botocore().session.Session(profile=profile).get_config_variable("region")
    return str(region) if region else None


def sign(credentials: FrozenCredentials, service: str, region: str, url: str, body: bytes,
         headers: Mapping[str, str]) -> dict[str, str]:
    """`headers` plus X-Amz-Date, X-Amz-Security-Token (temporary credentials) and Authorization for a POST of
    `body` to `url`. `url` is sent exactly as given: its path must already be encoded the way AWS encodes it."""
    boto = _botocore()
    request = boto.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    frozen = boto.credentials.ReadOnlyCredentials(credentials.access_key, credentials.secret_key, credentials.token)
    boto.auth.SigV4Auth(frozen, service, region).add_auth(request)
    return {str(name): str(value) for name, value in request.headers.items()}
