"""The provider contract.

A provider is built once per configured model and shared by every request for it.

``stream(request)`` is an async generator of :data:`~tokenrelay.events.ProviderEvent`:

* yield ``Accepted()`` once the upstream has taken the request (HTTP 200 received, the local
  model dequeued it); an error raised before it is answered as an HTTP status, after it as an
  error event in the stream;
* yield ``Queued(position)`` while waiting for a busy backend;
* yield ``TextDelta`` for text (whole characters only), ``ReasoningDelta`` /
  ``ReasoningSignature`` for reasoning, ``ToolCallStart``, ``ToolCallDelta``…, ``ToolCallEnd``
  for each tool call (indexed from 0 within the reply), at most one ``Usage``, and end with
  exactly one ``Finish`` (``tool_calls`` when the reply is calls to run);
* honour every :data:`~tokenrelay.chat.Feature` it lists in ``supports``: a request using
  another is refused with a 400 naming the field before anything starts;
* raise a :class:`~tokenrelay.errors.TokenRelayError` for anything that goes wrong, mapping
  foreign exceptions once, at this boundary;
* release everything upstream (connection, decoder slot) in ``finally``: the relay closes the
  generator on cancel, timeout and disconnect, and expects the upstream gone when it returns.

Providers never import web code. ``aclose()`` is called once at shutdown.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tokenrelay.chat import ChatRequest, Feature
from tokenrelay.client import Client
from tokenrelay.config import ModelConfig, Settings
from tokenrelay.events import ProviderEvent

WorkerState = Literal["stopped", "starting", "ready", "restarting"]
WORKER_STATES: tuple[WorkerState, ...] = ("stopped", "starting", "ready", "restarting")


@dataclass(slots=True, frozen=True)
class WorkerHealth:
    """The state of a provider's own worker process (the local model), for operators."""

    state: WorkerState
    restarts: int  # workers started again after one died
    queue_depth: int  # requests waiting for the busy model


@dataclass(slots=True)
class ProviderContext:
    """What a provider may use from the running app (services created in its lifespan)."""

    settings: Settings
    http: Client


class NoOptions(BaseModel):
    """A provider with no options of its own: any key is a typo."""

    model_config = ConfigDict(extra="forbid")


Options = TypeVar("Options", bound=BaseModel)


class Provider(abc.ABC):
    """One configured model. ``Options`` is the pydantic model of its ``options`` table
    (``extra="forbid"``, so a misspelt key is named at start-up)."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    # What beyond plain text the provider honours; ``extra`` means a client dialect's own
    # unmodelled fields, forwarded when the request came in ``dialect`` (None: any).
    supports: ClassVar[frozenset[Feature]] = frozenset()
    dialect: ClassVar[str | None] = None

    def __init__(self, model_name: str, config: ModelConfig, context: ProviderContext) -> None:
        self.model_name = model_name
        self.config = config
        self.context = context
        self.options: BaseModel = parse_options(self.Options, model_name, config.options)

    @property
    def upstream_model(self) -> str:
        return self.config.upstream_model or self.model_name

    @property
    def context_window(self) -> int | None:
        """Tokens the model attends to; a provider that can ask its model overrides this."""
        return self.config.context_window

    def token_counter(self) -> Callable[[str], Awaitable[int]] | None:
        """The model's own tokenizer as a counting function, when the provider has one."""
        return None

    def worker_health(self) -> WorkerHealth | None:
        """The provider's worker process, when it runs one."""
        return None

    def refusal(self, request: ChatRequest) -> str | None:
        """Why this provider cannot honour ``request`` (naming the field), or None."""
        return refusal(type(self), self.model_name, request)

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        """Yield the events of one generation; see the module docstring for the contract."""

    async def prepare(self) -> None:  # noqa: B027 - most providers have nothing to load.
        """Load ahead what the first request would otherwise wait for; must not raise."""

    async def aclose(self) -> None:  # noqa: B027 - most providers own nothing to close.
        """Release what the provider owns; called once at shutdown."""


def refusal(provider: type[Provider], model: str, request: ChatRequest) -> str | None:
    """Why a provider of class ``provider`` serving ``model`` cannot honour ``request``."""
    for feature, field in request.features().items():
        if feature == "extra":
            if "extra" in provider.supports and provider.dialect in (None, request.options.dialect):
                continue
            return (
                f"{field} is not supported by model {model!r}"
                f" (provider {provider.name}): tokenrelay does not model it, and only an"
                f" upstream of the {request.options.dialect} dialect is sent it unchanged"
            )
        if feature not in provider.supports:
            return f"{field} is not supported by model {model!r} (provider {provider.name})"
    return None


ProviderFactory = Callable[[str, ModelConfig, ProviderContext], Provider]
ENTRY_POINTS = "tokenrelay.providers"
# Providers registered by code at run time; they win over an entry point of the same name.
PROVIDERS: dict[str, ProviderFactory] = {}


def register(name: str, factory: ProviderFactory) -> None:
    PROVIDERS[name] = factory


def provider_names() -> list[str]:
    """Every provider a config may name: the entry points (built-ins too) and registered ones."""
    return sorted({*PROVIDERS, *(ep.name for ep in entry_points(group=ENTRY_POINTS))})


def find_factory(provider: str) -> ProviderFactory:
    """The factory for ``provider``, its module imported only now (``local`` needs an extra)."""
    if provider in PROVIDERS:
        return PROVIDERS[provider]
    for entry_point in entry_points(group=ENTRY_POINTS, name=provider):
        factory: ProviderFactory = entry_point.load()
        return factory
    raise KeyError(provider)


def check_models(models: dict[str, ModelConfig]) -> None:
    """Raise ValueError naming the first model whose provider is not installed, or whose
    ``options`` its provider does not take, before anything starts."""
    for name, config in models.items():
        factory = _factory_for(name, config)
        if isinstance(factory, type) and issubclass(factory, Provider):
            parse_options(factory.Options, name, config.options)


def _factory_for(name: str, config: ModelConfig) -> ProviderFactory:
    try:
        return find_factory(config.provider)
    except KeyError:
        raise ValueError(
            f"models.{name}.provider: unknown provider {config.provider!r}"
            f" (installed: {', '.join(provider_names())})"
        ) from None


def build_provider(name: str, config: ModelConfig, context: ProviderContext) -> Provider:
    return _factory_for(name, config)(name, config, context)


def parse_options(options: type[Options], model_name: str, raw: dict[str, Any]) -> Options:
    """A provider's ``options`` table, a typo named by its key (``models.NAME.options.KEY``)."""
    try:
        return options.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"models.{model_name}.options.{key}: {first['msg']}") from None
