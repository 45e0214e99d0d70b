"""Deterministic tokens, delays and faults: for tests, benchmarks and demos.

The script comes from the model's ``options`` in the config, overridden per request by a
``script`` object in the request body (every wire accepts it)::

    {"script": {"text": "Hello 👋 world", "delay": 0.05, "error_after": 2}}

Text is carried as UTF-8 bytes and decoded incrementally, exactly as a network provider must,
so ``split_utf8`` exercises the same path a real upstream splitting a character would.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenrelay import errors
from tokenrelay.chat import ChatRequest
from tokenrelay.events import Accepted, Finish, ProviderEvent, TextDelta, Usage
from tokenrelay.providers.base import Provider

_WORDS = re.compile(r"\s*\S+|\s+$")


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


def parse_script(*layers: dict[str, object] | None) -> Script:
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update(layer or {})
    try:
        return Script.model_validate(merged)
    except ValidationError as exc:
        raise errors.invalid_request(exc, "script") from None


def _tokens(script: Script, request: ChatRequest) -> list[str]:
    if script.tokens is not None:
        return script.tokens * script.repeat
    text = script.text
    if text is None and script.echo == "history":
        text = " | ".join(f"{m.role}: {m.content}" for m in request.messages)
    elif text is None:
        heard = request.last_user_text().strip() or "nothing"
        text = f"You said: {heard}"
    return _WORDS.findall(text) * script.repeat


def _chunks(tokens: list[str], split: bool) -> list[bytes]:
    """The byte chunks a network would deliver; with ``split``, cut inside characters."""
    if not split:
        return [token.encode() for token in tokens]
    data = "".join(tokens).encode()
    # A stride of 3 cuts every 4-byte emoji and most 3-byte CJK characters mid-sequence.
    return [data[i : i + 3] for i in range(0, len(data), 3)]


class ScriptedProvider(Provider):
    name = "scripted"

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        script = parse_script(self.config.options.get("script"), request.script)
        if script.accept_delay:
            await asyncio.sleep(script.accept_delay)
        if script.fail:
            raise errors.from_code(
                script.fail, f"scripted failure: {script.fail}", retry_after=script.retry_after
            )
        yield Accepted()
        if script.first_delay:
            await asyncio.sleep(script.first_delay)

        chunks = _chunks(_tokens(script, request), script.split_utf8)
        limit = request.max_tokens
        decoder = codecs.getincrementaldecoder("utf-8")()
        sent = 0
        finish_reason = script.finish_reason
        for index, chunk in enumerate(chunks):
            if script.hang_after == index:
                await asyncio.Event().wait()
            if script.error_after == index:
                raise errors.from_code(script.error_code, f"scripted failure after {index} tokens")
            if script.truncate_after == index:
                raise errors.UpstreamError("upstream ended the stream early (truncated)")
            if limit is not None and sent >= limit:
                finish_reason = "length"
                break
            if index and script.delay:
                await asyncio.sleep(script.delay)
            text = decoder.decode(chunk)
            sent += 1
            if text:
                yield TextDelta(text)
        if script.hang_after is not None and script.hang_after >= len(chunks):
            await asyncio.Event().wait()
        tail = decoder.decode(b"", final=True)
        if tail:
            yield TextDelta(tail)
        if script.usage:
            prompt = sum(len(_WORDS.findall(m.content)) for m in request.messages)
            yield Usage(prompt_tokens=prompt, completion_tokens=sent)
        yield Finish(finish_reason)
