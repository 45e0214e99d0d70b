"""The conversation routes and the stored WebSocket turn, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import orjson

from tests.gateway import Gateway, read_sse, serve
from tests.stored import create, messages, post_turn, settled, text_of, turn, words
from tokenrelay import errors
from tokenrelay.chat import ChatOptions
from tokenrelay.conversations.service import Turn
from tokenrelay.store import Store
from tokenrelay.tokens import MESSAGE_OVERHEAD, estimate_tokens


def store_of(gateway: Gateway) -> Store:
    store: Store = gateway.services.store
    return store


async def test_conversation_crud_round_trip(http: aiohttp.ClientSession, database_url: str) -> None:
    async with serve(database_url=database_url) as gateway:
        base = f"{gateway.url}/v1/conversations"
        async with http.post(base) as response:  # no body at all is a conversation too
            assert response.status == 201
            bare = await response.json()
        async with http.post(base, json={"title": "Trip", "model": "demo"}) as response:
            created = await response.json()
        cid = created["id"]
        async with http.get(f"{base}/{cid}") as response:
            assert await response.json() == created
        async with http.patch(f"{base}/{cid}", json={"title": "Trip to Lyon"}) as response:
            assert response.status == 200
            patched = await response.json()
        async with http.delete(f"{base}/{cid}") as response:
            deleted = await response.json()
        async with http.get(f"{base}/{cid}") as response:
            gone = response.status
        async with http.get(base) as response:
            listed = await response.json()

    assert bare["title"] is None and bare["model"] is None
    assert created["object"] == "conversation" and created["title"] == "Trip"
    assert patched["title"] == "Trip to Lyon" and patched["model"] == "demo"
    assert patched["updated_at"] >= created["updated_at"]
    assert deleted == {"id": cid, "object": "conversation.deleted", "deleted": True}
    assert gone == 404
    assert [c["id"] for c in listed["data"]] == [bare["id"]]


async def test_bad_bodies_are_400_and_unknown_models_404(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        base = f"{gateway.url}/v1/conversations"
        cid = await create(http, gateway)
        async with http.post(base, json={"titel": "typo"}) as response:
            typo = response.status, (await response.json())["error"]["code"]
        async with http.post(base, json={"model": "nope"}) as response:
            unknown_model = response.status
        async with http.post(f"{base}/{cid}/messages", json={"content": ""}) as response:
            empty = response.status
        async with http.get(base, params={"limit": "0"}) as response:
            bad_limit = response.status
        async with http.get(base, params={"after": "conv_missing"}) as response:
            bad_cursor = response.status
        stored = await messages(http, gateway, cid)

    assert typo == (400, "invalid_request")
    assert unknown_model == 404
    assert (empty, bad_limit, bad_cursor) == (400, 400, 400)
    assert stored == []


async def test_another_owners_conversation_is_404_like_a_missing_one(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        store = store_of(gateway)
        theirs = await store.create_conversation("alice", title="private", system="secret")
        # A reply streaming in it must not make it "busy" to others rather than missing.
        conversations = gateway.services.conversations
        live = await conversations.take_turn(
            "alice",
            theirs.id,
            Turn("hi", options=ChatOptions(script={"tokens": words(400), "delay": 0.02})),
        )
        base = f"{gateway.url}/v1/conversations"
        answers: dict[str, list[tuple[int, Any]]] = {"theirs": [], "missing": []}
        for key, cid in (("theirs", theirs.id), ("missing", "conv_doesnotexist0000000")):
            for method, path, body in (
                ("GET", f"/{cid}", None),
                ("PATCH", f"/{cid}", {"title": "mine now"}),
                ("GET", f"/{cid}/messages", None),
                ("POST", f"/{cid}/messages", {"content": "hi"}),
                ("DELETE", f"/{cid}", None),
            ):
                async with http.request(method, base + path, json=body) as response:
                    error = (await response.json())["error"]
                    error["message"] = error["message"].replace(cid, "<id>")
                    answers[key].append((response.status, error))
        async with http.get(base) as response:
            listed = (await response.json())["data"]
        still_theirs = await store.get_conversation("alice", theirs.id)
        still_streaming = not live.stream.finished
        live.stream.cancel(errors.Cancelled("test over"))
        their_messages = await store.list_messages("alice", theirs.id, limit=10)

    assert answers["theirs"] == answers["missing"]
    assert {status for status, _ in answers["theirs"]} == {404}
    assert listed == []
    assert still_theirs.title == "private"
    assert still_streaming
    assert [m.role for m in their_messages.items] == ["system", "user", "assistant"]


async def test_conversations_page_newest_first_with_an_after_cursor(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        store = store_of(gateway)
        made = [(await store.create_conversation(None, title=f"c{i}")).id for i in range(25)]
        pages: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": "10"}
        while True:
            async with http.get(f"{gateway.url}/v1/conversations", params=params) as response:
                page = await response.json()
            pages.append(page)
            if not page["has_more"]:
                break
            params["after"] = page["last_id"]

    assert [len(p["data"]) for p in pages] == [10, 10, 5]
    assert [p["has_more"] for p in pages] == [True, True, False]
    seen = [c["id"] for p in pages for c in p["data"]]
    assert seen == made[::-1]
    assert all(p["first_id"] == p["data"][0]["id"] for p in pages)


async def test_messages_page_in_conversation_order_or_newest_first(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        turns = [("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(7)]
        await store_of(gateway).add_messages(cid, turns)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        contents: dict[str, list[list[str]]] = {"asc": [], "desc": []}
        for order, pages in contents.items():
            params = {"limit": "3", "order": order}
            while True:
                async with http.get(url, params=params) as response:
                    page = await response.json()
                pages.append([m["content"] for m in page["data"]])
                if not page["has_more"]:
                    break
                params["after"] = page["last_id"]

    assert contents["asc"] == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]
    assert contents["desc"] == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"]]


async def test_a_turn_stores_both_messages_with_status_usage_and_a_fallback_title(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway, model="demo")
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        question = "  What is the   capital of France?\nAnswer briefly."
        async with http.post(url, json=turn(question, tokens=words(5))) as response:
            headers = response.headers
            events = [e async for e in read_sse(response)]
        reply = await settled(store_of(gateway), headers["X-Message-Id"])
        stored = await messages(http, gateway, cid)
        async with http.get(f"{gateway.url}/v1/conversations/{cid}") as response:
            conversation = await response.json()

    assert (events[0].event, events[-2].event, events[-1].event) == ("stream", "usage", "done")
    assert events[0].json()["stream_id"] == headers["X-Stream-Id"]
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    user, assistant = stored
    assert user["content"] == question
    assert assistant["id"] == headers["X-Message-Id"] == reply.id
    assert assistant["content"] == "".join(words(5)) == text_of(events)
    assert assistant["finish_reason"] == "stop"
    assert assistant["usage"] == {"prompt_tokens": 8, "completion_tokens": 5}
    assert assistant["model"] == "demo"
    assert assistant["stream_id"] == headers["X-Stream-Id"]
    assert conversation["title"] == "What is the capital of France?"


async def test_errors_and_length_are_stored_with_their_code_and_reason(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        failed = await post_turn(http, gateway, cid, turn(tokens=words(10), error_after=3))
        cut = await post_turn(
            http,
            gateway,
            cid,
            {"content": "again", "max_tokens": 4, "script": {"tokens": words(9)}},
        )
        before_start = f"{gateway.url}/v1/conversations/{cid}/messages"
        async with http.post(before_start, json=turn(fail="upstream_unavailable")) as response:
            refused = response.status
        async with asyncio.timeout(5):
            while any(m["status"] == "streaming" for m in await messages(http, gateway, cid)):
                await asyncio.sleep(0.02)
        stored = await messages(http, gateway, cid)

    assert failed[-1].event == "error" and cut[-1].event == "done"
    assert refused == 502
    replies = [m for m in stored if m["role"] == "assistant"]
    assert [(m["status"], m["error_code"], m["finish_reason"]) for m in replies] == [
        ("error", "upstream_error", None),
        ("length", None, "length"),
        ("error", "upstream_unavailable", None),
    ]
    assert replies[0]["content"] == "".join(words(3))
    assert replies[1]["content"] == "".join(words(4))
    assert replies[2]["content"] == ""
    # The user's messages were stored before each generation, whatever became of it.
    assert [m["content"] for m in stored if m["role"] == "user"] == ["hello", "again", "hello"]


async def test_the_title_model_renames_after_the_reply_without_delaying_it(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    models = {
        "demo": {"provider": "scripted"},
        "titler": {
            "provider": "scripted",
            "options": {"script": {"text": '"Lunch in Lyon"\nextra', "first_delay": 1.0}},
        },
    }
    async with serve(
        database_url=database_url, models=models, conversations={"title_model": "titler"}
    ) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await post_turn(http, gateway, cid, turn("where should we eat at noon?", text="Bouchon"))
        reply_took = loop.time() - started
        async with http.get(url) as response:
            title_right_after = (await response.json())["title"]
        async with asyncio.timeout(5):
            while True:
                async with http.get(url) as response:
                    title = (await response.json())["title"]
                if title != title_right_after:
                    break
                await asyncio.sleep(0.05)

    # The title takes its model a second; the reply never waited for it.
    assert reply_took < 1.0
    assert title_right_after == "where should we eat at noon?"
    assert title == "Lunch in Lyon"


async def test_websocket_turns_with_a_conversation_id_are_stored(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        replies: list[str] = []
        async with http.ws_connect(f"{gateway.ws_url}/ws/chat?conversation_id={cid}") as ws:
            for content, script in (
                ("first", {"text": "one two"}),
                ("second", {"echo": "history"}),
            ):
                await ws.send_str(orjson.dumps({"content": content, "script": script}).decode())
                text = ""
                while True:
                    message = orjson.loads((await ws.receive()).data)
                    if message["type"] == "token":
                        text += message["content"]
                    if message["type"] in ("done", "error"):
                        assert message["type"] == "done", message
                        break
                replies.append(text)
            # Without the query parameter, the turn names its conversation itself.
        async with http.ws_connect(f"{gateway.ws_url}/ws/chat") as ws:
            body = {"content": "third", "conversation_id": cid, "script": {"text": "three"}}
            await ws.send_str(orjson.dumps(body).decode())
            while orjson.loads((await ws.receive()).data)["type"] != "done":
                pass
        stored = await messages(http, gateway, cid)
        async with http.ws_connect(f"{gateway.ws_url}/ws/chat") as ws:
            body = {"content": "x", "conversation_id": "conv_nope"}
            await ws.send_str(orjson.dumps(body).decode())
            missing = orjson.loads((await ws.receive()).data)

    assert replies[1] == "user: first | assistant: one two | user: second"
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "first", "complete"),
        ("assistant", "one two", "complete"),
        ("user", "second", "complete"),
        ("assistant", replies[1], "complete"),
        ("user", "third", "complete"),
        ("assistant", "three", "complete"),
    ]
    assert missing["type"] == "error" and missing["code"] == "not_found"


async def test_a_500_turn_conversation_is_fitted_to_the_window_newest_turns_first(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    window = 2048
    models = {"small": {"provider": "scripted", "context_window": window}}
    async with serve(database_url=database_url, models=models) as gateway:
        cid = await create(http, gateway, system="You are terse.")
        history = [
            (role, f"{role[0]}{i:03d} " + "lorem ipsum " * (i % 7))
            for i in range(500)
            for role in ("user", "assistant")
        ]
        await store_of(gateway).add_messages(cid, history, model="small")
        events = await post_turn(http, gateway, cid, turn("the newest question", echo="history"))
        stored = await messages_count(http, gateway, cid)

    assert events[-1].event == "done"
    received = [part.split(": ", 1) for part in text_of(events).split(" | ")]
    roles = [role for role, _ in received]
    contents = [content for _, content in received]
    assert received[0] == ["system", "You are terse."]
    assert contents[-1] == "the newest question"
    kept = len(received) - 2
    # The newest stored turns, whole and in order, starting with a user message.
    assert received[1:-1] == [[role, content] for role, content in history[-kept:]]
    assert roles[1] == "user"
    budget = window - min(1024, window // 4)

    def cost(text: str) -> int:
        return estimate_tokens(text) + MESSAGE_OVERHEAD

    sent = (
        cost("You are terse.") + cost("the newest question") + sum(cost(c) for c in contents[1:-1])
    )
    assert sent <= budget
    # Nothing was dropped that would have fitted: one more (older) turn pair would not.
    older = history[-kept - 2 : -kept]
    assert sent + sum(cost(c) for _, c in older) > budget
    assert 10 < kept < 400
    # The store still holds every message: fitting never alters the history.
    assert stored == 1 + 1000 + 2


async def test_dropped_turns_can_be_replaced_by_a_summary_the_model_writes(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    window = 1024
    models = {"small": {"provider": "scripted", "context_window": window}}
    summaries = {"summarize_dropped": True, "summary_tokens": 16}
    async with serve(database_url=database_url, models=models, conversations=summaries) as gw:
        cid = await create(http, gw, system="You are terse.")
        history = [
            (role, f"{role[0]}{i:03d} " + "lorem ipsum " * 5)
            for i in range(200)
            for role in ("user", "assistant")
        ]
        await store_of(gw).add_messages(cid, history, model="small")
        events = await post_turn(http, gw, cid, turn("the newest question", echo="history"))
        stored = await messages_count(http, gw, cid)

    assert events[-1].event == "done"
    received = [part.split(": ", 1) for part in text_of(events).split(" | ")]
    assert received[0] == ["system", "You are terse."]
    role, summary = received[1]
    # The scripted model "summarizes" by echoing the start of the dropped transcript it got.
    assert role == "system"
    assert re.match(
        r"Summary of the earlier conversation: You said: (User: u|Assistant: a)\d{3} ", summary
    )
    kept = received[2:-1]
    assert kept == [[r, c] for r, c in history[-len(kept) :]]
    assert 2 < len(kept) < 200
    assert received[-1] == ["user", "the newest question"]
    assert stored == 1 + 400 + 2


async def test_the_users_message_is_stored_before_the_summary_is_written(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    # The summary is a whole generation (here a slow one): a crash during it must not lose the
    # message the user sent, so that message is in the store before the summary starts.
    options = {"script": {"delay": 0.1}}
    models = {"small": {"provider": "scripted", "context_window": 512, "options": options}}
    summaries = {"summarize_dropped": True, "summary_tokens": 16}
    async with serve(database_url=database_url, models=models, conversations=summaries) as gw:
        cid = await create(http, gw)
        history = [(role, "lorem ipsum " * 20) for _ in range(40) for role in ("user", "assistant")]
        await store_of(gw).add_messages(cid, history, model="small")
        posting = asyncio.create_task(post_turn(http, gw, cid, turn("the newest question")))
        while not gw.relay.streams:
            await asyncio.sleep(0.01)
        [summarizing] = gw.relay.streams.values()
        stored_while_summarizing = await messages(http, gw, cid)
        still_summarizing = not summarizing.finished
        events = await posting

    assert still_summarizing
    # The user's message is stored, and the reply not started yet: this stream is the summary.
    last = stored_while_summarizing[-1]
    assert (last["role"], last["content"]) == ("user", "the newest question")
    assert events[-1].event == "done"


async def messages_count(http: aiohttp.ClientSession, gateway: Gateway, cid: str) -> int:
    count, params = 0, {"limit": "100"}
    url = f"{gateway.url}/v1/conversations/{cid}/messages"
    while True:
        async with http.get(url, params=params) as response:
            page = await response.json()
        count += len(page["data"])
        if not page["has_more"]:
            return count
        params["after"] = page["last_id"]


async def test_a_message_too_big_for_the_window_is_refused_before_it_is_stored(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    models = {"tiny": {"provider": "scripted", "context_window": 64}}
    async with serve(database_url=database_url, models=models) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        async with http.post(url, json={"content": "word " * 200}) as response:
            status, error = response.status, (await response.json())["error"]
        stored = await messages(http, gateway, cid)

    assert (status, error["code"]) == (400, "context_length_exceeded")
    assert stored == []


async def test_readyz_pings_the_database(http: aiohttp.ClientSession, database_url: str) -> None:
    async with serve(database_url=database_url) as gateway:
        async with http.get(f"{gateway.url}/readyz") as response:
            ready = response.status, await response.json()
        await store_of(gateway).engine.dispose()
        gateway.services.store.engine = _broken_engine()
        async with http.get(f"{gateway.url}/readyz") as response:
            unready = response.status, await response.json()

    assert ready[0] == 200 and ready[1]["database"] == "ok"
    # /readyz answers without credentials: how many models, never their names.
    assert ready[1]["models"] == 1
    assert unready == (
        503,
        {"status": "unavailable", "database": "unreachable", "down": ["database"]},
    )


def _broken_engine() -> Any:
    from tokenrelay.store.engine import create_engine

    # Nothing listens on port 1 of loopback: every connection is refused at once.
    return create_engine("postgresql://nobody@127.0.0.1:1/none")
