"""Tokens pass through nginx one by one with its default buffering on (issue 2, item 6).

Debian's nginx runs as a child process with the shipped ``deploy/nginx.conf`` included in a
generated main config whose paths all live in a temporary directory. That config also
compresses event streams, as an operator gzipping every text type would: a reader that keeps
up gets nginx's buffered output promptly anyway, and it is a filter that collects output, like
gzip, that holds tokens back until the end unless each one is flushed. A second server block,
identical but told to ignore ``X-Accel-Buffering``, is the control: there the same stream
arrives in one batch at the end, so the streaming seen through the shipped config is the
header's doing and not an accident of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway import Gateway, SSEEvent, read_sse, serve

NGINX = Path("/usr/sbin/nginx")
SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"

pytestmark = pytest.mark.skipif(
    not NGINX.exists(),
    reason="needs Debian's nginx at /usr/sbin/nginx (apt-get install nginx-light)",
)

DELAY = 0.2
TOKENS = [f"t{i} " for i in range(8)]
# The script sends a token every DELAY seconds: the last comes 1.4 s after the first.
SPAN = DELAY * (len(TOKENS) - 1)

MAIN_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # nginx's default, stated: the shipped file must stream without turning it off.
    proxy_buffering on;
    gzip on;
    gzip_types text/event-stream;

    include {tmp}/tokenrelay.conf;

    server {{
        listen 127.0.0.1:{control_port};
        location / {{
            proxy_pass http://tokenrelay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ignore_headers X-Accel-Buffering;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    url: str
    control_url: str

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def site_config(gateway: Gateway | Sequence[str], port: int) -> str:
    """The shipped file, pointed at this test's gateway (or the URLs of several instances,
    one ``server`` line each) and listening on a loopback port."""
    text = SHIPPED.read_text()
    directives = [line.split("#")[0].split() for line in text.splitlines()]
    assert ["proxy_buffering", "off;"] not in directives, "streaming is X-Accel-Buffering's job"
    for expected in ("server 127.0.0.1:8000;", "listen 80;"):
        assert expected in text, f"deploy/nginx.conf no longer has {expected!r}"
    urls = [gateway.url] if isinstance(gateway, Gateway) else gateway
    servers = "\n    ".join(f"server {url.removeprefix('http://')};" for url in urls)
    text = text.replace("server 127.0.0.1:8000;", servers)
    return text.replace("listen 80;", f"listen 127.0.0.1:{port};")


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def nginx_in_front(gateway: Gateway | Sequence[str], tmp: Path) -> AsyncIterator[Nginx]:
    # Another process may take a port between our choosing it and nginx binding it: retry.
    for _ in range(3):
        port, control_port = free_port(), free_port()
        (tmp / "tokenrelay.conf").write_text(site_config(gateway, port))
        (tmp / "nginx.conf").write_text(MAIN_CONF.format(tmp=tmp, control_port=control_port))
        process = await asyncio.create_subprocess_exec(
            str(NGINX),
            "-p",
            str(tmp),
            "-c",
            str(tmp / "nginx.conf"),
            "-e",
            str(tmp / "error.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 5
            while process.returncode is None and time.monotonic() < deadline:
                if await accepts(port) and await accepts(control_port):
                    break
                await asyncio.sleep(0.02)
            else:
                log = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
                if "Address already in use" in log:
                    continue
                raise AssertionError(f"nginx did not start:\n{log}")
            yield Nginx(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control_port}")
            return
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    process.kill()
                    await process.wait()
    raise AssertionError("nginx could not bind a free port in three tries")


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": "demo",
        "messages": [{"role": "user", "content": "hi"}],
        "script": {"tokens": TOKENS, "delay": DELAY},
        **extra,
    }


async def arrivals(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], token_of: Any
) -> tuple[list[float], str]:
    """When each token reached the client, in seconds after the request; and the text."""
    times: list[float] = []
    text: list[str] = []
    started = time.monotonic()
    async with http.post(url, json=body, headers={"Accept-Encoding": "gzip"}) as response:
        assert response.status == 200, await response.text()
        assert response.headers.get("Content-Encoding") == "gzip"
        # nginx acts on X-Accel-* headers and keeps them from the client.
        assert "X-Accel-Buffering" not in response.headers
        async for event in read_sse(response):
            token = token_of(event)
            if token is not None:
                times.append(time.monotonic() - started)
                text.append(token)
    return times, "".join(text)


def assert_one_by_one(times: list[float]) -> None:
    assert len(times) == len(TOKENS)
    assert times[-1] - times[0] > SPAN * 0.7, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert sum(gap > DELAY / 2 for gap in gaps) >= len(gaps) - 2, times


def assert_one_batch_at_the_end(times: list[float]) -> None:
    assert times[0] > SPAN * 0.7, times
    assert times[-1] - times[0] < DELAY, times


def seed_token(event: SSEEvent) -> str | None:
    token: str | None = event.json().get("token")
    return token


def native_token(event: SSEEvent) -> str | None:
    return str(event.json()["text"]) if event.event == "token" else None


WIRES = [
    pytest.param("/chat/stream", seed_token, id="seed"),
    pytest.param("/v1/streams", native_token, id="native"),
]


@pytest.mark.parametrize(("path", "token_of"), WIRES)
async def test_tokens_pass_through_nginx_one_by_one_as_the_upstream_sent_them(
    http: aiohttp.ClientSession, tmp_path: Path, path: str, token_of: Any
) -> None:
    async with serve() as gateway, nginx_in_front(gateway, tmp_path) as nginx:
        times, text = await arrivals(http, nginx.url + path, chat(), token_of)
        control_times, control_text = await arrivals(
            http, nginx.control_url + path, chat(), token_of
        )
    assert text == control_text == "".join(TOKENS)
    assert_one_by_one(times)
    # The same stream through nginx ignoring the header: held back and sent all at once.
    assert_one_batch_at_the_end(control_times)


async def test_websocket_reply_streams_through_nginx(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with serve() as gateway, nginx_in_front(gateway, tmp_path) as nginx:
        async with http.ws_connect(f"{nginx.ws_url}/ws/chat") as ws:
            started = time.monotonic()
            await ws.send_json({"content": "hi", "script": {"tokens": TOKENS, "delay": DELAY}})
            times: list[float] = []
            tokens: list[str] = []
            while True:
                message = await asyncio.wait_for(ws.receive_json(), 5)
                if message["type"] == "token":
                    times.append(time.monotonic() - started)
                    tokens.append(message["content"])
                elif message["type"] in ("done", "error"):
                    break
    assert message["type"] == "done", message
    assert "".join(tokens) == "".join(TOKENS)
    assert_one_by_one(times)


async def test_nginx_refuses_a_long_head_and_a_flood_from_one_address_before_the_gateway(
    tmp_path: Path,
) -> None:
    # A connection of its own per request: nginx closes the ones it refuses.
    # Twenty at a time: the test's nginx has 64 worker connections for clients and upstreams.
    connector = aiohttp.TCPConnector(force_close=True, limit=20)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        serve() as gateway,
        nginx_in_front(gateway, tmp_path) as nginx,
    ):
        async with http.get(f"{nginx.url}/healthz", headers={"X-Big": "a" * 20_000}) as big:
            head_status = big.status

        async def status() -> int:
            async with http.get(f"{nginx.url}/healthz") as response:
                return response.status

        # Past the burst (200) at 50 a second, from one address: 429s, not gateway load.
        statuses = [
            code for _ in range(8) for code in await asyncio.gather(*(status() for _ in range(50)))
        ]

    assert head_status in (400, 431, 494)  # nginx: 400 "Request Header Or Cookie Too Large"
    assert statuses.count(429) > 0 and statuses.count(200) >= 200
