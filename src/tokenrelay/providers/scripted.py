"""Deterministic tokens, delays and faults: for tests, benchmarks and demos.

The script comes from the model's ``options`` in the config, overridden per request by a
``script`` object in the request body (every wire accepts it)::

    {"script": {"text": "Hello 👋 world", "delay": 0.05, "error_after": 2}}

A script can also think and call tools: ``reasoning`` (text, sent as reasoning deltas word by
word before the reply, then ``signature`` if given, then each of ``redacted`` as a redacted
reasoning block) and ``tool_calls`` (each ``{"name",
"arguments"?, "id"?, "fragment"?}``: arguments as JSON text or an object, streamed in pieces of
``fragment`` characters after the reply's text; with calls the text defaults to none and the
finish reason to ``tool_calls``)::

    {"script": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"},
                                "fragment": 4}, {"name": "now"}]}}

Text is carried as UTF-8 bytes and decoded incrementally, exactly as a network provider must,
so ``split_utf8`` exercises the same path a real upstream splitting a character would.

A request's script is a client's input like any other: its text and tokens are capped
(``limits.max_script_chars``), tokens are made one at a time as they are sent (``repeat`` never
builds a list), the reply stops at ``max_tokens`` (the configured limit when the request names
none), and a script without delays still lets the event loop run every few tokens.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenrelay import errors
from tokenrelay.chat import ChatRequest, Feature, Message, TextPart, ToolCall, ToolResult
from tokenrelay.events import (
    Accepted,
    Finish,
    ProviderEvent,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from tokenrelay.providers.base import Provider

_WORDS = re.compile(r"\s*\S+|\s+$")
# Chunks sent between two turns of the event loop when a script has no delay: enough to stay
# fast, few enough that no other connection waits more than a fraction of a millisecond.
YIELD_EVERY = 16


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, description="reply text, split into word tokens")
    echo: Literal["last", "history"] = Field(
        default="last", description="without text: repeat the last user message or the history"
    )
    tokens: list[str] | None = Field(default=None, description="exact tokens, overrides text")
    repeat: int = Field(default=1, ge=1, le=1_000_000)
    delay: float = Field(default=0.0, ge=0, le=3600, description="seconds between tokens")
    first_delay: float = Field(default=0.0, ge=0, le=3600, description="before the first token")
    accept_delay: float = Field(default=0.0, ge=0, le=3600, description="before Accepted")
    fail: str | None = Field(default=None, description="error code raised before Accepted")
    retry_after: float | None = None
    error_after: int | None = Field(default=None, ge=0)
    error_code: str = "upstream_error"
    hang_after: int | None = Field(default=None, ge=0)
    truncate_after: int | None = Field(default=None, ge=0)
    split_utf8: bool = False
    finish_reason: str = "stop"
    usage: bool = True
    reasoning: str | None = Field(default=None, description="thought aloud before the reply")
    signature: str | None = Field(default=None, description="the reasoning's signature")
    redacted: list[str] = Field(
        default_factory=list, max_length=128, description="encrypted reasoning blocks' data"
    )
    tool_calls: list[ScriptedCall] = Field(default_factory=list, max_length=128)


class ScriptedCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] | None = None
    id: str | None = None
    fragment: int | None = Field(default=None, ge=1, description="characters per fragment")

    def json_arguments(self) -> str:
        if isinstance(self.arguments, dict):
            return json.dumps(self.arguments)
        return self.arguments or ""


def parse_script(*layers: Mapping[str, object] | None) -> Script:
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update(layer or {})
    try:
        return Script.model_validate(merged)
    except ValidationError as exc:
        raise errors.invalid_request(exc, "script") from None


def _tokens(script: Script, request: ChatRequest) -> Iterator[str]:
    """The reply's tokens, made as they are taken: ``repeat`` never builds a list."""
    if script.tokens is not None:
        tokens = script.tokens
    elif script.text is None and script.tool_calls:
        tokens = []  # a reply that is only calls
    else:
        text = script.text
        if text is None and script.echo == "history":
            text = " | ".join(f"{m.role}: {_said(m)}" for m in request.messages)
        elif text is None:
            heard = request.last_user_text().strip() or "nothing"
            text = f"You said: {heard}"
        tokens = _WORDS.findall(text)
    for _ in range(script.repeat):
        yield from tokens


def _said(message: Message) -> str:
    """A message as the history echo repeats it: its text, its calls and its tool results,
    so a test can see everything that reached the model."""
    said: list[str] = []
    for part in message.parts:
        match part:
            case TextPart(text=text):
                said.append(text)
            case ToolCall(name=name, arguments=arguments):
                said.append(f"{name}({arguments})")
            case ToolResult(call_id=call_id, content=content):
                said.append(f"[{call_id}] {content}")
            case _:
                # Images and reasoning: nothing a scripted model reads.
                pass
    return " ".join(said)


def _chunks(tokens: Iterable[str], split: bool) -> Iterator[bytes]:
    """The byte chunks a network would deliver; with ``split``, cut inside characters."""
    if not split:
        for token in tokens:
            yield token.encode()
        return
    # A stride of 3 cuts every 4-byte emoji and most 3-byte CJK characters mid-sequence.
    pending = b""
    for token in tokens:
        pending += token.encode()
        while len(pending) >= 3:
            yield pending[:3]
            pending = pending[3:]
    if pending:
        yield pending


def _check_size(script: Script, limit: int) -> None:
    size = len(script.text or "") + sum(len(token) for token in script.tokens or ())
    size += len(script.reasoning or "") + len(script.signature or "")
    size += sum(len(data) for data in script.redacted)
    size += sum(len(call.json_arguments()) + len(call.name) for call in script.tool_calls)
    if size > limit or len(script.tokens or ()) > limit:
        raise errors.PayloadTooLarge(
            f"script text and tokens are {size} characters (the limit is {limit})"
        )


class ScriptedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The model's default script; a request's own ``script`` is laid over it.
    script: dict[str, Any] | None = None


class ScriptedProvider(Provider):
    name = "scripted"
    Options = ScriptedOptions
    # A script decides the reply, so every request is honoured; tool calls and reasoning come
    # from the script, never from the request's tools.
    supports = frozenset(get_args(Feature))
    options: ScriptedOptions

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        asked = request.options
        script = parse_script(self.options.script, asked.script)
        limits = self.context.settings.limits
        if asked.script is not None:
            _check_size(script, limits.max_script_chars)
        if script.accept_delay:
            await asyncio.sleep(script.accept_delay)
        if script.fail:
            raise errors.from_code(
                script.fail, f"scripted failure: {script.fail}", retry_after=script.retry_after
            )
        yield Accepted()
        if script.first_delay:
            await asyncio.sleep(script.first_delay)

        thought = 0
        for word in _WORDS.findall(script.reasoning or ""):
            if thought and script.delay:
                await asyncio.sleep(script.delay)
            thought += 1
            yield ReasoningDelta(word)
        if script.signature:
            yield ReasoningSignature(script.signature)
        for data in script.redacted:
            yield RedactedReasoning(data)

        limit = asked.token_limit if asked.token_limit is not None else limits.max_tokens
        decoder = codecs.getincrementaldecoder("utf-8")()
        sent = 0
        finish_reason = script.finish_reason
        cut = False
        for index, chunk in enumerate(_chunks(_tokens(script, request), script.split_utf8)):
            if script.hang_after == index:
                await asyncio.Event().wait()
            if script.error_after == index:
                raise errors.from_code(script.error_code, f"scripted failure after {index} tokens")
            if script.truncate_after == index:
                raise errors.UpstreamError("upstream ended the stream early (truncated)")
            if sent >= limit:
                finish_reason, cut = "length", True
                break
            if index and script.delay:
                await asyncio.sleep(script.delay)
            elif index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            text = decoder.decode(chunk)
            sent += 1
            if text:
                yield TextDelta(text)
        if script.hang_after is not None and script.hang_after >= sent and not cut:
            await asyncio.Event().wait()
        tail = decoder.decode(b"", final=True)
        if tail:
            yield TextDelta(tail)
        if not cut:
            for event in _calls(script.tool_calls):
                if script.delay and isinstance(event, ToolCallDelta):
                    await asyncio.sleep(script.delay)
                yield event
            if script.tool_calls and finish_reason == "stop":
                finish_reason = "tool_calls"
        if script.usage:
            prompt = sum(len(_WORDS.findall(m.text)) for m in request.messages)
            yield Usage(prompt, sent + thought, reasoning_tokens=thought)
        yield Finish(finish_reason)


def _calls(calls: list[ScriptedCall]) -> Iterator[ProviderEvent]:
    for index, call in enumerate(calls):
        yield ToolCallStart(index, call.id or f"call_{index}", call.name)
        arguments = call.json_arguments()
        step = call.fragment or len(arguments) or 1
        for start in range(0, len(arguments), step):
            yield ToolCallDelta(index, arguments[start : start + step])
        yield ToolCallEnd(index)
