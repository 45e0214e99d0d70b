"""A request's ``script`` is a client's input: capped, stopped at ``max_tokens``, never holding
the event loop, and honoured only where the operator allows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.gateway import parse_sse, serve, settings
from tests.probes import healthz_latencies, scripted_config
from tests.processes import serve_process


def body(**script: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "script": script}


async def test_a_million_repeats_stop_at_max_tokens_without_holding_the_loop(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with serve_process(scripted_config(tmp_path)) as served:
        await served.until_listening(http)
        process = psutil.Process(served.process.pid)
        before = process.memory_info().rss
        async with healthz_latencies(served.url) as latencies:
            for tokens in (["a"], ["a", "b", "c", "d", "e"]):
                request = body(tokens=tokens, repeat=1_000_000)
                async with http.post(f"{served.url}/chat/stream", json=request) as response:
                    events = [e.json() for e in parse_sse(await response.text())]
        grown = process.memory_info().rss - before

    assert events[-1] == {"done": True, "finish_reason": "length"}
    assert len("".join(e.get("token", "") for e in events)) == 8_192
    assert latencies and max(latencies) < 0.1, max(latencies)
    assert grown < 40 * 1024 * 1024, grown


async def test_a_script_over_the_size_limit_is_refused_before_it_starts(
    http: aiohttp.ClientSession,
) -> None:
    async with serve(limits={"max_script_chars": 100}) as gateway:
        async with http.post(f"{gateway.url}/chat/stream", json=body(text="a" * 101)) as big:
            refused = big.status, (await big.json())["error"]["code"]
        async with http.post(f"{gateway.url}/chat/stream", json=body(tokens=["a"] * 101)) as many:
            too_many = many.status
        async with http.post(f"{gateway.url}/chat/stream", json=body(text="a" * 100)) as fits:
            accepted = fits.status

    assert refused == (413, "payload_too_large")
    assert (too_many, accepted) == (413, 200)


async def test_scripts_are_off_by_default_on_a_public_bind_unless_allowed(
    http: aiohttp.ClientSession,
) -> None:
    public = settings(host="0.0.0.0")
    allowed = settings(host="0.0.0.0", allow_request_scripts=True)
    answers = []
    for config in (public, allowed):
        async with serve(config) as gateway:
            url = f"{gateway.url}/chat/stream"
            async with http.post(url, json=body(text="steered")) as steered:
                answers.append((steered.status, await steered.text()))
            async with http.post(url, json={"messages": [{"role": "user", "content": "hi"}]}) as r:
                answers.append((r.status, ""))

    assert answers[0][0] == 400 and "allow_request_scripts" in answers[0][1]
    assert answers[1] == (200, "")
    assert answers[2][0] == 200 and "steered" in answers[2][1]
    assert settings().request_scripts_allowed
