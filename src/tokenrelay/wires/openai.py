"""The OpenAI-compatible wire: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Unchanged OpenAI SDKs, LangChain and curl work against it. It is stateless, as OpenAI's is:
clients send their own history, and a stream is cancelled as soon as its client leaves.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay.events import Event, Failed, Finish, TextDelta, Usage
from tokenrelay.http.bodies import ChatFields
from tokenrelay.http.responses import JSONResponse, read_json, validate
from tokenrelay.http.streaming import CollectedResponse, EventStreamResponse
from tokenrelay.relay.log import coalesce
from tokenrelay.relay.stream import Stream
from tokenrelay.services import services_of


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class CompletionBody(ChatFields):
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    n: int = Field(default=1, ge=1, le=1)


class ChunkEncoder:
    """``chat.completion.chunk`` objects as ``data:`` lines, then ``data: [DONE]``."""

    __slots__ = ("_head", "_started", "_usage", "_usage_null", "include_usage")

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.include_usage = include_usage
        created = int(time.time())
        head = f'{{"id":"{completion_id}","object":"chat.completion.chunk","created":{created}'
        self._head = (head + f',"model":{orjson.dumps(model).decode()}').encode()
        self._usage_null = b',"usage":null' if include_usage else b""
        self._started = False
        self._usage: Usage | None = None

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

    def encode(self, events: list[Event], first_id: int) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._chunk(b'{"role":"assistant","content":""}'))
        for _, event in coalesce(events, first_id):
            if isinstance(event, TextDelta):
                out.append(self._chunk(b'{"content":' + orjson.dumps(event.text) + b"}"))
            elif isinstance(event, Usage):
                self._usage = event
            elif isinstance(event, Finish):
                out.append(self._chunk(b"{}", orjson.dumps(event.reason)))
                if self._usage is not None and self.include_usage:
                    usage = orjson.dumps(usage_payload(self._usage))
                    out.append(
                        b"data: " + self._head + b',"choices":[],"usage":' + usage + b"}\n\n"
                    )
                out.append(b"data: [DONE]\n\n")
            elif isinstance(event, Failed):
                out.append(b"data: " + orjson.dumps(event.error.to_payload()) + b"\n\n")
        return b"".join(out)


def usage_payload(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


async def render_completion(stream: Stream) -> tuple[int, bytes]:
    finish = "stop"
    usage: dict[str, int] | None = None
    for event in stream.log.events:
        if isinstance(event, Finish):
            finish = event.reason
        elif isinstance(event, Usage):
            usage = usage_payload(event)
    body: dict[str, Any] = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(stream.created),
        "model": stream.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": stream.log.text(), "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }
    return 200, orjson.dumps(body)


async def chat_completions(request: Request) -> Response | EventStreamResponse | CollectedResponse:
    relay = services_of(request).relay
    settings = relay.settings
    body = validate(CompletionBody, await read_json(request, settings.limits.max_body_bytes))
    chat = body.to_request(
        settings.limits, max_tokens=body.max_completion_tokens or body.max_tokens
    )
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
