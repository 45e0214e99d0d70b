"""The chat fields the OpenAI-shaped wires accept, and the one adapter to a ``ChatRequest``.

The OpenAI, native and seed-style wires share OpenAI's message shape: content as a string or
as parts (``text``, ``image_url``), assistant ``tool_calls`` and ``role: "tool"`` results in
history, and the generation options (tools, ``tool_choice``, ``response_format``…). Limits are
checked once, here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenrelay import errors
from tokenrelay.chat import (
    ChatOptions,
    ChatRequest,
    Dialect,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from tokenrelay.config import Limits
from tokenrelay.limits.bounds import check_max_tokens, check_messages

PART_TYPES = frozenset({"text", "image_url"})


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1)
    detail: str | None = None


class WirePart(BaseModel):
    """One content part. One model, not a union: a bad field is named as the client wrote it
    (``content.0.text``), with no union member's tag in the path."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _has_its_field(self) -> WirePart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs text")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs image_url")
        return self


class WireFunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    arguments: str = ""


class WireToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: WireFunctionCall


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[WirePart] | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _known_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                if isinstance(part, dict) and part.get("type") not in PART_TYPES:
                    raise ValueError(f"content part type {part.get('type')!r} is not supported")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def to_message(self, index: int) -> Message:
        role = "system" if self.role == "developer" else self.role
        if role == "tool":
            if not self.tool_call_id:
                raise errors.InvalidRequest(f"messages.{index}.tool_call_id is required")
            return Message("tool", (ToolResult(self.tool_call_id, self.text()),))
        plain = self.content is None or isinstance(self.content, str)
        if plain and not self.tool_calls:
            # The common case stays a plain string: the text path is the hot one.
            return Message(role, self.text())
        parts: list[Part] = []
        if isinstance(self.content, str):
            if self.content:
                parts.append(TextPart(self.content))
        elif self.content is not None:
            for part in self.content:
                if part.image_url is not None and part.type == "image_url":
                    parts.append(ImagePart(part.image_url.url, part.image_url.detail))
                else:
                    parts.append(TextPart(part.text or ""))
        if self.tool_calls:
            if role != "assistant":
                raise errors.InvalidRequest(f"messages.{index}.tool_calls: only on assistant")
            for call in self.tool_calls:
                parts.append(ToolCall(call.id, call.function.name, call.function.arguments))
        return Message(role, tuple(parts))


class WireFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class WireTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: WireFunction


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class WireResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    def to_format(self) -> ResponseFormat:
        if self.type != "json_schema":
            return ResponseFormat(self.type)
        if self.json_schema is None:
            raise errors.InvalidRequest("response_format.json_schema is required")
        schema = self.json_schema
        return ResponseFormat(
            "json_schema", schema.name, schema.schema_, schema.strict, schema.description
        )


class GenerationOptions(BaseModel):
    """How to generate: the options every wire that starts a stream accepts."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    script: dict[str, Any] | None = None

    def stop_list(self) -> tuple[str, ...] | None:
        if self.stop is None:
            return None
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def to_options(self) -> ChatOptions:
        return ChatOptions(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop_list(),
            seed=self.seed,
            script=self.script,
        )


class RequestOptions(GenerationOptions):
    """The generation options with tools, structured output and reasoning: what a wire that
    takes OpenAI's fields accepts beside its messages (the conversation routes too)."""

    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    tools: list[WireTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: WireResponseFormat | None = None
    reasoning_effort: str | None = Field(default=None, max_length=32)
    user: str | None = None
    metadata: dict[str, Any] | None = None

    def to_options(
        self, *, dialect: Dialect = "native", extra: dict[str, Any] | None = None
    ) -> ChatOptions:
        return ChatOptions(
            max_tokens=self.max_tokens,
            max_completion_tokens=self.max_completion_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop_list(),
            seed=self.seed,
            tools=tuple(_tool(tool.function) for tool in self.tools or ()),
            tool_choice=_tool_choice(self.tool_choice),
            parallel_tool_calls=self.parallel_tool_calls,
            response_format=None
            if self.response_format is None
            else self.response_format.to_format(),
            reasoning_effort=self.reasoning_effort,
            user=self.user,
            metadata=self.metadata,
            extra=extra or {},
            dialect=dialect,
            script=self.script,
        )


class ChatFields(RequestOptions):
    """Fields shared by the OpenAI, native and seed-style wires."""

    messages: list[WireMessage]

    def to_request(
        self, limits: Limits, *, dialect: Dialect = "native", extra: dict[str, Any] | None = None
    ) -> ChatRequest:
        messages = [m.to_message(index) for index, m in enumerate(self.messages)]
        check_messages(messages, limits)
        check_max_tokens(self.max_completion_tokens, limits)
        options = self.to_options(dialect=dialect, extra=extra)
        check_max_tokens(self.max_tokens, limits)
        return ChatRequest(model=self.model or "", messages=messages, options=options)


def _tool(function: WireFunction) -> Tool:
    return Tool(function.name, function.description, function.parameters, function.strict)


def _tool_choice(
    choice: Literal["auto", "none", "required"] | NamedToolChoice | None,
) -> ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("tool", choice.function.name)
    return ToolChoice(choice)
