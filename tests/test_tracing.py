"""OpenTelemetry spans, read from the SDK's in-memory exporter; the OTEL_* setup in a process."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway import serve
from tests.processes import serve_process
from tests.upstream import asking, through_fake

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
HI = {"messages": [{"role": "user", "content": "a secret question"}]}


@pytest.fixture
def exporter() -> Iterator[Any]:
    exporter = in_memory.InMemorySpanExporter()
    yield exporter
    exporter.clear()


def tracer_of(exporter: Any) -> Any:
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("tokenrelay-test")


async def test_a_request_is_one_span_with_genai_attributes_and_children_that_go_upstream(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession, exporter: Any
) -> None:
    async with through_fake(monkeypatch, tracer=tracer_of(exporter)) as (gateway, fake):
        body = {**asking(tokens=["Hel", "lo"]), "stream": True}
        headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        async with http.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            await response.read()
        upstream_traceparent = fake.requests[-1].headers["traceparent"]
    spans = {span.name: span for span in exporter.get_finished_spans()}

    request = spans["chat up"]
    assert request.kind == SpanKind.SERVER
    assert format(request.context.trace_id, "032x") == CALLER_TRACE
    assert request.parent is not None and format(request.parent.span_id, "016x") == CALLER_SPAN
    attributes = request.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "up"
    assert attributes["gen_ai.response.model"] == "fake-model"
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert "error.type" not in attributes
    assert [event.name for event in request.events] == ["gen_ai.first_token"]
    assert not any(key.endswith("messages") for key in attributes)
    admission, attempt = spans["admission"], spans["chat fake-model"]
    assert admission.parent.span_id == request.context.span_id
    assert attempt.parent.span_id == request.context.span_id
    assert attempt.kind == SpanKind.CLIENT
    assert upstream_traceparent.split("-")[1:3] == [
        CALLER_TRACE,
        format(attempt.context.span_id, "016x"),
    ]


async def test_every_failed_attempt_is_a_span_and_the_request_names_the_error(
    http: aiohttp.ClientSession, exporter: Any
) -> None:
    models = {"demo": {"provider": "scripted", "retries": 1, "retry_backoff": 0.01}}
    async with serve(models=models, tracer=tracer_of(exporter)) as gateway:
        body = {**HI, "script": {"fail": "upstream_unavailable"}}
        async with http.post(f"{gateway.url}/v1/streams", json=body) as response:
            assert response.status == 502
    spans = exporter.get_finished_spans()

    attempts = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(attempts) == 2
    assert all(s.attributes["error.type"] == "upstream_unavailable" for s in attempts)
    (request,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert request.attributes["error.type"] == "upstream_unavailable"
    assert not request.status.is_ok


async def test_a_refused_admission_ends_its_request_span_with_the_refusal(
    http: aiohttp.ClientSession, exporter: Any
) -> None:
    async with serve(tracer=tracer_of(exporter)) as gateway:
        async with http.post(f"{gateway.url}/v1/streams", json={**HI, "model": "nope"}) as no:
            assert no.status == 404
    names = {s.name: s.attributes.get("error.type") for s in exporter.get_finished_spans()}

    assert names == {"admission": "not_found", "chat": "not_found"}


async def test_message_content_is_in_spans_only_when_configured(
    http: aiohttp.ClientSession, exporter: Any
) -> None:
    async with serve(tracer=tracer_of(exporter), observability={"trace_content": True}) as gateway:
        body = {**HI, "script": {"text": "the answer"}}
        async with http.post(f"{gateway.url}/v1/streams", json=body) as response:
            await response.read()
    (request,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]

    assert "a secret question" in request.attributes["gen_ai.input.messages"]
    assert "the answer" in request.attributes["gen_ai.output.messages"]


async def test_otel_variables_turn_tracing_on_through_the_sdks_own_configurator(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = tmp_path / "tokenrelay.toml"
    config.write_text('[models.demo]\nprovider = "scripted"\n')
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "relay-under-test"}
    async with serve_process(config, env=env, stdout=asyncio.subprocess.PIPE) as served:
        await served.until_listening(http)
        async with http.post(f"{served.url}/v1/streams", json=HI) as response:
            await response.read()
        served.process.send_signal(signal.SIGTERM)
        assert served.process.stdout is not None
        async with asyncio.timeout(20):
            printed = (await served.process.stdout.read()).decode()
            await served.process.wait()

    assert '"name": "chat demo"' in printed
    assert '"service.name": "relay-under-test"' in printed
    assert '"gen_ai.request.model": "demo"' in printed
