"""Nothing stored is lost: restarts, disconnects, cancels, kill -9, many writers, old schemas.

Every test runs on SQLite and on PostgreSQL (see the ``database_url`` fixture).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from tests.gateway import Gateway, read_sse, serve, settings
from tests.processes import serve_process, upgraded
from tests.stored import (
    all_settled,
    create,
    messages,
    post_turn,
    settled,
    stored_message,
    text_of,
    turn,
    words,
)
from tests.waiting import until_value
from tokenrelay import cli
from tokenrelay.app import create_app
from tokenrelay.store import MessageRecord, SchemaOutdated, Store
from tokenrelay.store import schema as store_schema
from tokenrelay.store.engine import create_engine
from tokenrelay.store.models import Base

FULL = "".join(words(400))
# Short reply leases, so that a lost instance's replies are found within a test's patience.
LEASE = 1.0


async def status_becomes(
    http: aiohttp.ClientSession, gateway: Gateway, cid: str, status: str, within: float
) -> dict[str, Any]:
    """The conversation's last message, once it has ``status``."""
    deadline = time.monotonic() + within
    while True:
        last = (await messages(http, gateway, cid))[-1]
        if last["status"] == status or time.monotonic() > deadline:
            return last
        await asyncio.sleep(0.1)


async def until_stored(store: Store, cid: str, count: int) -> list[MessageRecord]:
    """The conversation's messages, once there are ``count`` of them."""

    async def listed() -> list[MessageRecord]:
        return (await store.list_messages(None, cid, limit=100)).items

    return await until_value(listed, lambda items: len(items) >= count)


@pytest.fixture
def slow_reply_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that takes 0.3 s to write a reply's end, longer than its stream's last write."""
    finish_reply = Store.finish_reply

    async def slow_finish(self: Store, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await finish_reply(self, *args, **kwargs)

    monkeypatch.setattr(Store, "finish_reply", slow_finish)


@pytest.mark.usefixtures("slow_reply_store")
async def test_a_turn_read_to_its_end_finds_its_reply_stored_however_slow_the_store(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    """The reply's end is written by a task of its own; the stream's end waits for it, so a
    client that lists the messages right after the stream ends never finds it streaming."""
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        events = await post_turn(http, gateway, cid, turn("question", text="stored first"))
        listed = await messages(http, gateway, cid)
    assert text_of(events) == "stored first"
    reply = listed[-1]
    assert (reply["role"], reply["status"], reply["content"]) == (
        "assistant",
        "complete",
        "stored first",
    )


async def test_history_survives_a_restart_and_is_the_next_replys_context(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway, system="Be brief.")
        await post_turn(http, gateway, cid, turn("first", text="one"))
        await post_turn(http, gateway, cid, turn("second", text="two"))
        before = await messages(http, gateway, cid)
    async with serve(database_url=database_url) as gateway:
        after = await messages(http, gateway, cid)
        events = await post_turn(http, gateway, cid, turn("third", echo="history"))

    assert after == before
    assert [m["content"] for m in after] == ["Be brief.", "first", "one", "second", "two"]
    assert text_of(events) == (
        "system: Be brief. | user: first | assistant: one | user: second | assistant: two"
        " | user: third"
    )


async def test_a_finish_reason_longer_than_its_column_still_stores_the_whole_reply(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        events = await post_turn(
            http, gateway, cid, turn("hi", text="all of it", finish_reason="x" * 100)
        )
        await all_settled(gateway.services.store)
        stored = await messages(http, gateway, cid)

    assert events[-1].json() == {"finish_reason": "x" * 60}
    assert (stored[-1]["status"], stored[-1]["content"]) == ("complete", "all of it")
    assert stored[-1]["finish_reason"] == "x" * 60


async def test_a_reply_the_client_left_is_complete_when_it_ran_to_its_end(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url, streams={"resume_grace": 5}) as gateway:
        seen, reply = await _leave_after_three_tokens(http, gateway, words(30))

    assert FULL.startswith(seen) and seen
    assert reply.status == "complete"
    assert reply.content == "".join(words(30))
    assert (reply.finish_reason, reply.completion_tokens) == ("stop", 30)


async def test_a_reply_nobody_came_back_for_is_cancelled_with_its_partial_text(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url, streams={"resume_grace": 0.3}) as gateway:
        seen, reply = await _leave_after_three_tokens(http, gateway, words(400))

    assert (reply.status, reply.error_code) == ("cancelled", "cancelled")
    assert reply.content.startswith(seen)
    assert FULL.startswith(reply.content) and len(reply.content) < len(FULL)


async def test_delete_of_the_stream_stores_the_reply_cancelled_with_its_partial_text(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        async with http.post(url, json=turn(tokens=words(400), delay=0.02)) as response:
            message_id = response.headers["X-Message-Id"]
            frames = read_sse(response)
            seen = await _read_tokens_from(frames, 3)
            stream_id = response.headers["X-Stream-Id"]
            async with http.delete(f"{gateway.url}/v1/streams/{stream_id}") as deleted:
                assert deleted.status == 200
            rest = [event async for event in frames]
        reply = await settled(gateway.services.store, message_id)
        # Another turn may start once the cancelled one has ended.
        after = await post_turn(http, gateway, cid, turn("next", text="fine"))

    assert rest[-1].event == "error" and rest[-1].json()["code"] == "cancelled"
    assert (reply.status, reply.error_code) == ("cancelled", "cancelled")
    assert reply.content == seen + text_of(rest)
    assert 0 < len(reply.content) < len(FULL)
    assert text_of(after) == "fine"


async def test_a_second_turn_while_a_reply_streams_is_refused_and_delete_stops_it(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        response = await http.post(url, json=turn(tokens=words(400), delay=0.02))
        stream = gateway.relay.get(response.headers["X-Stream-Id"])
        await _read_tokens(response, 2)
        async with http.post(url, json=turn("too soon")) as second:
            refused = second.status, (await second.json())["error"]["code"]
        async with http.delete(f"{gateway.url}/v1/conversations/{cid}") as deleted:
            assert deleted.status == 200
        assert stream.task is not None
        await asyncio.wait_for(asyncio.shield(stream.task), 5)
        response.close()

    assert refused == (400, "invalid_request")
    assert stream.status == "cancelled"


async def test_a_stop_mid_reply_stores_it_interrupted_with_its_text(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        response = await http.post(url, json=turn(tokens=words(400), delay=0.02))
        message_id = response.headers["X-Message-Id"]
        seen = await _read_tokens(response, 3)
        # Leaving the block stops the server while the reply streams.
    response.close()
    store = await Store.open(database_url)
    try:
        reply = await stored_message(store, message_id)
    finally:
        await store.close()

    assert (reply.status, reply.error_code) == ("interrupted", "server_shutdown")
    assert reply.content.startswith(seen) and FULL.startswith(reply.content)


async def test_the_reply_is_checkpointed_while_it_streams_at_a_bounded_rate(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    checkpoints = {"checkpoint_interval": 0.25, "checkpoint_tokens": 10_000}
    async with serve(database_url=database_url, conversations=checkpoints) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        async with http.post(url, json=turn(tokens=words(60), delay=0.025)) as response:
            message_id = response.headers["X-Message-Id"]
            recorder = gateway.services.conversations.recorders[message_id]
            frames = read_sse(response)
            seen = await _read_tokens_from(frames, 12)
            await asyncio.sleep(0.6)
            midway = await stored_message(gateway.services.store, message_id)
            [event async for event in frames]
        by_time = await settled(gateway.services.store, message_id)
        timed_writes = recorder.checkpoints

    async with serve(
        database_url=database_url,
        conversations={"checkpoint_interval": 60, "checkpoint_tokens": 10},
    ) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        async with http.post(url, json=turn(tokens=words(60), delay=0.01)) as response:
            recorder = gateway.services.conversations.recorders[response.headers["X-Message-Id"]]
            await response.read()
        counted_writes = recorder.checkpoints

    assert midway.status == "streaming"
    assert len(seen) <= len(midway.content) < len(by_time.content)
    assert "".join(words(60)).startswith(midway.content)
    assert by_time.status == "complete"
    # 60 tokens over ~1.5 s: a write every 0.25 s, not one per token.
    assert 2 <= timed_writes <= 10
    # Every 10 tokens when the clock is slow: at most 60 / 10 writes (fewer if writes lag).
    assert 2 <= counted_writes <= 6


async def test_kill_9_mid_stream_leaves_an_interrupted_message_with_the_checkpointed_text(
    http: aiohttp.ClientSession, database_url: str, tmp_path: Path
) -> None:
    interval = 0.2
    config = tmp_path / "tokenrelay.toml"
    config.write_text(
        '[models.demo]\nprovider = "scripted"\n\n'
        f"[conversations]\ncheckpoint_interval = {interval}\nreply_lease = {LEASE}\n"
    )
    env = {"TOKENRELAY_DATABASE_URL": database_url}
    async with serve_process(config, env=env) as served:
        base, process = served.url, served.process
        await served.until_listening(http)
        async with http.post(f"{base}/v1/conversations", json={}) as response:
            cid = (await response.json())["id"]
        url = f"{base}/v1/conversations/{cid}/messages"
        response = await http.post(url, json=turn(tokens=words(400), delay=0.02))
        message_id = response.headers["X-Message-Id"]
        received: list[tuple[float, str]] = []
        text = ""
        async for event in read_sse(response):
            if event.event == "token":
                text += event.json()["text"]
                received.append((time.monotonic(), text))
            if received and time.monotonic() - received[0][0] > 1.5:
                break
        process.kill()
        killed_at = time.monotonic()
        await process.wait()
        response.close()

    store = await Store.open(database_url)
    try:
        left = await stored_message(store, message_id)
    finally:
        await store.close()
    async with serve(database_url=database_url, conversations={"reply_lease": LEASE}) as gateway:
        # Marked when its lease runs out: at this start, or by the next sweep after it.
        reply = await status_becomes(http, gateway, cid, "interrupted", within=LEASE * 5)

    assert left.status == "streaming"
    assert reply["id"] == message_id
    assert reply["status"] == "interrupted"
    assert reply["content"] == left.content
    assert FULL.startswith(reply["content"])
    # Lost at most the last checkpoint interval (with room for a loaded machine's delays).
    surely_saved = [seen for at, seen in received if at < killed_at - interval - 0.8]
    assert surely_saved, "the stream did not run long enough before the kill"
    assert len(reply["content"]) >= len(surely_saved[-1])


async def test_a_second_instance_leaves_the_first_ones_live_reply_alone(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    # A rolling restart: instance B starts (and sweeps) while A is mid-reply on the same
    # database, for longer than a lease; A's reply stays streaming and ends complete.
    leased = {"reply_lease": LEASE, "checkpoint_interval": 0.1}
    async with serve(database_url=database_url, conversations=leased) as first:
        cid = await create(http, first)
        reply = asyncio.create_task(
            post_turn(http, first, cid, turn(tokens=words(60), delay=LEASE * 4 / 60))
        )
        store: Store = first.app.state.services.store
        [_, live] = await until_stored(store, cid, 2)
        seen: set[str] = set()
        async with serve(database_url=database_url, conversations=leased):
            deadline = time.monotonic() + LEASE * 2.5
            while time.monotonic() < deadline:
                seen.add((await stored_message(store, live.id)).status)
                await asyncio.sleep(0.05)
        events = await reply
        done = await settled(store, live.id)

    assert seen == {"streaming"}
    assert events[-1].event == "done"
    assert done.status == "complete"
    assert done.content == "".join(words(60))


async def test_fifty_concurrent_streams_into_one_database_all_persist(
    http: aiohttp.ClientSession, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tokenrelay")
    busy = {"checkpoint_interval": 0.05, "checkpoint_tokens": 2}
    async with serve(database_url=database_url, conversations=busy) as gateway:
        cids = await asyncio.gather(*(create(http, gateway) for _ in range(50)))
        replies = await asyncio.gather(
            *(
                post_turn(http, gateway, cid, turn(f"q{i}", tokens=words(20), delay=0.01))
                for i, cid in enumerate(cids)
            )
        )
        stored = await all_settled(gateway.services.store)

    assert all(events[-1].event == "done" for events in replies)
    expected = "".join(words(20))
    by_conversation = {cid: [m for m in stored if m.conversation_id == cid] for cid in cids}
    for i, cid in enumerate(cids):
        user, assistant = by_conversation[cid]
        assert (user.role, user.content, user.status) == ("user", f"q{i}", "complete")
        assert (assistant.content, assistant.status) == (expected, "complete")
    assert len(stored) == 100
    problems = [r.getMessage() for r in caplog.records if r.name.startswith("tokenrelay.store")]
    assert problems == []
    assert "database is locked" not in caplog.text


async def test_models_and_migrations_agree(database_url: str) -> None:
    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(differences)
    finally:
        await engine.dispose()
    # The version table is alembic's own, not a model.
    assert [d for d in diff if "tokenrelay_schema_version" not in str(d)] == []


async def test_start_on_an_old_or_newer_schema_is_refused_naming_the_upgrade_command(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        await store_schema.downgrade(engine, "base")
        with pytest.raises(SchemaOutdated) as empty:
            await _start_app(database_url)
        await store_schema.upgrade(engine)
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE tokenrelay_schema_version SET version_num = 'ff'")
            )
        with pytest.raises(SchemaOutdated) as newer:
            await _start_app(database_url)
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE tokenrelay_schema_version SET version_num = :v"),
                {"v": store_schema.head()},
            )
        await _start_app(database_url)
    finally:
        await engine.dispose()

    assert "is empty" in str(empty.value)
    assert str(empty.value).endswith("upgrade it with: tokenrelay db upgrade")
    assert "newer than this tokenrelay knows" in str(newer.value)


async def test_the_cli_refuses_to_serve_an_empty_database_until_db_upgrade(
    http: aiohttp.ClientSession,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = create_engine(database_url)
    try:
        await store_schema.downgrade(engine, "base")
    finally:
        await engine.dispose()
    monkeypatch.setenv("TOKENRELAY_DATABASE_URL", database_url)
    # The CLI runs its own event loop: give it a thread without one.
    serve_code = await asyncio.to_thread(cli.main, ["serve", "--port", "1"])
    refused = capsys.readouterr().err
    upgrade_code = await asyncio.to_thread(cli.main, ["db", "upgrade"])
    upgraded = capsys.readouterr().out
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)

    assert serve_code == 2
    assert refused.strip().endswith("upgrade it with: tokenrelay db upgrade")
    assert upgrade_code == 0
    assert f"upgraded from empty to schema revision {store_schema.head()}" in upgraded
    assert cid.startswith("conv_")


async def _start_app(database_url: str) -> None:
    app = create_app(settings(database_url=database_url))
    async with app.router.lifespan_context(app):
        pass


async def _leave_after_three_tokens(
    http: aiohttp.ClientSession, gateway: Gateway, tokens: list[str]
) -> tuple[str, MessageRecord]:
    """Start a reply of ``tokens``, close the response after three, and wait for it to settle."""
    cid = await create(http, gateway)
    url = f"{gateway.url}/v1/conversations/{cid}/messages"
    response = await http.post(url, json=turn(tokens=tokens, delay=0.02))
    message_id = response.headers["X-Message-Id"]
    seen = await _read_tokens(response, 3)
    response.close()
    return seen, await settled(gateway.services.store, message_id)


async def _read_tokens(response: aiohttp.ClientResponse, count: int) -> str:
    return await _read_tokens_from(read_sse(response), count)


async def _read_tokens_from(frames: object, count: int) -> str:
    text, tokens = "", 0
    async for event in frames:  # type: ignore[attr-defined]
        if event.event == "token":
            text += event.json()["text"]
            tokens += 1
            if tokens >= count:
                break
    return text


async def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    url = await upgraded(f"sqlite:///{tmp_path / 'fresh.db'}")
    store = await Store.open(url)
    try:
        await store.create_conversation(None, system="private")
        modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.glob("fresh.db*")}
    finally:
        await store.close()

    assert modes["fresh.db"] == 0o600
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


@pytest.mark.usefixtures("slow_reply_store")
async def test_a_websocket_turn_read_to_its_end_finds_its_reply_stored_however_slow_the_store(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    """The same order on the WebSocket wire: the turn's ``done`` comes once its reply is
    stored."""
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        async with http.ws_connect(f"{gateway.ws_url}/ws/chat?conversation_id={cid}") as ws:
            body = {"content": "question", "script": {"text": "stored first"}}
            await ws.send_str(orjson.dumps(body).decode())
            frames = []
            while not frames or frames[-1]["type"] not in ("done", "error"):
                frames.append(orjson.loads((await ws.receive()).data))
            listed = await messages(http, gateway, cid)
    assert frames[-1]["type"] == "done", frames[-1]
    assert "".join(f["content"] for f in frames if f["type"] == "token") == "stored first"
    reply = listed[-1]
    assert (reply["role"], reply["status"], reply["content"]) == (
        "assistant",
        "complete",
        "stored first",
    )


@pytest.mark.parametrize("direct", [True, False], ids=["direct-writer", "sqlalchemy"])
async def test_the_sweep_interrupts_exactly_the_replies_whose_lease_ran_out(
    database_url: str, direct: bool
) -> None:
    # Both ways the sweep can run: in one step on the store's own connection, or through
    # SQLAlchemy; the lease's timestamp compares the same either way, on either database.
    store = Store(create_engine(database_url), direct=direct)
    try:
        conversation = await store.create_conversation(None)

        async def reply(lease: float) -> str:
            started = await store.start_reply(
                conversation.id, model="m", stream_id=f"str_{lease}", lease=lease
            )
            return started.id

        lapsed, live, renewed, finished = [await reply(lease) for lease in (-5, 60, -4, -3)]
        await store.renew_replies([renewed], 60)
        await store.finish_reply(finished, content="done", status="complete")

        assert await store.interrupt_streaming() == 1
        statuses = [(await stored_message(store, i)).status for i in (lapsed, live, renewed)]
        assert statuses == ["interrupted", "streaming", "streaming"]
        assert (await stored_message(store, finished)).status == "complete"
        assert await store.interrupt_streaming() == 0
    finally:
        await store.close()
