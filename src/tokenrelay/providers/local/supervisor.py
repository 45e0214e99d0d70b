"""Keeps one worker process per local model running, and restarts it when it dies.

States, as ``/readyz`` and ``/metrics`` show them:

* ``stopped`` — not started yet (or shut down);
* ``starting`` — a worker is loading the model; requests wait for it;
* ``ready`` — a worker answers;
* ``restarting`` — the last worker died or failed to load; another starts after a backoff of
  0, 1, 2, 4 … 30 s (doubling with each failure in a row). Within the backoff requests are
  answered ``upstream_unavailable`` with ``Retry-After``, rather than queued for a worker that
  may never come. A generation that completes resets the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from tokenrelay import errors
from tokenrelay.providers.base import WorkerState
from tokenrelay.providers.local.process import WorkerProcess

logger = logging.getLogger("tokenrelay.providers.local")

MAX_BACKOFF = 30.0


def backoff(failures: int) -> float:
    """Seconds to wait before the next start after ``failures`` failures in a row."""
    return 0.0 if failures <= 1 else min(MAX_BACKOFF, 2.0 ** (failures - 2))


class Supervisor:
    def __init__(
        self,
        model_name: str,
        config: Callable[[], dict[str, Any]],
        *,
        load_timeout: float,
    ) -> None:
        self.model_name = model_name
        self._config = config
        self._load_timeout = load_timeout
        self.state: WorkerState = "stopped"
        self.restarts = 0
        self.failures = 0
        self.last_failure: str | None = None
        self._worker: WorkerProcess | None = None
        self._starting: asyncio.Future[WorkerProcess] | None = None
        self._next_start = 0.0
        self._watch: asyncio.Task[None] | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._closed = False
        self._decoded_before = 0

    @property
    def pid(self) -> int | None:
        """The running worker's process id (tests kill it)."""
        worker = self.current
        return worker.pid if worker is not None else None

    @property
    def current(self) -> WorkerProcess | None:
        """The ready worker, if there is one now."""
        worker = self._worker
        return worker if worker is not None and worker.alive else None

    @property
    def tokens_decoded(self) -> int:
        """Tokens decoded over every worker this supervisor ran."""
        worker = self._worker
        return self._decoded_before + (worker.decoded if worker is not None else 0)

    async def worker(self) -> WorkerProcess:
        """A ready worker: the running one, or one started now; raise if none can be had."""
        if self._closed:
            raise errors.ServerShutdown("the server is shutting down")
        worker = self.current
        if worker is not None:
            return worker
        if self._starting is None:
            wait = self._next_start - time.monotonic()
            if wait > 0:
                raise errors.UpstreamUnavailable(
                    f"the local model {self.model_name} is restarting after {self.failures}"
                    f" failures in a row (last: {self.last_failure}); try again in"
                    f" {max(1, round(wait))} s",
                    retry_after=wait,
                )
            self._starting = asyncio.ensure_future(self._start())
        # Shielded: a client that gives up must not abandon the start for the ones behind it.
        return await asyncio.shield(self._starting)

    async def _start(self) -> WorkerProcess:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        self.state = "starting"
        worker = WorkerProcess(self.model_name)
        try:
            await worker.start(self._config(), self._load_timeout)
        except errors.TokenRelayError as exc:
            self._failed(exc.message, loading=True, retry=not worker.fatal)
            raise
        except Exception as exc:  # the worker could not even be spawned
            reason = f"its worker could not start: {exc!r}"
            self._failed(reason, loading=True)
            raise errors.UpstreamUnavailable(
                f"the local model {self.model_name}: {reason}"
            ) from exc
        finally:
            self._starting = None
        if self._closed:
            await worker.stop()
            raise errors.ServerShutdown("the server is shutting down")
        self._worker = worker
        self.state = "ready"
        self._watch = asyncio.create_task(self._watch_for_exit(worker))
        logger.info("local model %s: worker %s is ready", self.model_name, worker.pid)
        return worker

    async def _watch_for_exit(self, worker: WorkerProcess) -> None:
        await worker.ended.wait()
        if self._closed or worker is not self._worker:
            return
        self._worker = None
        self._decoded_before += worker.decoded
        self.restarts += 1
        self._failed(f"its worker {worker.exit_reason}", loading=False, in_flight=worker.lost)

    def _failed(
        self, reason: str, *, loading: bool, in_flight: int = 0, retry: bool = True
    ) -> None:
        self.failures += 1
        self.last_failure = reason
        delay = backoff(self.failures)
        self._next_start = time.monotonic() + delay
        self.state = "restarting"
        if self._closed:
            self.state = "stopped"
            return
        if self.failures > 2:
            logger.error(
                "local model %s keeps failing (%d times in a row, last: %s); it answers"
                " upstream_unavailable until a worker starts, next try in %.0f s",
                self.model_name,
                self.failures,
                reason,
                delay,
            )
        elif loading:
            logger.error("local model %s: %s; next try in %.0f s", self.model_name, reason, delay)
        else:
            logger.error(
                "local model %s crashed: %s, with %d generations in flight; restarting in %.0f s",
                self.model_name,
                reason,
                in_flight,
                delay,
            )
        if retry:
            loop = asyncio.get_running_loop()
            self._restart = loop.call_later(delay, self._restart_now)

    def _restart_now(self) -> None:
        self._restart = None
        if self._closed or self._starting is not None or self.current is not None:
            return
        starting = self._starting = asyncio.ensure_future(self._start())
        # Nobody may be waiting for this start: its failure is logged by _failed already.
        starting.add_done_callback(lambda done: done.cancelled() or done.exception())

    def succeeded(self) -> None:
        """A generation completed: the worker works, whatever happened before it."""
        self.failures = 0

    async def aclose(self) -> None:
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()
        if self._watch is not None:
            await self._watch
        self.state = "stopped"
