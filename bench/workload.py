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
        self,
        tokens: int,
        *,
        delay: float = 0.0,
        first_delay: float = 0.0,
        hold: float = 0.0,
        rich: bool = False,
    ) -> dict[str, Any]:
        return stream_body(
            self.model, tokens, delay=delay, first_delay=first_delay, hold=hold, rich=rich
        )


def stream_body(
    model: str,
    tokens: int,
    *,
    delay: float = 0.0,
    first_delay: float = 0.0,
    hold: float = 0.0,
    rich: bool = False,
) -> dict[str, Any]:
    """A streamed chat request that makes the fake upstream send ``tokens`` tokens (then wait
    ``hold`` seconds before it finishes the reply); ``rich``: as many reasoning deltas before
    them and a tool call's argument fragments after (:func:`events_in` counts them all)."""
    script: dict[str, Any] = {"tokens": [TOKEN], "repeat": tokens}
    if rich:
        script["reasoning"] = [" think"] * tokens
        fragments = ['{"q": "', "tok", '"}'] * max(1, tokens // 30)
        script["tool_calls"] = [{"id": "call_1", "name": "lookup", "arguments": fragments}]
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


def events_in(tokens: int, rich: bool) -> int:
    """The deltas a :func:`stream_body` reply of ``tokens`` tokens carries."""
    return tokens if not rich else 2 * tokens + 1 + 3 * max(1, tokens // 30)


def tokens_in(chars: int) -> int:
    return chars // len(TOKEN)
