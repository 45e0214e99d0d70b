"""The request and stream facts the relay and the providers record for operators.

Only the standard library here: the relay and the providers import this module, and
:mod:`tokenrelay.ops`, which turns these facts into metrics, traces and logs, sits above them.

A :class:`RequestContext` is made as each request enters (:mod:`tokenrelay.ops.requests`) and
is current for the request's task; a stream's task is started from inside the request, so it
inherits the context. A :class:`StreamTelemetry` is one stream's clock readings: the relay
writes them as events pass (a few attribute writes per token, nothing more), and metrics,
traces and the log line are made from them once, when the stream ends.
"""

from __future__ import annotations

import bisect
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

# Seconds between two tokens of one stream: upstreams send 5-100 a second, a loaded local
# model fewer; a gap past 10 s is near the idle limit.
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    wire: str
    received: float  # time.perf_counter(): the clock every duration is measured on
    received_ns: int  # time.time_ns(): when, for spans
    traceparent: str | None = None
    tracestate: str | None = None
    # The request's span while admission runs, before its stream exists (tracing on).
    span: Any = None
    # Whether a stream has taken this context: a later stream of the same request (a title
    # after the reply) is timed from its own start.
    claimed: bool = False

    def claim(self) -> RequestContext:
        """This context for a new stream: itself the first time, a fresh clock after."""
        if not self.claimed:
            self.claimed = True
            return self
        return RequestContext(
            self.request_id,
            self.wire,
            time.perf_counter(),
            time.time_ns(),
            self.traceparent,
            self.tracestate,
            claimed=True,
        )


current_request: ContextVar[RequestContext | None] = ContextVar("tokenrelay_request", default=None)
# The stream whose task this is (set by the relay in the task), for the upstream client.
current_stream: ContextVar[StreamTelemetry | None] = ContextVar(
    "tokenrelay_stream_telemetry", default=None
)


class StreamTelemetry:
    """One stream's clock readings (``time.perf_counter()``) and what its spans need."""

    # One per open stream, thousands at once: no per-instance __dict__.
    __slots__ = (
        "attempts",
        "delivered",
        "first_token",
        "gap_sum",
        "gaps",
        "last_token",
        "provider",
        "received",
        "received_ns",
        "request_id",
        "span",
        "tokens",
        "trace_headers",
        "upstream_model",
        "upstream_sent",
        "wire",
    )

    def __init__(self, request: RequestContext, provider: str) -> None:
        self.request_id = request.request_id
        self.wire = request.wire
        self.received = request.received
        self.received_ns = request.received_ns
        self.provider = provider  # the kind (openai, anthropic…) of the last provider tried
        self.upstream_model: str | None = None
        self.attempts = 0
        self.upstream_sent: float | None = None
        self.first_token: float | None = None
        self.last_token = 0.0
        self.tokens = 0
        # Per GAP_BUCKETS bound (and one past the last), made at the second token.
        self.gaps: list[int] | None = None
        self.gap_sum = 0.0
        self.delivered: float | None = None  # when a client got the first token's bytes
        self.span: Any = None  # the request's span, when tracing is on
        self.trace_headers: dict[str, str] | None = None  # the current attempt's traceparent

    def token(self) -> None:
        """A text delta came from the upstream: the relay's only per-token call."""
        now = time.perf_counter()
        self.tokens += 1
        if self.first_token is None:
            self.first_token = now
            if self.span is not None:
                self.span.add_event("gen_ai.first_token")
        else:
            gap = now - self.last_token
            gaps = self.gaps
            if gaps is None:
                gaps = self.gaps = [0] * (len(GAP_BUCKETS) + 1)
            gaps[bisect.bisect_left(GAP_BUCKETS, gap)] += 1
            self.gap_sum += gap
        self.last_token = now

    def delivering(self) -> None:
        """A response is about to write this stream's first text to its client."""
        if self.delivered is None and self.first_token is not None:
            self.delivered = time.perf_counter()


def sending_upstream(headers: dict[str, str]) -> None:
    """An upstream request is about to go out with ``headers``: add this request's id and
    the attempt's trace context to them, and note the time."""
    request = current_request.get()
    if request is not None and request.request_id:
        headers["X-Request-Id"] = request.request_id
    stream = current_stream.get()
    if stream is not None:
        if stream.upstream_sent is None:
            stream.upstream_sent = time.perf_counter()
        if stream.trace_headers:
            headers.update(stream.trace_headers)


def next_message() -> None:
    """A new message on a long-lived connection (a WebSocket): its own clock from now."""
    request = current_request.get()
    if request is not None:
        request.received, request.received_ns = time.perf_counter(), time.time_ns()
        request.claimed = False
