"""Anthropic's Messages wire: ``POST /v1/messages``, for the official ``anthropic`` SDKs.

Any configured model answers in Anthropic's dialect: the stream is ``message_start``,
``content_block_start``, ``ping``, ``content_block_delta``…, ``content_block_stop``,
``message_delta`` (stop reason and usage), ``message_stop``; a failure after the start is an
``error`` event, one before it an HTTP status with Anthropic's error body. ``stream: false``
answers one Message object. Like the OpenAI wire it is stateless: the client sends the history,
and the generation stops as soon as its client leaves.

The prompt's size is only known once the generation ends, so ``message_start`` counts 0 input
tokens and ``message_delta`` carries the real counts (the SDKs take both from there).
"""

from __future__ import annotations

from typing import Any, Literal, assert_never

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay import errors
from tokenrelay.chat import ChatOptions, ChatRequest, Message
from tokenrelay.events import (
    Event,
    Failed,
    Finish,
    Opened,
    Queued,
    ReasoningDelta,
    ReasoningSignature,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from tokenrelay.http.errors import anthropic_error_response
from tokenrelay.http.responses import read_json, validate
from tokenrelay.http.streaming import CollectedResponse, EventStreamResponse
from tokenrelay.limits.bounds import check_max_tokens, check_messages
from tokenrelay.relay.log import coalesce
from tokenrelay.relay.stream import Stream
from tokenrelay.services import services_of

# Finish reasons in Anthropic's words; others (``refusal``, ``pause_turn``…) pass unchanged.
STOP_REASON_OF_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
}


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


def _only_text(value: Any) -> Any:
    if isinstance(value, list):
        for block in value:
            if isinstance(block, dict) and block.get("type") != "text":
                raise ValueError(f"content block type {block.get('type')!r} is not supported")
    return value


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    content: str | list[TextBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return _only_text(value)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        # The blocks of one turn are one text, as the OpenAI wire's content parts are.
        return "".join(block.text for block in self.content)


class MessagesBody(BaseModel):
    """What ``messages.create`` sends; ``metadata``, ``top_k`` and the like are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int = Field(ge=1, strict=True)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop_sequences: list[str] | None = None
    metadata: dict[str, Any] | None = None
    script: dict[str, Any] | None = None

    @field_validator("system", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return _only_text(value)

    def system_text(self) -> str:
        if self.system is None or isinstance(self.system, str):
            return self.system or ""
        # System blocks are separate instructions (often split only to mark a cache boundary).
        return "\n\n".join(block.text for block in self.system)

    def to_request(self) -> ChatRequest:
        system = self.system_text()
        messages = [Message(role="system", content=system)] if system else []
        messages += [Message(role=m.role, content=m.text()) for m in self.messages]
        options = ChatOptions(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop_sequences) if self.stop_sequences else None,
            dialect="anthropic",
            script=self.script,
        )
        return ChatRequest(self.model, messages, options)


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def message_id(stream: Stream) -> str:
    return "msg_" + stream.id.removeprefix("str_")


def stop_reason(reason: str) -> str:
    return STOP_REASON_OF_FINISH.get(reason, reason)


def usage_payload(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}


class MessageEncoder:
    """The Messages stream events, from the start of a stream's log (``Opened`` opens it)."""

    __slots__ = ("_usage", "message_id")

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self._usage: Usage | None = None

    def encode(self, events: list[Event], first_id: int) -> bytes:
        out: list[bytes] = []
        for _, event in coalesce(events, first_id):
            match event:
                case TextDelta(text=text):
                    out.append(
                        _event(
                            b"content_block_delta",
                            b'{"type":"content_block_delta","index":0,'
                            b'"delta":{"type":"text_delta","text":' + orjson.dumps(text) + b"}}",
                        )
                    )
                case Opened(model=model):
                    out.append(self._start(model))
                case Usage():
                    self._usage = event
                case Finish(reason=reason):
                    out.append(self._finish(reason))
                case Failed(error=error):
                    out.append(_event(b"error", orjson.dumps(error.to_anthropic_payload())))
                case (
                    Queued()
                    | ReasoningDelta()
                    | ReasoningSignature()
                    | ToolCallStart()
                    | ToolCallDelta()
                    | ToolCallEnd()
                ):
                    # Not yet translated to thinking and tool_use blocks; this wire's requests
                    # cannot ask for tools, so only a reasoning upstream's thinking is missed.
                    pass
                case _:
                    assert_never(event)
        return b"".join(out)

    def _start(self, model: str) -> bytes:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_payload(None),
        }
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        return b"".join(
            (
                _event(
                    b"message_start", orjson.dumps({"type": "message_start", "message": message})
                ),
                _event(b"content_block_start", orjson.dumps(block)),
                _event(b"ping", b'{"type":"ping"}'),
            )
        )

    def _finish(self, reason: str) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reason), "stop_sequence": None},
            "usage": usage_payload(self._usage),
        }
        return b"".join(
            (
                _event(b"content_block_stop", b'{"type":"content_block_stop","index":0}'),
                _event(b"message_delta", orjson.dumps(delta)),
                _event(b"message_stop", b'{"type":"message_stop"}'),
            )
        )


async def render_message(stream: Stream) -> tuple[int, bytes]:
    reason = "stop"
    usage: Usage | None = None
    for event in stream.log.events:
        if isinstance(event, Finish):
            reason = event.reason
        elif isinstance(event, Usage):
            usage = event
    body = {
        "id": message_id(stream),
        "type": "message",
        "role": "assistant",
        "model": stream.model,
        "content": [{"type": "text", "text": stream.log.text()}],
        "stop_reason": stop_reason(reason),
        "stop_sequence": None,
        "usage": usage_payload(usage),
    }
    return 200, orjson.dumps(body)


async def create_message(request: Request) -> Response | EventStreamResponse | CollectedResponse:
    try:
        return await _create(request)
    except errors.TokenRelayError as exc:
        return anthropic_error_response(exc)


async def _create(request: Request) -> EventStreamResponse | CollectedResponse:
    relay = services_of(request).relay
    limits = relay.settings.limits
    body = validate(MessagesBody, await read_json(request, limits.max_body_bytes))
    chat = body.to_request()
    check_messages(chat.messages, limits)
    check_max_tokens(chat.options.token_limit, limits)
    stream = await relay.open(chat, owner=request.scope.get("user"), linger=0)
    if not body.stream:
        return CollectedResponse(stream, render_message, anthropic_error_response)
    return EventStreamResponse(
        stream,
        MessageEncoder(message_id(stream)),
        relay.settings.streams,
        render_error=anthropic_error_response,
    )
