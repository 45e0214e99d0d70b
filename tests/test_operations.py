"""What operators see: metrics, request ids, the stream-end log line, readiness, the scrape port."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway import free_socket, serve
from tests.redis_server import redis_server
from tests.upstream import asking, through_fake
from tokenrelay.ops.logs import JsonFormatter

Sample = tuple[str, dict[str, str], float]
HI = {"messages": [{"role": "user", "content": "hi"}]}


def samples(exposition: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def value(exposition: str, name: str, **labels: str) -> float:
    found = [v for n, got, v in samples(exposition) if n == name and labels.items() <= got.items()]
    return sum(found)


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return await response.text()


async def test_a_stream_is_counted_timed_and_labelled_by_wire_model_and_outcome_never_by_id(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake):
        body = {
            **asking(tokens=["one", " two", " three", " four", " five"], delay=0.01),
            "stream": True,
        }
        headers = {"X-Request-Id": "client-trace-42"}
        async with http.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            await response.read()
            returned = response.headers["X-Request-Id"]
        exposition = await scrape(http, gateway.url)

    assert returned == "client-trace-42"
    assert fake.requests[-1].headers["x-request-id"] == "client-trace-42"
    assert value(exposition, "tokenrelay_streams_total", wire="openai", model="up", code="ok") == 1
    assert value(exposition, "tokenrelay_time_to_first_token_seconds_count", model="up") == 1
    assert value(exposition, "tokenrelay_stream_duration_seconds_count", model="up") == 1
    assert value(exposition, "tokenrelay_inter_token_seconds_count", model="up") >= 4
    assert value(exposition, "tokenrelay_inter_token_seconds_sum", model="up") > 0.02
    for direction in ("request", "first_token"):
        assert value(exposition, "tokenrelay_overhead_seconds_count", direction=direction) == 1
    assert value(exposition, "tokenrelay_tokens_total", model="up", type="output") == 5
    assert value(exposition, "tokenrelay_tokens_total", model="up", type="input") > 0
    assert (
        value(
            exposition,
            "tokenrelay_upstream_attempts_total",
            provider="openai",
            model="up",
            outcome="ok",
        )
        == 1
    )
    labels = {v for _, got, _ in samples(exposition) for v in got.values()}
    assert not any(v.startswith(("str_", "req_", "client-")) for v in labels)


async def test_retries_refusals_and_live_streams_are_counted_by_code(
    http: aiohttp.ClientSession,
) -> None:
    models = {"demo": {"provider": "scripted", "retries": 1, "retry_backoff": 0.01}}
    async with serve(models=models, rate_limits={"requests_per_minute": 2}) as gateway:
        body = {**HI, "script": {"fail": "upstream_unavailable"}}
        async with http.post(f"{gateway.url}/v1/streams", json=body) as failed:
            assert failed.status == 502
        slow = {**HI, "script": {"text": "a b c d e f", "delay": 0.5}}
        async with http.post(f"{gateway.url}/v1/streams", json=slow) as live:
            async for _ in live.content:
                break
            during = await scrape(http, gateway.url)
            async with http.post(f"{gateway.url}/v1/streams", json=HI) as refused:
                assert refused.status == 429
        after = await scrape(http, gateway.url)

    attempts = "tokenrelay_upstream_attempts_total"
    assert value(after, attempts, provider="scripted", outcome="upstream_unavailable") == 2
    assert value(after, "tokenrelay_streams_total", code="upstream_unavailable") == 1
    assert value(after, "tokenrelay_admissions_refused_total", code="rate_limited") == 1
    assert value(during, "tokenrelay_live_streams", model="demo") == 1
    assert value(during, "tokenrelay_streams", status="streaming") == 1
    assert value(during, "tokenrelay_stream_viewers") == 1


async def test_each_stream_ends_with_one_structured_log_line_under_its_request_id(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenrelay.streams")
    async with serve() as gateway:
        body = {**HI, "script": {"text": "hello there world"}}
        async with http.post(f"{gateway.url}/v1/streams", json=body) as response:
            await response.read()
            request_id = response.headers["X-Request-Id"]
            stream_id = response.headers["X-Stream-Id"]
    lines = [r for r in caplog.records if r.name == "tokenrelay.streams"]

    assert request_id.startswith("req_")
    assert len(lines) == 1
    fields: dict[str, Any] = lines[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == request_id and fields["stream_id"] == stream_id
    expected = {"model": "demo", "provider": "scripted", "wire": "native", "code": "ok"}
    assert expected.items() <= fields.items()
    assert fields["output_tokens"] == 3 and fields["ttft_ms"] >= 0 and fields["duration_ms"] > 0
    assert f"request_id={request_id}" in lines[0].getMessage()
    line = orjson.loads(JsonFormatter().format(lines[0]))
    assert line["stream_id"] == stream_id and line["level"] == "info"


async def test_a_request_id_that_could_forge_log_lines_is_replaced(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        headers = {"X-Request-Id": "x" * 200}
        async with http.get(f"{gateway.url}/v1/models", headers=headers) as response:
            returned = response.headers["X-Request-Id"]

    assert returned.startswith("req_")


async def test_metrics_are_also_served_on_a_port_of_their_own(
    http: aiohttp.ClientSession,
) -> None:
    with free_socket() as sock:
        port = sock.getsockname()[1]
    async with serve(observability={"metrics_port": port}) as gateway:
        async with http.post(f"{gateway.url}/v1/streams", json=HI) as response:
            await response.read()
        exposition = await scrape(http, f"http://127.0.0.1:{port}")
        async with http.get(f"http://127.0.0.1:{port}/v1/models") as other:
            assert other.status == 404

    assert value(exposition, "tokenrelay_streams_total", wire="native", code="ok") == 1
    assert value(exposition, "tokenrelay_dependency_up", dependency="database") == 1


async def test_readyz_pings_redis_and_names_it_when_it_does_not_answer(
    http: aiohttp.ClientSession,
) -> None:
    async with redis_server() as redis:
        async with serve(redis_url=redis.url, rate_limits={"requests_per_minute": 100}) as gateway:
            async with http.get(f"{gateway.url}/readyz") as response:
                ready = response.status, await response.json()
            redis.pause()
            try:
                async with http.get(f"{gateway.url}/readyz") as response:
                    unready = response.status, await response.json()
                exposition = await scrape(http, gateway.url)
            finally:
                redis.resume()

    assert ready[0] == 200
    assert (ready[1]["database"], ready[1]["redis"], ready[1]["down"]) == ("ok", "ok", [])
    assert unready == (
        503,
        {"status": "unavailable", "database": "ok", "redis": "unreachable", "down": ["redis"]},
    )
    assert value(exposition, "tokenrelay_dependency_up", dependency="redis") == 0
