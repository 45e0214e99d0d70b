"""The OpenAI-compatible wire: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Unchanged OpenAI SDKs, LangChain and curl work against it. It is stateless, as OpenAI's is:
clients send their own history, and a stream is cancelled as soon as its client leaves.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, assert_never

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay.events import (
    Event,
    Failed,
    Finish,
    Opened,
    Queued,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from tokenrelay.http.bodies import ChatFields
from tokenrelay.http.responses import JSONResponse, read_json, validate
from tokenrelay.http.streaming import CollectedResponse, EventStreamResponse
from tokenrelay.relay.log import coalesce
from tokenrelay.relay.reply import NO_ARGUMENTS, collect
from tokenrelay.relay.stream import Stream
from tokenrelay.services import services_of


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class CompletionBody(ChatFields):
    # Fields tokenrelay does not model are kept (``model_extra``) and forwarded to an
    # OpenAI-compatible upstream, or refused for a provider that cannot take them.
    model_config = ConfigDict(extra="allow")

    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)


class ChunkEncoder:
    """``chat.completion.chunk`` objects as ``data:`` lines, then ``data: [DONE]``.

    Tool calls stream as OpenAI streams them: ``id``, ``type`` and ``function.name`` only in a
    call's first fragment, ``arguments`` in the fragments after it, under the call's ``index``.
    """

    __slots__ = ("_argued", "_head", "_started", "_usage", "_usage_null", "include_usage")

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.include_usage = include_usage
        created = int(time.time())
        head = f'{{"id":"{completion_id}","object":"chat.completion.chunk","created":{created}'
        self._head = (head + f',"model":{orjson.dumps(model).decode()}').encode()
        self._usage_null = b',"usage":null' if include_usage else b""
        self._started = False
        self._usage: Usage | None = None
        # Calls that have had an arguments fragment: a list (56 bytes empty, a set is 216) as
        # every open stream holds one and most make no call.
        self._argued: list[int] = []

    def _chunk(self, delta: bytes, finish_reason: bytes = b"null") -> bytes:
        return b"".join(
            (
                b"data: ",
                self._head,
                b',"choices":[{"index":0,"delta":',
                delta,
                b',"logprobs":null,"finish_reason":',
                finish_reason,
                b"}]",
                self._usage_null,
                b"}\n\n",
            )
        )

    def _arguments(self, index: int, arguments: str) -> bytes:
        if index not in self._argued:
            self._argued.append(index)
        call = {"index": index, "function": {"arguments": arguments}}
        return self._chunk(b'{"tool_calls":[' + orjson.dumps(call) + b"]}")

    def encode(self, events: list[Event], first_id: int) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._chunk(b'{"role":"assistant","content":""}'))
        for _, event in coalesce(events, first_id):
            match event:
                case TextDelta(text=text):
                    out.append(self._chunk(b'{"content":' + orjson.dumps(text) + b"}"))
                case ReasoningDelta(text=text):
                    out.append(self._chunk(b'{"reasoning_content":' + orjson.dumps(text) + b"}"))
                case ToolCallStart(index=index, id=call_id, name=name):
                    call = {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                    out.append(self._chunk(b'{"tool_calls":[' + orjson.dumps(call) + b"]}"))
                case ToolCallDelta(index=index, arguments=arguments):
                    out.append(self._arguments(index, arguments))
                case ToolCallEnd(index=index):
                    if index not in self._argued:
                        out.append(self._arguments(index, NO_ARGUMENTS))
                case Usage():
                    self._usage = event
                case Finish(reason=reason):
                    out.append(self._chunk(b"{}", orjson.dumps(reason)))
                    if self._usage is not None and self.include_usage:
                        usage = orjson.dumps(usage_payload(self._usage))
                        out.append(
                            b"data: " + self._head + b',"choices":[],"usage":' + usage + b"}\n\n"
                        )
                    out.append(b"data: [DONE]\n\n")
                case Failed(error=error):
                    out.append(b"data: " + orjson.dumps(error.to_payload()) + b"\n\n")
                case Opened() | Queued() | ReasoningSignature() | RedactedReasoning():
                    # No place for them in a chunk: OpenAI has no queue, and reasoning has no
                    # signature or encrypted form in chat completions.
                    pass
                case _:
                    assert_never(event)
        return b"".join(out)


def usage_payload(usage: Usage) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:
        payload["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens:
        payload["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return payload


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


async def render_completion(stream: Stream) -> tuple[int, bytes]:
    reply = collect(stream.log.events)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(reply.text) if reply.text or not reply.calls else None,
        "refusal": None,
    }
    if reply.reasoning:
        message["reasoning_content"] = "".join(reply.reasoning)
    if reply.calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.joined},
            }
            for _, call in sorted(reply.calls.items())
        ]
    body: dict[str, Any] = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(stream.created),
        "model": stream.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish}
        ],
        "usage": None if reply.usage is None else usage_payload(reply.usage),
    }
    return 200, orjson.dumps(body)


async def chat_completions(request: Request) -> Response | EventStreamResponse | CollectedResponse:
    relay = services_of(request).relay
    settings = relay.settings
    body = validate(CompletionBody, await read_json(request, settings.limits.max_body_bytes))
    chat = body.to_request(settings.limits, dialect="openai", extra=body.model_extra)
    stream = await relay.open(chat, owner=request.scope.get("user"), linger=0)
    if not body.stream:
        return CollectedResponse(stream, render_completion)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    encoder = ChunkEncoder(completion_id(), stream.model, include_usage)
    return EventStreamResponse(stream, encoder, settings.streams, offset=1)


async def list_models(request: Request) -> Response:
    relay = services_of(request).relay
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": provider.config.provider}
        for name, provider in relay.providers.items()
    ]
    return JSONResponse({"object": "list", "data": data})
