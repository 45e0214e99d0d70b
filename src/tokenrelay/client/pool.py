"""The pooled client: one per app, connections kept alive per upstream origin.

It does exactly what a streamed LLM request needs and nothing more: ``POST`` a JSON body over
HTTP/1.1 (TLS for ``https``), read the head, then the body piece by piece. Finished connections
go back to a per-origin stack and are reused most-recent-first; one timer closes those idle for
longer than ``keepalive``. A request that meets a pooled connection the upstream had already
closed (it said nothing at all) is sent once more on a new connection, as browsers do.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tokenrelay.client.connection import MAX_HEAD, Connection
from tokenrelay.client.errors import ClientError, ConnectFailed, Disconnected
from tokenrelay.client.resolver import Resolver

Origin = tuple[str, str, int]
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class _Target:
    origin: Origin
    head: bytes
    """The request line and the headers every request to this URL carries."""

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ClientError(f"not an http(s) URL: {url!r}")
        port = parts.port or DEFAULT_PORTS[scheme]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]  # as written: IPv6 brackets and a port kept
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tokenrelay\r\n"
            # Without it any coding is acceptable (RFC 9110 §12.5.3); a compressed event
            # stream would only cost CPU to inflate and delay each event.
            "Accept-Encoding: identity\r\n"
        )
        return cls((scheme, parts.hostname, port), head.encode("ascii"))


class Response:
    """A response whose head has arrived; read its body, then :meth:`release` or :meth:`close`."""

    __slots__ = ("_client", "_connection", "_released")

    def __init__(self, client: Client, connection: Connection) -> None:
        self._client = client
        self._connection = connection
        self._released = False

    @property
    def status(self) -> int:
        return self._connection.status

    @property
    def headers(self) -> dict[str, str]:
        """Lower-cased names; a repeated field's values joined with ``", "``."""
        return self._connection.headers

    def forget_headers(self) -> None:
        """The head has been checked and only the body is left to read: drop its fields, which
        would otherwise live as long as the stream (hosted APIs send twenty-odd)."""
        self._connection.headers = {}

    @property
    def content_type(self) -> str:
        value = self._connection.headers.get("content-type", "")
        return value.partition(";")[0].strip().lower()

    def read(self) -> Coroutine[Any, Any, bytes]:
        """The body bytes received since the last read, waiting for some; ``b""`` at its end.

        (The connection's coroutine itself: no frame of this wrapper held while it waits.)
        """
        return self._connection.read()

    @property
    def at_eof(self) -> bool:
        return self._connection.at_eof

    def release(self) -> None:
        """Done with the response: a connection whose response was read to its end goes back
        to the pool; any other is closed, so the upstream sees the client leave. Only the first
        call counts: a connection pooled twice would carry two requests at once."""
        if not self._released:
            self._released = True
            self._client.give_back(self._connection)


class Client:
    """HTTP/1.1 ``POST`` with streamed responses and per-origin keep-alive pools."""

    def __init__(
        self,
        *,
        keepalive: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
        max_head: int = MAX_HEAD,
    ):
        self.keepalive = keepalive
        self.max_head = max_head
        self._ssl = ssl_context
        self._idle: dict[Origin, list[tuple[float, Connection]]] = {}
        self._targets: dict[str, _Target] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self.resolver = Resolver()

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, connect_timeout: float
    ) -> Response:
        """Send the request; the response once its head has arrived, whatever its status.

        ``connect_timeout`` bounds DNS, TCP and TLS; waiting for the head has no limit here
        (the caller's first-token deadline covers it), and cancelling closes the connection.
        """
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target.parse(url)
        request = _request(target, body, headers)
        connection = self._pooled(target.origin)
        while True:
            if connection is None:
                connection = await self._connect(target.origin, connect_timeout)
            connection.send(request)
            try:
                await connection.head()
            except Disconnected:
                connection.close()
                if not connection.sent_in_vain:
                    raise
                connection = None  # the upstream had closed it while idle: once more, fresh
                continue
            except BaseException:
                connection.close()
                raise
            return Response(self, connection)

    def give_back(self, connection: Connection) -> None:
        if self._closed or not connection.reusable:
            connection.close()
            return
        connection.idle()
        self._idle.setdefault(connection.key, []).append((time.monotonic(), connection))
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self.keepalive, self._close_expired)

    @property
    def idle_connections(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    async def aclose(self) -> None:
        # Streams that outlive the shutdown's grace close their connections when they end.
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for stack in self._idle.values():
            for _, connection in stack:
                connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing

    def _pooled(self, origin: Origin) -> Connection | None:
        stack = self._idle.get(origin)
        while stack:
            _, connection = stack.pop()
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        return None

    def _close_expired(self) -> None:
        deadline = time.monotonic() - self.keepalive
        for origin, stack in list(self._idle.items()):
            # Oldest first: the stack is pushed in the order connections came back.
            expired = 0
            while expired < len(stack) and stack[expired][0] <= deadline:
                stack[expired][1].close()
                expired += 1
            del stack[:expired]
            if not stack:
                del self._idle[origin]
        self._sweep = None
        if self._idle:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self.keepalive / 2, self._close_expired)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _connect(self, origin: Origin, timeout: float) -> Connection:
        scheme, host, port = origin
        tls = scheme == "https"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolver.addresses(host, port)
                failure: OSError | None = None
                # Each address in turn (an IPv6 one may be refused where IPv4 listens).
                for ip, ip_port in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            lambda: Connection(origin, self.max_head),
                            ip,
                            ip_port,
                            ssl=self._ssl_context() if tls else None,
                            server_hostname=host if tls else None,
                        )
                    except (ssl.SSLError, ssl.CertificateError):
                        raise  # the server answered: another address would say the same
                    except OSError as exc:
                        failure = exc
                        continue
                    return connection
                raise failure or OSError(f"no address for {host}")
        except TimeoutError as exc:
            raise ConnectFailed(f"connecting timed out after {timeout}s", reason="timeout") from exc
        except socket.gaierror as exc:
            raise ConnectFailed("DNS lookup failed", reason="dns") from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise ConnectFailed("TLS handshake failed", reason="tls") from exc
        except OSError as exc:
            raise ConnectFailed("connection failed", reason="refused") from exc


def _request(target: _Target, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [target.head]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            # A key read from the environment with a stray newline must not split the head.
            raise ClientError(f"the request header {name!r} contains a line break")
        try:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        except UnicodeEncodeError:
            raise ClientError(f"the request header {name!r} is not Latin-1 text") from None
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)
