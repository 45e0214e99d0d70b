"""The relay on its own, without a server: stream lifecycles at the edges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tokenrelay import errors
from tokenrelay.chat import ChatOptions, ChatRequest, Message
from tokenrelay.client import Client
from tokenrelay.config import load_settings
from tokenrelay.events import Failed
from tokenrelay.providers import ProviderContext, build_provider
from tokenrelay.relay import Relay


@contextlib.asynccontextmanager
async def relay_with(**overrides: object) -> AsyncIterator[Relay]:
    settings = load_settings(**overrides)
    http = Client()
    try:
        context = ProviderContext(settings=settings, http=http)
        providers = {
            name: build_provider(name, config, context) for name, config in settings.models.items()
        }
        yield Relay(settings, providers)
    finally:
        await http.aclose()


def ask(model: str = "demo", **script: object) -> ChatRequest:
    return ChatRequest(model, [Message("user", "hi")], ChatOptions(script=dict(script)))


async def test_regression_stream_cancelled_before_its_task_ran_still_ends_its_log() -> None:
    async with relay_with(models={"demo": {"provider": "scripted"}}) as relay:
        ended: list[str] = []

        async def hook(stream: object) -> None:
            ended.append(getattr(stream, "id", ""))

        relay.finish_hooks.append(hook)
        stream = relay.start(ask())
        stream.cancel(errors.Cancelled("gone before it began"))  # no await in between
        async with asyncio.timeout(2):
            while not ended:
                await asyncio.sleep(0.01)
        last = stream.log.events[-1]
        assert isinstance(last, Failed) and last.error.code == "cancelled"
        assert ended == [stream.id]


async def test_total_limit_spans_retries_and_fallbacks() -> None:
    models = {
        "main": {
            "provider": "scripted",
            "fallbacks": ["backup"],
            "retries": 0,
            "options": {"script": {"accept_delay": 0.4, "fail": "upstream_unavailable"}},
        },
        "backup": {"provider": "scripted", "options": {"script": {"delay": 0.2, "repeat": 50}}},
    }
    async with relay_with(models=models, timeouts={"total": 0.8}) as relay:
        stream = relay.start(ask("main"))
        assert stream.task is not None
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(stream.task, 5)
        took = asyncio.get_running_loop().time() - started
        last = stream.log.events[-1]
        assert isinstance(last, Failed) and last.error.code == "upstream_timeout"
        assert took < 1.5  # one limit for the whole stream, not one per try
