"""The three measurements, each run against one target at a time (the direct one included).

Every loop is bounded in count and in time; a stream that fails or times out is counted, never
waited for past its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.client import StreamResult
from bench.procs import Child
from bench.workload import Target, events_in, tokens_in


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# -- 1. time to first token, one request at a time


async def time_to_first_token(
    targets: list[Target], requests: int, warmup: int, tokens: int = 16
) -> dict[str, dict[str, Any]]:
    """Sequential requests on keep-alive connections: each target in turn, its requests
    alternating with the first target's (direct), who goes first switching every round.

    Each target is paired with the baseline only, as in the independent harness of issue #17:
    a gateway's request that followed one through another gateway (the naive proxy spends
    about 3 ms of CPU on each) would start with caches that process filled, and measure that.
    Noise on the machine falls on both halves of a pair alike.
    """
    base = targets[0]
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    failures: dict[str, int] = {t.name: 0 for t in targets}
    # Per round, the target's time less the baseline's in the same round.
    paired: dict[str, list[float]] = {t.name: [] for t in targets[1:]}
    for target in targets[1:]:
        for round_ in range(warmup + requests):
            pair = (base, target) if round_ % 2 == 0 else (target, base)
            this_round: dict[str, float] = {}
            for each in pair:
                result = await each.client.stream(each.body(tokens), timeout=10, reuse=True)
                if round_ < warmup:
                    continue
                if not result.ok or result.first_token is None:
                    failures[each.name] += 1
                    continue
                this_round[each.name] = (result.first_token - result.sent) * 1000
                samples[each.name].append(this_round[each.name])
            if base.name in this_round and target.name in this_round:
                paired[target.name].append(this_round[target.name] - this_round[base.name])
    for target in targets:
        target.client.close()
    return {
        name: {
            "p50_ms": percentile(values, 50) if values else None,
            "p99_ms": percentile(values, 99) if values else None,
            "mean_ms": statistics.fmean(values) if values else None,
            # The baseline ran once beside each of the others: this many times per pairing.
            "requests": requests if name == base.name else len(values),
            "failed": failures[name],
            **(
                {
                    "paired_added_p50_ms": percentile(paired[name], 50),
                    "paired_added_p99_ms": percentile(paired[name], 99),
                }
                if paired.get(name)
                else {}
            ),
        }
        for name, values in samples.items()
    }


# -- 2. CPU per token at a given concurrency


async def cpu_per_token(
    target: Target,
    streams: int,
    tokens: int,
    upstream: Child,
    min_tokens: int,
    max_seconds: float,
    *,
    rich: bool = False,
) -> dict[str, Any]:
    """``streams`` concurrent streams of ``tokens`` tokens each, as fast as the upstream goes;
    ``rich``: with reasoning and a tool call too, CPU counted per 1,000 deltas of any kind.

    Each of ``streams`` workers opens a stream as soon as its last one ends, until
    ``min_tokens`` have been asked for or ``max_seconds`` have passed (each worker runs at least
    one stream): enough tokens that the clock-tick resolution of CPU time does not matter.
    """
    body = target.body(tokens, rich=rich)
    issued = 0
    results: list[StreamResult] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds

    async def worker() -> None:
        nonlocal issued
        first = True
        while first or (issued * tokens < min_tokens and loop.time() < deadline):
            first = False
            issued += 1
            # A slow target may take minutes over one round; it still counts, not fails.
            results.append(await target.client.stream(body, timeout=max_seconds + 120))

    cpu_before = target.meter.cpu_seconds()
    upstream_before = upstream.cpu_seconds()
    client_before = time.process_time()
    started = time.monotonic()
    outcome = await _gather_bounded([worker() for _ in range(streams)], max_seconds + 150)
    wall = time.monotonic() - started
    cpu = target.meter.cpu_seconds() - cpu_before
    upstream_cpu = upstream.cpu_seconds() - upstream_before
    client_cpu = time.process_time() - client_before
    # The load generator counts text; each stream that brought all of its text brought the rest.
    relayed = sum(tokens_in(r.chars) for r in results) * events_in(tokens, rich) // tokens
    failed = sum(1 for r in results if not r.ok or tokens_in(r.chars) != tokens)
    return {
        "streams": streams,
        "tokens_per_stream": tokens,
        "requests": len(results),
        "tokens": relayed,
        "failed": failed + sum(1 for r in outcome if r is not None),
        "cpu_s": cpu,
        "cpu_s_per_1k_tokens": cpu / relayed * 1000 if relayed else None,
        "upstream_cpu_s": upstream_cpu,
        "client_cpu_s": client_cpu,
        "wall_s": wall,
        "tokens_per_s": relayed / wall if wall else None,
    }


# -- 3. many slow streams: punctuality and memory


@dataclass
class _Tracker:
    started: int = 0
    finished: int = 0
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    """(time, RSS bytes, streams open) of the metered process."""


async def slow_streams(
    target: Target,
    streams: int,
    tokens: int,
    interval: float,
    tolerance: float,
    ramp: float,
) -> dict[str, Any]:
    """``streams`` streams opened over ``ramp`` seconds, each paced by the upstream at one token
    per ``interval``.

    Token k (0-based) of a stream is due ``interval * (k + 1)`` after its request was sent (the
    upstream waits one interval before the first token too); it is on time if it arrives within
    ``tolerance`` of that. Memory per stream is the metered process's peak RSS while every
    stream is open, less its RSS just before the first one, over the number of streams.
    """
    body = target.body(tokens, delay=interval, first_delay=interval)
    idle_rss = target.meter.rss_bytes()
    cpu_before = target.meter.cpu_seconds()
    timeout = interval * (tokens + 1) + ramp + 30
    results, tracker = await _ramped(target, body, streams, ramp, timeout, interval / 4)
    cpu = target.meter.cpu_seconds() - cpu_before
    on_time = late = missing = 0
    streams_on_time = 0
    lateness: list[float] = []
    # Once a stream runs: token k against the first token's arrival + k intervals, which
    # leaves out how long the stream took to open (time to first token measures that).
    steady: list[float] = []
    for result in results:
        got = 0
        stream_ok = result.ok
        for arrived, chars in result.arrivals:
            for _ in range(tokens_in(chars)):
                due = result.sent + interval * (got + 1)
                delta = arrived - due
                lateness.append(delta * 1000)
                if got:
                    first = result.arrivals[0][0]
                    steady.append((arrived - first - interval * got) * 1000)
                if delta <= tolerance:
                    on_time += 1
                else:
                    late += 1
                    stream_ok = False
                got += 1
        if got < tokens:
            missing += tokens - got
            stream_ok = False
        streams_on_time += stream_ok
    full = [rss for _, rss, open_ in tracker.samples if open_ == streams]
    peak = max(full) if full else None
    return {
        "streams": streams,
        "tokens_per_stream": tokens,
        "interval_s": interval,
        "tolerance_ms": tolerance * 1000,
        "streams_on_time": streams_on_time,
        "tokens_on_time": on_time,
        "tokens_late": late,
        "tokens_missing": missing,
        "tokens_expected": streams * tokens,
        "failed": sum(1 for r in results if not r.ok),
        "lateness_p50_ms": percentile(lateness, 50) if lateness else None,
        "lateness_p99_ms": percentile(lateness, 99) if lateness else None,
        "lateness_max_ms": max(lateness) if lateness else None,
        "steady_lateness_p99_ms": percentile(steady, 99) if steady else None,
        "first_token_lateness_p99_ms": percentile(
            [(r.arrivals[0][0] - r.sent - interval) * 1000 for r in results if r.arrivals] or [0],
            99,
        ),
        "cpu_s": cpu,
        "cpu_ms_per_stream": cpu / streams * 1000,
        "idle_rss_bytes": idle_rss,
        "peak_rss_bytes": peak,
        "bytes_per_stream": (peak - idle_rss) / streams if peak is not None else None,
        "rss_samples_all_open": len(full),
    }


async def _ramped(
    target: Target,
    body: dict[str, Any],
    streams: int,
    ramp: float,
    timeout: float,
    every: float,
) -> tuple[list[StreamResult], _Tracker]:
    """``streams`` streams of ``body`` opened evenly over ``ramp`` seconds, each given
    ``timeout``; the metered process's RSS sampled every ``every`` seconds meanwhile."""
    tracker = _Tracker()
    sampler = asyncio.create_task(_sample(target, tracker, streams, every))
    loop = asyncio.get_running_loop()
    begin = loop.time()

    async def one(index: int) -> StreamResult:
        await asyncio.sleep(max(0.0, begin + ramp * index / streams - loop.time()))
        tracker.started += 1
        try:
            return await target.client.stream(body, timeout=timeout)
        finally:
            tracker.finished += 1

    try:
        results = await _gather_bounded([one(i) for i in range(streams)], timeout + 5)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return results, tracker


async def _sample(target: Target, tracker: _Tracker, streams: int, every: float) -> None:
    while True:
        open_ = tracker.started - tracker.finished
        tracker.samples.append((time.monotonic(), target.meter.rss_bytes(), open_))
        await asyncio.sleep(every)


async def _gather_bounded(coros: list[Any], timeout: float) -> list[Any]:
    """Run all; any still running after ``timeout`` is cancelled; its result is an error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    results: list[Any] = []
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is None:
            results.append(task.result())
        else:
            results.append(StreamResult(sent=0.0, error="did not finish"))
    return results


# -- 4. open streams holding long replies: what the log keeps for resume


async def long_replies(target: Target, streams: int, tokens: int, ramp: float) -> dict[str, Any]:
    """``streams`` streams opened over ``ramp`` seconds, each sent its ``tokens`` tokens at once
    and then held open (the upstream waits before it ends them), as chat replies sit in their
    logs while clients may still resume them. Memory per stream as in :func:`slow_streams`."""
    hold = ramp + 4.0
    body = target.body(tokens, hold=hold)
    idle_rss = target.meter.rss_bytes()
    results, tracker = await _ramped(target, body, streams, ramp, hold + ramp + 30, 0.1)
    full = [rss for _, rss, open_ in tracker.samples if open_ == streams]
    peak = max(full) if full else None
    return {
        "streams": streams,
        "tokens_per_stream": tokens,
        "failed": sum(1 for r in results if not r.ok or tokens_in(r.chars) != tokens),
        "idle_rss_bytes": idle_rss,
        "peak_rss_bytes": peak,
        "bytes_per_stream": (peak - idle_rss) / streams if peak is not None else None,
        "rss_samples_all_open": len(full),
    }


def log_bytes_per_token(tokens: int) -> dict[str, Any]:
    """A stream log holding a reply of ``tokens`` bench tokens, measured from its buffers'
    sizes (their headers and room to grow included) against the reply's text."""
    import sys

    from bench.workload import TOKEN
    from tokenrelay.events import Finish, Opened, TextDelta
    from tokenrelay.relay.log import StreamLog

    out: dict[str, Any] = {"tokens": tokens, "token_bytes": len(TOKEN.encode())}
    for state in ("open", "finished"):
        log = StreamLog()
        log.append(Opened("str_" + "x" * 22, "bench"))
        for _ in range(tokens):
            log.append(TextDelta(TOKEN))
        if state == "finished":
            log.append(Finish("stop"))
        footprint = getattr(log.events, "footprint", None)
        if footprint is None:  # a log that keeps one object per event
            size = sys.getsizeof(log.events) + sum(
                sys.getsizeof(e) + sys.getsizeof(getattr(e, "text", "")) for e in log.events
            )
        else:
            size = footprint()
        text = tokens * len(TOKEN.encode())
        out[state] = {"bytes_per_token": size / tokens, "x_text": size / text}
    return out
