"""The upstream client, measured alone: tokenrelay's own client beside aiohttp.

The gateway holds one upstream response per open stream, so the client's memory per open
response and its CPU per relayed byte are a floor under the gateway's own figures. Each client
runs in a fresh process of its own (``python -m bench.clients``) against the same fake
upstream; both only read the body's bytes and count them, nothing else.

    python -m bench.clients --client tokenrelay --url http://127.0.0.1:PORT/v1 --mode slow
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson

from bench.procs import PAGE_SIZE, Child, python
from bench.workload import UPSTREAM_MODEL, stream_body

CLIENTS = ("aiohttp", "tokenrelay")


class Opened(Protocol):
    def __call__(self, url: str, body: bytes) -> AsyncIterator[bytes]: ...


def _body(tokens: int, delay: float) -> bytes:
    return orjson.dumps(stream_body(UPSTREAM_MODEL, tokens, delay=delay, first_delay=delay))


HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


async def _with_aiohttp(run: Callable[[Opened], Any]) -> Any:
    import aiohttp

    # As the gateway used it before it had its own client: unbounded pool, cached DNS.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def stream(url: str, body: bytes) -> AsyncIterator[bytes]:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, connect=5)
            async with session.post(url, data=body, headers=HEADERS, timeout=timeout) as r:
                while chunk := await r.content.readany():
                    yield chunk

        return await run(stream)


async def _with_tokenrelay(run: Callable[[Opened], Any]) -> Any:
    from tokenrelay.client import Client

    client = Client()
    try:

        async def stream(url: str, body: bytes) -> AsyncIterator[bytes]:
            response = await client.post(url, body, HEADERS, connect_timeout=5)
            try:
                while chunk := await response.read():
                    yield chunk
            finally:
                response.release()

        return await run(stream)
    finally:
        await client.aclose()


def _rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


async def _slow(open_stream: Opened, url: str, streams: int) -> dict[str, Any]:
    """``streams`` responses open at once, one token a second: memory per open response."""
    body = _body(tokens=8, delay=1.0)
    opened = 0
    all_open = asyncio.Event()

    async def one() -> int:
        nonlocal opened
        received = 0
        first = True
        async for chunk in open_stream(url, body):
            received += len(chunk)
            if first:
                first = False
                opened += 1
                if opened == streams:
                    all_open.set()
        return received

    # Warm the pool and the code paths, then settle, before the baseline is read.
    await asyncio.gather(*(one() for _ in range(20)))
    gc.collect()
    idle = _rss()
    tasks = [asyncio.create_task(one()) for _ in range(streams)]
    await asyncio.wait_for(all_open.wait(), 30)
    gc.collect()
    peak = _rss()
    received = sum(await asyncio.gather(*tasks))
    return {"streams": streams, "bytes_per_stream": (peak - idle) / streams, "body": received}


async def _fast(open_stream: Opened, url: str, streams: int, tokens: int) -> dict[str, Any]:
    """``streams`` concurrent responses of ``tokens`` tokens sent at once: CPU per token."""
    body = _body(tokens=tokens, delay=0.0)

    async def one() -> int:
        return sum([len(chunk) async for chunk in open_stream(url, body)])

    await asyncio.gather(*(one() for _ in range(streams)))  # warm-up and pool filling
    rounds = 0
    cpu = time.process_time()
    wall = time.monotonic()
    while rounds < 3 or time.monotonic() - wall < 2.0:
        await asyncio.gather(*(one() for _ in range(streams)))
        rounds += 1
    cpu = time.process_time() - cpu
    relayed = rounds * streams * tokens
    return {"tokens": relayed, "cpu_s_per_1k_tokens": cpu / relayed * 1000}


async def _measure(client: str, url: str, mode: str, streams: int, tokens: int) -> Any:
    with_client = _with_aiohttp if client == "aiohttp" else _with_tokenrelay
    chat = f"{url}/chat/completions"
    if mode == "slow":
        return await with_client(lambda s: _slow(s, chat, streams))
    return await with_client(lambda s: _fast(s, chat, streams, tokens))


def compare(upstream_url: str, logs: Path, quick: bool) -> dict[str, Any]:
    """Both clients, each in fresh processes, in both modes; results keyed by client."""
    results: dict[str, Any] = {}
    slow_streams = 500 if quick else 1000
    for client in CLIENTS:
        row = results[client] = {}
        for mode, streams in (("slow", slow_streams), ("fast", 100)):
            argv = python("-m", "bench.clients", "--client", client, "--url", upstream_url)
            argv += ["--mode", mode, "--streams", str(streams), "--tokens", "200"]
            child = Child(f"client-{client}-{mode}", argv, 0, logs)
            try:
                child.proc.wait(120)
            finally:
                child.stop()
            lines = child.log_path.read_text().strip().splitlines() or ["no output"]
            try:
                row[mode] = json.loads(lines[-1])
            except json.JSONDecodeError:
                row[mode] = {"failed": lines[-1][-300:]}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__)
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--url", required=True, help="the fake upstream's /v1 base URL")
    parser.add_argument("--mode", choices=("slow", "fast"), default="slow")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    result = run(_measure(args.client, args.url, args.mode, args.streams, args.tokens))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
