"""The config file: YAML, `${VAR}` / `${VAR:-default}` from the environment, pydantic-validated.

Parsed once at start-up into frozen models; nothing reads the environment or the
file after that.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"
OPENAI_MAX_INPUT_TOKENS = 8192
TEAM_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # team names appear in store keys and hash tags


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)


class CacheSettings(_Frozen):
    enabled: bool = True
    ttl: int = Field(7 * 24 * 3600, ge=1, description="seconds an entry lives")
    max_entry_bytes: int = Field(64 * 1024, ge=16)
    charge_hits: bool = True


class ModelCacheSettings(_Frozen):
    """Per-model override of the global cache settings; unset fields inherit."""

    enabled: bool | None = None
    ttl: int | None = Field(None, ge=1)
    max_entry_bytes: int | None = Field(None, ge=16)


class Limits(_Frozen):
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    tokens_per_day: int | None = Field(default=None, ge=0)
    tokens_per_month: int | None = Field(default=None, ge=0)


class ModelEntry(_Frozen):
    """One model string clients may send, and the backend that serves it."""

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    provider: str
    upstream_model: str | None = None
    api_base: str | None = None
    api_key: SecretStr | None = None
    dimensions: int | None = Field(None, ge=1)
    supports_dimensions: bool = False
    matryoshka: bool = False
    max_input_tokens: int = Field(OPENAI_MAX_INPUT_TOKENS, ge=1)
    max_batch_size: int = Field(2048, ge=1, description="most inputs the backend takes per call")
    timeout: float = Field(60.0, gt=0)
    upstream_encoding: Literal["base64", "float"] = "base64"
    headers: dict[str, str] = Field(default_factory=dict)
    # local provider
    device: str = "auto"
    path: str | None = None
    # cache
    revision: str = "1"
    cache: ModelCacheSettings | None = None

    @property
    def is_pattern(self) -> bool:
        return "*" in self.name

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> ModelEntry:
        if self.name.count("*") > 1 or (self.is_pattern and not self.name.endswith("*")):
            raise ValueError(f"model pattern {self.name!r}: only one trailing '*' is supported")
        if self.matryoshka and not self.supports_dimensions:
            raise ValueError(f"model {self.name!r}: matryoshka: true needs supports_dimensions: true")
        return self


class StaticKey(_Frozen):
    """A key declared in the config (GitOps). Give the secret itself or its sha256 hex."""

    key: SecretStr | None = None
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    id: str | None = None
    team: str = Field(pattern=TEAM_PATTERN)
    name: str | None = None
    models: tuple[str, ...] | None = None
    limits: Limits = Limits()

    @model_validator(mode="after")
    def _one_secret(self) -> StaticKey:
        if (self.key is None or not self.key.get_secret_value()) == (self.key_sha256 is None):
            raise ValueError("a static key needs exactly one of 'key' or 'key_sha256'")
        return self


class AuthSettings(_Frozen):
    master_key: SecretStr | None = None
    keys: tuple[StaticKey, ...] = ()
    key_cache_ttl: float = Field(60.0, ge=0, description="how long a verified key outlives a store outage")

    @field_validator("master_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class StoreSettings(_Frozen):
    url: str = "memory://"
    cluster: bool = False
    prefix: str = "eg"
    on_error: Literal["allow", "deny"] = "allow"
    timeout: float = Field(1.0, gt=0)
    max_connections: int = Field(default=256, ge=1, description="pooled connections per Redis node")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        schemes = ("memory://", "redis://", "rediss://", "redis+cluster://", "unix://")
        if not value.startswith(schemes):
            raise ValueError(f"store url must start with one of {', '.join(schemes)}")
        return value


class Settings(_Frozen):
    server: ServerSettings = ServerSettings()
    models: tuple[ModelEntry, ...] = ()
    store: StoreSettings = StoreSettings()
    auth: AuthSettings = AuthSettings()
    cache: CacheSettings = CacheSettings()

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for entry in self.models:
            for name in (entry.name, *entry.aliases):
                if name in seen:
                    raise ValueError(f"model name {name!r} is declared twice")
                seen.add(name)
        return self


def default_settings() -> Settings:
    """What `embedgate serve` runs with no config: the bundled local model, in-process store."""
    return Settings(models=(ModelEntry(name=DEFAULT_LOCAL_MODEL, provider="local"),))


class ConfigError(Exception):
    """The config file is unreadable or invalid; the message names the field."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | os._Environ[str] | None = None) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a loaded YAML tree."""
    environ = os.environ if env is None else env
    if isinstance(value, str):
        return _VAR.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    return value


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"{where}: {problem['msg']}")
    return "; ".join(lines)


def parse_settings(raw: Any) -> Settings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config must be a YAML mapping at the top level")
    try:
        settings = Settings.model_validate(interpolate(raw))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from err
    if not settings.models:
        settings = settings.model_copy(update={"models": default_settings().models})
    return settings


def load_settings(path: str | Path | None) -> Settings:
    """Load `path`, or the embedded default when `path` is None."""
    if path is None:
        return default_settings()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    return parse_settings(raw)
