"""``--only shared``: the stream log on Redis beside the in-process one, and ``--workers``.

Resumable streams (the native wire, ``POST /v1/streams``) are the ones copied to Redis, so this
section streams on that wire: a gateway with the in-process log against one with ``redis_url``
(its stream log, and its limiter, on a redis-server of the bench's own), for added time to first
token and CPU per 1,000 tokens, each beside the bare relay loop (``bench/bare.py``) on the same
upstream; then tokens/s with ``tokenrelay serve --workers 2`` against one worker, both on Redis
and free to use every core (which the load generator and the upstream use too: on two cores a
second worker has little to win). A worker's CPU is not the parent's, so that row is
wall-clock only.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import gateway, scenarios
from bench.client import Client
from bench.procs import Child, free_port, python, unpinned
from bench.workload import GATEWAY_MODEL, UPSTREAM_MODEL, Target

FAKE = "tokenrelay.testing.fake_openai"
STREAMS = 100
TOKENS = 200


@dataclass
class NativeTarget(Target):
    def body(self, tokens: int, **options: Any) -> dict[str, Any]:
        body = super().body(tokens, **options)
        del body["stream"]  # the native wire always streams
        return body


def _gateway(
    name: str, out: Path, upstream_url: str, redis_url: str | None, workers: int = 1
) -> tuple[Child, Target]:
    where = out / name
    where.mkdir(parents=True, exist_ok=True)
    config = gateway.write_config(where / "gateway.toml", upstream_url, auth=True)
    if redis_url is not None:
        config.write_text(f'redis_url = "{redis_url}"\n' + config.read_text())
    gateway.prepare_database(config)
    key = gateway.create_key(config)
    port = free_port()
    argv = gateway.tokenrelay("serve", "--port", str(port), "--config", str(config))
    child = Child(name, [*argv, "--workers", str(workers)], port, out / "logs", role="server")
    client = Client(port, key, path="/v1/streams")
    return child, NativeTarget(name, name, client, GATEWAY_MODEL, child)


@contextmanager
def _stopping(children: list[Child]) -> Iterator[None]:
    try:
        yield
    finally:
        for child in reversed(children):
            child.stop()


async def measure(out: Path, plan: Any, warm_up: Any) -> dict[str, Any]:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        return {"skipped": "redis-server is not installed"}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    with _stopping(children):
        port = free_port()
        argv = python("-m", FAKE, "--port", str(port))
        upstream = Child("shared-upstream", argv, port, out / "logs")
        children.append(upstream)
        redis_port = free_port()
        redis = Child(
            "shared-redis",
            [redis_server, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            redis_port,
            out / "logs",
        )
        children.append(redis)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        upstream_url = f"http://127.0.0.1:{port}/v1"
        targets = []
        for name, url, workers in (
            ("in-process", None, 1),
            ("redis", redis_url, 1),
            ("redis-workers-2", redis_url, 2),
        ):
            child, target = _gateway(name, out, upstream_url, url, workers)
            children.append(child)
            targets.append(target)
        port = free_port()
        argv = python("-m", "bench.bare", "--port", str(port), "--upstream", upstream_url)
        bare_child = Child("shared-bare", argv, port, out / "logs", role="server")
        children.append(bare_child)
        bare = Target("bare", "bare loop", Client(port), UPSTREAM_MODEL, bare_child)
        for child in children:
            child.wait_listening()
        await warm_up([*targets, bare])
        memory, shared, two = targets
        with unpinned():
            ttft = await scenarios.time_to_first_token(
                [memory, shared], plan.ttft_requests, plan.ttft_warmup
            )
        results: dict[str, Any] = {"ttft": ttft, "cpu": {}, "tokens_per_s": {}}
        for target in (bare, memory, shared):
            results["cpu"][target.name] = await scenarios.cpu_per_token(
                target, STREAMS, TOKENS, upstream, plan.cpu_min_tokens, plan.cpu_max_seconds
            )
        # Pinned, both workers would share the servers' half of the cores: here every process
        # may use every core, as on a machine of its own (the load generator included).
        with unpinned():
            for target in (shared, two):
                row = await scenarios.cpu_per_token(
                    target, STREAMS, TOKENS, upstream, plan.cpu_min_tokens, plan.cpu_max_seconds
                )
                results["tokens_per_s"][target.name] = {
                    "tokens_per_s": row["tokens_per_s"],
                    "failed": row["failed"],
                }
        return results


def lines(results: dict[str, Any]) -> list[str]:
    if "skipped" in results:
        return [f"stream log on Redis: skipped ({results['skipped']})"]
    ttft, cpu, rate = results["ttft"], results["cpu"], results["tokens_per_s"]
    memory, shared = ttft["in-process"], ttft["redis"]
    per_1k = {name: row["cpu_s_per_1k_tokens"] for name, row in cpu.items()}
    bare = per_1k.get("bare")
    out = [
        f"stream log on Redis (native wire, {STREAMS} streams x {TOKENS} tokens for CPU)",
        "                                  in-process      redis",
        f"  time to first token p50 (ms)    {memory['p50_ms']:>10.2f} {shared['p50_ms']:>10.2f}"
        f"   (+{shared['p50_ms'] - memory['p50_ms']:.2f})",
        f"  time to first token p99 (ms)    {memory['p99_ms']:>10.2f} {shared['p99_ms']:>10.2f}",
        f"  CPU-s per 1,000 tokens          {per_1k['in-process']:>10.4f} {per_1k['redis']:>10.4f}",
        *(
            [
                f"    x the bare loop ({bare:.4f})   {per_1k['in-process'] / bare:>9.2f}x"
                f" {per_1k['redis'] / bare:>9.2f}x"
            ]
            if bare
            else []
        ),
        f"  tokens/s, --workers 1 / 2       {rate['redis']['tokens_per_s']:>10,.0f}"
        f" {rate['redis-workers-2']['tokens_per_s']:>10,.0f}"
        f"   ({rate['redis-workers-2']['tokens_per_s'] / rate['redis']['tokens_per_s']:.2f}x)",
        "    (both on every core, which the load generator and the upstream share)",
    ]
    failed = sum(row["failed"] for row in (*cpu.values(), *rate.values()))
    failed += sum(row["failed"] for row in ttft.values())
    if failed:
        out.append(f"  WARNING: {failed} streams failed in this section")
    return out
