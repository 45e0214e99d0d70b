"""Prometheus metrics through ``prometheus-client``, each app with its own registry.

Durations come from :class:`~tokenrelay.telemetry.StreamTelemetry` and are observed once
per stream, at its end; the inter-token gaps are counted into the stream's own buckets as
tokens pass and added here in one go (:class:`GapHistogram`), so no metric call runs per
token. Gauges of what is live (streams, viewers, local workers, dependencies) are read when
scraped. Labels are bounded: wires, configured model names, provider kinds, error codes,
worker states — never a user, a key, a request or a stream.

One process, one exposition: with several processes, scrape each (``metrics_port`` per
process, or each behind its own target); prometheus-client's multiprocess mode would not
carry the gauges read at scrape time.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from tokenrelay.providers.base import WORKER_STATES, WorkerHealth
from tokenrelay.telemetry import GAP_BUCKETS, StreamTelemetry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds to a first token and of whole streams: from a local model's fraction of a second
# to the first-token limit (60 s) and long reasoning replies.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The gateway's own time: it should stay well under a millisecond.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
STREAM_STATUSES = ("streaming", "complete", "cancelled", "error")


@dataclass(frozen=True, slots=True)
class LiveStream:
    model: str
    status: str
    viewers: int


@dataclass
class Sources:
    """What the gauges read at scrape time (set by the app)."""

    streams: Callable[[], Iterable[LiveStream]] = lambda: ()
    models: tuple[str, ...] = ()  # configured: each has a live-streams gauge, 0 included
    workers: Callable[[], Mapping[str, WorkerHealth]] = dict
    # dependency name -> 1 up / 0 down, as the last readiness check found it
    dependencies: dict[str, int] = field(default_factory=dict)


class GapHistogram:
    """``tokenrelay_inter_token_seconds``: buckets added a stream at a time."""

    name = "tokenrelay_inter_token_seconds"

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def add(self, model: str, gaps: list[int], total: float) -> None:
        counts = self._counts.setdefault(model, [0] * (len(GAP_BUCKETS) + 1))
        for index, count in enumerate(gaps):
            counts[index] += count
        self._sums[model] = self._sums.get(model, 0.0) + total

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            self.name,
            "Time between two tokens of one stream, as the upstream sent them.",
            labels=["model"],
        )
        for model, counts in self._counts.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*GAP_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((_bound(bound), float(cumulative)))
            family.add_metric([model], buckets, self._sums[model])
        yield family


def _bound(value: float) -> str:
    # The ``le`` label as prometheus-client writes its own histograms' bounds.
    return "+Inf" if value == float("inf") else repr(float(value))


class LiveCollector:
    """Gauges read at scrape time; the local-worker names are the ones tests pin."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        streams = list(self.sources.streams())
        by_status = Tally(s.status for s in streams)
        live = Tally(s.model for s in streams if s.status == "streaming")
        family = GaugeMetricFamily(
            "tokenrelay_streams", "Streams held in memory, by status.", labels=["status"]
        )
        for status in STREAM_STATUSES:
            family.add_metric([status], by_status[status])
        yield family
        family = GaugeMetricFamily(
            "tokenrelay_live_streams", "Streams generating now, by model.", labels=["model"]
        )
        for model in dict.fromkeys((*self.sources.models, *live)):
            family.add_metric([model], live[model])
        yield family
        yield GaugeMetricFamily(
            "tokenrelay_stream_viewers",
            "Connections following a stream.",
            value=sum(s.viewers for s in streams),
        )
        family = GaugeMetricFamily(
            "tokenrelay_dependency_up",
            "1 when the dependency answered the last readiness check.",
            labels=["dependency"],
        )
        for name, up in self.sources.dependencies.items():
            family.add_metric([name], up)
        yield family
        yield from _worker_families(self.sources.workers())


def _worker_families(workers: Mapping[str, WorkerHealth]) -> Iterator[Metric]:
    if not workers:
        return
    state = GaugeMetricFamily(
        "tokenrelay_local_worker_state",
        "The state of each local model's worker process.",
        labels=["model", "state"],
    )
    restarts = CounterMetricFamily(
        "tokenrelay_local_worker_restarts",
        "Workers started again after one died.",
        labels=["model"],
    )
    depth = GaugeMetricFamily(
        "tokenrelay_local_queue_depth",
        "Requests waiting for a busy local model.",
        labels=["model"],
    )
    for name, health in workers.items():
        for each in WORKER_STATES:
            state.add_metric([name, each], int(health.state == each))
        restarts.add_metric([name], health.restarts)
        depth.add_metric([name], health.queue_depth)
    yield from (state, restarts, depth)


class Metrics:
    """The registry and every metric tokenrelay exports."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.sources = Sources()
        self.ttft = Histogram(
            "tokenrelay_time_to_first_token_seconds",
            "From the request's arrival to the upstream's first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "tokenrelay_stream_duration_seconds",
            "From the request's arrival to the stream's end.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "tokenrelay_overhead_seconds",
            "tokenrelay's own time: request arrival to upstream request (request), "
            "upstream's first token to its first byte to the client (first_token).",
            ["direction"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.streams = Counter(
            "tokenrelay_streams",
            "Streams ended, by wire, model and outcome code (ok or an error code).",
            ["wire", "model", "code"],
            registry=registry,
        )
        self.tokens = Counter(
            "tokenrelay_tokens",
            "Tokens by model and type (input, output) as reported; text deltas if none was.",
            ["model", "type"],
            registry=registry,
        )
        self.attempts = Counter(
            "tokenrelay_upstream_attempts",
            "Upstream tries by provider kind, model and outcome: retries and fallbacks.",
            ["provider", "model", "outcome"],
            registry=registry,
        )
        self.refused = Counter(
            "tokenrelay_admissions_refused",
            "Requests refused before a stream started, by code.",
            ["code"],
            registry=registry,
        )
        self.gaps = GapHistogram()
        registry.register(self.gaps)
        registry.register(LiveCollector(self.sources))
        self._overhead_request = self.overhead.labels("request")
        self._overhead_first = self.overhead.labels("first_token")
        # Labelled children by (metric, labels): prometheus-client's labels() validates and
        # locks on every call; the label sets are bounded (models, wires, codes), so is this.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def stream_ended(
        self, telemetry: StreamTelemetry, model: str, code: str, usage: tuple[int, int] | None
    ) -> float:
        """Observe one ended stream; its duration."""
        duration = time.perf_counter() - telemetry.received
        self._child(self.duration, model).observe(duration)
        self._child(self.streams, telemetry.wire, model, code).inc()
        if telemetry.first_token is not None:
            self._child(self.ttft, model).observe(telemetry.first_token - telemetry.received)
            if telemetry.delivered is not None:
                self._overhead_first.observe(telemetry.delivered - telemetry.first_token)
        if telemetry.upstream_sent is not None:
            self._overhead_request.observe(telemetry.upstream_sent - telemetry.received)
        if telemetry.gaps is not None:
            self.gaps.add(model, telemetry.gaps, telemetry.gap_sum)
        prompt, completion = usage if usage is not None else (0, telemetry.tokens)
        if prompt:
            self._child(self.tokens, model, "input").inc(prompt)
        if completion:
            self._child(self.tokens, model, "output").inc(completion)
        return duration

    def render(self) -> bytes:
        return generate_latest(self.registry)
