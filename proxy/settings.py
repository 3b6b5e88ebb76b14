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

from providers.registry import PROVIDERS, AnyDeployment

DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"
OPENAI_MAX_INPUT_TOKENS = 8192
TEAM_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # team names appear in store keys and hash tags


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    workers: int = Field(1, ge=1, description="processes serving the port (SO_REUSEPORT)")
    drain_grace: float = Field(5.0, ge=0, description="seconds the listener stays open after SIGTERM, /readyz 503")
    drain_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests get once the listener closes")


class MetricsSettings(_Frozen):
    """Where `/metrics` is served: on the main port by default; `port` moves it to a port of its own (the main
    port then answers 404 there), `token` requires `Authorization: Bearer <token>` wherever it is served."""

    port: int | None = Field(None, ge=1, le=65535)
    host: str | None = Field(None, description="the metrics port's address; default: server.host")
    token: SecretStr | None = None

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class TracingSettings(_Frozen):
    """OpenTelemetry traces (the `otel` extra), off by default. Standard OTEL_* variables configure the
    exporter further (headers, certificates); `endpoint` wins over OTEL_EXPORTER_OTLP_ENDPOINT."""

    enabled: bool = False
    endpoint: str | None = None  # a base URL; default: the exporter's (localhost:4318 for http, :4317 for grpc)
    protocol: Literal["http", "grpc"] = "http"
    service_name: str = "embedgate"
    sample_ratio: float = Field(1.0, ge=0, le=1, description="of traces started here; a caller's decision wins")


class StoreSettings(_Frozen):
    url: str = "memory://"
    cluster: bool = False
    prefix: str = "eg"
    on_error: Literal["allow", "deny"] = "allow"
    timeout: float = Field(1.0, gt=0)
    max_connections: int | None = Field(
        default=None, ge=1, description="pooled connections per Redis node; default 64 on one Redis (a burst past "
        "them waits for one), 256 on a cluster or behind Sentinel (whose pools fail a burst past them)")
    # While the store is down, charges and usage are kept in process (proxy/ledger.py) and written
    # when it returns; past this many distinct counters, usage keeps per-key totals only.
    max_pending: int = Field(default=100_000, ge=100, description="counters kept in process during an outage")
    spill_dir: Path | None = Field(default=Path("data/spill"),
                                   description="where pending accounting is written at shutdown; null: lost")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        schemes = ("memory://", "redis://", "rediss://", "redis+cluster://", "redis+sentinel://", "unix://")
        if not value.startswith(schemes):
            raise ValueError(f"store url must start with one of {', '.join(schemes)}")
        return value


class CacheSettings(_Frozen):
    enabled: bool = True
    # team: entries are per team, so no key holder learns what another team embedded; global: shared
    # across teams (more hits), accepting that side channel.
    scope: Literal["team", "global"] = "team"
    ttl: int = Field(7 * 24 * 3600, ge=1, description="seconds an entry lives")
    max_entry_bytes: int = Field(64 * 1024, ge=16)
    charge_hits: bool = True
    # A Redis of its own for embedding entries (maxmemory + allkeys-lru), apart from keys, limits and usage
    # (noeviction + AOF: an evicted quota counter is a reset limit). Default: the one `store`.
    store: StoreSettings | None = None


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


# Fields of the model itself; every other key of a short-form entry belongs to its one deployment.
_ENTRY_FIELDS = frozenset({
    "name", "aliases", "dimensions", "supports_dimensions", "matryoshka", "max_input_tokens", "revision", "cache",
    "same_space_as", "fallbacks", "strategy", "ignore_input_type", "deployments",
})


class ModelEntry(_Frozen):
    """One model string clients may send (or a `prefix/*` pattern), and the deployments that serve it.

    Every deployment of one entry serves the same embedding space, by definition; `same_space_as`
    declares another entry's space the same, and only such entries may be `fallbacks`.
    """

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    dimensions: int | None = Field(None, ge=1, description="native output size")
    supports_dimensions: bool = False
    matryoshka: bool = False
    max_input_tokens: int = Field(OPENAI_MAX_INPUT_TOKENS, ge=1)
    revision: str = "1"
    cache: ModelCacheSettings | None = None
    same_space_as: str | None = None
    fallbacks: tuple[str, ...] = ()
    strategy: Literal["weighted", "least_inflight", "latency"] = "weighted"
    ignore_input_type: bool = False  # let `input_type` through to deployments that have no such notion
    deployments: tuple[AnyDeployment, ...] = Field(min_length=1)

    @property
    def is_pattern(self) -> bool:
        return "*" in self.name

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        """`provider: ...` and its options directly in the entry: one deployment, as configs always had."""
        if not isinstance(data, dict):
            return data
        if "deployments" not in data:
            deployment = {k: v for k, v in data.items() if k not in _ENTRY_FIELDS}
            data = {**{k: v for k, v in data.items() if k in _ENTRY_FIELDS}, "deployments": [deployment]}
        if isinstance(data["deployments"], list | tuple):
            data = {**data, "deployments": _named(str(data.get("name")), data["deployments"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelEntry:
        if self.name.count("*") > 1 or (self.is_pattern and not self.name.endswith("*")):
            raise ValueError(f"model pattern {self.name!r}: only one trailing '*' is supported")
        if self.matryoshka and not self.supports_dimensions:
            raise ValueError(f"model {self.name!r}: matryoshka: true needs supports_dimensions: true")
        if self.is_pattern and (self.same_space_as or self.fallbacks):
            raise ValueError(f"model pattern {self.name!r}: a pattern is its own space; no same_space_as/fallbacks")
        return self


def _named(model: str, deployments: list[Any] | tuple[Any, ...]) -> list[Any]:
    """Unnamed deployments get `<model>/<provider>`, numbered when one model has several of a provider."""
    def field(deployment: Any, name: str) -> Any:
        return deployment.get(name) if isinstance(deployment, dict) else getattr(deployment, name, None)

    providers = [field(d, "provider") for d in deployments]
    named = []
    for index, deployment in enumerate(deployments):
        if isinstance(deployment, dict) and deployment.get("name") is None and isinstance(providers[index], str):
            suffix = f"-{index}" if providers.count(providers[index]) > 1 else ""
            deployment = {**deployment, "name": f"{model}/{providers[index]}{suffix}"}
        named.append(deployment)
    return named


class DispatchSettings(_Frozen):
    """Retries, backoff and breakers: how the gateway keeps answering when a deployment does not."""

    deadline: float = Field(120.0, gt=0, description="seconds for all upstream work of one request")
    max_attempts: int = Field(4, ge=1, description="tries of one part, across deployments")
    backoff_base: float = Field(0.1, ge=0, description="first retry delay; doubles, with full jitter")
    backoff_max: float = Field(5.0, ge=0)
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open a deployment's breaker")
    breaker_cooldown: float = Field(30.0, gt=0, description="seconds an open breaker waits before one probe")


class FilesSettings(_Frozen):
    """Uploaded and produced files (Files API): bytes in a directory, metadata in the store."""

    dir: Path = Field(Path("data/files"), description="where file bytes live; replicas share it (a volume)")
    max_bytes: int = Field(200 * 1024 * 1024, ge=1, description="largest upload")
    max_lines: int = Field(50_000, ge=1, description="most lines of a batch input file")
    retention_days: float = Field(30.0, gt=0, description="files older than this are deleted")


class BatchSettings(_Frozen):
    """The Batch API's workers: every replica runs `workers` of them over one Redis Stream."""

    max_share: float = Field(0.5, gt=0, le=1, description="share of the team's limits a batch may use")
    chunk_lines: int = Field(500, ge=1, description="lines per unit of work")
    lease_seconds: float = Field(30.0, gt=0, description="a unit idle this long is taken over by another worker")
    workers: int = Field(2, ge=0, description="worker tasks per process; 0: this replica runs none")
    sweep_seconds: float = Field(60.0, gt=0, description="how often expired batches and old files are swept")
    poll_seconds: float = Field(0.2, gt=0, description="how often an idle worker looks for work")


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


class Settings(_Frozen):
    server: ServerSettings = ServerSettings()
    models: tuple[ModelEntry, ...] = ()
    store: StoreSettings = StoreSettings()
    auth: AuthSettings = AuthSettings()
    cache: CacheSettings = CacheSettings()
    dispatch: DispatchSettings = DispatchSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    files: FilesSettings = FilesSettings()
    batch: BatchSettings = BatchSettings()

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        if self.metrics.port is not None and self.metrics.port == self.server.port:
            raise ValueError("metrics.port must differ from server.port (leave it out to serve /metrics there)")
        seen: set[str] = set()
        for entry in self.models:
            for name in (entry.name, *entry.aliases):
                if name in seen:
                    raise ValueError(f"model name {name!r} is declared twice")
                seen.add(name)
        deployments = [d.name for entry in self.models for d in entry.deployments]
        twice = sorted({name for name in deployments if deployments.count(name) > 1 and name})
        if twice:
            raise ValueError(f"deployment name {twice[0]!r} is used twice")
        check_spaces(self.models)
        return self

    def entry(self, name: str) -> ModelEntry | None:
        return next((e for e in self.models if e.name == name), None)


def space_root(entries: dict[str, ModelEntry], entry: ModelEntry) -> str:
    """The name of the entry whose embedding space `entry` shares (itself unless `same_space_as`)."""
    seen = [entry.name]
    while entry.same_space_as is not None:
        target = entries.get(entry.same_space_as)
        if target is None:
            raise ValueError(f"model {seen[0]!r}: same_space_as {entry.same_space_as!r} is no configured model")
        if target.name in seen:
            raise ValueError(f"model {seen[0]!r}: same_space_as goes round in a circle ({' -> '.join(seen)})")
        if target.dimensions != entry.dimensions:
            raise ValueError(f"model {entry.name!r}: same_space_as {target.name!r}, whose native size differs "
                             f"({entry.dimensions} vs {target.dimensions})")
        seen.append(target.name)
        entry = target
    return entry.name


def check_spaces(models: tuple[ModelEntry, ...]) -> None:
    """Fallbacks stay inside one embedding space: vectors of two models must never meet in one index."""
    entries = {e.name: e for e in models if not e.is_pattern}
    for index, entry in enumerate(models):
        if entry.is_pattern:
            continue
        root = space_root(entries, entry)
        for position, name in enumerate(entry.fallbacks):
            where = f"models[{index}].fallbacks[{position}]"
            other = entries.get(name)
            if other is None or other is entry:
                raise ValueError(f"{where}: {name!r} is not another configured model")
            if entry.dimensions is None or other.dimensions != entry.dimensions:
                raise ValueError(f"{where}: {name!r} has native size {other.dimensions}, {entry.name!r} has "
                                 f"{entry.dimensions}; a fallback must declare the same `dimensions`")
            if space_root(entries, other) != root:
                raise ValueError(f"{where}: {name!r} is another embedding space than {entry.name!r}; "
                                 f"mark it `same_space_as: {root}` if its vectors really are interchangeable")


def default_settings() -> Settings:
    """What `embedgate serve` runs with no config: the bundled local model, in-process store."""
    return Settings(models=(ModelEntry.model_validate({"name": DEFAULT_LOCAL_MODEL, "provider": "local"}),))


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


def _where(loc: tuple[int | str, ...]) -> str:
    """`models[2].deployments[0].api_version`: list positions in brackets, the provider tag pydantic
    inserts for a discriminated union left out (the deployment already says which it is)."""
    text = ""
    for position, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        elif position >= 2 and loc[position - 2] == "deployments" and part in PROVIDERS:
            continue
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _format_validation_error(err: ValidationError) -> str:
    problems = err.errors()
    # A failed item also empties its list ("at least 1 item"): report the item, not the echo.
    locs = [p["loc"] for p in problems]
    kept = [p for p in problems if not any(len(o) > len(p["loc"]) and o[:len(p["loc"])] == p["loc"] for o in locs)]
    lines = []
    for problem in kept:
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{_where(problem['loc'])}: {message}" if problem["loc"] else message)
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
