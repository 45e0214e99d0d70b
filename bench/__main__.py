"""``python -m bench``: tokenrelay's speed on loopback, beside calling the upstream directly.

Three processes on this machine: the fake upstream, the gateway (``tokenrelay serve`` with a
generated config whose model points at the fake), and this one, the load generator. An
optional fourth, the naive FastAPI proxy, is measured as another column when FastAPI is
installed. CPU and memory are read from /proc for the gateway process only. The servers run
on one half of the cores and the load on the other (``bench/procs.py`` says why, and why time to
first token is the exception).

    python -m bench            # the full run, about 5 minutes
    python -m bench --quick    # about a minute, for development
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import inspect
import math
import os
import platform
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import gateway, ledger, report, scenarios, shared
from bench.client import Client
from bench.procs import Child, free_port, layout, pin_self, python, raise_fd_limit, unpinned
from bench.workload import GATEWAY_MODEL, UPSTREAM_MODEL, Target

FAKE = "tokenrelay.testing.fake_openai"

OUT_DIR = Path(".bench")
# A chat reply's length in tokens: every relayed token stays in the stream's log for resume.
LONG_REPLY = 500
# Column: (label, metrics on, tracing on). The plain "tokenrelay" column runs the defaults.
OPS_COLUMNS = {
    "ops_off": ("metrics+traces off", False, False),
    "ops_on": ("metrics+traces on", True, True),
}


@dataclass(frozen=True)
class Plan:
    # A p99 of 200 samples is the second-worst one, and 200 sequential requests take a quarter
    # of a second: whether a once-a-second write (the usage ledger's) fell inside moved it by
    # half a millisecond from run to run. 1,000 take about a second and a half per target.
    ttft_requests: int = 1000
    ttft_warmup: int = 50
    cpu_levels: tuple[int, ...] = (10, 100, 500)
    # 200 tokens keep one round of 500 streams through the naive proxy under a minute.
    cpu_tokens: int = 200
    cpu_min_tokens: int = 200_000
    cpu_max_seconds: float = 8.0
    slow_streams: int = 1000
    slow_tokens: int = 15
    slow_interval: float = 1.0
    slow_tolerance: float = 0.25

    @property
    def slow_ramp(self) -> float:
        # Streams arrive at 200 a second, not all at once: opening one costs a gateway far
        # more than relaying a token, and this section measures the relaying.
        return max(2.0, self.slow_streams / 200)


QUICK = Plan(
    ttft_requests=50,
    ttft_warmup=10,
    cpu_tokens=100,
    cpu_min_tokens=20_000,
    cpu_max_seconds=3.0,
    slow_streams=500,
    slow_tokens=5,
)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 minute version")
    parser.add_argument("--streams", type=int, help="slow streams to hold open (default 1000)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive FastAPI proxy")
    parser.add_argument(
        "--no-ops",
        action="store_true",
        help="skip the gateways with metrics and tracing both off and both on",
    )
    parser.add_argument(
        "--only",
        default="ttft,cpu,slow,clients,shared,ledger,local",
        help="comma-separated sections to run (ttft, cpu, slow, clients, shared, ledger, local)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR / "latest.json")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    if args.streams:
        plan = Plan(**{**plan.__dict__, "slow_streams": args.streams})
        # Streams must outlast the ramp, or they are never all open at once.
        tokens = max(plan.slow_tokens, math.ceil(plan.slow_ramp / plan.slow_interval) + 10)
        plan = Plan(**{**plan.__dict__, "slow_tokens": tokens})
    sections = set(args.only.split(","))
    naive = not args.no_naive and importlib.util.find_spec("fastapi") is not None

    # A gateway holds two sockets per stream (client and upstream), plus its own files.
    needed = max(4096, plan.slow_streams * 2 + 1024, max(plan.cpu_levels) * 2 + 1024)
    fds = raise_fd_limit(needed)
    pin_self("load")
    machine = _machine()
    print(
        f"tokenrelay bench — {machine['date']} — {machine['cores']} cores ({machine['cpu']}), "
        f"Python {machine['python']}, fd limit {fds}"
    )
    print(f"({machine['pinning']})")
    if fds < needed:
        print(
            f"WARNING: {needed} file descriptors wanted, the hard limit allows {fds}: "
            "the gateway may fail to open sockets (its streams then fail or stall)"
        )
    if not naive:
        print("(the naive FastAPI proxy is skipped: install the bench extra to include it)")
    results: dict[str, Any] = {
        "machine": machine,
        "plan": {**plan.__dict__, "slow_ramp": plan.slow_ramp, "quick": args.quick},
        "columns": [
            "direct",
            "bare",
            "tokenrelay",
            "jwt",
            *([] if args.no_ops else list(OPS_COLUMNS)),
            *(["naive"] if naive else []),
        ],
        "labels": {
            "direct": "direct",
            "bare": "bare loop",
            "tokenrelay": "tokenrelay",
            "jwt": "tokenrelay (JWT)",
            "naive": "naive proxy",
            **{name: label for name, (label, _, _) in OPS_COLUMNS.items()},
        },
    }
    started = time.monotonic()
    run = asyncio.run
    with contextlib.suppress(ImportError):
        # The cheapest loop for the load generator, as the servers use.
        import uvloop

        run = uvloop.run
    run(_run(plan, sections, naive, results, ops=not args.no_ops))
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    # Other work on the machine shows in every figure; the load says how much there was.
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(report.table(results))
    for line in report.notes(results):
        print(line)
    client_lines = report.clients(results)
    if client_lines:
        print()
        print("\n".join(client_lines))
    if "shared" in results:
        print()
        print("\n".join(shared.lines(results["shared"])))
    if "ledger" in results:
        print()
        print("\n".join(report.ledger(results["ledger"])))
    local = results.get("local")
    if local is not None:
        print()
        print("local model (llama.cpp through the gateway vs directly)")
        for key, value in local.items():
            print(f"  {key}: {value}")
    print(f"tokenrelay ran with auth {results.get('gateway_auth', 'off')}.")
    load = results["machine"]
    print(f"load average (1, 5, 15 min): {load['load_before']} before, {load['load_after']} after")
    report.write_json(results, args.out)
    print(f"\n{results['elapsed_s']} s; JSON in {args.out}")
    return 0


async def _run(
    plan: Plan, sections: set[str], naive: bool, results: dict[str, Any], *, ops: bool
) -> None:
    if "ttft" in sections or "cpu" in sections:
        with _processes(naive, results, ops=ops) as (upstream, targets):
            await _warm_up(targets)
            if "ttft" in sections:
                _progress("time to first token")
                with unpinned():
                    results["ttft"] = await scenarios.time_to_first_token(
                        targets, plan.ttft_requests, plan.ttft_warmup
                    )
            if "cpu" in sections:
                results["cpu"] = {}
                for level in plan.cpu_levels:
                    results["cpu"][str(level)] = row = {}
                    for target in _besides_jwt(targets):
                        _progress(f"CPU per token: {level} streams via {target.label}")
                        row[target.name] = await scenarios.cpu_per_token(
                            target,
                            level,
                            plan.cpu_tokens,
                            upstream,
                            plan.cpu_min_tokens,
                            plan.cpu_max_seconds,
                        )
                # Reasoning, text and a tool call's arguments: every kind of delta relayed.
                results["cpu"]["rich"] = row = {}
                for target in _besides_jwt(targets):
                    _progress(f"CPU per delta: 100 rich streams via {target.label}")
                    row[target.name] = await scenarios.cpu_per_token(
                        target,
                        100,
                        plan.cpu_tokens,
                        upstream,
                        plan.cpu_min_tokens,
                        plan.cpu_max_seconds,
                        rich=True,
                    )
    if "slow" in sections:
        results["slow"] = {}
        # Fresh processes, so that memory grown by the earlier sections does not hide the
        # memory the open streams take.
        with _processes(naive, results) as (_, targets):
            targets = _besides_jwt(targets)
            await _warm_up(targets)
            for target in targets:
                _progress(f"{plan.slow_streams} slow streams via {target.label}")
                results["slow"][target.name] = await scenarios.slow_streams(
                    target,
                    plan.slow_streams,
                    plan.slow_tokens,
                    plan.slow_interval,
                    plan.slow_tolerance,
                    plan.slow_ramp,
                )
                await asyncio.sleep(1)
        results["long"] = {}
        with _processes(naive, results) as (_, targets):
            targets = _besides_jwt(targets)
            await _warm_up(targets)
            for target in targets:
                _progress(
                    f"{plan.slow_streams} open streams of {LONG_REPLY} tokens via {target.label}"
                )
                results["long"][target.name] = await scenarios.long_replies(
                    target, plan.slow_streams, LONG_REPLY, plan.slow_ramp
                )
                await asyncio.sleep(1)
        results["log_bytes"] = scenarios.log_bytes_per_token(LONG_REPLY)
    if "clients" in sections:
        results["clients"] = _clients(plan is QUICK)
    if "shared" in sections:
        _progress("the stream log on Redis, and --workers 2")
        results["shared"] = await shared.measure(OUT_DIR, plan, _warm_up)
        results.setdefault("gateway_auth", "on (API key)")
    if "ledger" in sections:
        _progress("the usage ledger's flush on the event loop")
        results["ledger"] = await ledger.measure()
    if "local" in sections:
        results["local"] = await _local(plan is QUICK)


def _besides_jwt(targets: list[Target]) -> list[Target]:
    # The JWT column is the same gateway process as the tokenrelay one, another credential:
    # it has a time to first token of its own, but not a CPU or a memory of its own.
    return [target for target in targets if target.name != "jwt"]


def _progress(what: str) -> None:
    print(f"… {what}", flush=True)


@contextlib.contextmanager
def _processes(
    naive: bool, results: dict[str, Any], *, ops: bool = False
) -> Iterator[tuple[Child, list[Target]]]:
    """The upstream, the gateway and maybe the naive proxy, each ended by PID on the way out;
    with ``ops``, two more gateways: metrics and tracing both off, and both on."""
    logs = OUT_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    try:
        port = free_port()
        upstream = Child("upstream", python("-m", FAKE, "--port", str(port)), port, logs)
        children.append(upstream)
        upstream_url = f"http://127.0.0.1:{upstream.port}/v1"
        proxy = None
        if naive:
            port = free_port()
            argv = python("-m", "bench.naive_proxy", "--port", str(port))
            proxy = Child("naive", [*argv, "--upstream", upstream_url], port, logs, role="server")
            children.append(proxy)
        config = gateway.write_config(OUT_DIR / "gateway.toml", upstream_url, auth=True)
        gateway.prepare_database(config)
        key = gateway.create_key(config)
        tokenrelay = gateway.start(config, logs)
        children.append(tokenrelay)
        port = free_port()
        argv = python("-m", "bench.bare", "--port", str(port), "--upstream", upstream_url)
        bare = Child("bare", argv, port, logs, role="server")
        children.append(bare)
        observed = _ops_gateways(upstream_url, logs, children) if ops else {}
        for child in children:
            child.wait_listening()
        key = key or gateway.key_in_log(tokenrelay)
        if key is None and _refuses(tokenrelay):
            # No way to get a key from this tokenrelay yet: measure it with auth off, and say so.
            children.remove(tokenrelay)
            tokenrelay.stop()
            gateway.write_config(config, upstream_url, auth=False)
            tokenrelay = gateway.start(config, logs)
            children.append(tokenrelay)
            tokenrelay.wait_listening()
            results["gateway_auth"] = "off: this tokenrelay offers no way to get an API key"
        else:
            results["gateway_auth"] = "on (API key)" if key else "off"
        targets = [
            Target("direct", "direct", Client(upstream.port), UPSTREAM_MODEL, upstream),
            Target("bare", "bare loop", Client(bare.port), UPSTREAM_MODEL, bare),
            Target(
                "tokenrelay", "tokenrelay", Client(tokenrelay.port, key), GATEWAY_MODEL, tokenrelay
            ),
        ]
        if results.get("gateway_auth", "").startswith("on"):
            jwt_client = Client(tokenrelay.port, gateway.jwt_token())
            targets.append(Target("jwt", "tokenrelay (JWT)", jwt_client, GATEWAY_MODEL, tokenrelay))
        targets += [
            Target(name, OPS_COLUMNS[name][0], Client(child.port, key), GATEWAY_MODEL, child)
            for name, child in observed.items()
        ]
        if proxy is not None:
            targets.append(
                Target("naive", "naive proxy", Client(proxy.port), UPSTREAM_MODEL, proxy)
            )
        yield upstream, targets
    finally:
        for child in reversed(children):
            child.stop()


def _ops_gateways(upstream_url: str, logs: Path, children: list[Child]) -> dict[str, Child]:
    """Gateways on the same database (so the same key) with metrics and tracing off, and on:
    spans exported over OTLP/HTTP to a sink that drops them, every request sampled."""
    port = free_port()
    sink = Child("otlp-sink", python("-m", "bench.otlp_sink", "--port", str(port)), port, logs)
    children.append(sink)
    found = {}
    for name, (_, metrics, tracing) in OPS_COLUMNS.items():
        config = gateway.write_config(
            OUT_DIR / f"gateway-{name}.toml", upstream_url, auth=True, metrics=metrics
        )
        env = {"OTEL_TRACES_EXPORTER": "none"}
        if tracing:
            env = {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
                "OTEL_SERVICE_NAME": "tokenrelay-bench",
            }
        found[name] = gateway.start(config, logs, name=f"tokenrelay-{name}", env=env)
        children.append(found[name])
    return found


def _clients(quick: bool) -> dict[str, Any]:
    """The upstream clients alone, against a fake upstream of their own."""
    if importlib.util.find_spec("aiohttp") is None:
        return {"skipped": "aiohttp is not installed (the bench extra brings it)"}
    from bench import clients

    logs = OUT_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    upstream = Child("clients-upstream", python("-m", FAKE, "--port", str(port)), port, logs)
    try:
        upstream.wait_listening()
        _progress("the upstream clients alone")
        return clients.compare(f"http://127.0.0.1:{port}/v1", logs, quick)
    finally:
        upstream.stop()


def _refuses(child: Child) -> bool:
    """Whether the gateway answers a request without a good key with 401."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{child.port}/v1/models", headers={"Authorization": "Bearer none"}
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403)
    return False


async def _warm_up(targets: list[Target]) -> None:
    """Import, connect and JIT-free warm paths in every process before anything is measured."""
    for target in targets:
        for _ in range(20):
            result = await target.client.stream(target.body(8), timeout=10)
            if not result.ok:
                raise RuntimeError(f"{target.label} fails its warm-up request: {result.error}")
        burst = [target.client.stream(target.body(8), timeout=10) for _ in range(20)]
        await asyncio.gather(*burst)


async def _local(quick: bool) -> dict[str, Any]:
    if not (Path(__file__).parent / "local.py").exists():
        return {"skipped": "bench/local.py is not there yet"}
    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama_cpp is not installed (make setup-local)"}
    from bench import local

    # The model's decode uses every core it is given, and its direct run is in this process.
    pin_self("any")
    measure = local.measure
    kwargs = {"quick": quick} if "quick" in inspect.signature(measure).parameters else {}
    _progress("local model")
    try:
        return dict(await measure(**kwargs))
    except Exception as exc:
        # The other sections' figures are worth keeping whatever happens to this one.
        return {"failed": f"{type(exc).__name__}: {str(exc)[-300:]}"}


def _machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": _cpu(),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "pinning": layout(),
        "platform": platform.platform(),
    }


def _cpu() -> str:
    """The CPU as /proc/cpuinfo names it, with what tells two of one name apart: a VM's "AMD
    EPYC" was a Zen 4 with AVX-512 one day and a 2.4 GHz Zen 3 without it the next, and time to
    first token doubled between them."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" not in fields:
        return name
    flags = fields.get("flags", "").split()
    mhz = fields.get("cpu MHz", "?").split(".")[0]
    return (
        f"{name}, family {fields['cpu family']} model {fields.get('model', '?')}, {mhz} MHz, "
        + ("AVX-512" if "avx512f" in flags else "no AVX-512")
    )


if __name__ == "__main__":
    sys.exit(main())
