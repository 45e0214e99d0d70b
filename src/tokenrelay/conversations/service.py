"""Stored turns: the user's message saved first, the reply streamed and recorded, a title.

:class:`Conversations` is what the conversation routes and the WebSocket call to take a turn.
It builds the context from the store (fitted to the model's window, the stored history left
as it is), starts a resumable stream on the relay, and hands the stream to a
:class:`~tokenrelay.conversations.recorder.Recorder`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tokenrelay import errors
from tokenrelay.chat import ChatOptions, ChatRequest, ImagePart, Message, Part
from tokenrelay.config import Settings
from tokenrelay.conversations.context import ContextFitter
from tokenrelay.conversations.parts import for_model, stored_message, stored_parts
from tokenrelay.conversations.recorder import Recorder
from tokenrelay.limits.bounds import check_max_tokens
from tokenrelay.providers.base import Provider
from tokenrelay.relay import Relay, Stream
from tokenrelay.store.repository import ConversationRecord, MessageRecord, Store
from tokenrelay.tokens import MESSAGE_OVERHEAD, estimated_tokens

logger = logging.getLogger("tokenrelay.conversations")

TITLE_CHARS = 80
# How long a turn's stream may hold its end back for the reply's end to be stored.
STORE_WAIT = 2.0
# Quote marks, backticks and markdown a model may wrap a title in.
QUOTES = "\"'`*# \u2018\u2019\u201c\u201d"

SUMMARY_PROMPT = (
    "Summarize the conversation below in a few sentences, keeping names, facts, decisions "
    "and open questions. Answer with the summary only."
)
SUMMARY_PREFIX = "Summary of the earlier conversation: "
# The summary covers at most this many of the newest dropped messages.
SUMMARY_MAX_MESSAGES = 200

TITLE_PROMPT = (
    "Write a short title (at most six words) for the conversation below. "
    "Answer with the title only, without quotes."
)


@dataclass(slots=True)
class Turn:
    """A new user message and the options for its reply.

    ``content`` is text, or parts: text, images and the results of the tools the last reply
    called."""

    content: str | tuple[Part, ...]
    model: str | None = None
    options: ChatOptions = field(default_factory=ChatOptions)


@dataclass(slots=True, frozen=True)
class StartedTurn:
    stream: Stream
    user: MessageRecord
    reply: MessageRecord


def fallback_title(text: str) -> str:
    """The first non-empty line, whitespace collapsed, cut to :data:`TITLE_CHARS`."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    title = " ".join(line.split())
    if len(title) > TITLE_CHARS:
        title = title[: TITLE_CHARS - 1].rstrip() + "…"
    return title or "New conversation"


def _clean_title(text: str) -> str | None:
    line = next((line for line in text.splitlines() if line.strip()), "")
    title = " ".join(line.split()).removeprefix("Title:").strip(QUOTES)
    return title[:TITLE_CHARS] or None


@dataclass(frozen=True, slots=True)
class Fitted:
    """A turn's context: what fits the window, and the turns that did not (to summarize)."""

    messages: list[Message]
    system: int
    """How many of ``messages`` are system messages (they come first)."""
    dropped: list[Message]
    """Oldest first; empty unless ``summarize_dropped`` is on."""
    window: int


class Conversations:
    def __init__(self, store: Store, relay: Relay, settings: Settings) -> None:
        self.store = store
        self.relay = relay
        self.settings = settings
        self.recorders: dict[str, Recorder] = {}
        self._live: dict[str, Stream] = {}
        self._starting: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._leases: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._leases = asyncio.create_task(self._keep_leases(), name="reply-leases")

    async def _keep_leases(self) -> None:
        """Renew the leases on this instance's live replies; end those whose instance died."""
        lease = self.settings.conversations.reply_lease
        while True:
            await asyncio.sleep(lease / 3)
            try:
                # Renewing first: this instance's own replies are never taken for lost.
                await self.store.renew_replies(list(self.recorders), lease)
                swept = await self.store.interrupt_streaming()
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("renewing reply leases failed: %s", exc)
                continue
            if swept:
                logger.warning("%d replies whose instance stopped were marked interrupted", swept)

    async def take_turn(self, owner: str | None, conversation_id: str, turn: Turn) -> StartedTurn:
        """Save the user's message, then start the reply; the stream is returned at once."""
        # Ownership first: someone else's conversation is missing, never "busy".
        conversation = await self.store.get_conversation(owner, conversation_id)
        if conversation_id in self._starting or self.live(conversation_id) is not None:
            raise errors.InvalidRequest(
                "a reply is still streaming in this conversation; wait for it or cancel it"
            )
        self._starting.add(conversation_id)
        try:
            return await self._take_turn(conversation, turn)
        finally:
            self._starting.discard(conversation_id)

    async def _take_turn(self, conversation: ConversationRecord, turn: Turn) -> StartedTurn:
        limits = self.settings.limits
        owner, conversation_id = conversation.owner, conversation.id
        new = Message(role="user", content=turn.content)
        size = new.size()
        if not size and not any(isinstance(p, ImagePart) for p in new.parts):
            raise errors.InvalidRequest("content must not be empty")
        if size > limits.max_message_chars:
            raise errors.PayloadTooLarge(
                f"content is {size} characters (the limit is {limits.max_message_chars})"
            )
        check_max_tokens(turn.options.token_limit, limits)
        name, provider = self.relay.provider_for(turn.model or conversation.model)
        # A turn stores two messages: the user's and the reply.
        if (
            await self.store.count_messages(conversation_id) + 2
            > limits.max_messages_per_conversation
        ):
            raise errors.InvalidRequest(
                f"this conversation holds {limits.max_messages_per_conversation} messages "
                "(the limit); start a new one"
            )
        fitted = await self._context(conversation_id, provider, new, turn.options)
        messages = fitted.messages
        admitted = await self.relay.admit(ChatRequest(name, messages, turn.options), owner)
        first_title = fallback_title(new.text) if conversation.title is None else None
        stored = ("user", new.text, stored_parts(turn.content))
        [user] = await self.store.add_messages(
            conversation_id, [stored], fallback_title=first_title
        )
        if fitted.dropped:
            # After the user's message is stored: this is a whole generation, and a crash
            # during it must not lose what the user sent.
            summary = await self._summarize(
                owner, provider.model_name, fitted.dropped, fitted.window
            )
            if summary:
                note = Message(role="system", content=f"{SUMMARY_PREFIX}{summary}")
                messages = [*messages[: fitted.system], note, *messages[fitted.system :]]
        request = ChatRequest(
            model=name,
            messages=messages,
            options=turn.options,
        )
        linger = self.settings.streams.resume_grace
        stream = self.relay.start(request, owner=owner, linger=linger, admitted=admitted)
        try:
            reply = await self.store.start_reply(
                conversation_id,
                model=name,
                stream_id=stream.id,
                lease=self.settings.conversations.reply_lease,
            )
        except BaseException:
            stream.cancel(errors.UpstreamError("the reply could not be stored"))
            raise
        self._live[conversation_id] = stream
        settings = self.settings.conversations
        recorder = Recorder(
            self.store,
            reply.id,
            stream,
            interval=settings.checkpoint_interval,
            max_pending=settings.checkpoint_tokens,
        )
        self.recorders[reply.id] = recorder
        self._spawn(self._record(conversation, recorder, first_title, new.text))
        return StartedTurn(stream=stream, user=user, reply=reply)

    async def _context(
        self, conversation_id: str, provider: Provider, new: Message, options: ChatOptions
    ) -> Fitted:
        """The fitted history, in the shape providers take (see :func:`for_model`)."""
        max_tokens = options.token_limit
        settings = self.settings.conversations
        window = provider.context_window or settings.default_context_window
        reserve = max_tokens if max_tokens is not None else min(settings.reply_reserve, window // 4)
        summarize = settings.summarize_dropped
        summary_room = settings.summary_tokens + MESSAGE_OVERHEAD if summarize else 0
        fitter = ContextFitter(
            budget=window - reserve - summary_room,
            count=provider.token_counter() or estimated_tokens,
            max_messages=self.settings.limits.max_messages - (1 if summarize else 0),
        )
        system = await self.store.system_messages(conversation_id)
        system_messages = [Message(role="system", content=m.content) for m in system]
        await fitter.start(system_messages, new, options.tools)
        dropped: list[Message] = []
        async with contextlib.aclosing(self.store.history(conversation_id)) as history:
            async for record in history:
                if not record.content and not record.parts:
                    continue
                message = stored_message(record.role, record.content, record.parts)
                if await fitter.add(message):
                    continue
                if not summarize or len(dropped) >= SUMMARY_MAX_MESSAGES:
                    break
                dropped.append(message)
        return Fitted(for_model(fitter.messages()), len(fitter.system), dropped[::-1], window)

    async def _summarize(
        self, owner: str | None, model: str, dropped: list[Message], window: int
    ) -> str | None:
        """The model's summary of ``dropped`` (oldest first), or None if it could not write one."""
        # Characters of transcript the summarizing request can hold (estimate_tokens: <= 3 a
        # token); when even the dropped part overflows, its newest whole messages are kept.
        room = max(1, window - self.settings.conversations.summary_tokens - 64) * 3
        lines: list[str] = []
        for message in reversed(dropped):
            line = f"{message.role.title()}: {message.text}"
            room -= len(line.encode()) + 2
            if room < 0 and lines:
                break
            lines.append(line)
        transcript = "\n\n".join(reversed(lines))
        request = ChatRequest(
            model=model,
            messages=[
                Message(role="system", content=SUMMARY_PROMPT),
                Message(role="user", content=transcript),
            ],
            options=ChatOptions(
                max_tokens=self.settings.conversations.summary_tokens, temperature=0.2
            ),
        )
        try:
            # Admitted and charged like the user's own requests: it is their generation too.
            stream = await self.relay.open(request, owner=owner)
        except errors.TokenRelayError as exc:
            logger.info("no summary of %d dropped messages: %s", len(dropped), exc.code)
            return None
        assert stream.task is not None
        await stream.task
        if stream.status != "complete":
            logger.info("no summary of %d dropped messages: %s", len(dropped), stream.status)
            return None
        return stream.log.text().strip() or None

    def live(self, conversation_id: str) -> Stream | None:
        stream = self._live.get(conversation_id)
        return None if stream is None or stream.finished else stream

    async def reply_stored(self, message_id: str) -> None:
        """Return once reply ``message_id`` has its end in the store, or after
        ``STORE_WAIT`` seconds (a store that is failing is retried for longer than a client
        should wait for the end of its stream)."""
        recorder = self.recorders.get(message_id)
        if recorder is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STORE_WAIT):
                    await recorder.ended.wait()

    def cancel(self, conversation_id: str, reason: errors.TokenRelayError) -> None:
        stream = self.live(conversation_id)
        if stream is not None:
            stream.cancel(reason)

    async def _record(
        self,
        conversation: ConversationRecord,
        recorder: Recorder,
        first_title: str | None,
        question: str,
    ) -> None:
        stream = recorder.stream
        try:
            await recorder.run()
        finally:
            self.recorders.pop(recorder.message_id, None)
            if self._live.get(conversation.id) is stream:
                del self._live[conversation.id]
        model = self.settings.conversations.title_model
        if first_title is not None and model is not None and stream.status == "complete":
            await self._write_title(conversation, model, first_title, question, stream.log.text())

    async def _write_title(
        self,
        conversation: ConversationRecord,
        model: str,
        fallback: str,
        question: str,
        answer: str,
    ) -> None:
        request = ChatRequest(
            model=model,
            messages=[
                Message(role="system", content=TITLE_PROMPT),
                Message(
                    role="user", content=f"User: {question[:2000]}\n\nAssistant: {answer[:2000]}"
                ),
            ],
            options=ChatOptions(max_tokens=24),
        )
        try:
            stream = await self.relay.open(request, owner=conversation.owner)
            assert stream.task is not None
            await stream.task
        except errors.TokenRelayError as exc:
            logger.info("no title for %s: %s", conversation.id, exc.code)
            return
        title = _clean_title(stream.log.text()) if stream.status == "complete" else None
        if title is not None:
            await self.store.set_title(conversation.id, title, replacing=fallback)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("recording a reply failed", exc_info=task.exception())

    async def aclose(self, grace: float = 10.0) -> None:
        """Let recorders write the ends of the streams (already stopped by the relay)."""
        if self._leases is not None:
            self._leases.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leases
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)
