"""A gateway fronting a fake upstream (OpenAI's or Anthropic's): the whole relay over real
sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.gateway import Gateway, serve
from tokenrelay.testing import FakeAnthropic, FakeOpenAI, fake_prompt

UPSTREAM_KEY = "sk-upstream-secret-do-not-leak-8f2c"
ANTHROPIC_KEY = "sk-ant-upstream-0123456789"


@contextlib.asynccontextmanager
async def through_fake(
    monkeypatch: Any, **overrides: Any
) -> AsyncIterator[tuple[Gateway, FakeOpenAI]]:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
    async with FakeOpenAI() as fake:
        models = {
            "up": {
                "provider": "openai",
                "base_url": fake.base_url,
                "api_key_env": "FAKE_UPSTREAM_KEY",
                "upstream_model": "fake-model",
            }
        }
        async with serve(models=models, **overrides) as gateway:
            yield gateway, fake


@contextlib.asynccontextmanager
async def through_fake_anthropic(monkeypatch: Any) -> AsyncIterator[tuple[Gateway, FakeAnthropic]]:
    """The ``claude`` model on the anthropic provider, fronting a fake Anthropic upstream."""
    monkeypatch.setenv("TOKENRELAY_TEST_CLAUDE_KEY", ANTHROPIC_KEY)
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        model = {
            "provider": "anthropic",
            "base_url": fake.url,
            "api_key_env": "TOKENRELAY_TEST_CLAUDE_KEY",
            "upstream_model": "claude-upstream",
        }
        async with serve(models={"claude": model}) as gateway:
            yield gateway, fake


def asking(**script: Any) -> dict[str, Any]:
    """A chat body for the ``up`` model that steers the fake upstream with ``script``."""
    return {"model": "up", "messages": [{"role": "user", "content": fake_prompt(**script)}]}
