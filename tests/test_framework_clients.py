"""Agent frameworks over the OpenAI wire: LangChain's ``bind_tools`` and pydantic-ai's output.

Each framework's own OpenAI client talks to the gateway over a real socket, the gateway fronts
the fake OpenAI upstream, and the fake scripts the tool call the framework is waiting for.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.upstream import through_fake
from tokenrelay.testing import fake_prompt

CALL = {"id": "call_w1", "name": "get_weather", "arguments": ['{"ci', 'ty": "Par', 'is"}']}


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def _chat(url: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{url}/v1",
        api_key="test",  # type: ignore[arg-type]
        model="up",
        max_retries=0,
        **kwargs,
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
async def test_langchain_bind_tools_gets_the_tool_call_with_parsed_arguments(
    monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake):
        model = _chat(gateway.url).bind_tools([get_weather])
        question = [HumanMessage(fake_prompt(tokens=[], tool_calls=[CALL]))]
        if streaming:
            chunks = [chunk async for chunk in model.astream(question)]
            # The call arrives in fragments (at least two) that LangChain joins and parses.
            assert (
                len([c for c in chunks if isinstance(c, AIMessageChunk) and c.tool_call_chunks])
                >= 2
            )
            reply: Any = chunks[0]
            for chunk in chunks[1:]:
                reply = reply + chunk
        else:
            reply = await model.ainvoke(question)
        sent = fake.requests[0].json
    assert isinstance(reply, AIMessage)
    assert [(c["id"], c["name"], c["args"]) for c in reply.tool_calls] == [
        ("call_w1", "get_weather", {"city": "Paris"})
    ]
    [declared] = sent["tools"]
    assert declared["type"] == "function" and declared["function"]["name"] == "get_weather"
    assert declared["function"]["parameters"]["properties"] == {"city": {"type": "string"}}


async def test_langchain_tool_result_round_trip_reaches_the_upstream_as_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake):
        model = _chat(gateway.url).bind_tools([get_weather])
        question = HumanMessage(fake_prompt(tokens=[], tool_calls=[CALL]))
        call = await model.ainvoke([question])
        assert isinstance(call, AIMessage)
        [tool_call] = call.tool_calls
        result = get_weather.invoke(tool_call)
        assert isinstance(result, ToolMessage)
        # The fake answers the last user message's script; the second turn's is text.
        follow_up = HumanMessage(fake_prompt(tokens=["It is ", "sunny."]))
        answer = await model.ainvoke([question, call, result, follow_up])
        sent = fake.requests[1].json
    assert answer.content == "It is sunny."
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "user"]
    assistant, tool_message = sent["messages"][1], sent["messages"][2]
    [sent_call] = assistant["tool_calls"]
    assert sent_call["id"] == "call_w1" and sent_call["type"] == "function"
    assert sent_call["function"]["name"] == "get_weather"
    assert json.loads(sent_call["function"]["arguments"]) == {"city": "Paris"}
    assert tool_message == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny in Paris"}


class City(BaseModel):
    name: str
    country: str
    population: int


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
async def test_pydantic_ai_structured_output_is_the_parsed_model(
    monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    answer = {
        "id": "call_out",
        "name": "final_result",
        "arguments": ['{"name": "Par', 'is", "country": "France", ', '"population": 2102650}'],
    }
    async with through_fake(monkeypatch) as (gateway, fake):
        provider = OpenAIProvider(base_url=f"{gateway.url}/v1", api_key="test")
        agent = Agent(OpenAIChatModel("up", provider=provider), output_type=City)
        prompt = fake_prompt(tokens=[], tool_calls=[answer])
        if streaming:
            async with agent.run_stream(prompt) as run:
                output = await run.get_output()
        else:
            output = (await agent.run(prompt)).output
        sent = fake.requests[0].json
    assert output == City(name="Paris", country="France", population=2102650)
    [declared] = sent["tools"]
    assert declared["function"]["name"] == "final_result"
    assert set(declared["function"]["parameters"]["properties"]) == {
        "name",
        "country",
        "population",
    }
