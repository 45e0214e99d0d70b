"""The local model's own process: llama.cpp behind a line protocol on stdin and stdout.

The supervisor runs it as ``python -m tokenrelay.providers.local.worker``; the gateway never
imports it. Native code runs here only, so a segfault, an abort or the kernel's out-of-memory
killer ends this process, not the gateway, and the supervisor starts another.

One JSON object per line, each way. The first line in is the load configuration; the worker
answers ``{"ready": {"n_ctx"}}`` once the model has loaded and generated a token, or
``{"fatal": message}`` and exits. Then requests, each with an ``id`` its answers carry::

    {"op": "prompt", "messages"}     -> {"tokens"} | {"error", "code"}
    {"op": "count", "text"}          -> {"count"}
    {"op": "generate", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed"}
                                     -> {"text", "decoded"}…, then
                                        {"end", "tokens", "finish", "decoded"[, "error"]}
    {"op": "cancel"}                 -> the generation stops within a token and sends its end

Generations run one at a time on a decode thread, in the order they came; prompt, count and
cancel are answered by the reading thread at once, also while a generation runs (tokenizing
only reads the vocabulary). ``decoded`` counts every token decoded since the worker started.
End of input means the gateway is gone: the worker exits at once.
"""

from __future__ import annotations

import ctypes
import os
import queue
import random
import re
import resource
import sys
import threading
from typing import IO, Any

import orjson

from tokenrelay.providers.local.grammar import GrammarError, grammar_of
from tokenrelay.providers.local.text import TextAssembler

# Content stands in the rendered template as these markers, so that the template's own markup
# is tokenized with its special tokens and the users' text never is: typing
# "<|im_start|>system" in a message must stay text, not become a turn of its own.
_MARK = "\ue000{}\ue001"
_MARKED = re.compile("\ue000(\\d+)\ue001")


class Output:
    """The protocol's half of stdout; lines from two threads never interleave."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = orjson.dumps(message) + b"\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


class Generation:
    __slots__ = ("cancelled", "request")

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.cancelled = threading.Event()


class Model:
    """A ``Llama`` and what a generation needs from it."""

    def __init__(self, config: dict[str, Any]) -> None:
        import llama_cpp
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        threads = config["n_threads"]
        self.llama = Llama(
            model_path=config["model_path"],
            # 0 asks llama.cpp for the context length the model was trained with.
            n_ctx=config["n_ctx"] or 0,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.sampling = {
            key: config[key] for key in ("top_k", "min_p", "repeat_penalty") if key in config
        }
        self.decoded = 0
        self._lib: Any = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self._piece = ctypes.create_string_buffer(64)
        self._bos: int = llama_cpp.llama_vocab_bos(self._vocab)
        self._add_bos: bool = llama_cpp.llama_vocab_get_add_bos(self._vocab)
        template = config.get("chat_template") or self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(
                "the GGUF file has no chat template; set options.chat_template for this model"
            )
        self._format = Jinja2ChatFormatter(
            template=template,
            eos_token=self._text_of(self.llama.token_eos()),
            bos_token=self._text_of(self._bos),
        )

    @property
    def n_ctx(self) -> int:
        return int(self.llama.n_ctx())

    def _text_of(self, token: int) -> str:
        return self.piece(token, special=True).decode(errors="replace") if token >= 0 else ""

    def count(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode(), add_bos=False, special=False))

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation rendered by the model's own chat template, tokenized."""
        marked = [{**m, "content": _MARK.format(i)} for i, m in enumerate(messages)]
        rendered = self._format(messages=marked).prompt  # type: ignore[arg-type]
        tokens: list[int] = []
        for index, part in enumerate(_MARKED.split(rendered)):
            if index % 2:
                text, special = messages[int(part)]["content"], False
            else:
                text, special = part, True  # the template's own markup
            if text:
                tokens += self.llama.tokenize(text.encode(), add_bos=False, special=special)
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

    def self_test(self) -> None:
        """Decode one token, so a build that cannot compute on this CPU fails here, at load."""
        tokens = self.llama.generate(self.prompt_tokens([{"role": "user", "content": "Hi"}]))
        try:
            next(tokens)
        finally:
            tokens.close()
        self.llama.reset()  # type: ignore[no-untyped-call]  # unannotated upstream

    def generate(self, job: Generation, out: Output) -> None:
        request = job.request
        llama = self.llama
        if request.get("seed") is not None:
            llama.set_seed(request["seed"])
            # Re-evaluating a cached prompt prefix shifts the logits a little, enough to
            # change what a seeded sampler draws: a seed must mean the same text every time.
            llama.reset()  # type: ignore[no-untyped-call]
        else:
            llama.set_seed(random.getrandbits(31))
        ident, produced, finish, stopped = request["id"], 0, "length", False
        assembler = TextAssembler(request.get("stop"))
        grammar = request.get("grammar")
        tokens = llama.generate(
            request["prompt"],
            temp=request["temperature"],
            top_p=request["top_p"],
            grammar=None if grammar is None else self._lib.LlamaGrammar.from_string(grammar),
            **self.sampling,
        )
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    finish = "cancelled"
                    break
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                self.decoded += 1
                produced += 1
                text, stopped = assembler.feed(self.piece(token))
                if text:
                    out.send({"id": ident, "text": text, "decoded": self.decoded})
                if stopped:
                    finish = "stop"
                    break
                if produced >= request["max_tokens"]:
                    break
        finally:
            tokens.close()
        # Text held back for a stop string that never came is the reply's own; after a stop
        # string (or a cancel) there is nothing more to say.
        tail = "" if stopped or finish == "cancelled" else assembler.finish()
        if tail:
            out.send({"id": ident, "text": tail, "decoded": self.decoded})
        out.send(self.end(ident, produced, finish))

    def end(self, ident: int, tokens: int, finish: str, error: str | None = None) -> dict[str, Any]:
        """A generation's last line."""
        end = {"id": ident, "end": True, "tokens": tokens, "finish": finish}
        return end | {"decoded": self.decoded} | ({"error": error} if error else {})


def _decode_forever(
    model: Model, jobs: queue.Queue[Generation], running: dict[int, Generation], out: Output
) -> None:
    while True:
        job = jobs.get()
        ident = job.request["id"]
        try:
            if not job.cancelled.is_set():
                model.generate(job, out)
            else:  # cancelled while it waited: not even its prompt is evaluated
                out.send(model.end(ident, 0, "cancelled"))
        except Exception as exc:  # a failure of this generation, not of the process
            out.send(model.end(ident, 0, "error", str(exc) or type(exc).__name__))
        finally:
            # Read by the other thread; a single dict operation is atomic under the GIL.
            running.pop(ident, None)


def _answer(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    ident = request["id"]
    if request["op"] == "count":
        return {"id": ident, "count": model.count(request["text"])}
    if request["op"] == "grammar":
        try:
            return {"id": ident, "grammar": grammar_of(request["format"])}
        except GrammarError as exc:
            return {"id": ident, "code": "invalid_request", "error": str(exc)}
    try:
        return {"id": ident, "tokens": model.prompt_tokens(request["messages"])}
    except Exception as exc:
        return {
            "id": ident,
            "code": "invalid_request",
            "error": f"the model's chat template rejected these messages: {exc}",
        }


def serve(lines: IO[bytes], out: Output) -> None:
    config = orjson.loads(lines.readline())
    try:
        model = Model(config)
        model.self_test()
    except Exception as exc:
        out.send({"fatal": f"could not load the model {config['model_path']}: {exc}"})
        return
    out.send({"ready": {"n_ctx": model.n_ctx}})
    jobs: queue.Queue[Generation] = queue.Queue()
    running: dict[int, Generation] = {}
    threading.Thread(target=_decode_forever, args=(model, jobs, running, out), daemon=True).start()
    for line in lines:
        request = orjson.loads(line)
        op = request["op"]
        if op == "generate":
            job = running[request["id"]] = Generation(request)
            jobs.put(job)
        elif op == "cancel":
            cancelled = running.pop(request["id"], None)
            if cancelled is not None:
                cancelled.cancelled.set()
        else:
            out.send(_answer(model, request))


def main() -> None:
    # A crash must not write a core file the size of the model into the working directory.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # The protocol owns the real stdout; anything native code prints goes to stderr instead.
    out = Output(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)
    serve(sys.stdin.buffer, out)
    # End of input: the gateway is gone or closing. Leave without waiting for the decoder.
    os._exit(0)


if __name__ == "__main__":
    main()
