"""Stored Responses with the official SDK, on SQLite and PostgreSQL: retrieve, input items,
delete, ``previous_response_id``, and each owner's responses their own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from tests.credentials import bearer, key_for, secured
from tests.gateway import Gateway, serve
from tests.responses import script, sdk
from tests.upstream import through_fake
from tokenrelay.testing import FakeOpenAI, fake_prompt


@contextlib.asynccontextmanager
async def stored(database_url: str) -> AsyncIterator[tuple[Gateway, openai.AsyncOpenAI]]:
    async with serve(database_url=database_url) as gateway, sdk(gateway.url) as client:
        yield gateway, client


@contextlib.asynccontextmanager
async def on_fake(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FakeOpenAI, openai.AsyncOpenAI]]:
    """The SDK on a gateway fronting the fake OpenAI upstream (``up``), and the fake."""
    async with through_fake(monkeypatch) as (gateway, fake), sdk(gateway.url) as client:
        yield fake, client


async def test_a_stored_response_is_retrieved_listed_and_deleted(database_url: str) -> None:
    async with stored(database_url) as (_, client):
        created = await client.responses.create(
            model="demo",
            input=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
            ],
            metadata={"k": "v"},
            extra_body=script(text="Hi there"),
        )
        again = await client.responses.retrieve(created.id)
        items = await client.responses.input_items.list(created.id)
        oldest_first = await client.responses.input_items.list(created.id, order="asc", limit=1)
        await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.delete(created.id)
    assert again.model_dump() == created.model_dump()
    assert (again.status, again.output_text) == ("completed", "Hi there")
    assert again.metadata == {"k": "v"}
    assert [item.role for item in items.data] == ["user", "developer"]  # type: ignore[union-attr]
    assert len({item.id for item in items.data}) == 2
    assert [item.role for item in oldest_first.data] == ["developer"]  # type: ignore[union-attr]
    assert oldest_first.has_more


async def test_a_streamed_response_is_stored_by_the_time_its_client_has_it(
    database_url: str,
) -> None:
    async with stored(database_url) as (_, client):
        async with client.responses.stream(
            model="demo", input="hi", extra_body=script(text="streamed words")
        ) as stream:
            final = await stream.get_final_response()
        again = await client.responses.retrieve(final.id)
    assert (again.status, again.output_text) == ("completed", "streamed words")
    assert [item.id for item in again.output] == [item.id for item in final.output]


async def test_previous_response_id_makes_its_input_and_output_the_context(
    database_url: str,
) -> None:
    async with stored(database_url) as (_, client):
        first = await client.responses.create(
            model="demo", input="first question", extra_body=script(text="first answer")
        )
        second = await client.responses.create(
            model="demo",
            input="second question",
            previous_response_id=first.id,
            extra_body=script(text="second answer"),
        )
        third = await client.responses.create(
            model="demo",
            input="third question",
            instructions="only this turn's instructions count",
            previous_response_id=second.id,
            extra_body=script(echo="history"),
        )
    assert third.previous_response_id == second.id
    assert third.output_text == (
        "system: only this turn's instructions count | user: first question | "
        "assistant: first answer | user: second question | assistant: second answer | "
        "user: third question"
    )


async def test_a_function_call_output_continues_a_stored_call_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = {"id": "call_9", "name": "lookup", "arguments": ['{"q":"x"}']}
    async with on_fake(monkeypatch) as (fake, client):
        first = await client.responses.create(
            model="up", input=fake_prompt(tokens=[], tool_calls=[call])
        )
        await client.responses.create(
            model="up",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_9", "output": "found"}],
        )
        sent = fake.requests[1].json["messages"]
    assert sent[0]["role"] == "user"
    assert sent[1]["tool_calls"][0]["id"] == "call_9"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_9", "content": "found"}


async def test_an_unstored_or_unknown_response_is_not_found(database_url: str) -> None:
    async with stored(database_url) as (_, client):
        unstored = await client.responses.create(
            model="demo", input="hi", store=False, extra_body=script(text="x")
        )
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unstored.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(
                model="demo", input="hi", previous_response_id=unstored.id
            )
    assert unstored.store is False and unstored.output_text == "x"


async def test_another_owners_response_is_exactly_as_missing_as_none(
    http: aiohttp.ClientSession,
) -> None:
    async with serve(**secured()) as gateway:
        alice = bearer(await key_for(gateway, "alice"))
        bob = bearer(await key_for(gateway, "bob"))
        body = {"model": "demo", "input": "hi", "background": True, **script(hang_after=1)}
        async with http.post(f"{gateway.url}/v1/responses", json=body, headers=alice) as answer:
            theirs = (await answer.json())["id"]
        missing = "resp_" + "0" * 40
        answers: dict[str, list[tuple[int, str]]] = {theirs: [], missing: []}
        for response_id in (theirs, missing):
            for method, path, payload in [
                ("GET", "/v1/responses/{id}", None),
                ("GET", "/v1/responses/{id}?stream=true", None),
                ("GET", "/v1/responses/{id}/input_items", None),
                ("POST", "/v1/responses/{id}/cancel", None),
                ("DELETE", "/v1/responses/{id}", None),
                ("POST", "/v1/responses", {"model": "demo", "previous_response_id": "{id}"}),
            ]:
                url = gateway.url + path.replace("{id}", response_id)
                data = payload and {k: v.replace("{id}", response_id) for k, v in payload.items()}
                async with http.request(method, url, json=data, headers=bob) as answer:
                    text = (await answer.text()).replace(response_id, "<id>")
                    answers[response_id].append((answer.status, text))
        async with http.get(f"{gateway.url}/v1/responses/{theirs}", headers=alice) as answer:
            still = (answer.status, (await answer.json())["status"])
        async with http.post(f"{gateway.url}/v1/responses/{theirs}/cancel", headers=alice) as a:
            cancelled = (await a.json())["status"]
    assert answers[theirs] == answers[missing]
    assert {status for status, _ in answers[theirs]} == {404}
    assert still == (200, "in_progress") and cancelled == "cancelled"


async def test_an_item_reference_names_a_stored_output_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = {"id": "call_5", "name": "lookup", "arguments": ['{"q":"y"}']}
    async with on_fake(monkeypatch) as (fake, client):
        first = await client.responses.create(
            model="up", input=fake_prompt(tokens=[], tool_calls=[call])
        )
        second = await client.responses.create(
            model="up",
            input=[
                {"role": "user", "content": "again"},
                {"type": "item_reference", "id": first.output[0].id},
                {"type": "function_call_output", "call_id": "call_5", "output": "yes"},
            ],
        )
        # Stored as the item it named, so a continuation reads the call whole.
        await client.responses.create(model="up", input="thanks", previous_response_id=second.id)
        with pytest.raises(openai.BadRequestError) as unknown:
            await client.responses.create(
                model="up", input=[{"type": "item_reference", "id": "fc_nothing_0"}]
            )
        sent = fake.requests[1].json["messages"]
        continued = fake.requests[2].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_5"
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == '{"q":"y"}'
    assert sent[2] == {"role": "tool", "tool_call_id": "call_5", "content": "yes"}
    assert continued[:3] == sent and continued[-1] == {"role": "user", "content": "thanks"}
    assert "fc_nothing_0" in unknown.value.message
