"""Anthropic's Messages wire: ``POST /v1/messages``, for the official ``anthropic`` SDKs.

Any configured model answers in Anthropic's dialect: the stream is ``message_start``, then for
each content block ``content_block_start``, its ``content_block_delta``… and
``content_block_stop`` (a ``ping`` after the first start), then ``message_delta`` (stop reason
and usage), ``message_stop``. Text, thinking and tool_use blocks share one index space: text
deltas are ``text_delta``, reasoning ``thinking_delta`` then one ``signature_delta``, a tool
call's arguments ``input_json_delta``. A failure after the start is an ``error`` event, one
before it an HTTP status with Anthropic's error body. ``stream: false`` answers one Message
object with the same blocks. The request body is :mod:`tokenrelay.wires.anthropic_body`.
Like the OpenAI wire it is stateless: the client sends the history, and the generation
stops as soon as its client leaves.

The prompt's size is only known once the generation ends, so ``message_start`` counts 0 input
tokens and ``message_delta`` carries the real counts (the SDKs take both from there).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, assert_never

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay import errors
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
from tokenrelay.http.errors import anthropic_error_response
from tokenrelay.http.responses import read_json, validate
from tokenrelay.http.streaming import CollectedResponse, EventStreamResponse
from tokenrelay.limits.bounds import check_max_tokens, check_messages
from tokenrelay.relay.log import coalesce
from tokenrelay.relay.reply import NO_ARGUMENTS
from tokenrelay.relay.stream import Stream
from tokenrelay.services import services_of
from tokenrelay.wires.anthropic_body import MessagesBody

# Finish reasons in Anthropic's words; others (``refusal``, ``pause_turn``…) pass unchanged.
STOP_REASON_OF_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
}


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def message_id(stream: Stream) -> str:
    return "msg_" + stream.id.removeprefix("str_")


def stop_reason(reason: str) -> str:
    return STOP_REASON_OF_FINISH.get(reason, reason)


def usage_payload(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    # Anthropic counts cache reads and writes apart from input_tokens; ours include them.
    cached, created = usage.cached_tokens, usage.cache_creation_tokens
    return {
        "input_tokens": max(usage.prompt_tokens - cached - created, 0),
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.completion_tokens,
    }


_TEXT = "text"
_THINKING = "thinking"
_REDACTED = "redacted_thinking"


class MessageEncoder:
    """The Messages stream events, from the start of a stream's log (``Opened`` opens it).

    At most one block is open: a delta of another kind closes it and starts the next index.
    A tool call's block stays open until its end or the next block; should an upstream
    interleave two calls' fragments, a fragment for a closed call still goes to that call's
    index, which the SDKs fold by index (Anthropic itself never interleaves).
    """

    __slots__ = ("_blocks", "_calls", "_open", "_text_head", "_usage", "message_id")

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self._usage: Usage | None = None
        self._blocks = 0  # blocks started so far: the next block's index
        self._open: str | int | None = None  # _TEXT, _THINKING, a call index, or none
        self._text_head = b""  # the open text block's delta prefix
        self._calls: dict[int, int] = {}  # call index -> block index

    def encode(self, events: list[Event], first_id: int) -> bytes:
        out: list[bytes] = []
        for _, event in coalesce(events, first_id):
            match event:
                case TextDelta(text=text):
                    if self._open != _TEXT:
                        self._begin(out, _TEXT, {"type": "text", "text": ""})
                        self._text_head = (
                            b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                            b'"index":%d,"delta":{"type":"text_delta","text":' % (self._blocks - 1)
                        )
                    out.append(self._text_head + orjson.dumps(text) + b"}}\n\n")
                case ReasoningDelta(text=text):
                    self._thinking(out)
                    out.append(self._delta({"type": "thinking_delta", "thinking": text}))
                case ReasoningSignature(signature=signature):
                    self._thinking(out)
                    out.append(self._delta({"type": "signature_delta", "signature": signature}))
                    # The signature closes its thinking: reasoning after it is a new block.
                    self._close(out)
                case RedactedReasoning(data=data):
                    # Whole in its start, as Anthropic sends it: a block with no deltas.
                    self._begin(out, _REDACTED, {"type": _REDACTED, "data": data})
                    self._close(out)
                case ToolCallStart(index=index, id=call_id, name=name):
                    block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
                    self._begin(out, index, block)
                    self._calls[index] = self._blocks - 1
                case ToolCallDelta(index=index, arguments=arguments):
                    if index in self._calls:
                        delta = {"type": "input_json_delta", "partial_json": arguments}
                        out.append(self._delta(delta, self._calls[index]))
                case ToolCallEnd(index=index):
                    if self._open == index:
                        self._close(out)
                case Opened(model=model):
                    out.append(self._start(model))
                case Usage():
                    self._usage = event
                case Finish(reason=reason):
                    if not self._blocks:
                        # An empty reply is still one (empty) text block, as the API sends it.
                        self._begin(out, _TEXT, {"type": "text", "text": ""})
                    self._close(out)
                    out.append(self._finish(reason))
                case Failed(error=error):
                    out.append(_event(b"error", orjson.dumps(error.to_anthropic_payload())))
                case Queued():
                    # No place for it in the Messages stream.
                    pass
                case _:
                    assert_never(event)
        return b"".join(out)

    def _begin(self, out: list[bytes], kind: str | int, block: dict[str, Any]) -> None:
        self._close(out)
        start = {"type": "content_block_start", "index": self._blocks, "content_block": block}
        out.append(_event(b"content_block_start", orjson.dumps(start)))
        if not self._blocks:
            out.append(_event(b"ping", b'{"type":"ping"}'))
        self._blocks += 1
        self._open = kind

    def _thinking(self, out: list[bytes]) -> None:
        if self._open != _THINKING:
            self._begin(out, _THINKING, {"type": "thinking", "thinking": "", "signature": ""})

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            stop = b'{"type":"content_block_stop","index":%d}' % (self._blocks - 1)
            out.append(_event(b"content_block_stop", stop))
            self._open = None

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        at = self._blocks - 1 if index is None else index
        payload = {"type": "content_block_delta", "index": at, "delta": delta}
        return _event(b"content_block_delta", orjson.dumps(payload))

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
        return _event(b"message_start", orjson.dumps({"type": "message_start", "message": message}))

    def _finish(self, reason: str) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reason), "stop_sequence": None},
            "usage": usage_payload(self._usage),
        }
        return _event(b"message_delta", orjson.dumps(delta)) + _event(
            b"message_stop", b'{"type":"message_stop"}'
        )


def content_blocks(events: Iterable[Event]) -> list[dict[str, Any]]:
    """The reply's blocks in the order they streamed, as ``stream: false`` answers them."""
    blocks: list[dict[str, Any]] = []
    pieces: list[list[str]] = []  # each block's text, thinking or arguments, joined at the end
    calls: dict[int, int] = {}
    kind: str | int | None = None
    for event in events:
        if isinstance(event, TextDelta | ReasoningDelta):
            wanted = _TEXT if isinstance(event, TextDelta) else _THINKING
            if kind != wanted:
                blocks.append({"type": wanted})
                pieces.append([])
                kind = wanted
            pieces[-1].append(event.text)
        elif isinstance(event, ReasoningSignature):
            if kind != _THINKING:
                blocks.append({"type": _THINKING})
                pieces.append([])
            blocks[-1]["signature"] = event.signature
            kind = None
        elif isinstance(event, RedactedReasoning):
            blocks.append({"type": _REDACTED, "data": event.data})
            pieces.append([])
            kind = None
        elif isinstance(event, ToolCallStart):
            blocks.append({"type": "tool_use", "id": event.id, "name": event.name})
            pieces.append([])
            calls[event.index] = len(blocks) - 1
            kind = event.index
        elif isinstance(event, ToolCallDelta) and event.index in calls:
            pieces[calls[event.index]].append(event.arguments)
    for block, joined in zip(blocks, ("".join(piece) for piece in pieces), strict=True):
        if block["type"] == "tool_use":
            block["input"] = _input(joined or NO_ARGUMENTS)
        elif block["type"] == _THINKING:
            block["thinking"] = joined
            block.setdefault("signature", "")
        elif block["type"] == _TEXT:
            block["text"] = joined
    return blocks or [{"type": "text", "text": ""}]


def _input(arguments: str) -> Any:
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        # Not JSON (a model that broke off mid-call): the client sees what was generated.
        return arguments


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
        "content": content_blocks(stream.log.events),
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
