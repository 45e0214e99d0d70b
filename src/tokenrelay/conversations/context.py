"""Fit a conversation into a model's context window: the system prompt and the newest turns.

Tokens are counted by the provider when it can, else estimated (:mod:`tokenrelay.tokens`).
Everything the model reads is counted: text, reasoning carried back, tool calls (name and
arguments) and results, each image as :data:`~tokenrelay.tokens.IMAGE_TOKENS`, and the tool
definitions of the request (their JSON, plus :data:`~tokenrelay.tokens.TOOL_OVERHEAD` each).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenrelay import errors
from tokenrelay.chat import (
    ImagePart,
    Message,
    ReasoningPart,
    RedactedReasoningPart,
    TextPart,
    Tool,
    ToolCall,
    ToolResult,
)
from tokenrelay.conversations.parts import answers_calls
from tokenrelay.tokens import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    TOOL_OVERHEAD,
    TokenCounter,
    estimated_tokens,
)


def countable(message: Message) -> tuple[str, int]:
    """The text a model reads in ``message``, and the tokens its other parts cost."""
    if isinstance(message.content, str):
        return message.content, 0
    texts: list[str] = []
    fixed = 0
    for part in message.content:
        match part:
            case TextPart(text=text) | ReasoningPart(text=text):
                texts.append(text)
            case ToolCall(name=name, arguments=arguments):
                texts += (name, arguments)
                fixed += MESSAGE_OVERHEAD
            case ToolResult(content=content):
                texts.append(content)
                fixed += MESSAGE_OVERHEAD
            case ImagePart():
                fixed += IMAGE_TOKENS
            case RedactedReasoningPart(data=data):
                # Base64 of the encrypted thinking: 3 bytes in 4 characters, and the
                # estimate counts 3 bytes a token, as for text.
                fixed += len(data) // 4
    return "\n".join(texts), fixed


def tool_json(tool: Tool) -> str:
    return json.dumps(
        {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    )


@dataclass
class ContextFitter:
    """Collect messages newest first until the next one would not fit.

    ``budget`` is the window minus the room kept for the reply; ``max_messages`` caps the
    count too (the gateway's own request limit). The system messages and the
    new user message always go in (or the request is refused with ``context_length_exceeded``).
    """

    budget: int
    count: TokenCounter = estimated_tokens
    max_messages: int | None = None
    system: list[Message] = field(default_factory=list)
    used: int = 0
    dropped: bool = False
    _turns: list[Message] = field(default_factory=list)

    async def cost(self, message: Message) -> int:
        text, fixed = countable(message)
        return await self.count(text) + fixed + MESSAGE_OVERHEAD

    async def start(self, system: list[Message], new: Message, tools: Sequence[Tool] = ()) -> None:
        self.system = system
        self.used = sum([await self.cost(m) for m in [*system, new]])
        self.used += sum([await self.count(tool_json(t)) + TOOL_OVERHEAD for t in tools])
        if self.used > self.budget:
            what = (
                "the system prompt, the tools and this message"
                if tools
                else ("the system prompt and this message")
            )
            raise errors.ContextLengthExceeded(
                f"{what} need about {self.used} tokens; the "
                f"model's context window leaves {self.budget} for them"
            )
        self._turns = [new]

    async def add(self, message: Message) -> bool:
        """Take the next older message; False (and take nothing more) once one does not fit."""
        if self.dropped:
            return False
        cost = await self.cost(message)
        full = self.max_messages is not None and (
            len(self.system) + len(self._turns) >= self.max_messages
        )
        if full or self.used + cost > self.budget:
            self.dropped = True
            return False
        self.used += cost
        self._turns.append(message)
        return True

    def messages(self) -> list[Message]:
        """System messages, then the kept turns oldest first, starting with a user message."""
        turns = self._turns[::-1]
        # A reply whose question was dropped would open the history with the assistant, which
        # some upstreams (Anthropic's) refuse; tool results whose calls were dropped, with
        # results nothing asked for, which every upstream refuses.
        while (
            self.dropped and len(turns) > 1 and (turns[0].role != "user" or answers_calls(turns[0]))
        ):
            turns.pop(0)
        return [*self.system, *turns]
