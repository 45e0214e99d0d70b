"""The typed events a generation produces.

Providers yield these; the relay appends them to a stream's log; each wire encodes them.
Nothing here knows about HTTP, SSE or WebSockets.

A good stream is ``Opened, [Queued…], deltas…, [Usage], Finish``; a failed one ends with
``Failed`` instead of ``Finish``. Deltas are text, reasoning (then its signature, where the
provider gives one), redacted reasoning (opaque, as Anthropic's ``redacted_thinking``) and tool
calls: ``ToolCallStart(index, id, name)``, its
``ToolCallDelta(index, arguments)`` fragments and ``ToolCallEnd(index)``; ``index`` counts the
calls of one reply from 0, and several calls may be open at once.

``Accepted`` is a marker a provider yields once the upstream has taken the request (HTTP 200
received, or the local model dequeued the request); the relay consumes it and never writes it
to the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenrelay.errors import TokenRelayError


@dataclass(slots=True, frozen=True)
class Opened:
    """Always the first event of a stream (id 1)."""

    stream_id: str
    model: str


@dataclass(slots=True, frozen=True)
class Accepted:
    """The upstream took the request; errors after this are mid-stream errors."""


@dataclass(slots=True, frozen=True)
class Queued:
    """Waiting for a busy local model; ``position`` 1 is next."""

    position: int


@dataclass(slots=True, frozen=True)
class TextDelta:
    text: str


@dataclass(slots=True, frozen=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True, frozen=True)
class ReasoningSignature:
    """Proof the provider gives for the reasoning before it, to be carried back verbatim."""

    signature: str


@dataclass(slots=True, frozen=True)
class RedactedReasoning:
    """Reasoning the provider encrypted (Anthropic ``redacted_thinking``): nothing to show,
    ``data`` to carry back verbatim on the next turn."""

    data: str


@dataclass(slots=True, frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A fragment of a call's JSON arguments; fragments are only whole JSON once joined."""

    index: int
    arguments: str


@dataclass(slots=True, frozen=True)
class ToolCallEnd:
    index: int


@dataclass(slots=True, frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # Of the prompt: read from the provider's cache, and written to it (Anthropic).
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    # Of the completion: spent reasoning.
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True, frozen=True)
class Finish:
    """The last event of a good stream."""

    reason: str


@dataclass(slots=True, frozen=True)
class Failed:
    """The last event of a failed stream."""

    error: TokenRelayError


Delta = (
    TextDelta
    | ReasoningDelta
    | ReasoningSignature
    | RedactedReasoning
    | ToolCallStart
    | ToolCallDelta
    | ToolCallEnd
)
ProviderEvent = Accepted | Queued | Delta | Usage | Finish
Event = Opened | Queued | Delta | Usage | Finish | Failed
TERMINAL = (Finish, Failed)
# What the client sees as output: any one of these means the stream has started answering.
DELTAS = (
    TextDelta,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    ToolCallStart,
    ToolCallDelta,
    ToolCallEnd,
)
