"""A ``ChatRequest`` as the chat-completions body an OpenAI-compatible upstream reads.

What a client sent in OpenAI's dialect goes back out as it came: content parts stay parts,
a plain string stays a string, tool definitions and JSON Schemas are passed unchanged, and the
fields tokenrelay does not model (``options.extra``) are forwarded beside the ones it does.
"""

from __future__ import annotations

from typing import Any, assert_never

from tokenrelay.chat import (
    ChatOptions,
    ChatRequest,
    ImagePart,
    Message,
    ReasoningPart,
    RedactedReasoningPart,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from tokenrelay.providers.reasoning import effort_of_budget

# Options copied under their own name when set.
_PLAIN = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "parallel_tool_calls",
    "reasoning_effort",
    "user",
)


def request_body(request: ChatRequest, model: str) -> dict[str, Any]:
    options = request.options
    # The client's own extra fields first: ours (model, stream…) must win over them.
    body: dict[str, Any] = dict(options.extra) if options.dialect == "openai" else {}
    body["model"] = model
    body["messages"] = [message_json(m) for m in request.messages]
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    _options(options, body)
    return body


def _options(options: ChatOptions, body: dict[str, Any]) -> None:
    for key in _PLAIN:
        value = getattr(options, key)
        if value is not None:
            body[key] = value
    if options.reasoning_effort is None and options.reasoning_budget is not None:
        body["reasoning_effort"] = effort_of_budget(options.reasoning_budget)
    if options.stop is not None:
        body["stop"] = list(options.stop)
    if options.metadata is not None:
        body["metadata"] = dict(options.metadata)
    if options.tools:
        body["tools"] = [tool_json(tool) for tool in options.tools]
    if options.tool_choice is not None:
        body["tool_choice"] = tool_choice_json(options.tool_choice)
    if options.response_format is not None:
        body["response_format"] = response_format_json(options.response_format)


def message_json(message: Message) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": message.role, "content": message.content}
    if message.role == "tool":
        result = next(p for p in message.content if isinstance(p, ToolResult))
        return {"role": "tool", "tool_call_id": result.call_id, "content": result.content}
    content: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for part in message.content:
        match part:
            case TextPart(text=text):
                content.append({"type": "text", "text": text})
            case ImagePart(url=url, detail=detail):
                image: dict[str, Any] = {"url": url}
                if detail is not None:
                    image["detail"] = detail
                content.append({"type": "image_url", "image_url": image})
            case ToolCall(id=call_id, name=name, arguments=arguments):
                function = {"name": name, "arguments": arguments}
                calls.append({"id": call_id, "type": "function", "function": function})
            case ToolResult() | ReasoningPart() | RedactedReasoningPart():
                # A result only travels as a tool message; OpenAI takes no reasoning back.
                # (A tool message has no is_error: an error result is told by its content.)
                pass
            case _:
                assert_never(part)
    out: dict[str, Any] = {"role": message.role, "content": content or None}
    if calls:
        out["tool_calls"] = calls
    return out


def tool_json(tool: Tool) -> dict[str, Any]:
    function = _present(
        name=tool.name,
        description=tool.description,
        parameters=tool.parameters,
        strict=tool.strict,
    )
    return {"type": "function", "function": function}


def tool_choice_json(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def response_format_json(format_: ResponseFormat) -> dict[str, Any]:
    if format_.type != "json_schema":
        return {"type": format_.type}
    schema = _present(
        name=format_.name,
        description=format_.description,
        schema=format_.schema,
        strict=format_.strict,
    )
    return {"type": "json_schema", "json_schema": schema}


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that are set: OpenAI reads an absent field and a null one differently."""
    return {key: value for key, value in fields.items() if value is not None}
