"""Responses that outlive their request: stored, continued, run in the background, resumed.

A response is a relay stream and, when stored, a row. The row is written as the stream starts
and finished with the final object by a finish hook on the instance generating it (which
waits for the row to be there).
Until then the object is rendered from the stream's log, which :meth:`Relay.find` reaches
from any instance once the Redis stream log is on: a background stream lingers for its whole
time limit (so no disconnect stops it) and is kept for ``streams.retention`` after its end,
which is how long it can be streamed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenrelay import errors
from tokenrelay.chat import ChatRequest
from tokenrelay.config import Settings
from tokenrelay.events import Event, Failed
from tokenrelay.relay import Relay, Stream
from tokenrelay.responses.output import (
    TERMINAL_STATUSES,
    ResponseBuilder,
    ResponseHead,
    build,
    response_id_of_item,
)
from tokenrelay.store.responses import ResponseRecord, StoredItems, StoredResponses

# How long a response whose stream is in no log (nor its final object in the store yet) may be
# only just starting or ending elsewhere before it is taken for lost with its instance.
SETTLING = 2.0
# How many stored responses a previous_response_id chain may go back.
MAX_CHAIN = 1000


@dataclass(slots=True)
class _Live:
    """A stored response generating on this instance, until its final object is written."""

    head: ResponseHead
    added: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False


class Responses:
    def __init__(self, store: StoredResponses, relay: Relay, settings: Settings) -> None:
        self.store = store
        self.relay = relay
        self.settings = settings
        self._live: dict[str, _Live] = {}
        relay.finish_hooks.append(self.finished)

    def new_head(
        self, model: str, *, background: bool, store: bool, settings: Mapping[str, Any]
    ) -> ResponseHead:
        return ResponseHead(
            new_response_id(), int(time.time()), model, background, store, dict(settings)
        )

    async def start(
        self,
        head: ResponseHead,
        request: ChatRequest,
        *,
        owner: str | None,
        input_items: StoredItems,
    ) -> Stream:
        """Admit and start the response's stream, then write a stored one's row."""
        linger = self.settings.timeouts.total if head.background else 0.0
        admitted = await self.relay.admit(request, owner)
        # start, not open: open gives the generation a loop turn at once, and a short one
        # could end in it, before the entry its finish hook looks for exists.
        stream = self.relay.start(request, owner=owner, linger=linger, admitted=admitted)
        if not head.store:
            return stream
        live = self._live[stream.id] = _Live(head)
        try:
            await self.store.add(
                response_id=head.id,
                owner=owner,
                model=stream.model,
                status="queued" if head.background else "in_progress",
                background=head.background,
                stream_id=stream.id,
                instance=None if self.relay.shared is None else self.relay.shared.instance,
                previous_response_id=head.settings.get("previous_response_id"),
                head=head.to_json(),
                input_items=input_items,
            )
        except BaseException:
            live.failed = True
            stream.cancel(errors.UpstreamError("the response could not be stored"))
            raise
        finally:
            live.added.set()
        return stream

    async def finished(self, stream: Stream) -> None:
        """The relay's finish hook: write a stored response's final object."""
        live = self._live.pop(stream.id, None)
        if live is None:
            return
        await live.added.wait()
        if not live.failed:
            await self.store.finish(live.head.id, build(live.head, stream.log.events).snapshot())

    # -- reading

    async def get(self, owner: str | None, response_id: str) -> ResponseRecord:
        return await self.store.get(owner, response_id)

    async def stream_of(self, record: ResponseRecord) -> Stream | None:
        """The response's stream, from whichever instance keeps it; None if none does."""
        if record.stream_id is None:
            return None
        try:
            return await self.relay.find(record.stream_id, record.owner)
        except errors.NotFound:
            return None

    async def current(self, record: ResponseRecord, *, settle: float = 0.0) -> dict[str, Any]:
        """The response object as it stands: final, or rendered from its live stream.

        A foreground response generating on another instance is in no shared log: it reads as
        just started, unless its final object is written within ``settle`` seconds.
        """
        head = ResponseHead.from_json(record.head)
        now = time.monotonic()
        settling, patience = now + SETTLING, now + settle
        while record.body is None:
            stream = await self.stream_of(record)
            if stream is not None:
                if not stream.log.closed and await self._orphaned(record):
                    # Its instance died before its end reached the shared log.
                    return await self._lost(record, head, stream.log.events)
                body = build(head, stream.log.events).snapshot()
                if stream.log.closed:
                    # Written by its own instance too, unless that instance died first.
                    await self.store.finish(record.id, body)
                return body
            now = time.monotonic()
            if await self._elsewhere(record):
                if now >= patience:
                    return ResponseBuilder(head).snapshot()
            elif now >= settling:
                return await self._lost(record, head)
            # Just ended on an instance still writing its final object, or just started on
            # one whose first events are not in the shared log yet.
            await asyncio.sleep(0.05)
            record = await self.store.get(record.owner, record.id)
        return record.body

    async def final(self, record: ResponseRecord) -> dict[str, Any]:
        """The object once the response has ended; a 400 if it is still generating."""
        body = await self.current(record, settle=SETTLING)
        if body["status"] in TERMINAL_STATUSES:
            return body
        stream = await self.stream_of(record)
        if stream is not None:
            await _ended(stream, SETTLING)
            body = build(ResponseHead.from_json(record.head), stream.log.events).snapshot()
        if body["status"] not in TERMINAL_STATUSES:
            raise errors.InvalidRequest(f"response {record.id!r} is still {body['status']}")
        return body

    async def _elsewhere(self, record: ResponseRecord) -> bool:
        """Whether a foreground response is generating on another instance that lives."""
        if record.background:
            return False  # a background stream is always in the shared log
        return await self._other_instance_alive(record) is True

    async def _orphaned(self, record: ResponseRecord) -> bool:
        """Whether the other instance that generates ``record`` has died."""
        return await self._other_instance_alive(record) is False

    async def _other_instance_alive(self, record: ResponseRecord) -> bool | None:
        """Whether the instance generating ``record`` lives; None if it is this one, or if
        there is no shared log to say."""
        shared = self.relay.shared
        if shared is None or record.instance is None or record.instance == shared.instance:
            return None
        return await shared.instance_alive(record.instance)

    async def _lost(
        self, record: ResponseRecord, head: ResponseHead, events: Iterable[Event] = ()
    ) -> dict[str, Any]:
        """A response whose instance stopped (or restarted) before it ended: failed, with
        what it had generated."""
        builder = build(head, list(events))
        builder.feed(Failed(errors.UpstreamError("the instance generating this response stopped")))
        body = builder.snapshot()
        await self.store.finish(record.id, body)
        return body

    # -- continuing

    async def context(self, owner: str | None, previous_id: str) -> StoredItems:
        """The items ``previous_response_id`` continues from: each response's input, then its
        output, from the first of the chain."""
        chain: list[StoredItems] = []
        next_id: str | None = previous_id
        while next_id is not None:
            if len(chain) >= 2 * MAX_CHAIN:
                raise errors.InvalidRequest(
                    f"previous_response_id: the chain is longer than {MAX_CHAIN} responses"
                )
            record = await self.store.get(owner, next_id)
            body = await self.final(record)
            chain.append(body["output"])
            chain.append(record.input_items)
            next_id = record.previous_response_id
        return [item for items in reversed(chain) for item in items]

    async def referenced(self, owner: str | None, item_ids: Iterable[str]) -> dict[str, Any]:
        """The output items of stored responses that ``item_ids`` name (``item_reference``)."""
        found: dict[str, Any] = {}
        for item_id in item_ids:
            response_id = response_id_of_item(item_id)
            if response_id is None or item_id in found:
                continue
            try:
                body = await self.final(await self.store.get(owner, response_id))
            except errors.NotFound:
                continue
            found.update((item["id"], item) for item in body["output"])
        return found

    # -- stopping

    async def cancel(self, record: ResponseRecord) -> dict[str, Any]:
        """Stop a background response; its final object (also if it had already ended)."""
        if not record.background:
            raise errors.InvalidRequest("only a background response can be cancelled")
        if record.body is not None:
            return record.body
        stream = await self.stream_of(record)
        if stream is None:
            return await self.current(record)
        stream.cancel(errors.Cancelled("the response was cancelled by a client"))
        # Answer once the generation has really stopped, so the caller can rely on it.
        await _ended(stream, 5.0)
        body = build(ResponseHead.from_json(record.head), stream.log.events).snapshot()
        if body["status"] in TERMINAL_STATUSES:
            await self.store.finish(record.id, body)
        return body

    async def delete(self, owner: str | None, response_id: str) -> None:
        record = await self.store.delete(owner, response_id)
        if record.body is None and record.stream_id is not None:
            await self.relay.cancel_anywhere(
                [record.stream_id], owner, errors.Cancelled("the response was deleted")
            )


async def _ended(stream: Stream, within: float) -> None:
    """Wait up to ``within`` seconds for ``stream`` to end."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not stream.log.closed:
                await stream.log.wait(len(stream.log))


def new_response_id() -> str:
    # Hex, so that an item id's parts split on "_" (see ResponseHead.item_id).
    return "resp_" + secrets.token_hex(20)
