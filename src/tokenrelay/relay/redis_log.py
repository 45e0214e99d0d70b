"""The stream log on Redis Streams: resumable streams that any instance can read and stop.

The generating instance keeps its stream's log in memory, as without Redis, and copies it to
Redis behind the generation: an append only marks the stream dirty, and one task writes every
dirty stream's new events in one pipeline per loop turn (a turn's appends, or all those made
while the previous write was in flight), so a token never waits on Redis. Each write is one
stream entry whose id is ``0-<id of its last event>`` holding its events (see
:mod:`~tokenrelay.relay.codec`), so any reader knows every event's id.

Keys, per stream (one hash tag, so they live on one Cluster node)::

    {prefix}:{sid}:log     the entries (XADD … MAXLEN ~ streams.max_shared_entries)
    {prefix}:{sid}:meta    owner, model, instance, status
    {prefix}:instance:<id> the instance's lease, renewed every third of streams.lease
    {prefix}:control:<id>  the instance's channel: cancel, attach and detach from elsewhere

While a stream runs its keys live for its total time limit plus the retention; once it ends,
for ``streams.retention`` (the resume window). A write that fails (Redis down or slow) is
retried, the whole stream rewritten, until Redis answers again: the local viewers never wait
on it, and the copy in Redis catches up by itself.

An instance reading someone else's stream (:class:`RemoteStream`) follows it with one blocking
``XREAD`` at a time, however many of its clients watch that stream; while nothing comes it
checks the generating instance's lease, and ends the stream with an error when it is gone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from tokenrelay import errors
from tokenrelay.config import Settings
from tokenrelay.events import Failed
from tokenrelay.redis_pool import connect
from tokenrelay.relay import codec
from tokenrelay.relay.log import StreamLog
from tokenrelay.relay.stream import Stream

logger = logging.getLogger("tokenrelay.relay.redis")

Faults = (RedisError, OSError, TimeoutError)
# Stream entries as redis-py gives them: (id, fields).
Entries = list[tuple[bytes, dict[bytes, bytes]]]
# A follower that no client watches any more lets go of the stream after this long.
UNWATCHED = 5.0
# The most a failed write waits before it tries again.
MAX_BACKOFF = 2.0
# How long a control message waits for the instance it is for to be listening.
DELIVERY = 2.0


def new_instance_id() -> str:
    return "inst_" + secrets.token_urlsafe(8)


class SharedLog:
    """Every instance's resumable streams, on one Redis."""

    def __init__(
        self, settings: Settings, local: Callable[[str], Stream | None], *, prefix: str
    ) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.instance = new_instance_id()
        self.prefix = prefix
        self.lease = settings.streams.lease
        timeout = settings.rate_limits.redis_timeout
        self.timeout = timeout
        self.client = connect(settings.redis_url, timeout)
        # Blocking reads hold a connection each while they wait, so they have their own pool
        # and a socket timeout longer than their block.
        self.block = min(1.0, self.lease / 4)
        self.reader = connect(settings.redis_url, self.block + 2 * timeout, 4096)
        self._local = local
        self._dirty: dict[str, Stream] = {}
        self._written: dict[str, int] = {}
        self._fresh: set[str] = set()
        self._writer: asyncio.Task[None] | None = None
        self._remote: dict[str, RemoteStream] = {}
        # Streams of this instance watched from elsewhere: stream id -> instance -> viewers.
        self._views: dict[str, Counter[str]] = {}
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.Task[None]] = set()
        self._down_since: float | None = None

    # -- keys

    def _key(self, stream_id: str, what: str) -> str:
        return f"{self.prefix}:{{{stream_id}}}:{what}"

    def _lease_key(self, instance: str) -> str:
        return f"{self.prefix}:instance:{instance}"

    def _channel(self, instance: str) -> str:
        return f"{self.prefix}:control:{instance}"

    # -- lifecycle

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep_lease(), name="stream-log-lease"),
            asyncio.create_task(self._listen(), name="stream-log-control"),
            asyncio.create_task(self._send(), name="stream-log-send"),
        ]

    async def aclose(self, grace: float = 2.0) -> None:
        """Write what is pending (the ends of the streams just stopped), then let go."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer], timeout=grace)
        for remote in list(self._remote.values()):
            remote.stop()
        tasks = [*self._tasks, *self._retries]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.cancel()
        try:
            await self.client.delete(self._lease_key(self.instance))
        except Faults:
            pass
        await self.client.aclose()
        await self.reader.aclose()

    async def ping(self) -> None:
        await self.client.ping()

    # -- writing this instance's streams

    def publish(self, stream: Stream) -> None:
        """Copy ``stream``'s log to Redis from now on, its events so far first."""
        self._written[stream.id] = 0
        self._fresh.add(stream.id)
        stream.log.on_append = functools.partial(self._changed, stream)
        self._changed(stream)

    def _changed(self, stream: Stream) -> None:
        self._dirty[stream.id] = stream
        if self._writer is None or self._writer.done():
            # A task runs at the next loop turn: this turn's other appends go in its write.
            self._writer = asyncio.get_running_loop().create_task(self._write_dirty())

    async def _write_dirty(self) -> None:
        backoff = 0.1
        while self._dirty:
            batch, self._dirty = self._dirty, {}
            try:
                await self._write(batch)
            except Faults as exc:
                self._down(exc)
                # Unknown what reached Redis: each stream is written whole next time.
                self._fresh.update(batch)
                self._dirty = {**batch, **self._dirty}
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            self._up()
            backoff = 0.1

    async def _write(self, batch: dict[str, Stream]) -> None:
        settings = self.settings
        running_ttl = int((settings.timeouts.total + settings.streams.retention + self.lease) * 1e3)
        ended_ttl = max(1, int(settings.streams.retention * 1000))
        pipe = self.client.pipeline(transaction=False)
        ended: list[str] = []
        for stream_id, stream in batch.items():
            log_key, meta_key = self._key(stream_id, "log"), self._key(stream_id, "meta")
            events = stream.log.events
            fresh = stream_id in self._fresh
            written = 0 if fresh else self._written.get(stream_id, 0)
            if fresh:
                pipe.delete(log_key)
                pipe.hset(
                    meta_key,
                    mapping={
                        "owner": stream.owner or "",
                        "model": stream.model,
                        "instance": self.instance,
                        "status": "streaming",
                    },
                )
            if len(events) > written:
                pipe.execute_command(
                    "XADD",
                    log_key,
                    "MAXLEN",
                    "~",
                    settings.streams.max_shared_entries,
                    f"0-{len(events)}",
                    "e",
                    codec.encode(events[written:]),
                )
            if stream.finished:
                pipe.hset(meta_key, "status", stream.status)
                pipe.pexpire(log_key, ended_ttl)
                pipe.pexpire(meta_key, ended_ttl)
                ended.append(stream_id)
            elif fresh:
                pipe.pexpire(log_key, running_ttl)
                pipe.pexpire(meta_key, running_ttl)
            self._written[stream_id] = len(events)
        await pipe.execute()
        self._fresh.difference_update(batch)
        for stream_id in ended:
            self._written.pop(stream_id, None)
            self._views.pop(stream_id, None)
            batch[stream_id].log.on_append = None

    def _down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "the stream log on Redis is unreachable (%s: %s); streams go on for their "
                "viewers here, resumes on other instances fail until it is back",
                type(exc).__name__,
                exc,
            )

    def _up(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "the stream log on Redis is back after %.1fs", time.monotonic() - self._down_since
            )
            self._down_since = None

    # -- this instance's lease, and control from other instances

    async def _keep_lease(self) -> None:
        while True:
            try:
                await self.client.set(
                    self._lease_key(self.instance), b"1", px=int(self.lease * 1000)
                )
                await self._forget_dead_viewers()
            except Faults as exc:
                self._down(exc)
            await asyncio.sleep(self.lease / 3)

    async def _forget_dead_viewers(self) -> None:
        """Let go of the views of instances whose lease ran out (killed while watching)."""
        instances = {i for views in self._views.values() for i in views}
        for instance in instances:
            if await self.client.exists(self._lease_key(instance)):
                continue
            for stream_id, views in list(self._views.items()):
                stream = self._local(stream_id)
                for _ in range(views.pop(instance, 0)):
                    if stream is not None:
                        stream.detach()

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.reader.pubsub()
            try:
                await pubsub.subscribe(self._channel(self.instance))
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.block
                    )
                    if message is not None:
                        self._control(orjson.loads(message["data"]))
            except Faults as exc:
                self._down(exc)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Faults:
                    pass

    def _control(self, message: dict[str, Any]) -> None:
        stream = self._local(message["stream"])
        if stream is None or stream.finished:
            self._views.pop(message["stream"], None)
            return
        op = message["op"]
        if op == "cancel":
            stream.cancel(errors.from_code(message["code"], message["message"]))
        elif op == "attach":
            self._views.setdefault(stream.id, Counter())[message["from"]] += 1
            stream.attach()
        elif op == "detach":
            views = self._views.get(stream.id)
            if views is not None and views[message["from"]] > 0:
                views[message["from"]] -= 1
                stream.detach()

    def tell(self, instance: str, op: str, stream_id: str, **fields: str) -> None:
        """Send ``op`` about ``stream_id`` to ``instance``, in order, without waiting."""
        data = {"op": op, "stream": stream_id, "from": self.instance, **fields}
        self._outbox.put_nowait((instance, orjson.dumps(data)))

    async def _send(self) -> None:
        while True:
            instance, data = await self._outbox.get()
            if not await self._publish(instance, data):
                # Retried on the side, so that one instance that is not listening (reconnecting
                # its channel, or dead) holds up no message to the others.
                retry = asyncio.create_task(self._redeliver(instance, data))
                self._retries.add(retry)
                retry.add_done_callback(self._retries.discard)

    async def _publish(self, instance: str, data: bytes) -> bool:
        """Whether ``instance`` heard it."""
        try:
            return bool(await self.client.publish(self._channel(instance), data))
        except Faults as exc:
            self._down(exc)
            return False

    async def _redeliver(self, instance: str, data: bytes) -> None:
        deadline = time.monotonic() + DELIVERY
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if await self._publish(instance, data):
                return

    # -- reading streams of other instances

    async def find(self, stream_id: str, owner: str | None) -> Stream:
        """Another instance's stream, followed from here; NotFound if there is none for owner."""
        remote = self._remote.get(stream_id)
        if remote is not None and not remote.stopped:
            if remote.owner != owner:
                raise errors.NotFound(f"stream {stream_id!r} does not exist")
            return remote
        try:
            async with asyncio.timeout(2 * self.timeout):
                meta = cast(
                    dict[bytes, bytes], await self.client.hgetall(self._key(stream_id, "meta"))
                )
                entries = cast(Entries, await self.client.xrange(self._key(stream_id, "log")))
        except Faults as exc:
            raise errors.StreamLogUnavailable(
                "the shared stream log (Redis) did not answer; try again shortly",
                retry_after=1,
            ) from exc
        fields = {k.decode(): v.decode() for k, v in meta.items()}
        if not fields or (fields["owner"] or None) != owner:
            raise errors.NotFound(f"stream {stream_id!r} does not exist")
        remote = RemoteStream(self, stream_id, fields, owner)
        remote.take(entries)
        if not remote.log.closed:
            self._remote[stream_id] = remote
            remote.follow()
        return remote

    def forget(self, remote: RemoteStream) -> None:
        if self._remote.get(remote.id) is remote:
            del self._remote[remote.id]

    async def lease_alive(self, instance: str) -> bool:
        return bool(await self.client.exists(self._lease_key(instance)))

    async def instance_alive(self, instance: str) -> bool:
        """:meth:`lease_alive` for a client's request: a 503 when Redis does not answer."""
        try:
            return await self.lease_alive(instance)
        except Faults as exc:
            raise errors.StreamLogUnavailable(
                "the shared stream log (Redis) did not answer; try again shortly", retry_after=1
            ) from exc


class RemoteStream(Stream):
    """A stream generated elsewhere: its log is filled from Redis for the viewers here.

    The viewers read its :class:`StreamLog` as they read a local one (coalescing and send
    timeouts hold the same), and count on the generating instance as viewers there: the first
    one here tells it ``attach``, the last ``detach``. ``cancel`` asks it to stop.
    """

    __slots__ = ("instance", "shared", "stopped", "unwatched_since")

    def __init__(
        self, shared: SharedLog, stream_id: str, meta: dict[str, str], owner: str | None
    ) -> None:
        super().__init__(stream_id, meta["model"], owner=owner, linger=0)
        self.shared = shared
        self.instance = meta["instance"]
        self.stopped = False
        self.unwatched_since = time.monotonic()
        # The events come from Redis, the first one (``Opened``) too.
        self.log = StreamLog()
        # It was started elsewhere: errors from here on are mid-stream ones.
        self.log.accepted = True

    def take(self, entries: Entries) -> None:
        """Append the events of ``entries`` that this log does not have yet."""
        log = self.log
        for entry_id, fields in entries:
            last = int(entry_id.split(b"-")[1])
            events = codec.decode(fields[b"e"])
            first = last - len(events) + 1
            if first > len(log) + 1:
                log.append(
                    Failed(errors.UpstreamError("the start of this stream is no longer kept"))
                )
                return
            for event in events[len(log) + 1 - first :]:
                log.append(event)

    def follow(self) -> None:
        self.task = asyncio.create_task(self._follow(), name=f"follow-{self.id}")
        self.task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self.stopped = True
        self.shared.forget(self)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _follow(self) -> None:
        shared, log = self.shared, self.log
        key = shared._key(self.id, "log")
        block_ms = int(shared.block * 1000)
        failing_since: float | None = None
        while not log.closed:
            try:
                reply = cast(
                    list[tuple[bytes, Entries]],
                    await shared.reader.xread({key: f"0-{len(log)}"}, count=1000, block=block_ms),
                )
                if not reply and not await shared.lease_alive(self.instance):
                    log.append(
                        Failed(
                            errors.UpstreamError(
                                "the instance generating this stream stopped; the reply ends here"
                            )
                        )
                    )
                    return
            except Faults:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= shared.lease:
                    log.append(
                        Failed(
                            errors.StreamLogUnavailable(
                                "the shared stream log (Redis) stopped answering"
                            )
                        )
                    )
                    return
                await asyncio.sleep(min(0.5, shared.block))
                continue
            failing_since = None
            for _, entries in reply:
                self.take(entries)
            if self.viewers == 0 and time.monotonic() - self.unwatched_since > UNWATCHED:
                return

    @property
    def status(self) -> str:
        return super().status if len(self.log) else "streaming"

    def attach(self) -> None:
        self.viewers += 1
        if self.viewers == 1 and not self.finished:
            self.shared.tell(self.instance, "attach", self.id)

    def detach(self) -> None:
        self.viewers -= 1
        if self.viewers == 0:
            self.unwatched_since = time.monotonic()
            if not self.finished:
                self.shared.tell(self.instance, "detach", self.id)

    def cancel(self, reason: errors.TokenRelayError) -> bool:
        if self.finished:
            return False
        self.shared.tell(self.instance, "cancel", self.id, code=reason.code, message=reason.message)
        return True
