"""The provider contract.

A provider is built once per configured model and shared by every request for it.

``stream(request)`` is an async generator of :data:`~tokenrelay.events.ProviderEvent`:

* yield ``Accepted()`` once the upstream has taken the request (HTTP 200 received, the local
  model dequeued it); an error raised before it is answered as an HTTP status, after it as an
  error event in the stream;
* yield ``Queued(position)`` while waiting for a busy backend;
* yield ``TextDelta`` for text (whole characters only), at most one ``Usage``, and end with
  exactly one ``Finish``;
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
from typing import ClassVar, Literal

from tokenrelay.chat import ChatRequest
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


class Provider(abc.ABC):
    name: ClassVar[str]

    def __init__(self, model_name: str, config: ModelConfig, context: ProviderContext) -> None:
        self.model_name = model_name
        self.config = config
        self.context = context

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

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        """Yield the events of one generation; see the module docstring for the contract."""

    async def prepare(self) -> None:  # noqa: B027 - most providers have nothing to load.
        """Load ahead what the first request would otherwise wait for; must not raise."""

    async def aclose(self) -> None:  # noqa: B027 - most providers own nothing to close.
        """Release what the provider owns; called once at shutdown."""


ProviderFactory = Callable[[str, ModelConfig, ProviderContext], Provider]
PROVIDERS: dict[str, ProviderFactory] = {}


def register(name: str, factory: ProviderFactory) -> None:
    PROVIDERS[name] = factory


def build_provider(name: str, config: ModelConfig, context: ProviderContext) -> Provider:
    _register_builtins()
    try:
        factory = PROVIDERS[config.provider]
    except KeyError:
        raise ValueError(f"models.{name}: unknown provider {config.provider!r}") from None
    return factory(name, config, context)


def _register_builtins() -> None:
    if PROVIDERS:
        return
    from tokenrelay.providers import scripted

    register("scripted", scripted.ScriptedProvider)
    for module_name, class_name in (
        ("openai", "OpenAIProvider"),
        ("anthropic", "AnthropicProvider"),
        ("local", "LocalProvider"),
    ):
        _register_lazy(module_name, class_name)


def _register_lazy(module_name: str, class_name: str) -> None:
    """Import a provider module only when a model uses it (``local`` needs an extra)."""

    def factory(name: str, config: ModelConfig, context: ProviderContext) -> Provider:
        import importlib

        module = importlib.import_module(f"tokenrelay.providers.{module_name}")
        cls: ProviderFactory = getattr(module, class_name)
        return cls(name, config, context)

    register(module_name, factory)
