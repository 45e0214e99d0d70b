"""Streams that outlive their instance (issue 14): real processes on one Redis and PostgreSQL.

Each test has a redis-server of its own (so it may stop it), and two or three ``tokenrelay
serve`` processes on the session's PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import ServeProcess, serve_process, upgraded
from tests.redis_server import RedisServer, redis_server
from tests.scaleout import (
    LEASE,
    assert_whole,
    at_id,
    config_text,
    ended,
    events_until,
    expected_text,
    hopping,
    ids_of,
    instances,
    native_body,
    replayed_once_back,
    resume,
    script,
    text_of,
)
from tests.test_nginx import NGINX, nginx_in_front
from tokenrelay import cli, errors
from tokenrelay.events import Event, Failed, Finish, Opened, Queued, TextDelta, Usage
from tokenrelay.relay import codec
from tokenrelay.testing import FakeOpenAI, fake_prompt


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


@pytest.fixture
async def pair(
    http: aiohttp.ClientSession, tmp_path: Path, redis: RedisServer, postgres_database: str
) -> AsyncIterator[list[ServeProcess]]:
    """Two instances on the test's Redis, with the default settings of tests/scaleout.py."""
    async with instances(http, tmp_path, redis, 2, database_url=postgres_database) as served:
        yield served


def test_every_event_kind_comes_back_from_the_shared_log_encoding_as_it_went_in() -> None:
    events: list[Event] = [
        Opened(stream_id="str_x", model="m"),
        Queued(2),
        TextDelta("héllo 👋"),
        Usage(3, 4),
        Finish("stop"),
        Failed(errors.Cancelled("stopped")),
    ]
    back = codec.decode(codec.encode(events))
    assert back[:-1] == events[:-1]
    failed = back[-1]
    assert isinstance(failed, Failed) and isinstance(failed.error, errors.Cancelled)
    assert failed.error.message == "stopped"


async def test_native_stream_started_on_a_resumes_on_b_then_c_exactly(
    http: aiohttp.ClientSession, tmp_path: Path, redis: RedisServer, postgres_database: str
) -> None:
    async with instances(http, tmp_path, redis, 3, database_url=postgres_database) as [a, b, c]:
        async with http.post(f"{a.url}/v1/streams", json=native_body(40, 0.05)) as response:
            stream_id = response.headers["X-Stream-Id"]
            first = await events_until(response, at_id(6))
        second = await resume(http, b.url, stream_id, 6, stop=at_id(20))
        third = await resume(http, c.url, stream_id, 20)
    assert_whole(first + second + third, 40)


async def test_resume_on_another_instance_after_the_end_replays_the_whole_stream(
    http: aiohttp.ClientSession, pair: list[ServeProcess]
) -> None:
    a, b = pair
    async with http.post(f"{a.url}/v1/streams", json=native_body(5, 0)) as response:
        stream_id = response.headers["X-Stream-Id"]
        whole = await events_until(response, ended)
    again = await resume(http, b.url, stream_id, 0)
    async with http.get(f"{b.url}/v1/streams/str_nothing") as missing:
        assert missing.status == 404
    assert [(e.id, e.event, e.data) for e in again] == [(e.id, e.event, e.data) for e in whole]


async def test_websocket_reply_started_on_a_resumes_on_b_and_cancel_there_stops_it(
    http: aiohttp.ClientSession, pair: list[ServeProcess]
) -> None:
    a, b = pair
    ws_a = await http.ws_connect(a.url.replace("http", "ws") + "/ws/chat")
    await ws_a.send_json({"content": "hi", "script": script(200, 0.05)})
    seen: list[dict[str, Any]] = []
    while len(seen) < 5:
        seen.append(await asyncio.wait_for(ws_a.receive_json(), 10))
    stream_id = seen[0]["stream_id"]
    await ws_a.close()
    async with http.ws_connect(b.url.replace("http", "ws") + "/ws/chat") as ws_b:
        await ws_b.send_json(
            {"type": "resume", "stream_id": stream_id, "last_event_id": seen[-1]["id"]}
        )
        for _ in range(5):
            seen.append(await asyncio.wait_for(ws_b.receive_json(), 10))
        await ws_b.send_json({"type": "cancel"})
        while seen[-1]["type"] not in ("done", "error"):
            seen.append(await asyncio.wait_for(ws_b.receive_json(), 5))
    assert [m["id"] for m in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["type"] == "error" and seen[-1]["code"] == "cancelled"
    tokens = "".join(m["content"] for m in seen if m["type"] == "token")
    assert expected_text(200).startswith(tokens) and len(tokens) > 10


async def test_delete_on_b_closes_the_upstream_of_a_within_one_second(
    http: aiohttp.ClientSession, tmp_path: Path, redis: RedisServer, postgres_database: str
) -> None:
    async with (
        FakeOpenAI() as fake,
        instances(
            http, tmp_path, redis, 2, database_url=postgres_database, upstream_url=fake.base_url
        ) as [a, b],
    ):
        body = {
            "model": "up",
            "messages": [{"role": "user", "content": fake_prompt(tokens=["x "] * 500, delay=0.05)}],
        }
        async with http.post(f"{a.url}/v1/streams", json=body) as response:
            assert response.status == 200, await response.text()
            stream_id = response.headers["X-Stream-Id"]
            await events_until(response, at_id(4))
            asked = time.monotonic()
            async with http.delete(f"{b.url}/v1/streams/{stream_id}") as cancel:
                answer = await cancel.json()
            assert await fake.requests[0].wait_closed(2)
            rest = await events_until(response, ended)
    closed_at = fake.requests[0].closed_at
    assert closed_at is not None and closed_at - asked < 1.0
    assert answer == {"stream_id": stream_id, "cancelled": True, "status": "cancelled"}
    assert rest[-1].event == "error" and rest[-1].json()["code"] == "cancelled"


async def test_deleting_the_conversation_on_b_stops_its_reply_streaming_on_a(
    http: aiohttp.ClientSession, pair: list[ServeProcess]
) -> None:
    a, b = pair
    async with http.post(f"{a.url}/v1/conversations", json={}) as created:
        cid = (await created.json())["id"]
    turn = {"content": "hi", "script": script(400, 0.05)}
    async with http.post(f"{a.url}/v1/conversations/{cid}/messages", json=turn) as response:
        await events_until(response, at_id(4))
        started = time.monotonic()
        async with http.delete(f"{b.url}/v1/conversations/{cid}") as deleted:
            assert deleted.status == 200
        rest = await events_until(response, ended)
    assert time.monotonic() - started < 1.0
    assert rest[-1].event == "error" and rest[-1].json()["code"] == "cancelled"


async def test_a_viewer_on_b_keeps_the_generation_on_a_alive_past_the_grace_period(
    http: aiohttp.ClientSession, tmp_path: Path, redis: RedisServer, postgres_database: str
) -> None:
    grace = {"streams": {"lease": LEASE, "resume_grace": 0.5}}
    async with instances(
        http, tmp_path, redis, 2, database_url=postgres_database, sections=grace
    ) as [a, b]:
        async with http.post(f"{a.url}/v1/streams", json=native_body(50, 0.05)) as response:
            stream_id = response.headers["X-Stream-Id"]
            first = await events_until(response, at_id(3))
        # Watched from B only, for five grace periods: it runs to its end.
        rest = await resume(http, b.url, stream_id, 3)
    assert_whole(first + rest, 50)


async def test_a_killed_instance_ends_its_streams_for_viewers_elsewhere_within_a_lease(
    http: aiohttp.ClientSession, pair: list[ServeProcess]
) -> None:
    a, b = pair
    async with http.post(f"{a.url}/v1/streams", json=native_body(400, 0.05)) as response:
        stream_id = response.headers["X-Stream-Id"]
        await events_until(response, at_id(3))
    headers = {"Last-Event-ID": "3"}
    async with http.get(f"{b.url}/v1/streams/{stream_id}", headers=headers) as follow:
        await events_until(follow, at_id(6))
        a.process.kill()
        killed = time.monotonic()
        rest = await events_until(follow, ended)
        took = time.monotonic() - killed
    assert rest[-1].event == "error"
    assert rest[-1].json()["code"] == "upstream_error"
    assert "stopped" in rest[-1].json()["message"]
    # The lease, the next check after it (a quarter lease), and room for a loaded machine.
    assert took < LEASE * 1.25 + 1.0, took


async def test_redis_stopped_mid_stream_hangs_nothing_and_everything_recovers(
    http: aiohttp.ClientSession, redis: RedisServer, pair: list[ServeProcess]
) -> None:
    a, b = pair
    async with http.post(f"{a.url}/v1/streams", json=native_body(60, 0.05)) as response:
        stream_id = response.headers["X-Stream-Id"]
        first = await events_until(response, at_id(5))
        await redis.stop()
        # The viewer on the generating instance gets every token and the end.
        rest = await events_until(response, ended, timeout=10)
        async with http.get(f"{b.url}/v1/streams/{stream_id}") as elsewhere:
            refused = elsewhere.status, await elsewhere.json()
    await redis.start()
    # Back, empty: the generating instance writes its streams again by itself.
    replayed = await replayed_once_back(http, b.url, stream_id)
    # New streams resume, and are stopped, across instances again.
    async with http.post(f"{a.url}/v1/streams", json=native_body(400, 0.05)) as response:
        new_id = response.headers["X-Stream-Id"]
        await events_until(response, at_id(3))
        resumed = await resume(http, b.url, new_id, 0, stop=at_id(5))
        async with http.delete(f"{b.url}/v1/streams/{new_id}") as cancel:
            cancelled = (await cancel.json())["status"]
        after = await events_until(response, ended)
    assert_whole(first + rest, 60)
    assert refused[0] == 503
    assert refused[1]["error"]["code"] == "stream_log_unavailable"
    assert text_of(replayed) == expected_text(60)
    assert ids_of(resumed)[-1] == 5 and text_of(resumed) == expected_text(4)
    assert cancelled == "cancelled" and after[-1].json()["code"] == "cancelled"


async def test_limits_and_the_conversation_store_hold_across_instances(
    http: aiohttp.ClientSession, tmp_path: Path, redis: RedisServer, postgres_database: str
) -> None:
    one_at_a_time = {"rate_limits": {"concurrent_streams": 1}}
    async with instances(
        http, tmp_path, redis, 2, database_url=postgres_database, sections=one_at_a_time
    ) as [a, b]:
        async with http.post(f"{a.url}/v1/streams", json=native_body(40, 0.05)) as response:
            await events_until(response, at_id(2))
            async with http.post(f"{b.url}/v1/streams", json=native_body(2, 0)) as refused:
                assert refused.status == 429
                assert (await refused.json())["error"]["code"] == "concurrency_limited"
        async with http.post(f"{a.url}/v1/conversations", json={"title": "shared"}) as made:
            cid = (await made.json())["id"]
        async with http.get(f"{b.url}/v1/conversations/{cid}") as found:
            assert found.status == 200
            assert (await found.json())["title"] == "shared"


@pytest.mark.skipif(not NGINX.exists(), reason="needs Debian's nginx at /usr/sbin/nginx")
async def test_through_nginx_round_robin_every_resume_and_cancel_lands_anywhere_and_holds(
    http: aiohttp.ClientSession, tmp_path: Path, pair: list[ServeProcess]
) -> None:
    async with nginx_in_front([one.url for one in pair], tmp_path) as nginx:
        # nginx alternates between the two: half of the resumes land on the other instance.
        seen = await hopping(http, nginx.url, native_body(60, 0.03), hops=4, step=3)
        async with http.post(f"{nginx.url}/v1/streams", json=native_body(400, 0.05)) as other:
            other_id = other.headers["X-Stream-Id"]
            await events_until(other, at_id(3))
            cancels = []
            for _ in range(2):
                async with http.delete(f"{nginx.url}/v1/streams/{other_id}") as cancel:
                    cancels.append((await cancel.json())["status"])
            rest = await events_until(other, ended)
    assert_whole(seen, 60)
    assert cancels[0] == "cancelled"
    assert rest[-1].json()["code"] == "cancelled"


def test_serve_with_workers_is_refused_without_a_redis_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tokenrelay.toml"
    config.write_text('[models.demo]\nprovider = "scripted"\n')
    assert cli.main(["serve", "--config", str(config), "--workers", "2"]) == 2
    assert "--workers 2 needs redis_url" in capsys.readouterr().err


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


async def test_serve_with_two_workers_resumes_a_stream_on_either_and_stops_both(
    http: aiohttp.ClientSession, tmp_path: Path, redis: RedisServer, postgres_database: str
) -> None:
    config = tmp_path / "tokenrelay.toml"
    config.write_text(config_text(redis, None, {}))
    env = {"TOKENRELAY_DATABASE_URL": await upgraded(postgres_database)}
    workers: list[int] = []
    async with serve_process(config, env=env, args=["--workers", "2"], graceful=True) as served:
        await served.until_listening(http)
        workers = children_of(served.process.pid)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as new:
            # A new connection each time: the kernel gives each to either worker.
            seen = await hopping(new, served.url, native_body(40, 0.03), hops=6, step=2)
    assert len(workers) == 2
    assert_whole(seen, 40)
    # Stopping the parent stopped its workers.
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


async def test_a_redis_that_stops_answering_slows_no_stream_and_is_used_again_when_back(
    http: aiohttp.ClientSession, redis: RedisServer, pair: list[ServeProcess]
) -> None:
    a, b = pair
    async with http.post(f"{a.url}/v1/streams", json=native_body(40, 0.03)) as response:
        stream_id = response.headers["X-Stream-Id"]
        first = await events_until(response, at_id(3))
        # Frozen: it takes connections and never answers.
        redis.pause()
        started = time.monotonic()
        rest = await events_until(response, ended, timeout=10)
        took = time.monotonic() - started
        asked = time.monotonic()
        async with http.get(f"{b.url}/v1/streams/{stream_id}") as elsewhere:
            refused = elsewhere.status
        refused_after = time.monotonic() - asked
    redis.resume()
    replayed = await replayed_once_back(http, b.url, stream_id)
    assert_whole(first + rest, 40)
    # 37 tokens 0.03 s apart, as if Redis were not there.
    assert took < 37 * 0.03 + 1.0, took
    assert refused == 503 and refused_after < 2.0
    assert text_of(replayed) == expected_text(40)


async def test_a_viewer_on_b_that_stops_reading_never_slows_the_generation_on_a(
    http: aiohttp.ClientSession, pair: list[ServeProcess]
) -> None:
    a, b = pair
    body = native_body(0, 0)
    # 200 tokens of 8 KB: far more than the stuck viewer's socket buffers hold.
    body["script"] = {"tokens": ["x" * 8192], "repeat": 200, "delay": 0.01}
    async with http.post(f"{a.url}/v1/streams", json=body) as response:
        stream_id = response.headers["X-Stream-Id"]
        await events_until(response, at_id(2))
        host, port = b.url.removeprefix("http://").split(":")
        _, stuck = await asyncio.open_connection(host, int(port))
        stuck.write(f"GET /v1/streams/{stream_id} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        try:
            started = time.monotonic()
            rest = await events_until(response, ended, timeout=20)
            took = time.monotonic() - started
        finally:
            stuck.close()
    assert rest[-1].event == "done"
    assert len(text_of(rest)) + 2 * 8192 >= 200 * 8192
    # 198 tokens 0.01 s apart, with room for a loaded machine.
    assert took < 5.0, took
