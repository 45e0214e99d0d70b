"""The services an app runs on, made once in its lifespan and typed for every route.

Routes read them through :func:`services_of` (never ``app.state``'s untyped attributes);
``/readyz`` pings each dependency outside the process (:mod:`tokenrelay.ops.readiness`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenrelay.auth import Authenticator
from tokenrelay.client import Client
from tokenrelay.config import Settings
from tokenrelay.conversations.service import Conversations
from tokenrelay.limits import Gate, build_limiter
from tokenrelay.limits.ledger import Ledger
from tokenrelay.ops.wiring import Operations
from tokenrelay.providers import Provider, ProviderContext, build_provider
from tokenrelay.relay import Relay
from tokenrelay.responses import Responses
from tokenrelay.store import Accounts, Store, StoredResponses, open_store

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    http: Client
    providers: dict[str, Provider]
    relay: Relay
    conversations: Conversations
    # Stored and background Responses (POST /v1/responses).
    responses: Responses
    accounts: Accounts
    authenticator: Authenticator
    gate: Gate
    # Metrics, traces, logs and readiness: what an operator sees of all of the above.
    ops: Operations


@contextlib.asynccontextmanager
async def running(settings: Settings, tracer: Tracer | None = None) -> AsyncIterator[Services]:
    """Make every service, start what runs in the background, and close all on the way out.

    ``tracer`` traces the app (by default the ``OTEL_*`` environment's, if any)."""
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
        responses = Responses(StoredResponses(store), relay, settings)
        ops = Operations(settings, relay, store, gate, tracer)
        authenticator = Authenticator(settings.auth, accounts)
        services = Services(
            settings=settings,
            store=store,
            http=http,
            providers=providers,
            relay=relay,
            conversations=conversations,
            responses=responses,
            accounts=accounts,
            authenticator=authenticator,
            gate=gate,
            ops=ops,
        )
        conversations.start()
        gate.start()
        await ops.start()
        try:
            yield services
        finally:
            for task in preparing:
                task.cancel()
            await relay.shutdown()
            # After the relay: the spans of the streams it stopped are exported too.
            await ops.aclose()
            await conversations.aclose()
            if relay.shared is not None:
                await relay.shared.aclose()
            await gate.aclose()
            await authenticator.aclose()
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
