"""Events as bytes, for logs kept outside the process (the Redis stream log).

One table, one row per event kind: a new kind (tool calls, reasoning…) needs one row here and
nothing else in the shared log. An event is a JSON object whose ``k`` names its kind, the other
fields are its row's own; several events travel as one JSON array.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tokenrelay import errors
from tokenrelay.events import (
    Event,
    Failed,
    Finish,
    Opened,
    Queued,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)

Fields = dict[str, Any]

# kind: (class, its fields, the event back from its fields)
_KINDS: dict[str, tuple[type[Any], Callable[[Any], Fields], Callable[[Fields], Event]]] = {
    "t": (TextDelta, lambda e: {"t": e.text}, lambda f: TextDelta(f["t"])),
    "o": (
        Opened,
        lambda e: {"s": e.stream_id, "m": e.model},
        lambda f: Opened(stream_id=f["s"], model=f["m"]),
    ),
    "q": (Queued, lambda e: {"p": e.position}, lambda f: Queued(f["p"])),
    "r": (ReasoningDelta, lambda e: {"t": e.text}, lambda f: ReasoningDelta(f["t"])),
    "rs": (ReasoningSignature, lambda e: {"s": e.signature}, lambda f: ReasoningSignature(f["s"])),
    "rr": (RedactedReasoning, lambda e: {"d": e.data}, lambda f: RedactedReasoning(f["d"])),
    "cs": (
        ToolCallStart,
        lambda e: {"i": e.index, "d": e.id, "n": e.name},
        lambda f: ToolCallStart(f["i"], f["d"], f["n"]),
    ),
    "ca": (
        ToolCallDelta,
        lambda e: {"i": e.index, "a": e.arguments},
        lambda f: ToolCallDelta(f["i"], f["a"]),
    ),
    "ce": (ToolCallEnd, lambda e: {"i": e.index}, lambda f: ToolCallEnd(f["i"])),
    # The details are written only when there are any, and read as 0 when absent (logs
    # written before they existed decode unchanged).
    "u": (
        Usage,
        lambda e: {
            "p": e.prompt_tokens,
            "c": e.completion_tokens,
            **({"cr": e.cached_tokens} if e.cached_tokens else {}),
            **({"cw": e.cache_creation_tokens} if e.cache_creation_tokens else {}),
            **({"rt": e.reasoning_tokens} if e.reasoning_tokens else {}),
        },
        lambda f: Usage(f["p"], f["c"], f.get("cr", 0), f.get("cw", 0), f.get("rt", 0)),
    ),
    "f": (Finish, lambda e: {"r": e.reason}, lambda f: Finish(f["r"])),
    "e": (
        Failed,
        lambda e: {"c": e.error.code, "m": e.error.message},
        lambda f: Failed(errors.from_code(f["c"], f["m"])),
    ),
}
_KIND_OF: dict[type[Any], str] = {cls: kind for kind, (cls, _, _) in _KINDS.items()}


def _fields(event: Event) -> Fields:
    kind = _KIND_OF[type(event)]
    return {"k": kind, **_KINDS[kind][1](event)}


def _event(fields: Fields) -> Event:
    return _KINDS[fields.pop("k")][2](fields)


def encode(events: list[Event]) -> bytes:
    return orjson.dumps([_fields(event) for event in events])


def decode(data: bytes) -> list[Event]:
    return [_event(fields) for fields in orjson.loads(data)]
