"""One generation: its log, its task, and who is watching it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tokenrelay import errors
from tokenrelay.events import Failed, Finish, Opened
from tokenrelay.relay.log import StreamLog
from tokenrelay.telemetry import StreamTelemetry


class Stream:
    """A running or finished generation.

    ``linger`` is how long the generation goes on after its last viewer leaves, so that a
    client can resume it: 0 for the stateless wires (the upstream is closed at once), the
    resume grace period for the native wire and the WebSocket.
    """

    # Thousands live at once: no per-instance __dict__.
    __slots__ = (
        "_linger_timer",
        "_on_idle",
        "cancel_reason",
        "created",
        "id",
        "linger",
        "log",
        "model",
        "owner",
        "task",
        "telemetry",
        "viewers",
    )

    def __init__(self, stream_id: str, model: str, *, owner: str | None, linger: float) -> None:
        self.id = stream_id
        self.model = model
        self.owner = owner
        self.linger = linger
        self.created = time.time()
        self.log = StreamLog()
        self.log.append(Opened(stream_id=stream_id, model=model))
        self.task: asyncio.Task[None] | None = None
        self.viewers = 0
        # Set by the app's observer (tokenrelay.ops); None when metrics and traces are off.
        self.telemetry: StreamTelemetry | None = None
        self.cancel_reason: errors.TokenRelayError | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._on_idle: Callable[[Stream], None] | None = None

    @property
    def finished(self) -> bool:
        return self.log.closed

    @property
    def status(self) -> str:
        """``streaming``, ``complete``, ``cancelled`` or ``error`` (the stored message's words)."""
        last = self.log.last
        if isinstance(last, Finish):
            return "complete"
        if isinstance(last, Failed):
            return "cancelled" if isinstance(last.error, errors.Cancelled) else "error"
        return "streaming"

    def attach(self) -> None:
        self.viewers += 1
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def detach(self) -> None:
        self.viewers -= 1
        if self.viewers > 0 or self.finished:
            return
        if self.linger <= 0:
            self.cancel(errors.Cancelled("the client disconnected"))
        else:
            loop = asyncio.get_running_loop()
            self._linger_timer = loop.call_later(
                self.linger,
                self.cancel,
                errors.Cancelled("nobody re-attached within the resume grace period"),
            )

    def cancel(self, reason: errors.TokenRelayError) -> bool:
        """Stop the generation; its log ends with ``reason``. False if it had already ended."""
        if self.finished or self.task is None or self.task.done():
            return False
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.task.cancel()
        return True
