"""A stream's events as OpenAI Responses: the stream events in order, and the response object.

:class:`ResponseBuilder` is a small state machine fed a stream's log from its first event.
Each event gives the Responses events it stands for (without their ``sequence_number``, which
the wire numbers), while the output items it builds are the object's ``output``. Everything it
makes is a function of the log and the :class:`ResponseHead` alone: item ids count output
items, so the same log encodes to the same events on every instance and on every replay.

Output items follow the reply as it streamed: a message (``output_text``), a reasoning item
(``reasoning_text``, with the provider's signature as ``encrypted_content``; redacted reasoning
is an item with only ``encrypted_content``), one ``function_call`` per call. At most one
message or reasoning item is open at a time; a call's item stays open until its end, so
interleaved calls go to their own items.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, assert_never

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
from tokenrelay.relay.reply import NO_ARGUMENTS

Status = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})
# A finish reason that leaves the response incomplete, with the reason OpenAI gives for it.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
ITEM_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc"}


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What a response says beside its output: its id and time, and the request's settings
    echoed back (``settings``: instructions, tools, tool_choice, text, reasoning…)."""

    id: str
    created_at: int
    model: str
    background: bool = False
    store: bool = True
    settings: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "model": self.model,
            "background": self.background,
            "store": self.store,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResponseHead:
        return cls(
            data["id"],
            data["created_at"],
            data["model"],
            data["background"],
            data["store"],
            data["settings"],
        )

    @property
    def input_prefix(self) -> str:
        """What the ids given to its input items start with (``in_<response>``)."""
        return f"in_{self.id.removeprefix('resp_')}"

    def item_id(self, kind: str, index: int) -> str:
        """The id of output item ``index``: the response's own id in it, so an item names the
        response it came from (``msg_<response>_0``)."""
        return f"{ITEM_PREFIXES[kind]}_{self.id.removeprefix('resp_')}_{index}"


def response_id_of_item(item_id: str) -> str | None:
    """The response an output item id names (see :meth:`ResponseHead.item_id`), if any."""
    prefix, _, rest = item_id.partition("_")
    middle, _, index = rest.rpartition("_")
    if prefix not in ITEM_PREFIXES.values() or not middle or not index.isdigit():
        return None
    return f"resp_{middle}"


def usage_payload(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_creation_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def error_payload(error: errors.TokenRelayError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}


class ResponseBuilder:
    """The Responses events and output items of one stream, fed its events in log order."""

    __slots__ = (
        "_call_arguments",
        "_calls",
        "_open",
        "_pieces",
        "error",
        "head",
        "incomplete",
        "output",
        "started",
        "status",
        "usage",
    )

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.output: list[dict[str, Any]] = []
        self.status: Status = "queued" if head.background else "in_progress"
        self.started = False  # whether anything past Opened and Queued has come
        self.usage: Usage | None = None
        self.error: dict[str, str] | None = None
        self.incomplete: dict[str, str] | None = None
        self._open: int | None = None  # the open message or reasoning item
        self._pieces: list[str] = []  # the open item's text so far
        self._calls: dict[int, int] = {}  # call index -> output index, while open
        self._call_arguments: dict[int, list[str]] = {}

    # -- the object

    def snapshot(self) -> dict[str, Any]:
        """The response object as it stands (``output`` and ``usage`` included)."""
        status = self.status
        if status == "in_progress" and self.head.background and not self.started:
            status = "queued"  # nothing generated yet: it waits for its model
        output = self.output
        if self._open is not None or self._calls:
            # The open items with what they have so far (their own dicts fill in at their end).
            output = [dict(item) for item in output]
            if self._open is not None:
                item = output[self._open]
                item["content"] = [_part(item["type"], "".join(self._pieces))]
            for call, index in self._calls.items():
                output[index]["arguments"] = "".join(self._call_arguments[call])
        return self._object(status, output)

    def _object(self, status: Status, output: list[dict[str, Any]]) -> dict[str, Any]:
        head = self.head
        return {
            "id": head.id,
            "object": "response",
            "created_at": head.created_at,
            "status": status,
            "background": head.background,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "model": head.model,
            "output": output,
            **head.settings,
            "store": head.store,
            "usage": None if self.usage is None else usage_payload(self.usage),
        }

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    # -- events

    def feed(self, event: Event) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not isinstance(event, Opened | Queued):
            self.started = True
        match event:
            case TextDelta(text=text):
                delta = self._text_delta(out, "message", text)
                delta.update(type="response.output_text.delta", logprobs=[])
            case ReasoningDelta(text=text):
                delta = self._text_delta(out, "reasoning", text)
                delta["type"] = "response.reasoning_text.delta"
            case ReasoningSignature(signature=signature):
                index = self._opened(out, "reasoning")
                self.output[index]["encrypted_content"] = signature
                # The signature seals its reasoning: reasoning after it is a new item.
                self._close(out)
            case RedactedReasoning(data=data):
                # Nothing to show: an item of its own whose encrypted_content goes back as is.
                self._close(out)
                index = len(self.output)
                item: dict[str, Any] = {
                    "id": self.head.item_id("reasoning", index),
                    "type": "reasoning",
                    "summary": [],
                    "encrypted_content": data,
                    "status": "in_progress",
                }
                self.output.append(item)
                out.append(self._item_event("response.output_item.added", index))
                item["status"] = "completed"
                out.append(self._item_event("response.output_item.done", index))
            case ToolCallStart(index=call, id=call_id, name=name):
                self._close(out)
                index = len(self.output)
                item = {
                    "id": self.head.item_id("function_call", index),
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": call_id,
                    "name": name,
                    "arguments": "",
                }
                self.output.append(item)
                self._calls[call] = index
                self._call_arguments[call] = []
                out.append(self._item_event("response.output_item.added", index))
            case ToolCallDelta(index=call, arguments=arguments):
                if call in self._calls:
                    self._call_arguments[call].append(arguments)
                    index = self._calls[call]
                    out.append(
                        {
                            "type": "response.function_call_arguments.delta",
                            "item_id": self.output[index]["id"],
                            "output_index": index,
                            "delta": arguments,
                        }
                    )
            case ToolCallEnd(index=call):
                self._end_call(out, call, "completed")
            case Usage():
                self.usage = event
            case Opened():
                out.append(self._lifecycle("response.created", self.status))
                if self.head.background:
                    out.append(self._lifecycle("response.queued", "queued"))
                self.status = "in_progress"
                out.append(self._lifecycle("response.in_progress", "in_progress"))
            case Finish(reason=reason):
                incomplete = INCOMPLETE_REASONS.get(reason)
                self._end_all(out, "incomplete" if incomplete else "completed")
                if incomplete is None:
                    self.status = "completed"
                    out.append(self._lifecycle("response.completed", "completed"))
                else:
                    self.status = "incomplete"
                    self.incomplete = {"reason": incomplete}
                    out.append(self._lifecycle("response.incomplete", "incomplete"))
            case Failed(error=error):
                self._end_all(out, "incomplete")
                self.error = error_payload(error)
                self.status = "cancelled" if isinstance(error, errors.Cancelled) else "failed"
                out.append(self._lifecycle("response.failed", self.status))
            case Queued():
                # The local model's queue has no Responses event.
                pass
            case _:
                assert_never(event)
        return out

    def _lifecycle(self, kind: str, status: Status) -> dict[str, Any]:
        return {"type": kind, "response": self._object(status, list(self.output))}

    def _item_event(self, kind: str, index: int) -> dict[str, Any]:
        return {"type": kind, "output_index": index, "item": dict(self.output[index])}

    def _text_delta(self, out: list[dict[str, Any]], kind: str, text: str) -> dict[str, Any]:
        """The delta event of ``text`` in the open item of ``kind`` (its type left to set)."""
        index = self._opened(out, kind)
        self._pieces.append(text)
        delta = {
            "type": "",
            "item_id": self.output[index]["id"],
            "output_index": index,
            "content_index": 0,
            "delta": text,
        }
        out.append(delta)
        return delta

    def _opened(self, out: list[dict[str, Any]], kind: str) -> int:
        """The open item of ``kind``, opened now (closing another) if it is not."""
        if self._open is not None and self.output[self._open]["type"] == kind:
            return self._open
        self._close(out)
        index = len(self.output)
        item: dict[str, Any] = {"id": self.head.item_id(kind, index), "type": kind}
        if kind == "message":
            item.update(status="in_progress", role="assistant", content=[])
        else:
            item.update(summary=[], status="in_progress")
        part = _part(kind, "")
        self.output.append(item)
        self._open = index
        self._pieces = []
        out.append(self._item_event("response.output_item.added", index))
        out.append(self._part_event("response.content_part.added", index, part))
        return index

    def _part_event(self, kind: str, index: int, part: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": kind,
            "item_id": self.output[index]["id"],
            "output_index": index,
            "content_index": 0,
            "part": part,
        }

    def _close(self, out: list[dict[str, Any]], status: str = "completed") -> None:
        index = self._open
        if index is None:
            return
        self._open = None
        item = self.output[index]
        text = "".join(self._pieces)
        head = {"item_id": item["id"], "output_index": index, "content_index": 0}
        part = _part(item["type"], text)
        if item["type"] == "message":
            out.append({"type": "response.output_text.done", **head, "text": text, "logprobs": []})
        else:
            out.append({"type": "response.reasoning_text.done", **head, "text": text})
        out.append(self._part_event("response.content_part.done", index, part))
        item["content"] = [part]
        item["status"] = status
        out.append(self._item_event("response.output_item.done", index))

    def _end_call(self, out: list[dict[str, Any]], call: int, status: str) -> None:
        index = self._calls.pop(call, None)
        if index is None:
            return
        item = self.output[index]
        item["arguments"] = "".join(self._call_arguments.pop(call)) or NO_ARGUMENTS
        item["status"] = status
        out.append(
            {
                "type": "response.function_call_arguments.done",
                "item_id": item["id"],
                "output_index": index,
                "name": item["name"],
                "arguments": item["arguments"],
            }
        )
        out.append(self._item_event("response.output_item.done", index))

    def _end_all(self, out: list[dict[str, Any]], status: str) -> None:
        self._close(out, status)
        for call in sorted(self._calls):
            self._end_call(out, call, status)


def _part(kind: str, text: str) -> dict[str, Any]:
    """The content part of a message (``output_text``) or of a reasoning item."""
    if kind == "message":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": "reasoning_text", "text": text}


def build(head: ResponseHead, events: Iterable[Event]) -> ResponseBuilder:
    """A builder fed all of ``events``: its :meth:`~ResponseBuilder.snapshot` is the object."""
    builder = ResponseBuilder(head)
    for event in events:
        builder.feed(event)
    return builder
