"""Write a streaming reply into the store as it grows, then its end.

A :class:`Recorder` reads a stream's log from the start exactly as a client does, but is not a
viewer: it never keeps a generation alive nor stops one. It checkpoints the reply at a bounded
rate (every ``interval`` seconds, or sooner once ``max_pending`` deltas wait), so a crash
loses at most that much; slow writes only make it coalesce more text per write, never slow the
generation. The relay knows nothing of it.

Reasoning (with its signature) is stored with the text as it streams; tool calls only with a
reply that ended well: a call cut off has arguments that are not whole JSON, and a call sent
back to a model without its result is refused by the upstreams that take tools.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from tokenrelay import errors
from tokenrelay.conversations.parts import stored_parts
from tokenrelay.events import DELTAS, Failed, Finish
from tokenrelay.relay.reply import Reply
from tokenrelay.relay.stream import Stream
from tokenrelay.store.models import MessageStatus
from tokenrelay.store.repository import Store

logger = logging.getLogger("tokenrelay.store")

FINAL_WRITE_ATTEMPTS = 5


@dataclass(slots=True, frozen=True)
class Outcome:
    status: MessageStatus
    error_code: str | None = None
    finish_reason: str | None = None


def outcome_of(last: Finish | Failed) -> Outcome:
    """The stored status for a stream's last event."""
    if isinstance(last, Finish):
        status: MessageStatus = "length" if last.reason == "length" else "complete"
        return Outcome(status, finish_reason=last.reason)
    error = last.error
    if isinstance(error, errors.Cancelled):
        return Outcome("cancelled", error_code=error.code)
    if isinstance(error, errors.ServerShutdown):
        # Cut by a (graceful) stop, as a crash would have cut it: the same word for both.
        return Outcome("interrupted", error_code=error.code)
    return Outcome("error", error_code=error.code)


class Recorder:
    def __init__(
        self, store: Store, message_id: str, stream: Stream, *, interval: float, max_pending: int
    ) -> None:
        self.store = store
        self.message_id = message_id
        self.stream = stream
        self.interval = interval
        self.max_pending = max_pending
        self.checkpoints = 0
        self.ended = asyncio.Event()
        """Set once the reply's end is in the store (or could not be put there)."""

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.ended.set()

    async def _run(self) -> None:
        log = self.stream.log
        loop = asyncio.get_running_loop()
        reply = Reply()
        offset = 0
        pending = 0
        last_write = loop.time()
        while True:
            for event in log.events[offset:]:
                reply.add(event)
                if isinstance(event, DELTAS):
                    pending += 1
            offset = len(log)
            if log.closed:
                break
            due = last_write + self.interval
            if pending and (pending >= self.max_pending or loop.time() >= due):
                await self._checkpoint(reply)
                pending = 0
                last_write = loop.time()
                continue
            await log.wait(offset, max(0.0, due - loop.time()) if pending else None)
        last = log.last
        assert isinstance(last, Finish | Failed)
        outcome = outcome_of(last)
        usage = reply.usage
        await self._finish(
            reply,
            outcome,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
        )

    async def _checkpoint(self, reply: Reply) -> None:
        parts = stored_parts(reply.parts(calls=False))
        try:
            await self.store.checkpoint(self.message_id, "".join(reply.text), parts)
            self.checkpoints += 1
        except (SQLAlchemyError, OSError) as exc:
            # The next checkpoint carries this text too; a failed one loses nothing yet.
            logger.warning("checkpoint of message %s failed: %s", self.message_id, exc)

    async def _finish(
        self,
        reply: Reply,
        outcome: Outcome,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        content = "".join(reply.text)
        parts = stored_parts(reply.parts(calls=outcome.status == "complete"))
        for attempt in range(1, FINAL_WRITE_ATTEMPTS + 1):
            try:
                await self.store.finish_reply(
                    self.message_id,
                    content=content,
                    parts=parts,
                    status=outcome.status,
                    error_code=outcome.error_code,
                    finish_reason=outcome.finish_reason,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                )
                return
            except (SQLAlchemyError, OSError) as exc:
                logger.warning(
                    "saving the end of message %s failed (attempt %d): %s",
                    self.message_id,
                    attempt,
                    exc,
                )
                await asyncio.sleep(0.2 * attempt)
        # Left ``streaming``: once its lease runs out, it is marked interrupted with its last
        # checkpoint.
        logger.error("message %s could not be finished in the store", self.message_id)
