"""Retries with backoff, then fallbacks, only before the first token; every try is logged."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from tests.gateway import parse_sse, serve
from tokenrelay.testing import FakeOpenAI, fake_prompt


def models_over(primary_url: str, **primary: object) -> dict[str, object]:
    return {
        "main": {
            "provider": "openai",
            "base_url": primary_url,
            "fallbacks": ["backup"],
            "retry_backoff": 0.05,
            **primary,
        },
        "backup": {"provider": "scripted", "options": {"script": {"text": "from the backup"}}},
    }


def body(**script: object) -> dict[str, object]:
    return {"model": "main", "messages": [{"role": "user", "content": fake_prompt(**script)}]}


def seed_text(raw: str) -> tuple[str, list[dict[str, object]]]:
    events = [event.json() for event in parse_sse(raw)]
    return "".join(str(e.get("token", "")) for e in events), events


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_failing_model_is_retried_then_falls_back_before_the_first_token(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.INFO, logger="tokenrelay.relay")
    async with FakeOpenAI() as fake, serve(models=models_over(fake.base_url, retries=2)) as gw:
        async with http.post(f"{gw.url}/chat/stream", json=body(status=status)) as response:
            assert response.status == 200
            text, events = seed_text(await response.text())
    assert text == "from the backup"
    assert events[-1] == {"done": True, "finish_reason": "stop"}
    assert len(fake.requests) == 3  # the first try and two retries
    tries = [r.getMessage() for r in caplog.records if " attempt " in r.getMessage()]
    assert len(tries) == 4 and tries[-1].endswith("on backup: ok")


async def test_connect_failure_falls_back(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as fake:
        url = fake.base_url
    async with serve(models=models_over(url)) as gw:  # nothing listens there any more
        async with http.post(f"{gw.url}/chat/stream", json=body()) as response:
            text, _ = seed_text(await response.text())
    assert text == "from the backup"


class FailsOnce(FakeOpenAI):
    def _script_of(self, body: dict[str, Any]) -> dict[str, Any]:
        script = super()._script_of(body)
        return {**script, "status": 503} if len(self.requests) == 1 else script


async def test_a_retry_that_succeeds_keeps_the_requested_model(
    http: aiohttp.ClientSession,
) -> None:
    async with FailsOnce() as fake, serve(models=models_over(fake.base_url)) as gw:
        async with http.post(f"{gw.url}/chat/stream", json=body(tokens=["main ", "model"])) as r:
            text, _ = seed_text(await r.text())
    assert text == "main model"
    assert len(fake.requests) == 2


async def test_without_fallbacks_the_last_failure_reaches_the_client(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI() as fake:
        models = models_over(fake.base_url, fallbacks=[])
        async with serve(models=models) as gw:
            async with http.post(f"{gw.url}/chat/stream", json=body(status=503)) as response:
                assert response.status == 502
                assert (await response.json())["error"]["code"] == "upstream_unavailable"
    assert len(fake.requests) == 2


async def test_no_switch_after_the_first_token_the_client_gets_an_error_event(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI() as fake, serve(models=models_over(fake.base_url)) as gw:
        request = body(tokens=["one ", "two"], mid_stream_error_after=1)
        async with http.post(f"{gw.url}/chat/stream", json=request) as response:
            text, events = seed_text(await response.text())
    assert text == "one "
    assert events[-1]["code"] == "upstream_error"
    assert len(fake.requests) == 1


async def test_client_errors_are_not_retried(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as fake, serve(models=models_over(fake.base_url)) as gw:
        async with http.post(f"{gw.url}/chat/stream", json=body(status=400)) as response:
            assert response.status == 400
    assert len(fake.requests) == 1


async def test_a_long_retry_after_skips_the_retry_and_falls_back(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI() as fake, serve(models=models_over(fake.base_url, retries=3)) as gw:
        request = body(status=429, headers={"Retry-After": "120"})
        async with http.post(f"{gw.url}/chat/stream", json=request) as response:
            text, _ = seed_text(await response.text())
    assert text == "from the backup"
    assert len(fake.requests) == 1
