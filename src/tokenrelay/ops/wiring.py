"""The app's operations services, made in its lifespan: observer, readiness, scrape port."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tokenrelay.config import Settings
from tokenrelay.limits import Gate
from tokenrelay.ops import logs, scrape, tracing
from tokenrelay.ops.metrics import CONTENT_TYPE, LiveStream, Metrics
from tokenrelay.ops.observer import Observer
from tokenrelay.ops.readiness import Readiness
from tokenrelay.providers.base import WorkerHealth
from tokenrelay.relay import Relay
from tokenrelay.store import Store

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["CONTENT_TYPE", "Operations"]


class Operations:
    def __init__(
        self, settings: Settings, relay: Relay, store: Store, gate: Gate, tracer: Tracer | None
    ) -> None:
        options = settings.observability
        logs.configure(settings)
        self.relay = relay
        self.metrics = Metrics() if options.metrics else None
        tracer = tracer or tracing.tracer_from_environment()
        spans = tracing.Tracing(tracer, content=options.trace_content) if tracer else None
        if self.metrics is not None or spans is not None:
            observer = Observer(self.metrics, spans, content=options.trace_content)
            relay.observer = observer
            relay.finish_hooks.append(observer.ended)
        checks = {"database": store.ping}
        if settings.redis_url:
            checks["redis"] = gate.limiter.ping
        self.readiness = Readiness(checks, options.ready_timeout)
        if self.metrics is not None:
            sources = self.metrics.sources
            sources.streams = self._streams
            sources.models = tuple(relay.providers)
            sources.workers = self.workers
            sources.dependencies = self.readiness.last
        self._settings = options
        self._scraper: asyncio.Server | None = None

    async def start(self) -> None:
        if self.metrics is not None and self._settings.metrics_port:
            self._scraper = await scrape.start(
                self._settings.metrics_host, self._settings.metrics_port, self.render
            )

    async def aclose(self) -> None:
        tracing.flush()
        if self._scraper is not None:
            self._scraper.close()
            await self._scraper.wait_closed()

    def _streams(self) -> list[LiveStream]:
        return [
            LiveStream(stream.model, stream.status, stream.viewers)
            for stream in self.relay.streams.values()
        ]

    def workers(self) -> dict[str, WorkerHealth]:
        return {
            name: health
            for name, provider in self.relay.providers.items()
            if (health := provider.worker_health()) is not None
        }

    async def render(self) -> bytes:
        """The exposition, with the dependencies pinged for their gauges."""
        await self.readiness.check()
        return b"" if self.metrics is None else self.metrics.render()
