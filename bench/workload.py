"""What the benchmark asks for: request bodies that steer the fake upstream, and the targets.

Every stream is made of one fixed token (:data:`TOKEN`), so the characters a client receives
tell how many tokens arrived even when a gateway merged several into one event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.client import Client
from bench.procs import Child
from tokenrelay.testing.fake_openai import fake_prompt

TOKEN = " tok"
UPSTREAM_MODEL = "fake-model"
GATEWAY_MODEL = "bench"


@dataclass
class Target:
    """Somewhere to send streams, and the process whose CPU and memory count for it."""

    name: str
    label: str
    client: Client
    model: str
    meter: Child
    """The gateway process; for the direct baseline, the upstream itself."""

    def body(
        self, tokens: int, *, delay: float = 0.0, first_delay: float = 0.0, hold: float = 0.0
    ) -> dict[str, Any]:
        return stream_body(self.model, tokens, delay=delay, first_delay=first_delay, hold=hold)


def stream_body(
    model: str,
    tokens: int,
    *,
    delay: float = 0.0,
    first_delay: float = 0.0,
    hold: float = 0.0,
) -> dict[str, Any]:
    """A streamed chat request that makes the fake upstream send ``tokens`` tokens (then wait
    ``hold`` seconds before it finishes the reply)."""
    script: dict[str, Any] = {"tokens": [TOKEN], "repeat": tokens}
    if delay:
        script["delay"] = delay
    if first_delay:
        script["first_delay"] = first_delay
    if hold:
        script["finish_delay"] = hold
    return {
        "model": model,
        "messages": [{"role": "user", "content": fake_prompt(**script)}],
        "stream": True,
    }


def tokens_in(chars: int) -> int:
    return chars // len(TOKEN)
