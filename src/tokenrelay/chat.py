"""The one request shape every provider receives, whatever wire it came in on.

``ChatRequest(model, messages, options)``: a message's content is either a plain string (the
common case, kept cheap) or a tuple of typed parts; ``options`` is one frozen object that each
wire's adapter builds once. What a wire receives but tokenrelay does not model is kept in
``options.extra`` with the dialect it came in, so a provider of that dialect can forward it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Dialect = Literal["openai", "anthropic", "native"]
Feature = Literal["tools", "images", "response_format", "reasoning", "extra"]


# Anthropic's prompt-caching mark on a block (``{"type": "ephemeral"}``), sent back to an
# Anthropic upstream; OpenAI-compatible upstreams cache prefixes on their own and are not sent it.
CacheControl = Mapping[str, Any]


@dataclass(slots=True, frozen=True)
class TextPart:
    text: str
    cache_control: CacheControl | None = None


@dataclass(slots=True, frozen=True)
class ImagePart:
    """An image by URL; a ``data:`` URL carries the bytes inline."""

    url: str
    detail: str | None = None
    cache_control: CacheControl | None = None


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A call the assistant made, carried back in history; ``arguments`` is JSON text."""

    id: str
    name: str
    arguments: str
    cache_control: CacheControl | None = None


@dataclass(slots=True, frozen=True)
class ToolResult:
    """What a tool answered to the call ``call_id`` (OpenAI ``role: "tool"``, Anthropic
    ``tool_result``); ``is_error`` is Anthropic's, OpenAI has no place for it."""

    call_id: str
    content: str
    is_error: bool = False
    cache_control: CacheControl | None = None


@dataclass(slots=True, frozen=True)
class ReasoningPart:
    """Reasoning carried back to a provider that needs it (Anthropic ``thinking``)."""

    text: str
    signature: str | None = None


@dataclass(slots=True, frozen=True)
class RedactedReasoningPart:
    """Encrypted reasoning carried back verbatim (Anthropic ``redacted_thinking``)."""

    data: str


Part = TextPart | ImagePart | ToolCall | ToolResult | ReasoningPart | RedactedReasoningPart


@dataclass(slots=True)
class Message:
    role: Role
    content: str | tuple[Part, ...]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def parts(self) -> tuple[Part, ...]:
        if isinstance(self.content, str):
            return (TextPart(self.content),) if self.content else ()
        return self.content

    def size(self) -> int:
        """Characters the model reads: text, tool arguments and results (not image bytes)."""
        if isinstance(self.content, str):
            return len(self.content)
        total = 0
        for part in self.content:
            match part:
                case TextPart(text=text) | ReasoningPart(text=text):
                    total += len(text)
                case ToolCall(name=name, arguments=arguments):
                    total += len(name) + len(arguments)
                case ToolResult(content=content):
                    total += len(content)
                case ImagePart() | RedactedReasoningPart():
                    # Image bytes are not read as text; redacted reasoning is opaque.
                    pass
        return total


@dataclass(slots=True, frozen=True)
class Tool:
    """A function the model may call; ``parameters`` is its JSON Schema."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None
    cache_control: CacheControl | None = None


@dataclass(slots=True, frozen=True)
class ToolChoice:
    """``auto``, ``none``, ``required`` (any tool), or ``tool`` with the one ``name`` to call."""

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@dataclass(slots=True, frozen=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: Mapping[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


@dataclass(slots=True, frozen=True)
class ChatOptions:
    """How to generate. ``max_completion_tokens`` is kept beside ``max_tokens`` so an upstream
    of the client's dialect gets the field the client sent; :attr:`token_limit` is the one cap."""

    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    # Anthropic's ``thinking.budget_tokens``; a provider of the other dialect maps one onto the
    # other (``providers/reasoning.py``).
    reasoning_budget: int | None = None
    user: str | None = None
    metadata: Mapping[str, Any] | None = None
    # Fields of ``dialect`` that tokenrelay does not model, forwarded to an upstream of it.
    extra: Mapping[str, Any] = field(default_factory=dict)
    dialect: Dialect = "native"
    # Directions for the scripted provider (tokens, delays, faults); others ignore it.
    script: Mapping[str, Any] | None = None

    @property
    def token_limit(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    options: ChatOptions = field(default_factory=ChatOptions)

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""

    def features(self) -> dict[Feature, str]:
        """What of this request needs more than plain text, each with the field that asks."""
        options = self.options
        used: dict[Feature, str] = {}
        if options.tools or options.tool_choice is not None:
            used["tools"] = "tools" if options.tools else "tool_choice"
        if options.response_format is not None and options.response_format.type != "text":
            used["response_format"] = "response_format"
        if options.reasoning_effort is not None:
            used["reasoning"] = "reasoning_effort"
        elif options.reasoning_budget is not None:
            used["reasoning"] = "thinking"
        if options.extra:
            used["extra"] = next(iter(options.extra))
        for index, message in enumerate(self.messages):
            if isinstance(message.content, str):
                continue
            for part in message.content:
                if isinstance(part, ImagePart):
                    used.setdefault("images", f"messages[{index}].content (image)")
                elif isinstance(part, ToolCall | ToolResult):
                    used.setdefault("tools", f"messages[{index}] (tool calls)")
        return used
