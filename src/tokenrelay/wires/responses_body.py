"""The body of ``POST /v1/responses``, and its one adapter to a ``ChatRequest``.

``input`` is a string or a list of items: messages (``input_text`` / ``input_image`` parts, and
the ``output_text`` of an assistant's earlier turn), ``function_call`` and
``function_call_output``, ``reasoning`` (carried back to a provider that needs it) and
``item_reference`` (an output item of a stored response). ``instructions`` is the system
message; ``text.format`` the response format; ``reasoning.effort`` the reasoning effort.

Nothing is dropped silently: a field whose chat-completions namesake means the same
(:data:`FORWARDED`) is forwarded to an OpenAI-compatible upstream as the chat wire does; any
other field tokenrelay does not model is refused with a 400 that names it, unless it is null.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tokenrelay import errors
from tokenrelay.chat import (
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
    ToolChoice,
    ToolResult,
)
from tokenrelay.config import Limits
from tokenrelay.limits.bounds import check_max_tokens, check_messages

# Fields of the Responses API whose chat-completions field of the same name means the same.
FORWARDED = frozenset({"service_tier", "prompt_cache_key", "safety_identifier"})
# What ``include`` may ask for: the reasoning's signature is always in its item anyway.
INCLUDABLE = frozenset({"reasoning.encrypted_content"})


class _Lenient(BaseModel):
    # The fields of an item OpenAI defines but that change nothing here (``status``…).
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: Literal["input_text", "output_text", "input_image", "refusal"]
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None
    refusal: str | None = None

    def to_part(self) -> Part:
        if self.type == "input_image":
            if not self.image_url:
                raise ValueError("an input_image part needs image_url (file_id is not supported)")
            return ImagePart(self.image_url, self.detail)
        if self.type == "refusal":
            return TextPart(self.refusal or "")
        if self.text is None:
            raise ValueError(f"an {self.type} part needs text")
        return TextPart(self.text)


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = ""
    id: str | None = None


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]
    id: str | None = None


class ReasoningText(_Lenient):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Lenient):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None


class ItemReference(_Lenient):
    type: Literal["item_reference"]
    id: str = Field(min_length=1)


InputItem = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | ItemReference,
    Field(discriminator="type"),
]
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference")
_item = TypeAdapter[InputItem](InputItem)


class FunctionTool(_Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Lenient):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(_Lenient):
    effort: str | None = Field(default=None, max_length=32)
    # The raw reasoning is what a reply carries, whatever summary is asked for.
    summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(_Lenient):
    # Obfuscation pads deltas against a side channel of OpenAI's; none is added here.
    include_obfuscation: bool | None = None


class ResponsesBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    include: list[str] | None = None
    truncation: Literal["disabled"] | None = None
    script: dict[str, Any] | None = None

    def items(self) -> list[InputItem]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return parse_items(self.input, "input")

    def forwarded(self) -> dict[str, Any]:
        """The fields to forward to an OpenAI-compatible upstream; a 400 for any other."""
        extra: dict[str, Any] = {}
        for name, value in (self.model_extra or {}).items():
            if value is None:
                continue
            if name not in FORWARDED:
                raise errors.InvalidRequest(f"{name} is not supported on /v1/responses here")
            extra[name] = value
        for name in self.include or ():
            if name not in INCLUDABLE:
                raise errors.InvalidRequest(f"include: {name!r} is not supported")
        if self.text is not None and self.text.verbosity is not None:
            extra["verbosity"] = self.text.verbosity
        return extra

    def settings(self) -> dict[str, Any]:
        """The request's settings as the response object echoes them."""
        text = {"format": {"type": "text"}}
        if self.text is not None and self.text.format is not None:
            text = {"format": self.text.format.model_dump(by_alias=True, exclude_none=True)}
        return {
            "instructions": self.instructions,
            "tools": [tool.model_dump(exclude_none=True) for tool in self.tools or ()],
            "tool_choice": "auto"
            if self.tool_choice is None
            else self.tool_choice
            if isinstance(self.tool_choice, str)
            else self.tool_choice.model_dump(),
            "parallel_tool_calls": True
            if self.parallel_tool_calls is None
            else self.parallel_tool_calls,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "text": text,
            "reasoning": {
                "effort": None if self.reasoning is None else self.reasoning.effort,
                "summary": None if self.reasoning is None else self.reasoning.summary,
            },
            "previous_response_id": self.previous_response_id,
            "truncation": "disabled",
            "user": self.user,
        }

    def to_options(self) -> ChatOptions:
        return ChatOptions(
            max_tokens=self.max_output_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            tools=tuple(
                Tool(t.name, t.description, t.parameters, t.strict) for t in self.tools or ()
            ),
            tool_choice=_tool_choice(self.tool_choice),
            parallel_tool_calls=self.parallel_tool_calls,
            response_format=self._format(),
            reasoning_effort=None if self.reasoning is None else self.reasoning.effort,
            user=self.user,
            extra=self.forwarded(),
            dialect="openai",
            script=self.script,
        )

    def _format(self) -> ResponseFormat | None:
        if self.text is None or self.text.format is None:
            return None
        shape = self.text.format
        if shape.type == "json_schema" and shape.name is None:
            raise errors.InvalidRequest("text.format.name is required for json_schema")
        return ResponseFormat(
            shape.type, shape.name, shape.schema_, shape.strict, shape.description
        )


def parse_items(raw_items: list[dict[str, Any]], where: str) -> list[InputItem]:
    """Items as a client sends them (or as stored); a 400 names ``where.<index>``."""
    parsed = []
    for index, raw in enumerate(raw_items):
        if "type" not in raw and "role" in raw:
            raw = {**raw, "type": "message"}
        if raw.get("type") not in ITEM_TYPES:
            raise errors.InvalidRequest(
                f"{where}.{index}.type: {raw.get('type')!r} items are not supported "
                f"(only {', '.join(ITEM_TYPES)})"
            )
        try:
            parsed.append(_item.validate_python(raw))
        except ValidationError as exc:
            raise errors.invalid_request(exc, f"{where}.{index}") from None
    return parsed


def _tool_choice(
    choice: Literal["auto", "none", "required"] | NamedFunction | None,
) -> ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, NamedFunction):
        return ToolChoice("tool", choice.name)
    return ToolChoice(choice)


def stored_items(items: list[InputItem], prefix: str) -> list[dict[str, Any]]:
    """The input items as ``input_items`` lists them: as sent, each with an id."""
    stored = []
    for index, item in enumerate(items):
        data = item.model_dump(by_alias=True, exclude_none=True)
        data.setdefault("id", f"{prefix}_{index}")
        if isinstance(item, MessageItem) and isinstance(item.content, str):
            kind = "output_text" if item.role == "assistant" else "input_text"
            data["content"] = [{"type": kind, "text": item.content}]
        stored.append(data)
    return stored


def to_messages(items: list[InputItem]) -> list[Message]:
    """Items as chat messages: an assistant's reasoning, text and calls in a row are one
    message, each ``function_call_output`` a tool message."""
    messages: list[Message] = []
    turn: list[Part] = []  # the assistant's parts in a row, not yet a message

    def end_turn() -> None:
        if turn:
            only_text = all(isinstance(part, TextPart) for part in turn)
            text = "".join(part.text for part in turn if isinstance(part, TextPart))
            messages.append(Message("assistant", text if only_text else tuple(turn)))
            turn.clear()

    for index, item in enumerate(items):
        try:
            match item:
                case MessageItem(role="assistant", content=content):
                    turn.extend(_parts(content))
                case MessageItem(role=role, content=content):
                    end_turn()
                    role = "system" if role == "developer" else role
                    messages.append(Message(role, _content(_parts(content))))
                case FunctionCallItem(call_id=call_id, name=name, arguments=arguments):
                    turn.append(ToolCall(call_id, name, arguments))
                case ReasoningItem(summary=summary, content=content, encrypted_content=sealed):
                    text = "".join(part.text for part in content or summary)
                    if not text and sealed:
                        # Only encrypted: redacted reasoning (a signature seals some text).
                        turn.append(RedactedReasoningPart(sealed))
                    else:
                        turn.append(ReasoningPart(text, sealed))
                case FunctionCallOutputItem(call_id=call_id, output=output):
                    end_turn()
                    result = output if isinstance(output, str) else _text(output)
                    messages.append(Message("tool", (ToolResult(call_id, result),)))
                case ItemReference(id=item_id):
                    # Not among the stored responses' items (see the wire's _resolved).
                    raise errors.InvalidRequest(f"input.{index}: item {item_id!r} does not exist")
        except ValueError as exc:
            raise errors.InvalidRequest(f"input.{index}: {exc}") from None
    end_turn()
    return messages


def _parts(content: str | list[ContentPart]) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    return [part.to_part() for part in content]


def _content(parts: list[Part]) -> str | tuple[Part, ...]:
    """One text is a plain string, as every chat upstream takes it; more stay parts."""
    if not parts:
        return ""
    only = parts[0]
    if len(parts) == 1 and isinstance(only, TextPart):
        return only.text
    return tuple(parts)


def _text(parts: list[ContentPart]) -> str:
    if any(part.type == "input_image" for part in parts):
        raise ValueError("a function_call_output with images is not supported")
    return "".join(part.text or "" for part in parts)


def chat_request(
    body: ResponsesBody,
    items: list[InputItem],
    limits: Limits,
    *,
    context: list[Message] | None = None,
) -> ChatRequest:
    """The request: ``instructions``, then ``context`` (a previous response's), then input."""
    messages = [Message("system", body.instructions)] if body.instructions else []
    messages += context or []
    messages += to_messages(items)
    check_messages(messages, limits)
    check_max_tokens(body.max_output_tokens, limits)
    return ChatRequest(model=body.model or "", messages=messages, options=body.to_options())
