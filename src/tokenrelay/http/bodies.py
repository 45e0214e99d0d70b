"""The chat fields every wire accepts, checked against the configured limits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenrelay.chat import ChatRequest, Message
from tokenrelay.config import Limits
from tokenrelay.limits.bounds import check_max_tokens, check_messages


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _only_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                if isinstance(part, dict) and part.get("type") != "text":
                    raise ValueError(f"content part type {part.get('type')!r} is not supported")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


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

    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


class ChatFields(GenerationOptions):
    """Fields shared by the OpenAI, native and seed-style wires."""

    messages: list[WireMessage]

    def to_request(self, limits: Limits, *, max_tokens: int | None = None) -> ChatRequest:
        messages = [
            Message(role="system" if m.role == "developer" else m.role, content=m.text())
            for m in self.messages
        ]
        check_messages(messages, limits)
        tokens = max_tokens if max_tokens is not None else self.max_tokens
        check_max_tokens(tokens, limits)
        return ChatRequest(
            model=self.model or "",
            messages=messages,
            max_tokens=tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop_list(),
            seed=self.seed,
            script=self.script,
        )
