"""The results as a table for people and as JSON for machines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

Row = tuple[str, str, dict[str, float | None]]
"""(label, target, value per column name)."""

_DASH = "—"
# Columns also shown against the bare relay loop: tokenrelay with everything on.
AGAINST_BARE = ("tokenrelay", "jwt")


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return _DASH
    return f"{value / base:.2f}x"


def _cell(value: float | None, fmt: Callable[[float], str]) -> str:
    return _DASH if value is None else fmt(value)


def table(results: dict[str, Any]) -> str:
    columns: list[str] = results["columns"]
    labels: dict[str, str] = results["labels"]
    sections: list[tuple[str, Callable[[float], str], list[Row]]] = []

    ttft = results.get("ttft")
    if ttft:
        direct = ttft.get("direct", {})

        def added(name: str, key: str) -> float | None:
            here, base = ttft.get(name, {}).get(key), direct.get(key)
            return None if here is None or base is None or name == "direct" else here - base

        def paired(name: str, q: str) -> float | None:
            value: float | None = ttft.get(name, {}).get(f"paired_added_{q}_ms")
            return value

        sections.append(
            (
                f"time to first token, {ttft['direct']['requests']} requests one at a time (ms)",
                lambda v: f"{v:.2f}",
                [
                    ("p50", "", {c: ttft.get(c, {}).get("p50_ms") for c in columns}),
                    ("p99", "", {c: ttft.get(c, {}).get("p99_ms") for c in columns}),
                    ("added p50", "≤ 0.6 ms", {c: added(c, "p50_ms") for c in columns}),
                    ("added p99", "≤ 1.0 ms", {c: added(c, "p99_ms") for c in columns}),
                    ("paired added p50", "", {c: paired(c, "p50") for c in columns}),
                    ("paired added p99", "", {c: paired(c, "p99") for c in columns}),
                ],
            )
        )

    cpu = results.get("cpu")
    if cpu:
        rows: list[Row] = []
        for level in cpu:
            per = {c: cpu[level].get(c, {}).get("cpu_s_per_1k_tokens") for c in columns}
            some = next(iter(cpu[level].values()))
            label = f"{level} streams x {some['tokens_per_stream']} tokens"
            if level == "rich":
                label = f"{some['streams']} streams, reasoning+text+tool call, per 1k deltas"
            rows.append((label, "≤ 1.5x bare", per))
        sections.append(
            ("CPU-s per 1,000 tokens (direct: the upstream's own CPU)", lambda v: f"{v:.4f}", rows)
        )
        rows = []
        for level in cpu:
            rate = {c: cpu[level].get(c, {}).get("tokens_per_s") for c in columns}
            rows.append((f"{level} streams", "", rate))
        sections.append(("tokens/s delivered (wall clock)", lambda v: f"{v:,.0f}", rows))

    slow = results.get("slow")
    if slow:
        some = next(iter(slow.values()))
        n = some["streams"]
        head = (
            f"{n:,} streams x {some['tokens_per_stream']} tokens at one per "
            f"{some['interval_s']:g} s; on time = within {some['tolerance_ms']:.0f} ms of schedule"
        )
        sections.append(
            (
                head,
                lambda v: f"{v:,.0f}",
                [
                    (
                        "streams all on time",
                        f"{n:,}",
                        {c: slow.get(c, {}).get("streams_on_time") for c in columns},
                    ),
                    (
                        "tokens on time",
                        f"{some['tokens_expected']:,}",
                        {c: slow.get(c, {}).get("tokens_on_time") for c in columns},
                    ),
                    (
                        "lateness p99 (ms)",
                        "",
                        {c: slow.get(c, {}).get("lateness_p99_ms") for c in columns},
                    ),
                    (
                        "  first tokens only",
                        "",
                        {c: slow.get(c, {}).get("first_token_lateness_p99_ms") for c in columns},
                    ),
                    (
                        "  after the first (vs its pace)",
                        "",
                        {c: slow.get(c, {}).get("steady_lateness_p99_ms") for c in columns},
                    ),
                ],
            )
        )
        kb = {c: _kb(slow.get(c, {}).get("bytes_per_stream")) for c in columns}
        memory: list[Row] = [(f"{some['tokens_per_stream']}-token replies", "< 20 KB", kb)]
        long = results.get("long") or {}
        if long:
            tokens = next(iter(long.values()))["tokens_per_stream"]
            kb = {c: _kb(long.get(c, {}).get("bytes_per_stream")) for c in columns}
            memory.append((f"{tokens}-token replies, all sent", "", kb))
        sections.append(
            (
                "memory per open stream: RSS growth / streams, KB (direct: the upstream's own)",
                lambda v: f"{v:.1f}",
                memory,
            )
        )

    header = ["", "target"]
    for column in columns:
        header.append(labels[column])
        if column != "direct":
            header.append("x direct")
        if column in AGAINST_BARE:
            header.append("x bare")
    lines: list[list[str]] = []
    for title, fmt, rows in sections:
        lines.append([title])
        for label, goal, values in rows:
            line = ["  " + label, goal]
            for column in columns:
                line.append(_cell(values.get(column), fmt))
                if column != "direct":
                    line.append(_ratio(values.get(column), values.get("direct")))
                if column in AGAINST_BARE:
                    line.append(_ratio(values.get(column), values.get("bare")))
            lines.append(line)
    widths = [0] * len(header)
    for line in [header, *(line for line in lines if len(line) > 1)]:
        for i, cell in enumerate(line):
            widths[i] = max(widths[i], len(cell))
    out = [_fmt(header, widths)]
    for line in lines:
        out.append(line[0] if len(line) == 1 else _fmt(line, widths))
    return "\n".join(out)


def notes(results: dict[str, Any]) -> list[str]:
    """How to read the table, and anything that went wrong."""
    out = [
        "direct = the same client calling the fake upstream itself; x direct = column / direct.",
        "bare loop = bench/bare.py, a relay with no features (same upstream client, orjson, raw",
        "asyncio; of a rich stream it relays the text alone); x bare = column / bare loop.",
        "added = its percentile less direct's; paired added = the percentile of (its time -",
        "direct's time in the same round).",
        "CPU = utime + stime of that one process, from /proc/<pid>/stat (clock ticks), over the",
        "whole run of each row, opening and closing the streams included.",
    ]
    problems: list[str] = []
    for section in ("ttft", "slow"):
        for name, row in (results.get(section) or {}).items():
            if row.get("failed"):
                problems.append(f"{section} via {name}: {row['failed']} requests failed")
    for level, rows in (results.get("cpu") or {}).items():
        for name, row in rows.items():
            if row.get("failed"):
                problems.append(f"cpu at {level} via {name}: {row['failed']} streams failed")
    log = results.get("log_bytes")
    if log:
        out.append(
            f"stream log of a {log['tokens']}-token reply ({log['token_bytes']}-byte tokens), "
            "from its buffers' sizes: "
            + ", ".join(
                f"{state} {log[state]['bytes_per_token']:.2f} bytes/token "
                f"({log[state]['x_text']:.2f}x its text)"
                for state in ("open", "finished")
            )
        )
    for name, row in (results.get("long") or {}).items():
        if row.get("failed"):
            problems.append(f"long replies via {name}: {row['failed']} streams failed")
    for name, row in (results.get("slow") or {}).items():
        if row.get("bytes_per_stream") is None:
            problems.append(f"slow via {name}: never saw all streams open at once (no memory)")
    return out + [f"WARNING: {p}" for p in problems]


def ledger(figures: dict[str, Any]) -> list[str]:
    """The ``ledger`` section: the loop's time per flush, direct against through SQLAlchemy."""
    out = ["usage ledger flush: time on the event loop (main thread CPU), p50 (max)"]
    for database in ("sqlite", "postgresql"):
        rows = figures.get(database) or {}
        if "skipped" in rows:
            out.append(f"  {database}: skipped ({rows['skipped']})")
            continue
        for size in figures["batches"]:
            row = rows[str(size)]
            before, after = row["sqlalchemy"], row["direct"]
            out.append(
                f"  {database}, {size} rows: {after['loop_ms_p50']:.2f} ms "
                f"({after['loop_ms_max']:.2f}) on its own connection, "
                f"{before['loop_ms_p50']:.2f} ms ({before['loop_ms_max']:.2f}) through "
                f"SQLAlchemy: {row['x_sqlalchemy']:.2f}x"
            )
    return out


def clients(results: dict[str, Any]) -> list[str]:
    """The upstream clients measured alone (bench/clients.py), tokenrelay's against aiohttp."""
    measured = results.get("clients")
    if not measured:
        return []
    ours, theirs = measured.get("tokenrelay", {}), measured.get("aiohttp", {})
    slow = ours.get("slow", {})
    lines = [
        "upstream client alone, each in a fresh process against the fake upstream "
        "(x aiohttp = tokenrelay / aiohttp)"
    ]
    for label, mode, key, scale, fmt in (
        (
            f"memory per open response, KB ({slow.get('streams', '?')} open)",
            "slow",
            "bytes_per_stream",
            1 / 1024,
            "{:.1f}",
        ),
        (
            "CPU-s per 1,000 tokens (100 streams x 200 tokens)",
            "fast",
            "cpu_s_per_1k_tokens",
            1.0,
            "{:.4f}",
        ),
    ):
        mine = ours.get(mode, {}).get(key)
        base = theirs.get(mode, {}).get(key)
        cells = [_DASH if v is None else fmt.format(v * scale) for v in (base, mine)]
        lines.append(
            f"  {label}: aiohttp {cells[0]}, tokenrelay {cells[1]}, {_ratio(mine, base)} aiohttp"
        )
    return lines


def _fmt(cells: list[str], widths: list[int]) -> str:
    first = cells[0].ljust(widths[0])
    rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
    return "  ".join([first, *rest]).rstrip()


def _kb(value: float | None) -> float | None:
    return None if value is None else value / 1024


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
