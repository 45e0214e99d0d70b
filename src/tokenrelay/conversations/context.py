"""Fit a conversation into a model's context window: the system prompt and the newest turns.

Tokens are counted by the provider when it can, else estimated (:mod:`tokenrelay.tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenrelay import errors
from tokenrelay.chat import Message
from tokenrelay.tokens import MESSAGE_OVERHEAD, TokenCounter, estimated_tokens


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
        return await self.count(message.text) + MESSAGE_OVERHEAD

    async def start(self, system: list[Message], new: Message) -> None:
        self.system = system
        self.used = sum([await self.cost(m) for m in [*system, new]])
        if self.used > self.budget:
            raise errors.ContextLengthExceeded(
                f"the system prompt and this message need about {self.used} tokens; the "
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
        # some upstreams (Anthropic's) refuse.
        while self.dropped and len(turns) > 1 and turns[0].role != "user":
            turns.pop(0)
        return [*self.system, *turns]
