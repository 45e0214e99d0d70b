"""Start generations, run them under their time limits, and find them again by id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from tokenrelay import errors
from tokenrelay.chat import ChatRequest
from tokenrelay.config import Settings, Timeouts
from tokenrelay.events import (
    DELTAS,
    Accepted,
    Failed,
    Finish,
    ProviderEvent,
    Queued,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
)
from tokenrelay.providers.base import Provider
from tokenrelay.relay import retry
from tokenrelay.relay.deadline import Deadline
from tokenrelay.relay.stream import Stream

if TYPE_CHECKING:
    from tokenrelay.relay.redis_log import SharedLog

logger = logging.getLogger("tokenrelay.relay")

FinishHook = Callable[[Stream], Awaitable[None]]
UNOBSERVED = contextlib.nullcontext()
# A finish reason comes from the upstream or a script; the store keeps it in VARCHAR(60), and
# one too long for that would fail the reply's final write (and lose its last text).
MAX_FINISH_REASON = 60


class Admitted(Protocol):
    """Admission's yes: bound to the stream it let in, or voided if none starts."""

    def bind(self, stream: Stream) -> None: ...

    def void(self) -> None: ...


class Admission(Protocol):
    """Whether ``owner`` may start ``request`` now (rate, concurrency, budget; see limits)."""

    async def admit(self, request: ChatRequest, owner: str | None) -> Admitted: ...


class Observer(Protocol):
    """What operators see of streams (metrics, traces; :class:`tokenrelay.ops.Observer`).

    Its end of stream is a finish hook.
    """

    def admitting(self) -> AbstractContextManager[None]: ...

    def started(self, stream: Stream, request: ChatRequest, provider: Provider) -> None: ...

    def entered(self, stream: Stream) -> None: ...

    def attempt(self, stream: Stream, provider: Provider) -> AbstractContextManager[None]: ...


def new_stream_id() -> str:
    return "str_" + secrets.token_urlsafe(16)


class Relay:
    def __init__(
        self,
        settings: Settings,
        providers: dict[str, Provider],
        *,
        admission: Admission | None = None,
        finish_hooks: list[FinishHook] | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.streams: dict[str, Stream] = {}
        self.finish_hooks: list[FinishHook] = finish_hooks or []
        self.admission = admission
        # With redis_url: resumable streams are copied there, and found there from elsewhere.
        self.shared: SharedLog | None = None
        self.observer: Observer | None = None
        self.started_total = 0
        # Open WebSockets per user on this instance (the WebSocket wire keeps the count).
        self.sockets: Counter[str | None] = Counter()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    def provider_for(self, model: str | None) -> tuple[str, Provider]:
        name = model or self.settings.default_model
        if name is None or name not in self.providers:
            raise errors.NotFound(f"model {name!r} does not exist; GET /v1/models lists them")
        return name, self.providers[name]

    async def admit(self, request: ChatRequest, owner: str | None) -> Admitted | None:
        """Ask admission whether ``owner`` may start ``request``; it raises if not."""
        with self.observer.admitting() if self.observer else UNOBSERVED:
            if self._closing:
                # Before admission, so a refused request costs no quota.
                raise errors.ServerShutdown(
                    "the server is shutting down; retry (another instance will answer)",
                    retry_after=1,
                )
            _, provider = self.provider_for(request.model)
            refusal = provider.refusal(request)
            if refusal is not None:
                raise errors.InvalidRequest(refusal)
            if request.options.script is not None and not self.settings.request_scripts_allowed:
                raise errors.InvalidRequest(
                    "script is turned off on this server (allow_request_scripts)"
                )
            return None if self.admission is None else await self.admission.admit(request, owner)

    async def open(
        self, request: ChatRequest, *, owner: str | None = None, linger: float = 0.0
    ) -> Stream:
        """Admit, then :meth:`start`: how a client's request starts a stream."""
        admitted = await self.admit(request, owner)
        stream = self.start(request, owner=owner, linger=linger, admitted=admitted)
        # One loop turn for the generation's task, scheduled just now: it sends the upstream
        # request before the caller sets its response up, and that setup then overlaps the
        # upstream's own latency instead of delaying the first token.
        await asyncio.sleep(0)
        return stream

    def start(
        self,
        request: ChatRequest,
        *,
        owner: str | None = None,
        linger: float = 0.0,
        admitted: Admitted | None = None,
    ) -> Stream:
        """Start a generation now; without ``admitted`` it is not counted against anyone."""
        try:
            if self._closing:
                raise errors.ServerShutdown("the server is shutting down", retry_after=1)
            name, provider = self.provider_for(request.model)
        except BaseException:
            if admitted is not None:
                admitted.void()
            raise
        request.model = name
        stream = Stream(new_stream_id(), name, owner=owner, linger=linger)
        self.streams[stream.id] = stream
        self.started_total += 1
        if self.observer is not None:
            self.observer.started(stream, request, provider)
        stream.task = asyncio.create_task(self._run(stream, request), name=stream.id)
        # A bound method, not a closure over the stream: one object less per open stream.
        stream.task.add_done_callback(self._ended_unrun)
        if self.shared is not None and linger > 0:
            self.shared.publish(stream)
        if admitted is not None:
            admitted.bind(stream)
        return stream

    def get(self, stream_id: str, owner: str | None = None) -> Stream:
        stream = self.streams.get(stream_id)
        # Someone else's stream is exactly as missing as one that never existed.
        if stream is None or stream.owner != owner:
            raise errors.NotFound(f"stream {stream_id!r} does not exist")
        return stream

    async def find(self, stream_id: str, owner: str | None = None) -> Stream:
        """:meth:`get`, or with a shared log, the stream from whichever instance runs it."""
        if self.shared is None or stream_id in self.streams:
            return self.get(stream_id, owner)
        return await self.shared.find(stream_id, owner)

    async def cancel_anywhere(
        self, stream_ids: list[str], owner: str | None, reason: errors.TokenRelayError
    ) -> None:
        """Stop these streams wherever they run; those already gone are left alone."""
        for stream_id in stream_ids:
            try:
                stream = await self.find(stream_id, owner)
            except (errors.NotFound, errors.StreamLogUnavailable):
                continue
            stream.cancel(reason)

    @property
    def live(self) -> int:
        """Streams still generating."""
        return sum(1 for stream in self.streams.values() if not stream.finished)

    async def drain(self, timeout: float) -> None:
        """Refuse new streams at once; give those in flight up to ``timeout`` to finish, then
        stop the rest (:meth:`shutdown`)."""
        self._closing = True
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while self.live and loop.time() < until:
            tasks = [s.task for s in self.streams.values() if s.task and not s.task.done()]
            await asyncio.wait(tasks, timeout=max(0.0, until - loop.time()))
        if self.live:
            logger.warning("%d streams still running after %ss: stopping them", self.live, timeout)
        await self.shutdown()

    @property
    def closing(self) -> bool:
        return self._closing

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop every live stream with ``server_shutdown`` and wait for their ends."""
        self._closing = True
        tasks = []
        for stream in list(self.streams.values()):
            stream.cancel(errors.ServerShutdown("the server is shutting down"))
            if stream.task is not None:
                tasks.append(stream.task)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    async def _run(self, stream: Stream, request: ChatRequest) -> None:
        log = stream.log
        loop = asyncio.get_running_loop()
        # One total limit for the stream, however many upstreams it takes.
        total_deadline = loop.time() + self.settings.timeouts.total
        observer = self.observer
        if observer is not None:
            observer.entered(stream)
        try:
            primary = self.providers[stream.model]
            attempt = retry.Attempt(primary, 1, 1)
            # The rest of the plan only once a try fails: most streams never need it, and a
            # suspended generator would be held for as long as the stream runs.
            plan: Iterator[retry.Attempt] | None = None
            while True:
                try:
                    with observer.attempt(stream, attempt.provider) if observer else UNOBSERVED:
                        await self._relay(stream, attempt.provider, request, total_deadline)
                    logger.info(
                        "stream %s attempt %d on %s: ok",
                        stream.id,
                        attempt.number,
                        attempt.provider.model_name,
                    )
                    break
                except errors.TokenRelayError as exc:
                    logger.warning(
                        "stream %s attempt %d on %s: %s",
                        stream.id,
                        attempt.number,
                        attempt.provider.model_name,
                        exc.code,
                    )
                    # Never switch or repeat once the client has seen output from this stream.
                    if log.answered or not retry.worth_retrying(exc):
                        raise
                    if plan is None:
                        plan = retry.attempts(primary, self.providers)
                        next(plan)  # the first try, just made
                    attempt = await self._next_attempt(plan, exc, total_deadline, request)
        except errors.TokenRelayError as exc:
            log.append(Failed(exc))
        except asyncio.CancelledError:
            log.append(Failed(stream.cancel_reason or errors.Cancelled("the stream was cancelled")))
        except Exception:
            logger.exception("stream %s failed unexpectedly", stream.id)
            log.append(Failed(errors.UpstreamError("the gateway failed to relay this stream")))
        finally:
            if not log.closed:
                log.append(Failed(errors.UpstreamError("the provider ended without finishing")))
            await self._finished(stream)

    @staticmethod
    async def _next_attempt(
        plan: Iterator[retry.Attempt],
        failure: errors.TokenRelayError,
        total_deadline: float,
        request: ChatRequest,
    ) -> retry.Attempt:
        """The next try after ``failure`` (after its wait); re-raises it when none is left.

        A fallback that cannot honour the request (tools on a text-only model) is skipped.
        """
        loop = asyncio.get_running_loop()
        for attempt in plan:
            wait = retry.wait_before(attempt, failure)
            if wait is None or attempt.provider.refusal(request) is not None:
                continue
            if loop.time() + wait >= total_deadline:
                break
            await asyncio.sleep(wait)
            return attempt
        raise failure

    async def _relay(
        self, stream: Stream, provider: Provider, request: ChatRequest, total_deadline: float
    ) -> None:
        """Append one provider's events to the log under the four time limits."""
        log = stream.log
        limits: Timeouts = self.settings.timeouts
        loop = asyncio.get_running_loop()
        started = loop.time()
        token_deadline = started + limits.first_token
        got_text = False
        queued = False
        events: AsyncIterator[ProviderEvent] = provider.stream(request)
        telemetry = stream.telemetry
        deadline = Deadline(min(total_deadline, token_deadline))
        try:
            while True:
                deadline.move(min(total_deadline, token_deadline))
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if not deadline.expired():
                        raise
                    total = deadline.when == total_deadline
                    raise self._timeout(total, got_text, limits) from None
                match event:
                    case TextDelta() | ReasoningDelta() | ToolCallDelta():
                        if type(event) is TextDelta:
                            if not event.text:
                                continue
                        elif not (
                            event.arguments if isinstance(event, ToolCallDelta) else event.text
                        ):
                            continue
                        got_text = True
                        token_deadline = loop.time() + limits.idle
                        if telemetry is not None:
                            telemetry.token()
                        log.append(event)
                    case Accepted():
                        log.mark_accepted()
                        if queued:
                            # The first-token clock starts when the request leaves the queue.
                            token_deadline = loop.time() + limits.first_token
                            queued = False
                    case Queued():
                        queued = True
                        token_deadline = float("inf")
                        log.append(event)
                    case Finish():
                        log.mark_accepted()
                        if len(event.reason) > MAX_FINISH_REASON:
                            event = Finish(event.reason[:MAX_FINISH_REASON])
                        log.append(event)
                        return
                    case _:
                        # A call's start and end, a signature, usage: output, but no token.
                        if isinstance(event, DELTAS):
                            got_text = True
                            token_deadline = loop.time() + limits.idle
                        log.append(event)
            raise errors.UpstreamError("the provider ended without a finish")
        finally:
            deadline.disarm()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    @staticmethod
    def _timeout(total: bool, got_text: bool, limits: Timeouts) -> errors.TokenRelayError:
        if total:
            return errors.UpstreamTimeout(f"the stream exceeded its total limit of {limits.total}s")
        if got_text:
            return errors.IdleTimeout(f"no token for {limits.idle}s")
        return errors.FirstTokenTimeout(f"no first token within {limits.first_token}s")

    def _ended_unrun(self, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never runs ``_run``: end its log here."""
        stream = self.streams.get(task.get_name())
        if stream is None or stream.log.closed:
            return
        stream.log.append(Failed(stream.cancel_reason or errors.Cancelled("cancelled")))
        finishing = asyncio.get_running_loop().create_task(self._finished(stream))
        self._background.add(finishing)
        finishing.add_done_callback(self._background.discard)

    async def _finished(self, stream: Stream) -> None:
        for hook in self.finish_hooks:
            try:
                await hook(stream)
            except Exception:
                logger.exception("finish hook failed for stream %s", stream.id)
        # Only resumable streams are kept after their end, for late re-attaches.
        retention = self.settings.streams.retention if stream.linger > 0 else 0
        asyncio.get_running_loop().call_later(retention, self.streams.pop, stream.id, None)
