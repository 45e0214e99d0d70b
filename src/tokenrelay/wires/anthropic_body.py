"""The Messages API body ``POST /v1/messages`` accepts, and its one adapter to a ``ChatRequest``.

Blocks become parts: ``text``, ``image`` (a base64 source as a ``data:`` URL, a url source as
its URL), ``tool_use`` on assistant turns, ``thinking`` with its ``signature``,
``redacted_thinking`` (carried back whole), and ``tool_result`` blocks, which become
``role: "tool"`` messages ahead of the rest of their user turn (where an OpenAI-compatible
upstream wants them; the Anthropic provider merges them back). ``cache_control`` stays on its
block or tool. ``thinking`` sets the reasoning budget,
``tool_choice`` maps onto the common choice (``any`` is ``required``), and fields tokenrelay
does not model are kept for an Anthropic upstream (``top_k``, ``service_tier``…).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenrelay import errors
from tokenrelay.chat import (
    ChatOptions,
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    RedactedReasoningPart,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)

BlockType = Literal["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"]
BLOCK_TYPES = frozenset(get_args(BlockType))
# The fields a block of each type cannot do without.
NEEDS: dict[BlockType, tuple[str, ...]] = {
    "text": ("text",),
    "image": ("source",),
    "tool_use": ("id", "name"),
    "tool_result": ("tool_use_id",),
    "thinking": ("thinking",),
    "redacted_thinking": ("data",),
}
ALLOWED_BLOCKS = {
    "user": frozenset({"text", "image", "tool_result"}),
    "assistant": frozenset({"text", "tool_use", "thinking", "redacted_thinking"}),
}
CHOICE_MODES: dict[str, Literal["auto", "none", "required", "tool"]] = {
    "auto": "auto",
    "none": "none",
    "any": "required",
    "tool": "tool",
}


def _known_blocks(value: Any) -> Any:
    if isinstance(value, list):
        for block in value:
            if isinstance(block, dict) and block.get("type") not in BLOCK_TYPES:
                raise ValueError(f"content block type {block.get('type')!r} is not supported")
    return value


class ImageSource(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    def to_url(self) -> str:
        if self.type == "url":
            if not self.url:
                raise ValueError("a url image source needs url")
            return self.url
        if not self.media_type or not self.data:
            raise ValueError("a base64 image source needs media_type and data")
        return f"data:{self.media_type};base64,{self.data}"


class Block(BaseModel):
    """One content block. One model, not a union: a bad field is named as the client wrote
    it (``messages.0.content.1.source``), with no union member's tag in the path."""

    model_config = ConfigDict(extra="ignore")

    type: BlockType
    text: str | None = None
    source: ImageSource | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None  # of redacted_thinking
    cache_control: dict[str, Any] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        return _known_blocks(value)

    @model_validator(mode="after")
    def _has_its_fields(self) -> Block:
        for name in NEEDS[self.type]:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.type} block needs {name}")
        if self.source is not None:
            self.source.to_url()
        return self

    def to_part(self) -> Part:
        match self.type:
            case "text":
                return TextPart(self.text or "", self.cache_control)
            case "image":
                assert self.source is not None
                return ImagePart(self.source.to_url(), cache_control=self.cache_control)
            case "tool_use":
                arguments = orjson.dumps(self.input or {}).decode()
                return ToolCall(self.id or "", self.name or "", arguments, self.cache_control)
            case "thinking":
                return ReasoningPart(self.thinking or "", self.signature or None)
            case "redacted_thinking":
                assert self.data is not None
                return RedactedReasoningPart(self.data)
            case _:
                return ToolResult(
                    self.tool_use_id or "",
                    self._result_text(),
                    bool(self.is_error),
                    self.cache_control,
                )

    def _result_text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for block in self.content:
            if block.type != "text":
                raise errors.InvalidRequest(
                    f"tool_result content block type {block.type!r} is not supported"
                )
        return "".join(block.text or "" for block in self.content)


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    content: str | list[Block]

    @field_validator("content", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        return _known_blocks(value)

    def to_messages(self, index: int) -> list[Message]:
        content = self.content
        if isinstance(content, str):
            return [Message(self.role, content)]
        if all(b.type == "text" and b.cache_control is None for b in content):
            # The blocks of one turn are one text, as the OpenAI wire's content parts are: the
            # plain string is the cheap common case.
            return [Message(self.role, "".join(block.text or "" for block in content))]
        allowed = ALLOWED_BLOCKS[self.role]
        for position, block in enumerate(content):
            if block.type not in allowed:
                raise errors.InvalidRequest(
                    f"messages.{index}.content.{position}: a {block.type} block is not"
                    f" allowed in a {self.role} message"
                )
        results = [Message("tool", (b.to_part(),)) for b in content if b.type == "tool_result"]
        rest = tuple(b.to_part() for b in content if b.type != "tool_result")
        return results + ([Message(self.role, rest)] if rest else [])


class InputTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _custom(self) -> InputTool:
        if self.type not in (None, "custom"):
            raise ValueError(f"tool type {self.type!r} is not supported (only custom tools)")
        if self.input_schema is None:
            raise ValueError("a tool needs input_schema")
        return self

    def to_tool(self) -> Tool:
        return Tool(
            self.name, self.description, self.input_schema, cache_control=self.cache_control
        )


class InputToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> InputToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a tool choice of type tool needs name")
        return self


class Thinking(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    budget_tokens: int | None = Field(default=None, ge=1024, strict=True)

    @model_validator(mode="after")
    def _budgeted(self) -> Thinking:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("enabled thinking needs budget_tokens")
        return self


class MessagesBody(BaseModel):
    """What ``messages.create`` sends. Fields not modelled here are kept (``model_extra``)
    and forwarded to an Anthropic upstream, or refused by a provider of another dialect."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int = Field(ge=1, strict=True)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[Block] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop_sequences: list[str] | None = None
    metadata: dict[str, Any] | None = None
    tools: list[InputTool] | None = None
    tool_choice: InputToolChoice | None = None
    thinking: Thinking | None = None
    script: dict[str, Any] | None = None

    @field_validator("system", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for block in value:
                if isinstance(block, dict) and block.get("type") != "text":
                    raise ValueError(f"system block type {block.get('type')!r} is not supported")
        return value

    def system_message(self) -> Message | None:
        system = self.system
        if not system:
            return None
        if isinstance(system, str):
            return Message("system", system)
        if any(block.cache_control is not None for block in system):
            return Message("system", tuple(block.to_part() for block in system))
        # System blocks are separate instructions (often split only to mark a cache boundary).
        return Message("system", "\n\n".join(block.text or "" for block in system))

    def to_request(self) -> ChatRequest:
        system = self.system_message()
        messages = [system] if system is not None else []
        for index, message in enumerate(self.messages):
            messages += message.to_messages(index)
        extra = dict(self.model_extra or {})
        user: str | None = None
        if self.metadata is not None:
            if set(self.metadata) <= {"user_id"}:
                user = self.metadata.get("user_id")
            else:
                extra["metadata"] = self.metadata
        budget: int | None = None
        if self.thinking is not None:
            if self.thinking.type == "enabled":
                budget = self.thinking.budget_tokens
            elif self.thinking.type != "disabled":
                extra["thinking"] = self.thinking.model_dump(exclude_none=True)
        choice = self.tool_choice
        options = ChatOptions(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop_sequences) if self.stop_sequences else None,
            tools=tuple(tool.to_tool() for tool in self.tools or ()),
            tool_choice=None
            if choice is None
            else ToolChoice(CHOICE_MODES[choice.type], choice.name),
            parallel_tool_calls=(
                False if choice is not None and choice.disable_parallel_tool_use else None
            ),
            reasoning_budget=budget,
            user=user,
            extra=extra,
            dialect="anthropic",
            script=self.script,
        )
        return ChatRequest(self.model, messages, options)
