"""The relay's observer: metrics, spans and the log line, from one stream's telemetry.

The relay calls :meth:`Observer.admitting` around admission, :meth:`Observer.started` when a
stream starts, :meth:`Observer.attempt` around each upstream try, and :meth:`Observer.ended`
(a finish hook) at the end; everything a stream's end records is made there, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from tokenrelay import errors
from tokenrelay.chat import ChatRequest
from tokenrelay.events import Failed, Finish
from tokenrelay.ops import logs
from tokenrelay.ops.metrics import Metrics
from tokenrelay.providers.base import Provider
from tokenrelay.relay.stream import Stream
from tokenrelay.telemetry import (
    RequestContext,
    StreamTelemetry,
    current_request,
    current_stream,
)

if TYPE_CHECKING:
    from tokenrelay.ops.tracing import Tracing


class Observer:
    def __init__(
        self, metrics: Metrics | None, tracing: Tracing | None, *, content: bool = False
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.content = content

    @contextlib.contextmanager
    def admitting(self) -> Iterator[None]:
        """Around admission: its span, and a count of its refusals by code."""
        request = current_request.get()
        span = None
        if self.tracing is not None and request is not None:
            if request.span is None:
                request.span = self.tracing.request_span(request, fresh=request.claimed)
            span = self.tracing.child(request.span, "admission", {})
        try:
            yield
        except errors.TokenRelayError as exc:
            if self.metrics is not None:
                self.metrics.refused.labels(exc.code).inc()
            if span is not None and request is not None and request.span is not None:
                self.tracing.failed(span, exc.code)  # type: ignore[union-attr]
                self.tracing.failed(request.span, exc.code)  # type: ignore[union-attr]
                # No stream will end it.
                request.span.end()
                request.span = None
            raise
        finally:
            if span is not None:
                span.end()

    def started(self, stream: Stream, request: ChatRequest, provider: Provider) -> None:
        context = current_request.get()
        claimed = (
            context.claim()
            if context is not None
            else RequestContext("", "internal", time.perf_counter(), time.time_ns())
        )
        telemetry = StreamTelemetry(claimed, provider.name)
        if self.tracing is not None:
            span = context.span if context is not None else None
            if span is None:
                span = self.tracing.request_span(claimed, fresh=False)
            elif context is not None:
                context.span = None
            span.update_name(f"chat {stream.model}")
            span.set_attributes(
                {
                    "gen_ai.request.model": stream.model,
                    "gen_ai.provider.name": provider.name,
                    "tokenrelay.stream_id": stream.id,
                }
            )
            if self.content:
                messages = [{"role": m.role, "content": m.text} for m in request.messages]
                span.set_attribute("gen_ai.input.messages", orjson.dumps(messages).decode())
            telemetry.span = span
        stream.telemetry = telemetry

    @staticmethod
    def entered(stream: Stream) -> None:
        """In the stream's own task: the upstream client finds the stream from here."""
        current_stream.set(stream.telemetry)

    @contextlib.contextmanager
    def attempt(self, stream: Stream, provider: Provider) -> Iterator[None]:
        """Around one upstream try: its span (and ``traceparent``), and a count by outcome."""
        telemetry = stream.telemetry
        span = None
        if telemetry is not None:
            telemetry.attempts += 1
            telemetry.provider = provider.name
            telemetry.upstream_model = provider.upstream_model
            if self.tracing is not None and telemetry.span is not None:
                span = self.tracing.child(
                    telemetry.span,
                    f"chat {provider.upstream_model}",
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": provider.name,
                        "gen_ai.request.model": provider.upstream_model,
                        "tokenrelay.attempt": telemetry.attempts,
                    },
                )
                telemetry.trace_headers = {}
                self.tracing.inject(span, telemetry.trace_headers)
        outcome = "ok"
        try:
            yield
        except errors.TokenRelayError as exc:
            outcome = exc.code
            raise
        except asyncio.CancelledError:
            outcome = stream.cancel_reason.code if stream.cancel_reason else "cancelled"
            raise
        except Exception:
            outcome = errors.UpstreamError.code
            raise
        finally:
            if self.metrics is not None:
                self.metrics.attempts.labels(provider.name, provider.model_name, outcome).inc()
            if span is not None:
                if outcome != "ok":
                    self.tracing.failed(span, outcome)  # type: ignore[union-attr]
                span.end()

    async def ended(self, stream: Stream) -> None:
        """The relay's finish hook."""
        telemetry = stream.telemetry
        if telemetry is None:
            return
        last = stream.log.last
        if isinstance(last, Finish):
            code = "ok"
        elif isinstance(last, Failed):
            code = last.error.code
        else:
            code = errors.UpstreamError.code
        usage = stream.log.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else None
        if self.metrics is not None:
            duration = self.metrics.stream_ended(telemetry, stream.model, code, tokens)
        else:
            duration = time.perf_counter() - telemetry.received
        if telemetry.span is not None:
            self._end_span(telemetry, stream, code, tokens)
        if logs.logger.isEnabledFor(logging.INFO):
            logs.stream_ended(_fields(telemetry, stream, code, tokens, duration))

    def _end_span(
        self,
        telemetry: StreamTelemetry,
        stream: Stream,
        code: str,
        tokens: tuple[int, int] | None,
    ) -> None:
        span = telemetry.span
        attributes: dict[str, Any] = {"gen_ai.response.model": telemetry.upstream_model or ""}
        if tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = tokens[0]
            attributes["gen_ai.usage.output_tokens"] = tokens[1]
        last = stream.log.last
        if isinstance(last, Finish):
            attributes["gen_ai.response.finish_reasons"] = [last.reason]
        if self.content:
            output = [{"role": "assistant", "content": stream.log.text()}]
            attributes["gen_ai.output.messages"] = orjson.dumps(output).decode()
        span.set_attributes(attributes)
        if code != "ok":
            self.tracing.failed(span, code)  # type: ignore[union-attr]
        span.end()
        telemetry.span = None


def _fields(
    telemetry: StreamTelemetry,
    stream: Stream,
    code: str,
    tokens: tuple[int, int] | None,
    duration: float,
) -> dict[str, Any]:
    ttft = telemetry.first_token
    return {
        "request_id": telemetry.request_id or None,
        "stream_id": stream.id,
        "user": stream.owner,
        "model": stream.model,
        "provider": telemetry.provider,
        "wire": telemetry.wire,
        "code": code,
        "ttft_ms": None if ttft is None else round((ttft - telemetry.received) * 1000, 1),
        "input_tokens": None if tokens is None else tokens[0],
        "output_tokens": telemetry.tokens if tokens is None else tokens[1],
        "attempts": telemetry.attempts,
        "duration_ms": round(duration * 1000, 1),
    }
