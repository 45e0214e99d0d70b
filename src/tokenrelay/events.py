"""The typed events a generation produces.

Providers yield these; the relay appends them to a stream's log; each wire encodes them.
Nothing here knows about HTTP, SSE or WebSockets.

A good stream is ``Opened, [Queued…], TextDelta…, [Usage], Finish``; a failed one ends with
``Failed`` instead of ``Finish``. ``Accepted`` is a marker a provider yields once the upstream
has taken the request (HTTP 200 received, or the local model dequeued the request); the relay
consumes it and never writes it to the log.
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
class Usage:
    prompt_tokens: int
    completion_tokens: int

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


ProviderEvent = Accepted | Queued | TextDelta | Usage | Finish
Event = Opened | Queued | TextDelta | Usage | Finish | Failed
TERMINAL = (Finish, Failed)
