"""Anthropic's Messages API, streamed.

The common request becomes a Messages body (:mod:`tokenrelay.providers.anthropic_body`). The
stream (https://docs.anthropic.com/en/api/messages-streaming) maps onto the common events::

    HTTP 200                                   Accepted
    message_start        usage                 prompt tokens (cache reads and writes too)
    content_block_delta  text_delta            TextDelta
    content_block_start  tool_use              ToolCallStart (calls counted from 0)
    content_block_delta  input_json_delta      ToolCallDelta
    content_block_stop   of a tool_use block   ToolCallEnd
    content_block_delta  thinking_delta        ReasoningDelta
    content_block_delta  signature_delta       ReasoningSignature
    content_block_start  redacted_thinking     RedactedReasoning
    message_delta        stop_reason           finish reason; usage: completion tokens
    message_stop                               Usage, Finish
    error                error.type            the mapped TokenRelayError
    ping, other blocks (server tools, …)       ignored

The forced tool that stands for ``response_format`` is read as text: its input is the reply,
and its ``tool_use`` stop is a plain ``stop``.

A stream that ends before ``message_stop`` was truncated and fails as ``upstream_error``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, get_args

import orjson

from tokenrelay import errors
from tokenrelay.chat import ChatRequest, Feature
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
from tokenrelay.providers._http import (
    drain,
    error_for_status,
    open_stream,
    read_chunk,
    read_upstream_json,
    redact,
    retry_after,
)
from tokenrelay.providers.anthropic_body import FORMAT_TOOL, build_body
from tokenrelay.providers.base import Provider
from tokenrelay.providers.sse import SSEDecoder, SSEEvent

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

# https://docs.anthropic.com/en/api/errors; the type wins over the HTTP status when both exist.
ERROR_TYPES: dict[str, type[errors.TokenRelayError]] = {
    "invalid_request_error": errors.InvalidRequest,
    "request_too_large": errors.PayloadTooLarge,
    "rate_limit_error": errors.UpstreamRateLimited,
    "overloaded_error": errors.UpstreamUnavailable,
    "timeout_error": errors.UpstreamTimeout,
    "api_error": errors.UpstreamError,
    "not_found_error": errors.NotFound,
}
FINISH_OF_STOP_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


def error_from_body(
    body: object, status: int | None, secret: str | None, *, wait: float | None = None
) -> errors.TokenRelayError:
    """The error an Anthropic error body (an HTTP answer or an ``error`` event) stands for."""
    kind: object = None
    message: object = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        kind = body["error"].get("type")
        message = body["error"].get("message")
    elif isinstance(body, str):
        message = body
    if not isinstance(message, str) or not message:
        message = kind if isinstance(kind, str) else f"HTTP {status}" if status else "no error"
    text = f"anthropic upstream: {redact(message, secret)}"
    if kind == "invalid_request_error" and "prompt is too long" in text:
        return errors.ContextLengthExceeded(text)
    factory = ERROR_TYPES.get(kind) if isinstance(kind, str) else None
    if factory is not None:
        return factory(text, retry_after=wait)
    if status is not None:
        return error_for_status(status, text, retry_after=wait)
    # authentication_error, permission_error, billing_error…: the gateway's account is at fault.
    return errors.UpstreamError(text, retry_after=wait)


class MessageStream:
    """Turn one Messages stream's SSE events into the common events."""

    def __init__(self, secret: str | None, *, formatted: bool = False) -> None:
        self.secret = secret
        # response_format became the forced FORMAT_TOOL: its input is the reply's text.
        self.formatted = formatted
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cache_creation_tokens = 0
        self.stop_reason: str | None = None
        self._calls: dict[int, int] = {}  # block index -> call index
        self._format_block: int | None = None
        # The upstream sent its last event (message_stop or error): the body ends here.
        self.ended = False

    def handle(self, sse: SSEEvent) -> list[ProviderEvent]:
        kind = sse.event
        if kind == "ping":
            return []
        try:
            data = orjson.loads(sse.data)
        except orjson.JSONDecodeError:
            raise errors.UpstreamError(
                f"anthropic upstream sent a {kind} event that is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise errors.UpstreamError(f"anthropic upstream sent a {kind} event that is no object")
        if kind == "message":
            # No ``event:`` line: the payload's own type names it.
            kind = str(data.get("type"))
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                if delta.get("type") == "text_delta":
                    text = delta.get("text")
                    if isinstance(text, str) and text:
                        return [TextDelta(text)]
                else:
                    return self._delta(data.get("index"), delta)
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict):
                return self._start(data.get("index"), block)
        elif kind == "content_block_stop":
            index = data.get("index")
            call = self._calls.get(index) if isinstance(index, int) else None
            if call is not None:
                return [ToolCallEnd(call)]
        elif kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self._count(message.get("usage"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
            self._count(data.get("usage"))
        elif kind == "message_stop":
            self.ended = True
            stop = self.stop_reason or "end_turn"
            if stop == "tool_use" and self._format_block is not None and not self._calls:
                stop = "end_turn"
            reason = FINISH_OF_STOP_REASON.get(stop, stop)
            usage = Usage(
                self.prompt_tokens,
                self.completion_tokens,
                cached_tokens=self.cached_tokens,
                cache_creation_tokens=self.cache_creation_tokens,
            )
            return [usage, Finish(reason)]
        elif kind == "error":
            self.ended = True
            raise error_from_body(data, None, self.secret)
        return []

    def _start(self, index: object, block: dict[str, Any]) -> list[ProviderEvent]:
        kind = block.get("type")
        if kind == "tool_use" and isinstance(index, int):
            name, call_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not name:
                raise errors.UpstreamError("anthropic upstream started a tool_use without a name")
            given = block.get("input")
            if self.formatted and name == FORMAT_TOOL:
                self._format_block = index
                return [TextDelta(orjson.dumps(given).decode())] if given else []
            call = len(self._calls)
            self._calls[index] = call
            out: list[ProviderEvent] = [ToolCallStart(call, str(call_id or f"toolu_{call}"), name)]
            if given:
                # Not streamed in fragments (a proxy that sends the input whole).
                out.append(ToolCallDelta(call, orjson.dumps(given).decode()))
            return out
        if kind == "text" and block.get("text"):
            return [TextDelta(str(block["text"]))]
        if kind == "thinking" and block.get("thinking"):
            return [ReasoningDelta(str(block["thinking"]))]
        if kind == "redacted_thinking" and isinstance(block.get("data"), str):
            return [RedactedReasoning(block["data"])]
        return []

    def _delta(self, index: object, delta: dict[str, Any]) -> list[ProviderEvent]:
        kind = delta.get("type")
        if kind == "input_json_delta":
            partial = delta.get("partial_json")
            if not isinstance(partial, str) or not partial:
                return []
            if index is not None and index == self._format_block:
                return [TextDelta(partial)]
            call = self._calls.get(index) if isinstance(index, int) else None
            return [] if call is None else [ToolCallDelta(call, partial)]
        if kind == "thinking_delta":
            thinking = delta.get("thinking")
            return [ReasoningDelta(thinking)] if isinstance(thinking, str) and thinking else []
        if kind == "signature_delta":
            signature = delta.get("signature")
            return [ReasoningSignature(signature)] if isinstance(signature, str) else []
        # citations_delta and kinds yet to come carry no text of the reply.
        return []

    def _count(self, usage: object) -> None:
        """Read cumulative counts; cached prompt tokens are prompt tokens too (as in OpenAI's
        ``prompt_tokens``), and counted apart as well."""
        if not isinstance(usage, dict):
            return
        read = usage.get("cache_read_input_tokens")
        written = usage.get("cache_creation_input_tokens")
        prompt = [usage.get("input_tokens"), read, written]
        if any(isinstance(count, int) for count in prompt):
            self.prompt_tokens = sum(count for count in prompt if isinstance(count, int))
        if isinstance(read, int):
            self.cached_tokens = read
        if isinstance(written, int):
            self.cache_creation_tokens = written
        output = usage.get("output_tokens")
        if isinstance(output, int):
            self.completion_tokens = output


class AnthropicProvider(Provider):
    name = "anthropic"
    supports = frozenset(get_args(Feature))
    dialect = "anthropic"

    def refusal(self, request: ChatRequest) -> str | None:
        format_ = request.options.response_format
        if request.options.tools and format_ is not None and format_.type != "text":
            # response_format is a forced tool here, which would leave the others uncallable.
            return (
                f"response_format with tools is not supported by model {self.model_name!r}"
                f" (provider {self.name}: structured output is a forced tool call)"
            )
        return super().refusal(request)

    def _headers(self, key: str | None) -> dict[str, str]:
        headers = {
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream",
        }
        if key:
            headers["x-api-key"] = key
        return headers

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        secret = self.config.api_key()
        payload = orjson.dumps(build_body(request, self.upstream_model))
        response = await open_stream(
            self.context.http,
            f"{self.config.base_url or DEFAULT_BASE_URL}/v1/messages",
            payload,
            self._headers(secret),
            connect_timeout=self.context.settings.timeouts.connect,
        )
        format_ = request.options.response_format
        message = MessageStream(secret, formatted=format_ is not None and format_.type != "text")
        try:
            if response.status != 200:
                body = await read_upstream_json(response)
                wait = retry_after(response.headers)
                raise error_from_body(body, response.status, secret, wait=wait)
            if response.content_type == "application/json":
                raise _json_instead_of_stream(await read_upstream_json(response), secret)
            response.forget_headers()
            yield Accepted()
            decoder = SSEDecoder(self.context.settings.limits.upstream_max_event_bytes)
            while chunk := await read_chunk(response):
                for sse in decoder.feed(chunk):
                    for event in message.handle(sse):
                        yield event
                    if message.ended:
                        return
            where = "mid-event" if decoder.pending else "before message_stop"
            raise errors.UpstreamError(f"anthropic upstream stream truncated: it ended {where}")
        finally:
            try:
                if message.ended:
                    await drain(response)
            finally:
                response.release()


def _json_instead_of_stream(body: object, secret: str | None) -> errors.TokenRelayError:
    if isinstance(body, dict) and body.get("type") == "error":
        return error_from_body(body, None, secret)
    return errors.UpstreamError("anthropic upstream answered with JSON, not an event stream")
