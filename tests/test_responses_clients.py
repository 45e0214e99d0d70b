"""The OpenAI Agents SDK as a client of the Responses wire: an agent with a function tool.

The scripted model calls the tool on the agent's first step and answers once the tool's
result comes back (``after_tools``); the SDK runs the tool in between. Tracing is off: it
would export to OpenAI, and this machine has no internet.
"""

from __future__ import annotations

from typing import Any

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ToolCallOutputItem

from tests.gateway import serve
from tests.responses import sdk

AGENT_SCRIPT = {
    "tool_calls": [{"id": "call_paris", "name": "get_weather", "arguments": {"city": "Paris"}}],
    "after_tools": {"text": "It is sunny in Paris."},
}


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    set_tracing_disabled(True)


async def test_an_agent_calls_its_function_tool_through_the_gateway_then_answers() -> None:
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    async with serve() as gateway, sdk(gateway.url) as client:
        agent = Agent(
            name="forecaster",
            instructions="Answer with the weather.",
            model=OpenAIResponsesModel(model="demo", openai_client=client),
            model_settings=ModelSettings(extra_body={"script": AGENT_SCRIPT}),
            tools=[get_weather],
        )
        streamed = Runner.run_streamed(agent, "What is the weather in Paris?")
        kinds = [event.type async for event in streamed.stream_events()]
        whole = await Runner.run(agent, "And now?")
        last: Any = await client.responses.input_items.list(whole.last_response_id or "")
    assert asked == ["Paris", "Paris"]
    assert streamed.final_output == whole.final_output == "It is sunny in Paris."
    outputs = [item for item in whole.new_items if isinstance(item, ToolCallOutputItem)]
    assert [item.output for item in outputs] == ["sunny in Paris"]
    assert "raw_response_event" in kinds
    # The tool's result reached the gateway as the function_call_output of the second step.
    sent = [item for item in last.data if item.type == "function_call_output"]
    assert [(item.call_id, item.output) for item in sent] == [("call_paris", "sunny in Paris")]
