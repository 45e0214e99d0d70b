"""A ``ChatRequest`` as the Messages API body an Anthropic upstream reads.

System messages become the top-level ``system`` (a string, or blocks when one carries
``cache_control``); tool results (``role: "tool"``) become ``tool_result`` blocks of a user
turn; consecutive turns of one role are merged, as the API requires user and assistant to
alternate; ``max_tokens``, which it requires, defaults to 1024 (plus the thinking budget).

Structured output has no field of its own in the Messages API: ``response_format`` becomes a
tool the model is forced to call (:data:`FORMAT_TOOL`), whose input the stream reader turns
back into the reply's text. Fields of Anthropic's dialect that tokenrelay does not model
(``top_k``, ``service_tier``…) are forwarded as the client sent them.
"""

from __future__ import annotations

from typing import Any, assert_never

import orjson

from tokenrelay import errors
from tokenrelay.chat import (
    CacheControl,
    ChatOptions,
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    RedactedReasoningPart,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolResult,
)
from tokenrelay.providers.reasoning import budget_of_effort

DEFAULT_MAX_TOKENS = 1024
FORMAT_TOOL = "json_response"
CHOICE_TYPES = {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}
_NO_INPUT: dict[str, Any] = {"type": "object", "properties": {}}

Content = str | list[dict[str, Any]]


def build_body(request: ChatRequest, model: str) -> dict[str, Any]:
    """The Messages API body for ``request``, streaming."""
    options = request.options
    # The client's own extra fields first: ours (model, stream…) must win over them.
    body: dict[str, Any] = dict(options.extra) if options.dialect == "anthropic" else {}
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        content = _content(message, index)
        if not content:
            # The API rejects empty text content, and an empty turn says nothing.
            continue
        if message.role == "system":
            system.extend(_as_blocks(content))
        else:
            _append(turns, "assistant" if message.role == "assistant" else "user", content)
    budget = options.reasoning_budget
    if budget is None and options.reasoning_effort is not None:
        budget = budget_of_effort(options.reasoning_effort, options.token_limit)
    body["model"] = model
    body["max_tokens"] = options.token_limit or DEFAULT_MAX_TOKENS + (budget or 0)
    body["messages"] = turns
    body["stream"] = True
    if system:
        if any("cache_control" in block for block in system):
            body["system"] = system
        else:
            body["system"] = "\n\n".join(block["text"] for block in system)
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    _options(options, body)
    return body


def _options(options: ChatOptions, body: dict[str, Any]) -> None:
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if options.top_p is not None:
        body["top_p"] = options.top_p
    if options.stop:
        body["stop_sequences"] = list(options.stop)
    if options.user is not None:
        body["metadata"] = {"user_id": options.user}
    tools = [tool_json(tool) for tool in options.tools]
    choice: dict[str, Any] | None = None
    if options.tool_choice is not None:
        choice = {"type": CHOICE_TYPES[options.tool_choice.mode]}
        if options.tool_choice.name is not None:
            choice["name"] = options.tool_choice.name
    format_ = options.response_format
    if format_ is not None and format_.type != "text":
        tools.append(format_tool(format_))
        choice = {"type": "tool", "name": FORMAT_TOOL}
    if options.parallel_tool_calls is False:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice


def tool_json(tool: Tool) -> dict[str, Any]:
    # ``strict`` has no Messages API counterpart: Anthropic validates input against the schema.
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = dict(tool.parameters) if tool.parameters is not None else _NO_INPUT
    return _cached(out, tool.cache_control)


def format_tool(format_: ResponseFormat) -> dict[str, Any]:
    schema = format_.schema if format_.schema is not None else {"type": "object"}
    description = format_.description or (
        f"Answer with {format_.name or 'the response'} as this tool's input, in this shape."
    )
    return {"name": FORMAT_TOOL, "description": description, "input_schema": dict(schema)}


def _content(message: Message, index: int) -> Content:
    if isinstance(message.content, str):
        return message.content
    blocks = [block for part in message.content if (block := _block(part, index)) is not None]
    return blocks


def _block(part: Part, index: int) -> dict[str, Any] | None:
    match part:
        case TextPart(text=text, cache_control=cache):
            return _cached({"type": "text", "text": text}, cache) if text else None
        case ImagePart(url=url, cache_control=cache):
            return _cached({"type": "image", "source": image_source(url)}, cache)
        case ToolCall(id=call_id, name=name, arguments=arguments, cache_control=cache):
            block = {"type": "tool_use", "id": call_id, "name": name}
            block["input"] = _input(arguments, index)
            return _cached(block, cache)
        case ToolResult(call_id=call_id, content=content, is_error=is_error, cache_control=cache):
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
            if content:
                result["content"] = content
            if is_error:
                result["is_error"] = True
            return _cached(result, cache)
        case ReasoningPart(text=text, signature=signature):
            # Anthropic verifies the signature of thinking sent back; reasoning from another
            # provider has none, and the API would refuse it.
            if signature is None:
                return None
            return {"type": "thinking", "thinking": text, "signature": signature}
        case RedactedReasoningPart(data=data):
            return {"type": "redacted_thinking", "data": data}
        case _:
            assert_never(part)


def image_source(url: str) -> dict[str, Any]:
    """A data URL as a base64 source, any other URL as a url source."""
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if encoding == "base64" and media_type:
            return {"type": "base64", "media_type": media_type, "data": data}
        raise errors.InvalidRequest("an image data URL must be base64 with a media type")
    return {"type": "url", "url": url}


def _input(arguments: str, index: int) -> Any:
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise errors.InvalidRequest(
            f"messages.{index}: a tool call's arguments must be a JSON object"
        )
    return value


def _cached(block: dict[str, Any], cache: CacheControl | None) -> dict[str, Any]:
    if cache is not None:
        block["cache_control"] = dict(cache)
    return block


def _as_blocks(content: Content) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _append(turns: list[dict[str, Any]], role: str, content: Content) -> None:
    if not turns or turns[-1]["role"] != role:
        turns.append({"role": role, "content": content})
        return
    last = turns[-1]
    if isinstance(last["content"], str) and isinstance(content, str):
        last["content"] += "\n\n" + content
    else:
        last["content"] = _as_blocks(last["content"]) + _as_blocks(content)
