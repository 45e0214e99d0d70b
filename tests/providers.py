"""Helpers for the provider tests: run a stream to its end or its error, and close it early.

Each provider is tested against its own fake upstream (``tokenrelay.testing``); these
helpers take any :class:`~tokenrelay.providers.base.Provider` and any fake.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tokenrelay import errors
from tokenrelay.chat import ChatRequest
from tokenrelay.events import Accepted, Finish, ProviderEvent, TextDelta
from tokenrelay.providers.base import Provider
from tokenrelay.testing._fake import FakeUpstream


async def collect(provider: Provider, request: ChatRequest) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []
    async with asyncio.timeout(10):
        async for event in provider.stream(request):
            events.append(event)
    return events


async def fail(
    provider: Provider, request: ChatRequest
) -> tuple[list[ProviderEvent], errors.TokenRelayError]:
    events: list[ProviderEvent] = []
    with pytest.raises(errors.TokenRelayError) as caught:
        async with asyncio.timeout(10):
            async for event in provider.stream(request):
                events.append(event)
    return events, caught.value


def text_of(events: list[ProviderEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def assert_secret_not_in_chain(error: BaseException, secret: str) -> None:
    """Neither the error nor any exception it was raised from mentions ``secret``."""
    chain: BaseException | None = error
    while chain is not None:
        assert secret not in str(chain) and secret not in repr(chain)
        chain = chain.__cause__ or chain.__context__


async def assert_aclose_after_first_token_closes_upstream(
    provider: Provider, fake: FakeUpstream, request: ChatRequest
) -> None:
    stream = provider.stream(request)
    async with asyncio.timeout(5):
        async for event in stream:
            if isinstance(event, TextDelta):
                break
    closed_at_client = time.monotonic()
    await stream.aclose()  # type: ignore[attr-defined]

    sent = fake.requests[0]
    assert await sent.wait_closed(1.0)
    assert sent.closed_at is not None and sent.closed_at - closed_at_client < 1.0
    assert sent.client_closed_early


async def assert_cancel_once_accepted_closes_upstream(
    provider: Provider, fake: FakeUpstream, request: ChatRequest
) -> None:
    accepted = asyncio.Event()

    async def consume() -> None:
        async for event in provider.stream(request):
            if isinstance(event, Accepted):
                accepted.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await accepted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    sent = fake.requests[0]
    assert await sent.wait_closed(1.0)
    assert sent.client_closed_early


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: it stays ours and every connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def assert_body_left_open_still_finishes(
    provider: Provider, fake: FakeUpstream, request: ChatRequest
) -> None:
    """The stream finishes at the wire's last event, not when the upstream ends the body."""
    started = time.monotonic()
    events = await collect(provider, request)
    assert events[-1] == Finish("stop")
    assert time.monotonic() - started < 2
    assert await fake.requests[0].wait_closed(1.0)
