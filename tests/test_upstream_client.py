"""The upstream client against raw servers that misbehave on purpose: keep-alive races,
backpressure, malformed heads, TLS. (Streaming framings and cancellation are covered through
the providers in test_openai_provider.py and test_anthropic_provider.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.providers import refused_port
from tokenrelay.client import Client, ClientError, ConnectFailed, Disconnected, ProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class RawServer:
    """Answers each request with ``handler(reader, writer, request_number)``."""

    handler: Handler
    url: str = ""
    connections: int = 0
    requests: int = 0
    closed: int = 0
    heads: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.heads.append(head)
                self.requests += 1
                await self.handler(reader, writer, self.requests)
                if writer.is_closing():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    server = RawServer(handler)
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=ssl_context)
    port = listening.sockets[0].getsockname()[1]
    server.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/v1/x"
    try:
        yield server
    finally:
        listening.close()


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(OK)
    await writer.drain()


async def body_of(client: Client, url: str) -> bytes:
    response = await client.post(url, b"{}", {}, connect_timeout=2)
    received = bytearray()
    while chunk := await response.read():
        received += chunk
    response.release()
    return bytes(received)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with contextlib.aclosing(Client()) as client:
        yield client


async def test_sequential_requests_share_one_keepalive_connection(client: Client) -> None:
    async with raw_server(answer_ok) as server:
        for _ in range(3):
            assert await body_of(client, server.url) == b"ok"
        assert server.connections == 1
        assert server.requests == 3
        assert client.idle_connections == 1
        head = server.heads[0].decode()
        assert head.startswith("POST /v1/x HTTP/1.1\r\n")
        assert f"Host: {server.url.split('/')[2]}\r\n" in head
        assert "Accept-Encoding: identity\r\n" in head


async def test_a_pooled_connection_the_upstream_dropped_is_retried_once_on_a_new_one(
    client: Client,
) -> None:
    async def close_every_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        # The keep-alive race: the request reaches a connection the server is closing.
        if n % 2 == 0:
            writer.close()
            return
        await answer_ok(reader, writer, n)

    async with raw_server(close_every_second) as server:
        assert await body_of(client, server.url) == b"ok"
        assert await body_of(client, server.url) == b"ok"
        # The second request went out twice: in vain on the pooled connection, then fresh.
        assert server.requests == 3
        assert server.connections == 2


async def test_a_fresh_connection_closed_without_an_answer_is_an_error(client: Client) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.close()

    async with raw_server(hang_up) as server:
        with pytest.raises(Disconnected, match="before answering"):
            await client.post(server.url, b"{}", {}, connect_timeout=2)
        assert server.requests == 1  # never retried: it may have been acted upon


async def test_a_body_the_caller_does_not_read_stops_the_socket(client: Client) -> None:
    size = 64 * 1024 * 1024
    written = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal written
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"x" * (1024 * 1024)
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
            written += len(piece)

    async with raw_server(flood) as server:
        response = await client.post(server.url, b"{}", {}, connect_timeout=2)
        await asyncio.sleep(0.5)
        # Kernel buffers take a few MB; the gateway's buffer at most 256 KB more.
        assert written < size / 2
        received = 0
        while chunk := await response.read():
            received += len(chunk)
        assert received == size
        response.release()


async def test_interim_responses_are_skipped(client: Client) -> None:
    async def early_hints(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
        await writer.drain()

    async with raw_server(early_hints) as server:
        response = await client.post(server.url, b"{}", {}, connect_timeout=2)
        assert response.status == 200
        assert "link" not in response.headers
        assert await response.read() == b"ok"
        assert await response.read() == b""
        response.release()
        assert client.idle_connections == 1


async def test_repeated_headers_are_joined_and_names_lower_cased(client: Client) -> None:
    async def repeated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nX-Thing: a\r\nx-thing: b\r\n"
            b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}"
        )
        await writer.drain()

    async with raw_server(repeated) as server:
        response = await client.post(server.url, b"{}", {}, connect_timeout=2)
        assert response.status == 429
        assert response.headers["retry-after"] == "3"
        assert response.headers["x-thing"] == "a, b"
        assert response.content_type == "application/json"
        response.release()


async def test_malformed_http_is_a_protocol_error(client: Client) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as server:
        with pytest.raises(ProtocolError, match="malformed HTTP"):
            await client.post(server.url, b"{}", {}, connect_timeout=2)


async def test_an_unfinished_oversized_header_is_refused_before_it_ends(client: Client) -> None:
    sent = 0

    async def endless_header(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        # One header value that never ends: only the bytes received can tell it is too big.
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        piece = b"a" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(512):
                writer.write(piece)
                await writer.drain()
                sent += len(piece)

    async with raw_server(endless_header) as server:
        with pytest.raises(ProtocolError, match="head is too large"):
            async with asyncio.timeout(5):
                await client.post(server.url, b"{}", {}, connect_timeout=2)
    assert sent < 8 * 1024 * 1024


async def test_a_truncated_length_framed_body_is_an_error_not_an_end(client: Client) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async with raw_server(short) as server:
        response = await client.post(server.url, b"{}", {}, connect_timeout=2)
        assert await response.read() == b"abc"
        with pytest.raises(Disconnected, match="mid-response"):
            await response.read()
        response.release()
        assert client.idle_connections == 0


async def test_a_header_value_with_a_line_break_is_refused_before_sending(
    client: Client,
) -> None:
    async with raw_server(answer_ok) as server:
        with pytest.raises(ClientError, match="Authorization"):
            await client.post(
                server.url, b"{}", {"Authorization": "Bearer k\r\nX-Evil: 1"}, connect_timeout=2
            )
        assert server.requests == 0


async def test_idle_connections_close_after_the_keepalive_time() -> None:
    async with raw_server(answer_ok) as server, contextlib.aclosing(Client(keepalive=0.2)) as c:
        assert await body_of(c, server.url) == b"ok"
        assert c.idle_connections == 1
        await asyncio.sleep(0.6)
        assert c.idle_connections == 0
        assert server.closed == 1


async def test_connection_refused_names_the_reason(client: Client) -> None:
    with refused_port() as port, pytest.raises(ConnectFailed) as failure:
        await client.post(f"http://127.0.0.1:{port}/", b"", {}, connect_timeout=2)
    assert failure.value.reason == "refused"


# -- TLS


@dataclass
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made fresh for the test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokenrelay test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    paths = Certificate(folder / "cert.pem", folder / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def server_tls(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


async def test_https_upstream_with_a_trusted_certificate(certificate: Certificate) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate.cert))
    async with (
        raw_server(answer_ok, server_tls(certificate)) as server,
        contextlib.aclosing(Client(ssl_context=trusting)) as client,
    ):
        assert server.url.startswith("https://")
        assert await body_of(client, server.url) == b"ok"
        assert await body_of(client, server.url) == b"ok"
        assert server.connections == 1


async def test_https_upstream_with_an_unknown_certificate_is_refused(
    certificate: Certificate, client: Client
) -> None:
    async with raw_server(answer_ok, server_tls(certificate)) as server:
        with pytest.raises(ConnectFailed) as failure:
            await client.post(server.url, b"{}", {}, connect_timeout=2)
        assert failure.value.reason == "tls"
        assert server.requests == 0


async def test_a_response_released_after_the_client_closed_is_not_pooled() -> None:
    # A stream that outlives the shutdown's grace gives its connection back too late.
    async with raw_server(answer_ok) as server:
        client = Client()
        response = await client.post(server.url, b"{}", {}, connect_timeout=2)
        assert await response.read() == b"ok"
        assert await response.read() == b""
        await client.aclose()
        response.release()
        assert client.idle_connections == 0
        await asyncio.sleep(0.1)
        assert server.closed == 1


async def test_a_name_is_looked_up_once_for_a_burst_of_new_connections(client: Client) -> None:
    async def slow_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await asyncio.sleep(0.1)  # every request needs a connection of its own
        await answer_ok(reader, writer, n)

    async with raw_server(slow_ok) as server:
        # "localhost" may come back as ::1 first while the server listens on 127.0.0.1 only:
        # the next address is tried.
        url = server.url.replace("127.0.0.1", "localhost")
        bodies = await asyncio.gather(*(body_of(client, url) for _ in range(10)))
        assert bodies == [b"ok"] * 10
        assert server.connections == 10
        assert await body_of(client, url) == b"ok"
    assert client.resolver.lookups == 1


async def test_a_name_that_does_not_resolve_is_a_dns_failure(client: Client) -> None:
    with pytest.raises(ConnectFailed) as failure:
        await client.post("http://no-such-host.invalid/v1", b"{}", {}, connect_timeout=5)
    assert failure.value.reason == "dns"


async def test_each_address_of_a_name_is_tried_in_turn(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    with refused_port() as refusing:
        async with raw_server(answer_ok) as server:
            port = int(server.url.split(":")[2].split("/")[0])

            async def two_addresses(host: str, _: int) -> list[tuple[str, int]]:
                # As a name with an address that refuses (say, IPv6) before one that answers.
                return [("127.0.0.1", refusing), ("127.0.0.1", port)]

            monkeypatch.setattr(client.resolver, "addresses", two_addresses)
            assert await body_of(client, f"http://upstream.test:{port}/v1/x") == b"ok"
            assert server.heads[0].startswith(b"POST /v1/x HTTP/1.1\r\nHost: upstream.test:")


async def test_releasing_a_response_twice_pools_its_connection_once(client: Client) -> None:
    async with raw_server(answer_ok) as server:
        response = await client.post(server.url, b"{}", {}, connect_timeout=2)
        while await response.read():
            pass
        response.release()
        response.release()
        assert client.idle_connections == 1
