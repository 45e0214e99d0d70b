"""Anthropic's Messages API, streamed.

The common request becomes a Messages body: system messages are joined into the top-level
``system`` field, consecutive turns of one role are merged (the API requires user and
assistant to alternate), and ``max_tokens``, which the API requires, defaults to 1024.

The stream (https://docs.anthropic.com/en/api/messages-streaming) maps onto the common events::

    HTTP 200                               Accepted
    message_start        usage             prompt tokens
    content_block_delta  text_delta        TextDelta
    message_delta        stop_reason       finish reason; usage: completion tokens
    message_stop                           Usage, Finish
    error                error.type        the mapped TokenRelayError
    ping, content_block_start/stop, …      ignored

A stream that ends before ``message_stop`` was truncated and fails as ``upstream_error``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from tokenrelay import errors
from tokenrelay.chat import ChatRequest
from tokenrelay.events import Accepted, Finish, ProviderEvent, TextDelta, Usage
from tokenrelay.providers._http import (
    drain,
    error_for_status,
    open_stream,
    read_chunk,
    read_upstream_json,
    redact,
    retry_after,
)
from tokenrelay.providers.base import Provider
from tokenrelay.providers.sse import SSEDecoder, SSEEvent

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

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
FINISH_OF_STOP_REASON = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def build_body(request: ChatRequest, model: str) -> dict[str, Any]:
    """The Messages API body for ``request``, streaming."""
    options = request.options
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for message in request.messages:
        text = message.text
        if message.role == "system":
            system.append(text)
        elif not text:
            # The API rejects empty text content, and an empty turn says nothing.
            continue
        elif turns and turns[-1]["role"] == message.role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": message.role, "content": text})
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": options.token_limit or DEFAULT_MAX_TOKENS,
        "messages": turns,
        "stream": True,
    }
    joined = "\n\n".join(part for part in system if part)
    if joined:
        body["system"] = joined
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if options.top_p is not None:
        body["top_p"] = options.top_p
    if options.stop:
        body["stop_sequences"] = list(options.stop)
    return body


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

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.stop_reason: str | None = None
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
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    return [TextDelta(text)]
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
            reason = FINISH_OF_STOP_REASON.get(self.stop_reason or "end_turn", self.stop_reason)
            return [Usage(self.prompt_tokens, self.completion_tokens), Finish(reason or "stop")]
        elif kind == "error":
            self.ended = True
            raise error_from_body(data, None, self.secret)
        return []

    def _count(self, usage: object) -> None:
        """Read cumulative counts; cached prompt tokens are prompt tokens too."""
        if not isinstance(usage, dict):
            return
        prompt = [
            usage.get(key)
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        ]
        if any(isinstance(count, int) for count in prompt):
            self.prompt_tokens = sum(count for count in prompt if isinstance(count, int))
        output = usage.get("output_tokens")
        if isinstance(output, int):
            self.completion_tokens = output


class AnthropicProvider(Provider):
    name = "anthropic"
    # Text only until tool_use, image and thinking blocks are translated: refused, not dropped.
    supports = frozenset()

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
        response = await open_stream(
            self.context.http,
            f"{self.config.base_url or DEFAULT_BASE_URL}/v1/messages",
            orjson.dumps(build_body(request, self.upstream_model)),
            self._headers(secret),
            connect_timeout=self.context.settings.timeouts.connect,
        )
        message = MessageStream(secret)
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
