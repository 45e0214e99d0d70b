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

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ProviderName = Literal["openai", "anthropic", "local", "scripted"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    provider: ProviderName
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
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


class StreamSettings(_Strict):
    ping_interval: float = Field(default=15.0, gt=0)
    send_timeout: float = Field(default=30.0, gt=0)
    resume_grace: float = Field(default=30.0, ge=0)
    retention: float = Field(default=300.0, ge=0)


def default_models() -> dict[str, ModelConfig]:
    return {
        "demo": ModelConfig(provider="scripted"),
    }


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
    streams: StreamSettings = Field(default_factory=StreamSettings)
    log_level: str = "info"

    _toml_file: Path | None = None

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
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, toml_path)) from exc
    except ValueError as exc:
        raise ConfigError(f"{toml_path or 'settings'}: {exc}") from exc
    finally:
        _toml_path_var["path"] = None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = str(path) if path else "settings"
    lines = [f"{where}: invalid configuration"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)
