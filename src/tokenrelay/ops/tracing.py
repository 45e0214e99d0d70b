"""OpenTelemetry traces: the ``otel`` extra, configured by the standard ``OTEL_*`` variables.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``); then the SDK's
own configurator reads it, ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME`` and the rest,
as ``opentelemetry-instrument`` would. The extra ships the OTLP exporter over HTTP, so
``otlp`` means HTTP unless ``OTEL_EXPORTER_OTLP_PROTOCOL`` says ``grpc`` (which needs
``opentelemetry-exporter-otlp-proto-grpc`` installed too).

Spans follow the GenAI semantic conventions: one per request (``chat {model}``) with
``gen_ai.*`` attributes, a child for admission and one per upstream attempt, whose context
goes upstream as W3C ``traceparent``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tokenrelay.telemetry import RequestContext

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger("tokenrelay.ops")
_configured: list[Tracer] = []


def tracer_from_environment() -> Tracer | None:
    """The process's tracer when ``OTEL_TRACES_EXPORTER`` turns tracing on; None otherwise."""
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names or names == "none":
        return None
    if _configured:
        # The SDK's provider is process-wide and can be set once.
        return _configured[0]
    try:
        from opentelemetry import trace
        from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    except ImportError:
        logger.warning("OTEL_TRACES_EXPORTER is set but the otel extra is not installed: no traces")
        return None
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    ):
        os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
    _OTelSDKConfigurator().configure()  # type: ignore[no-untyped-call]
    tracer = trace.get_tracer("tokenrelay")
    _configured.append(tracer)
    return tracer


def flush() -> None:
    """Export the spans still batched, at shutdown: the process may end by a signal, which
    skips the SDK's own flush at exit. It blocks, once, when nothing else is left to run."""
    if _configured:
        from opentelemetry import trace

        flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if flush is not None:
            flush(2000)


class Tracing:
    """Spans for one app, from a tracer (the environment's, or a test's own)."""

    def __init__(self, tracer: Tracer, *, content: bool = False) -> None:
        from opentelemetry import propagate, trace

        self.tracer = tracer
        self.content = content
        self._trace = trace
        self._propagate = propagate

    def request_span(self, request: RequestContext, *, fresh: bool) -> Span:
        """The request's span under the caller's ``traceparent``, from the request's arrival
        (or from now, for a ``fresh`` stream of a request that already had one)."""
        carrier = {
            name: value
            for name, value in (
                ("traceparent", request.traceparent),
                ("tracestate", request.tracestate),
            )
            if value is not None
        }
        parent = self._propagate.extract(carrier) if carrier else None
        return self.tracer.start_span(
            "chat",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            start_time=time.time_ns() if fresh else request.received_ns,
            attributes={
                "gen_ai.operation.name": "chat",
                "tokenrelay.request_id": request.request_id,
                "tokenrelay.wire": request.wire,
            },
        )

    def child(self, parent: Span, name: str, attributes: Mapping[str, Any]) -> Span:
        return self.tracer.start_span(
            name,
            context=self._trace.set_span_in_context(parent),
            kind=self._trace.SpanKind.CLIENT
            if name.startswith("chat")
            else self._trace.SpanKind.INTERNAL,
            attributes=attributes,
        )

    def failed(self, span: Span, code: str) -> None:
        span.set_attribute("error.type", code)
        span.set_status(self._trace.StatusCode.ERROR, code)

    def inject(self, span: Span, headers: dict[str, str]) -> None:
        """Put ``span``'s context on an upstream request (``traceparent``, ``tracestate``)."""
        self._propagate.inject(headers, context=self._trace.set_span_in_context(span))
