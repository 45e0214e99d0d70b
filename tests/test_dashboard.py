"""The Grafana dashboard in deploy/ reads metrics that a real scrape has, with their labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway import serve

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
SERIES = re.compile(r"\b(tokenrelay_[a-z_]+)\b")
GROUPED = re.compile(r"by \(([^)]*)\)")
# Made by a local model's worker only; the local-model tests pin those names.
LOCAL_ONLY = {
    "tokenrelay_local_worker_state",
    "tokenrelay_local_queue_depth",
    "tokenrelay_local_worker_restarts_total",
}


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.parametrize("query", queries())
async def test_each_dashboard_query_reads_series_and_labels_a_real_scrape_has(
    http: aiohttp.ClientSession, query: str
) -> None:
    models = {"demo": {"provider": "scripted", "retries": 0}}
    async with serve(models=models, rate_limits={"requests_per_minute": 2}) as gateway:
        for script in ({"text": "one two three"}, {"fail": "upstream_unavailable"}, {}):
            body = {"messages": [{"role": "user", "content": "hi"}], "script": script}
            async with http.post(f"{gateway.url}/v1/streams", json=body) as response:
                await response.read()
        async with http.get(f"{gateway.url}/metrics") as response:
            exposition = await response.text()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)

    for series in SERIES.findall(query):
        if series in LOCAL_ONLY:
            continue
        assert series in labels, f"{series} is not in a scrape"
        for grouped in GROUPED.findall(query):
            wanted = {name.strip() for name in grouped.split(",")}
            assert wanted <= labels[series], f"{series} lacks {wanted - labels[series]}"
