"""SIGTERM on a real ``tokenrelay serve``: out of rotation at once, streams in flight drained."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.gateway import read_sse
from tests.processes import ServeProcess, serve_process
from tests.stored import stored_message, turn, words
from tokenrelay.store import Store

CONFIG = '[models.demo]\nprovider = "scripted"\n\n[server]\ndrain_timeout = {drain}\n'


@contextlib.asynccontextmanager
async def replying(
    http: aiohttp.ClientSession, tmp_path: Path, *, drain: float, tokens: int
) -> AsyncIterator[tuple[ServeProcess, aiohttp.ClientResponse, str]]:
    """A real process with ``drain_timeout = drain``, streaming a stored reply of ``tokens``
    tokens, 0.1 s apart; the process, the reply's response and its message id."""
    config = tmp_path / "tokenrelay.toml"
    config.write_text(CONFIG.format(drain=drain))
    async with serve_process(config) as served:
        await served.until_listening(http)
        async with http.post(f"{served.url}/v1/conversations", json={}) as response:
            cid = (await response.json())["id"]
        response = await http.post(
            f"{served.url}/v1/conversations/{cid}/messages",
            json=turn(tokens=[w + " " for w in words(tokens)], delay=0.1),
        )
        assert response.status == 200, await response.text()
        yield served, response, response.headers["X-Message-Id"]
        response.close()
        async with asyncio.timeout(15):
            await served.process.wait()


async def _stored_status(database_url: str, message_id: str) -> tuple[str, str]:
    store = await Store.open(database_url)
    try:
        message = await stored_message(store, message_id)
    finally:
        await store.close()
    return message.status, message.content


async def test_sigterm_drains_a_stream_in_flight_while_readyz_and_new_streams_refuse(
    http: aiohttp.ClientSession, tmp_path: Path, default_database: str
) -> None:
    async with replying(http, tmp_path, drain=20, tokens=25) as (served, response, message_id):
        events = read_sse(response)
        text = ""
        async for event in events:
            if event.event == "token":
                text += event.json()["text"]
                break
        served.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with http.get(f"{served.url}/readyz") as ready:
            readiness = ready.status, await ready.json()
        async with http.post(
            f"{served.url}/v1/streams", json={"messages": [{"role": "user", "content": "hi"}]}
        ) as refused:
            refusal = refused.status, (await refused.json())["error"]["code"]
            retry_after = refused.headers.get("Retry-After")
        last = None
        async for event in events:
            last = event.event
            if event.event == "token":
                text += event.json()["text"]
    status, stored = await _stored_status(default_database, message_id)

    assert readiness == (503, {"status": "draining"})
    assert refusal == (503, "server_shutdown")
    assert retry_after is not None and int(retry_after) >= 1
    assert last == "done"
    assert text == "".join(w + " " for w in words(25))
    assert (status, stored) == ("complete", text)


async def test_a_stream_longer_than_the_drain_timeout_ends_with_server_shutdown_stored_interrupted(
    http: aiohttp.ClientSession, tmp_path: Path, default_database: str
) -> None:
    async with replying(http, tmp_path, drain=1, tokens=200) as (served, response, message_id):
        events = read_sse(response)
        text = ""
        last = None
        async for event in events:
            if event.event == "token":
                if not text:
                    served.process.send_signal(signal.SIGTERM)
                text += event.json()["text"]
            last = event
    status, stored = await _stored_status(default_database, message_id)

    assert last is not None and last.event == "error"
    assert last.json()["code"] == "server_shutdown"
    # It ran on for the drain timeout (about 10 tokens), then stopped.
    assert 5 <= len(text.split()) < 200
    assert (status, stored) == ("interrupted", text)
