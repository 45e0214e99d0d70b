"""Each user sees only their own: another user's id is a 404 exactly like a missing one.

Bob tries every route (and the WebSocket's resume and stored turns) with Alice's ids; each
answer is compared, byte for byte once the id is masked, with the answer for an id that never
existed. Alice's things are unchanged afterwards. Also here: how a WebSocket authenticates,
and the ``Origin`` check (RFC 6455 §10.2).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.credentials import bearer, key_for, secured
from tests.gateway import Gateway, read_sse, serve

HANG = {
    "model": "demo",
    "messages": [{"role": "user", "content": "hi"}],
    "script": {"hang_after": 0},
}

# Bob's requests, with {conv}, {msg} and {stream} filled by Alice's ids or by missing ones.
ROUTES = [
    ("GET", "/v1/conversations/{conv}", None),
    ("PATCH", "/v1/conversations/{conv}", {"title": "mine now"}),
    ("DELETE", "/v1/conversations/{conv}", None),
    ("GET", "/v1/conversations/{conv}/messages", None),
    ("POST", "/v1/conversations/{conv}/messages", {"content": "hi"}),
    ("GET", "/v1/conversations?after={conv}", None),
    ("GET", "/v1/conversations/{own}/messages?after={msg}", None),
    ("GET", "/v1/streams/{stream}", None),
    ("DELETE", "/v1/streams/{stream}", None),
    ("GET", "/v1/streams/{reply_stream}", None),
]


def missing_ids(ids: dict[str, str]) -> dict[str, str]:
    """Ids of the same shape (prefix and length) as ``ids`` that name nothing."""

    def like(value: str) -> str:
        prefix, rest = value.split("_", 1)
        return f"{prefix}_{secrets.token_urlsafe(len(rest))[: len(rest)]}"

    return {name: like(value) for name, value in ids.items()}


def masked(raw: bytes, ids: dict[str, str]) -> bytes:
    for name, value in ids.items():
        raw = raw.replace(value.encode(), f"<{name}>".encode())
    return raw


async def answer(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    key: str,
    route: tuple[str, str, Any],
    ids: dict[str, str],
) -> tuple[int, bytes]:
    method, path, body = route
    async with http.request(
        method, gateway.url + path.format(**ids), json=body, headers=bearer(key)
    ) as response:
        return response.status, masked(await response.read(), ids)


async def socket_answers(gateway: Gateway, key: str, ids: dict[str, str]) -> list[Any]:
    """What Bob's WebSocket says to a resume and to stored turns naming ``ids``."""
    answers = []
    async with connect(gateway.ws_url + "/ws/chat", additional_headers=bearer(key)) as ws:
        for message in (
            {"type": "resume", "stream_id": ids["stream"], "last_event_id": 0},
            {"type": "resume", "stream_id": ids["reply_stream"]},
            {"content": "hi", "conversation_id": ids["conv"]},
        ):
            await ws.send(orjson.dumps(message).decode())
            answers.append(masked(str(await asyncio.wait_for(ws.recv(), 5)).encode(), ids))
    url = f"{gateway.ws_url}/ws/chat?conversation_id={ids['conv']}"
    async with connect(url, additional_headers=bearer(key)) as ws:
        await ws.send('{"content": "hi"}')
        answers.append(masked(str(await asyncio.wait_for(ws.recv(), 5)).encode(), ids))
    return answers


async def test_another_users_ids_are_as_missing_as_ids_that_never_existed(
    http: aiohttp.ClientSession,
) -> None:
    async with serve(**secured()) as gateway:
        alice, bob = await key_for(gateway, "alice"), await key_for(gateway, "bob")
        admin = await key_for(gateway, "root", ("admin",))
        ids = await _alices_things(http, gateway, alice)
        async with http.post(
            f"{gateway.url}/v1/conversations", json={}, headers=bearer(bob)
        ) as created:
            ids["own"] = (await created.json())["id"]
        live = await http.post(f"{gateway.url}/v1/streams", json=HANG, headers=bearer(alice))
        ids["stream"] = live.headers["X-Stream-Id"]
        missing = missing_ids(ids) | {"own": ids["own"]}

        foreign = [await answer(http, gateway, bob, route, ids) for route in ROUTES]
        absent = [await answer(http, gateway, bob, route, missing) for route in ROUTES]
        foreign_socket = await socket_answers(gateway, bob, ids)
        absent_socket = await socket_answers(gateway, bob, missing)
        as_admin = await answer(http, gateway, admin, ROUTES[0], ids)

        stream_alive = not gateway.relay.get(ids["stream"], "alice").finished
        async with http.get(
            f"{gateway.url}/v1/conversations/{ids['conv']}/messages", headers=bearer(alice)
        ) as response:
            alices_messages = [m["content"] for m in (await response.json())["data"]]
        async with http.get(
            f"{gateway.url}/v1/conversations/{ids['conv']}", headers=bearer(alice)
        ) as response:
            alices_title = (await response.json())["title"]
        live.close()

    for route, theirs, nobodys in zip(ROUTES, foreign, absent, strict=True):
        assert theirs == nobodys, route
        assert theirs[0] in (400, 404), route
    assert foreign_socket == absent_socket
    assert all(b'"code":"not_found"' in message for message in foreign_socket)
    # Admins see usage, not content.
    assert as_admin[0] == 404
    assert stream_alive
    assert alices_messages == ["secret question", "You said: secret question"]
    assert alices_title == "secret question"


async def _alices_things(http: aiohttp.ClientSession, gateway: Gateway, key: str) -> dict[str, str]:
    headers = bearer(key)
    async with http.post(f"{gateway.url}/v1/conversations", json={}, headers=headers) as created:
        conversation = (await created.json())["id"]
    async with http.post(
        f"{gateway.url}/v1/conversations/{conversation}/messages",
        json={"content": "secret question"},
        headers=headers,
    ) as response:
        reply_stream = response.headers["X-Stream-Id"]
        [event async for event in read_sse(response)]
    async with http.get(
        f"{gateway.url}/v1/conversations/{conversation}/messages", headers=headers
    ) as response:
        message = (await response.json())["data"][0]["id"]
    return {"conv": conversation, "msg": message, "reply_stream": reply_stream}


async def test_the_conversation_list_holds_only_ones_own(http: aiohttp.ClientSession) -> None:
    async with serve(**secured()) as gateway:
        # The session's database outlives this test: users of its own.
        alice = await key_for(gateway, "alice-" + secrets.token_hex(4))
        bob = await key_for(gateway, "bob-" + secrets.token_hex(4))
        for key in (alice, alice, bob):
            await http.post(f"{gateway.url}/v1/conversations", json={}, headers=bearer(key))
        counts = []
        for key in (alice, bob):
            async with http.get(f"{gateway.url}/v1/conversations", headers=bearer(key)) as r:
                counts.append(len((await r.json())["data"]))

    assert counts == [2, 1]


async def _reply(ws: ClientConnection) -> list[dict[str, Any]]:
    messages = []
    async with asyncio.timeout(5):
        while True:
            message = orjson.loads(await ws.recv())
            messages.append(message)
            if message["type"] in ("done", "error"):
                return messages


async def test_a_websocket_authenticates_by_header_or_by_a_first_auth_message() -> None:
    async with serve(**secured()) as gateway:
        key = await key_for(gateway, "alice")
        async with connect(gateway.ws_url + "/ws/chat", additional_headers=bearer(key)) as ws:
            await ws.send('{"content": "by header"}')
            by_header = await _reply(ws)
        async with connect(gateway.ws_url + "/ws/chat") as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": key}).decode())
            await ws.send('{"content": "by message"}')
            by_message = await _reply(ws)
        owners = {stream.owner for stream in gateway.relay.streams.values()}

    assert by_header[-1]["type"] == by_message[-1]["type"] == "done"
    assert "".join(m["content"] for m in by_message if m["type"] == "token") == (
        "You said: by message"
    )
    assert owners <= {"alice"}


@pytest.mark.parametrize(
    "first",
    [
        None,
        {"type": "auth", "token": "tr_" + "A" * 40},
        {"type": "auth", "token": "' OR '1'='1"},
        {"type": "auth"},
        {"content": "no auth, straight to a turn"},
    ],
    ids=["silence", "unknown key", "injection", "no token", "a turn"],
)
async def test_a_websocket_without_valid_credentials_is_closed_with_1008(
    first: dict[str, Any] | None,
) -> None:
    async with serve(**secured(ws_auth_timeout=0.3)) as gateway:
        async with connect(gateway.ws_url + "/ws/chat") as ws:
            if first is not None:
                await ws.send(orjson.dumps(first).decode())
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)

    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "unauthorized"


async def test_a_bad_bearer_header_is_refused_at_the_handshake_with_401() -> None:
    async with serve(**secured()) as gateway:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                gateway.ws_url + "/ws/chat", additional_headers=bearer("tr_" + "B" * 40)
            ):
                pass

    assert refused.value.response.status_code == 401
    assert b"a valid API key" in refused.value.response.body


@pytest.mark.parametrize(
    ("origin", "allowed", "opens"),
    [
        (None, [], True),
        ("same", [], True),
        ("https://evil.example", [], False),
        ("null", [], False),
        ("http://127.0.0.1.evil.example", [], False),
        ("https://app.example", ["https://app.example"], True),
        ("https://evil.example", ["*"], True),
    ],
    ids=["no origin", "same origin", "foreign", "null", "lookalike", "allowed", "any"],
)
async def test_a_websocket_from_a_foreign_origin_is_refused(
    origin: str | None, allowed: list[str], opens: bool
) -> None:
    async with serve(**secured(allowed_origins=allowed)) as gateway:
        key = await key_for(gateway, "alice")
        sent = gateway.url if origin == "same" else origin
        try:
            async with connect(
                gateway.ws_url + "/ws/chat", additional_headers=bearer(key), origin=sent
            ) as ws:
                await ws.send('{"type": "ping"}')
                answer: Any = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        except InvalidStatus as exc:
            answer = exc.response.status_code

    assert answer == ({"type": "pong"} if opens else 403)


async def test_the_origin_check_holds_with_auth_turned_off() -> None:
    async with serve() as gateway:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(gateway.ws_url + "/ws/chat", origin="https://evil.example"):
                pass

    assert refused.value.response.status_code == 403
