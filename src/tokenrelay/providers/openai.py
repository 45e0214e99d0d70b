"""Any OpenAI-compatible chat-completions upstream: OpenAI, OpenRouter, Groq, vLLM, Ollama, ….

One streamed ``POST {base_url}/chat/completions`` per generation on the app's pooled
:class:`~tokenrelay.client.Client`. Foreign failures become :mod:`tokenrelay.errors` here and
nowhere else; a stream counts as finished only when ``data: [DONE]`` arrives, so a body that
merely stops is reported as truncated, never as a short answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, get_args

import orjson

from tokenrelay import errors
from tokenrelay.chat import ChatRequest, Feature
from tokenrelay.client import Response
from tokenrelay.events import (
    Accepted,
    Finish,
    ProviderEvent,
    ReasoningDelta,
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
from tokenrelay.providers.base import Provider
from tokenrelay.providers.openai_body import request_body
from tokenrelay.providers.sse import SSEDecoder

_DONE = "[DONE]"
_CONTEXT_CODES = {"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"}
_CONTEXT_PHRASES = ("maximum context length", "context length", "context window", "context size")
_RATE_CODES = {"rate_limit_exceeded", "rate_limit_error", "rate_limited", "429", "requests"}


class OpenAIProvider(Provider):
    name = "openai"
    supports = frozenset(get_args(Feature))
    dialect = "openai"

    @property
    def url(self) -> str:
        base = self.config.base_url or "https://api.openai.com/v1"
        return f"{base}/chat/completions"

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        return request_body(request, self.upstream_model)

    @staticmethod
    def _headers(key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        secret = self.config.api_key()
        response: Response | None = None
        try:
            response = await open_stream(
                self.context.http,
                self.url,
                orjson.dumps(self._payload(request)),
                self._headers(secret),
                connect_timeout=self.context.settings.timeouts.connect,
            )
            if response.status != 200:
                raise await _status_error(response, self.upstream_model, secret)
            if response.content_type == "application/json":
                # Some gateways answer a stream request with a JSON error and a 200.
                payload = await read_upstream_json(response)
                if isinstance(payload, dict) and payload.get("error"):
                    raise _payload_error(payload, secret)
                raise errors.UpstreamError("the upstream answered with JSON, not an event stream")
            response.forget_headers()
            yield Accepted()

            reader = _EventReader(secret, self.context.settings.limits.upstream_max_event_bytes)
            while not reader.done:
                chunk = await read_chunk(response)
                if not chunk:
                    raise errors.UpstreamError(reader.truncation())
                events = reader.feed(chunk)
                # Not held while the stream waits for the next one: memory per open stream.
                del chunk
                for event in events:
                    yield event
                del events
                if reader.failure is not None:
                    raise reader.failure

            if not response.at_eof:
                # The body's end usually trails [DONE]: read it so the socket is reusable.
                await drain(response)
            for event in reader.flush():
                yield event
            if reader.usage is not None:
                yield reader.usage
            yield Finish(reader.finish_reason)
        finally:
            if response is not None:
                # Back to the pool if the body was read to its end; otherwise the socket is
                # closed, so the upstream sees us go (cancel, disconnect) and stops generating.
                response.release()


class _EventReader:
    """Turns upstream bytes into deltas, remembering usage and the finish reason.

    Tool calls arrive as OpenAI streams them (``delta.tool_calls[]``, each fragment under its
    call's ``index``, the id and name in the first); a call ends when the choice finishes.
    Reasoning is read from ``delta.reasoning_content`` (vLLM, DeepSeek, LiteLLM) or
    ``delta.reasoning`` (OpenRouter, Ollama).
    """

    __slots__ = (
        "_calls",
        "_decoder",
        "_held",
        "_secret",
        "done",
        "failure",
        "finish_reason",
        "usage",
    )

    def __init__(self, secret: str | None, max_event: int) -> None:
        self._decoder = SSEDecoder(max_event)
        self._secret = secret
        self._held = ""  # a high surrogate waiting for its pair from the next delta
        self._calls: list[int] = []  # upstream indexes of the calls started, in order
        self.done = False
        self.failure: errors.TokenRelayError | None = None
        self.finish_reason = "stop"
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        for event in self._decoder.feed(chunk):
            data = event.data
            if data == _DONE:
                self.done = True
                break
            try:
                self._handle(data, event.event, out)
            except errors.TokenRelayError as exc:
                # Raised after the deltas that preceded it in the same chunk have been yielded.
                self.failure = exc
                break
        return out

    def _handle(self, data: str, event_type: str, out: list[ProviderEvent]) -> None:
        payload = _loads(data)
        if not isinstance(payload, dict):
            raise errors.UpstreamError("upstream sent an event that is not a JSON object")
        if payload.get("error") or event_type == "error":
            raise _payload_error(payload, self._secret)
        usage = payload.get("usage") or _get(payload.get("x_groq"), "usage")
        if isinstance(usage, dict):
            # Kept, not yielded: some servers repeat usage on every chunk; the last one wins.
            self.usage = _usage(usage)
        choices = payload.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if isinstance(text, str) and text:
                text = self._text(text)
                if text:
                    out.append(TextDelta(text))
            if len(delta) > 1 or text is None:
                # Not the common {"content": "..."}: reasoning or tool calls may be in it.
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(thought, str) and thought:
                    out.append(ReasoningDelta(_whole(thought)))
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    self._tool_calls(calls, out)
        reason = choice.get("finish_reason")
        if reason:
            if reason == "error":
                # OpenRouter's mid-stream failure marker: an honest error, not a short answer.
                raise errors.UpstreamError("upstream reported an error mid-stream")
            self.finish_reason = str(reason)
            out.extend(self._end_calls())

    def _tool_calls(self, calls: list[Any], out: list[ProviderEvent]) -> None:
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            upstream = call.get("index")
            if not isinstance(upstream, int):
                # Some servers send whole calls without an index: their place is their index.
                upstream = len(self._calls) if call.get("id") else position
            function = call.get("function")
            function = function if isinstance(function, dict) else {}
            if upstream not in self._calls:
                name = function.get("name")
                call_id = call.get("id")
                if not isinstance(name, str) or not name:
                    raise errors.UpstreamError("upstream started a tool call without a name")
                if not isinstance(call_id, str) or not call_id:
                    call_id = f"call_{len(self._calls)}"
                out.append(ToolCallStart(len(self._calls), call_id, name))
                self._calls.append(upstream)
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                out.append(ToolCallDelta(self._calls.index(upstream), arguments))
            elif isinstance(arguments, dict):
                # Ollama sends the arguments as an object, whole.
                encoded = orjson.dumps(arguments).decode()
                out.append(ToolCallDelta(self._calls.index(upstream), encoded))

    def _end_calls(self) -> list[ProviderEvent]:
        ended: list[ProviderEvent] = [ToolCallEnd(index) for index in range(len(self._calls))]
        self._calls = []
        return ended

    def _text(self, text: str) -> str:
        if self._held:
            text = self._held + text
            self._held = ""
        if text.isascii():
            return text
        return self._whole_characters(text)

    def _whole_characters(self, text: str) -> str:
        # Surrogates only get here through the stdlib fallback in _loads (orjson never yields
        # one): hold a trailing high surrogate for the next delta, then pair what can be.
        if "\ud800" <= text[-1] <= "\udbff":
            text, self._held = text[:-1], text[-1]
        return _whole(text)

    def flush(self) -> list[ProviderEvent]:
        held, self._held = self._held, ""
        tail: list[ProviderEvent] = [TextDelta("\ufffd")] if held else []
        return tail + self._end_calls()

    def truncation(self) -> str:
        where = "mid-event" if self._decoder.pending else "without data: [DONE]"
        return f"upstream stream truncated: the body ended {where}"


def _whole(text: str) -> str:
    """``text`` as valid UTF-8: surrogate pairs joined, strays replaced by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _usage(usage: dict[str, Any]) -> Usage:
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    return Usage(
        _count(usage, "prompt_tokens"),
        _count(usage, "completion_tokens"),
        cached_tokens=_count(prompt, "cached_tokens") if isinstance(prompt, dict) else 0,
        reasoning_tokens=(
            _count(completion, "reasoning_tokens") if isinstance(completion, dict) else 0
        ),
    )


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and value >= 0 else 0


def _loads(data: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        # orjson rejects lone surrogate escapes ("\ud83d"), which some upstreams emit when a
        # pair is split across two chunks; the stdlib parser keeps them for _EventReader.
        return json.loads(data)
    except ValueError:
        raise errors.UpstreamError("upstream sent an event whose data is not JSON") from None


async def _status_error(
    response: Response, model: str, secret: str | None
) -> errors.TokenRelayError:
    status = response.status
    code, kind, message = _describe(await read_upstream_json(response))
    message = redact(message or f"HTTP {status}", secret)
    if status in (400, 422) and _is_context(code, kind, message):
        return errors.ContextLengthExceeded(message)
    if status == 404:
        return errors.NotFound(f"model {model!r} not found upstream: {message}")
    wait = retry_after(response.headers) if status == 429 or status >= 500 else None
    return error_for_status(status, f"upstream HTTP {status}: {message}", retry_after=wait)


def _payload_error(payload: Any, secret: str | None) -> errors.TokenRelayError:
    """Map an ``{"error": {...}}`` body met inside (or instead of) a stream."""
    code, kind, message = _describe(payload)
    message = redact(message or "unknown upstream error", secret)
    if code in _RATE_CODES or kind in _RATE_CODES:
        return errors.UpstreamRateLimited(f"the upstream is rate limiting: {message}")
    if _is_context(code, kind, message):
        return errors.ContextLengthExceeded(message)
    return errors.UpstreamError(f"upstream error: {message}")


def _describe(payload: Any) -> tuple[str, str, str]:
    """``(code, type, message)`` from the error shapes OpenAI-compatible servers use."""
    if isinstance(payload, str):
        return "", "", payload
    if not isinstance(payload, dict):
        return "", "", ""
    error = payload.get("error", payload)
    if isinstance(error, str):
        # {"error": "message"}, as Ollama and some proxies answer.
        return "", "", error
    if not isinstance(error, dict):
        return "", "", ""
    # OpenAI's {"error": {...}}, vLLM's flat {"object": "error", "message", "code"}, and
    # FastAPI's {"detail": ...} all land here.
    message = error.get("message") or error.get("detail") or ""
    if not isinstance(message, str):
        message = orjson.dumps(message).decode()
    code = error.get("code")
    kind = error.get("type")
    return (
        str(code) if code is not None else "",
        str(kind) if kind is not None else "",
        message,
    )


def _is_context(code: str, kind: str, message: str) -> bool:
    if code in _CONTEXT_CODES or kind in _CONTEXT_CODES:
        return True
    lowered = message.lower()
    return any(phrase in lowered for phrase in _CONTEXT_PHRASES)
