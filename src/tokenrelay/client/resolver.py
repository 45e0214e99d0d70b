"""Name lookups for the pool, cached and shared.

Each ``getaddrinfo`` runs on the loop's small thread pool: a burst of new connections to one
upstream would queue one lookup each behind the others. A name is looked up once per
``ttl`` (aiohttp's default cache time, 5 minutes) and concurrent lookups of one name share a
single one; a failed lookup is not remembered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

Address = tuple[str, int]
"""A numeric host and a port, ready to connect to."""


class Resolver:
    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self.lookups = 0
        """Lookups actually made (not answered from the cache)."""
        self._cache: dict[Address, tuple[float, list[Address]]] = {}
        self._pending: dict[Address, asyncio.Future[list[Address]]] = {}

    async def addresses(self, host: str, port: int) -> list[Address]:
        """Where ``host`` is, in the order the system resolver prefers."""
        if _is_numeric(host):
            return [(host, port)]
        key = (host, port)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(self._lookup(host, port))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        # Shielded: one caller giving up must not cancel the lookup the others wait for.
        return await asyncio.shield(pending)

    async def _lookup(self, host: str, port: int) -> list[Address]:
        self.lookups += 1
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[Address] = []
        for _, _, _, _, sockaddr in infos:
            address = (str(sockaddr[0]), int(sockaddr[1]))
            if address not in addresses:
                addresses.append(address)
        self._cache[(host, port)] = (time.monotonic() + self.ttl, addresses)
        return addresses


def _is_numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
