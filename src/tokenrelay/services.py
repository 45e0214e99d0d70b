"""The services an app runs on, made once in its lifespan and typed for every route.

Routes read them through :func:`services_of` (never ``app.state``'s untyped attributes);
each service that reaches something outside the process has a ``ping`` that ``/readyz`` calls
with a short timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tokenrelay.auth import Authenticator
from tokenrelay.client import Client
from tokenrelay.config import Settings
from tokenrelay.conversations.service import Conversations
from tokenrelay.limits import Gate, build_limiter
from tokenrelay.limits.ledger import Ledger
from tokenrelay.providers import Provider, ProviderContext, build_provider
from tokenrelay.providers.base import WORKER_STATES
from tokenrelay.relay import Relay
from tokenrelay.store import Accounts, Store, open_store

PING_TIMEOUT = 2.0


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    http: Client
    providers: dict[str, Provider]
    relay: Relay
    conversations: Conversations
    accounts: Accounts
    authenticator: Authenticator
    gate: Gate

    def pings(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """What ``/readyz`` checks: each dependency outside this process."""
        return {"database": self.store.ping, "limiter": self.gate.limiter.ping}

    async def readiness(self) -> dict[str, str]:
        """``ok`` or ``unreachable`` for each ping, each bounded by :data:`PING_TIMEOUT`."""

        async def outcome(ping: Callable[[], Awaitable[None]]) -> str:
            try:
                async with asyncio.timeout(PING_TIMEOUT):
                    await ping()
            except Exception:
                return "unreachable"
            return "ok"

        pings = self.pings()
        results = await asyncio.gather(*(outcome(ping) for ping in pings.values()))
        return dict(zip(pings, results, strict=True))

    def workers(self) -> dict[str, int]:
        """The providers' worker processes (the local models), counted by state."""
        states = Counter(
            health.state
            for provider in self.providers.values()
            if (health := provider.worker_health()) is not None
        )
        return {state: states[state] for state in WORKER_STATES}


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Services]:
    """Make every service, start what runs in the background, and close all on the way out."""
    store = await open_store(settings)
    http = Client(max_head=settings.limits.upstream_max_head_bytes)
    try:
        context = ProviderContext(settings=settings, http=http)
        providers = {
            name: build_provider(name, config, context) for name, config in settings.models.items()
        }
        # Warm up in the background: a large model must not hold back /healthz.
        preparing = [asyncio.create_task(p.prepare()) for p in providers.values()]
        accounts = Accounts(store)
        gate = Gate(settings.rate_limits, build_limiter(settings), Ledger(accounts))
        relay = Relay(settings, providers, admission=gate, finish_hooks=[gate.finished])
        if settings.redis_url is not None:
            from tokenrelay.relay.redis_log import SharedLog

            relay.shared = SharedLog(settings, relay.streams.get, prefix="tokenrelay:s")
            relay.shared.start()
        conversations = Conversations(store, relay, settings)
        services = Services(
            settings=settings,
            store=store,
            http=http,
            providers=providers,
            relay=relay,
            conversations=conversations,
            accounts=accounts,
            authenticator=Authenticator(settings.auth, accounts),
            gate=gate,
        )
        conversations.start()
        gate.start()
        try:
            yield services
        finally:
            for task in preparing:
                task.cancel()
            await relay.shutdown()
            await conversations.aclose()
            if relay.shared is not None:
                await relay.shared.aclose()
            await gate.aclose()
            for provider in providers.values():
                await provider.aclose()
    finally:
        await http.aclose()
        await store.close()


def services_of(holder: Any) -> Services:
    """The services of the app serving ``holder``: a request, a WebSocket, or an ASGI scope."""
    app = holder["app"] if isinstance(holder, dict) else holder.app
    found: Services = app.state.services
    return found
