"""A fake Anthropic Messages API: real HTTP on loopback, scripted per request, recorded.

Use it in-process::

    async with FakeAnthropic(api_key="sk-ant-test") as fake:   # 127.0.0.1, a free port
        base_url = fake.url                                     # "http://127.0.0.1:PORT"
        ...
        fake.requests[0].json["system"]       # what the client sent
        await fake.requests[0].wait_closed(1) # when the client hung up

or as a process (prints ``fake-anthropic listening on http://127.0.0.1:PORT`` when ready)::

    python -m tokenrelay.testing.fake_anthropic --port 0

Route: ``POST /v1/messages`` (``stream`` true or false). It checks what the real API checks
first: an ``anthropic-version`` header, the ``x-api-key`` (when the fake has one), a
``max_tokens``, and ``messages`` whose roles are ``user`` or ``assistant`` and alternate.
Failures are Anthropic-shaped: ``{"type": "error", "error": {"type", "message"}}``.

The script
----------
As for :mod:`tokenrelay.testing.fake_openai`: the body's ``"fake"`` object, else the last user
message when it is a JSON object with a ``"fake"`` key (``fake_prompt(...)`` builds one), over
the server's default script. Unknown keys are answered with a 400 naming them. Keys:

``tokens``: list[str]
    the text deltas (default: a short reply); ``repeat``: int repeats them.
``delay`` / ``first_delay`` / ``headers_delay``: float seconds
    between deltas / before the first one / before the response head.
``status``: int, ``error_type``: str, ``error_message``: str, ``headers``: dict[str, str]
    answer with this HTTP status and an error of this type (default: the type Anthropic uses
    for the status) instead; ``headers`` are added to any response (``{"Retry-After": "3"}``).
``error_after``: n
    after n deltas send an ``error`` event (``error_type``, default ``overloaded_error``) and
    end the body, as the API does when it fails mid-stream.
``end_delay``: float seconds
    between the last event (``message_stop`` or ``error``) and the end of the body.
``truncate_after``: n
    after n deltas send half an event and end the body cleanly.
``drop_after``: n
    after n deltas drop the connection without ending the body.
``no_stop``: true
    end the body cleanly after ``message_delta``, without ``message_stop``.
``hang``: true / ``hang_after``: n
    after the head / after n deltas, send nothing more until the client hangs up.
``ping_every``: n
    a ``ping`` event after every n deltas (the API always sends one after the block starts).
``thinking``: list[str], ``signature``: str (default ``fake-signature``)
    a thinking block (``thinking_delta`` events, then one ``signature_delta``) before the text.
``redacted_thinking``: list[str]
    a ``redacted_thinking`` block per item (its ``data``, whole in its start) after the thinking.
``tool_calls``: list of {"id", "name", "arguments": list[str]}
    ``tool_use`` blocks after the text (none when ``tokens`` is empty), their input streamed
    as ``input_json_delta`` fragments, one per item of ``arguments``.
``stop_reason``: str (default ``end_turn``, ``tool_use`` with tool calls; ``max_tokens`` when
    ``max_tokens`` cuts the tokens short; ``stop_sequence`` when one of the request's
    ``stop_sequences`` appears)
``usage``: {"input_tokens", "output_tokens", "cache_read_input_tokens",
    "cache_creation_input_tokens"} (default: counted in words and deltas; no cache fields)
``framing``: "chunked" (default) | "close"

What it records
---------------
``fake.requests``: one :class:`~tokenrelay.testing.RecordedRequest` per request
(method, path, headers, body, ``json``, the script, and ``finished``, ``client_closed_early``,
``closed_at``, ``wait_closed(timeout)`` from its response and connection); ``fake.connections``
lists every connection and ``fake.open_connections`` counts those still open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenrelay.testing._fake import (
    BaseScript,
    FakeUpstream,
    RecordedRequest,
    ScriptError,
    argument_parser,
    fake_prompt,
    run_until_signalled,
    script_problem,
    start_stream,
    write_paced,
)
from tokenrelay.testing._http import Request, Response

__all__ = ["FakeAnthropic", "RecordedRequest", "Script", "fake_prompt"]

DEFAULT_TOKENS = ["Hello", "!", " This", " is", " a", " fake", " Claude", " reply", "."]

# https://docs.anthropic.com/en/api/errors
STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class FakeCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: list[str] = Field(default_factory=list)


class Script(BaseScript):
    tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_TOKENS))
    error_type: str | None = None
    error_message: str | None = None
    error_after: int | None = Field(default=None, ge=0)
    no_stop: bool = False
    ping_every: int | None = Field(default=None, ge=1)
    thinking: list[str] | None = None
    signature: str = "fake-signature"
    redacted_thinking: list[str] = Field(default_factory=list)
    tool_calls: list[FakeCall] = Field(default_factory=list)
    stop_reason: str | None = None
    usage: dict[str, int] | None = None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_body(status: int, message: str, kind: str | None = None) -> bytes:
    kind = kind or STATUS_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _event(name: str, data: dict[str, Any]) -> bytes:
    data = {"type": name, **data}
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return ""


def _check(request: Request, body: Any, api_key: str | None) -> dict[str, Any]:
    """Refuse what the real API refuses before it starts generating."""
    if api_key is not None and request.headers.get("x-api-key") != api_key:
        raise _Refused(401, "invalid x-api-key")
    if "anthropic-version" not in request.headers:
        raise _Refused(400, "anthropic-version: header is required")
    if not isinstance(body, dict):
        raise _Refused(400, "the body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise _Refused(400, "model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise _Refused(400, "max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Refused(400, "messages: at least one message is required")
    previous = None
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise _Refused(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if role == previous:
            raise _Refused(400, "messages: roles must alternate between user and assistant")
        content = message.get("content")
        if not (_text(content) or (isinstance(content, list) and content)):
            raise _Refused(400, f"messages.{index}: all messages must have non-empty content")
        previous = role
    return body


class FakeAnthropic(FakeUpstream):
    """The fake upstream server; see the module docstring for scripts and records."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        script: dict[str, Any] | None = None,
        api_key: str | None = None,
        record: bool = True,
    ) -> None:
        super().__init__(host=host, port=port, script=script, record=record)
        self.api_key = api_key

    async def _respond(
        self, request: Request, response: Response, recorded: RecordedRequest
    ) -> None:
        if request.path != "/v1/messages" or request.method != "POST":
            _refuse(response, 404, f"no route for {request.method} {request.path}")
            return
        try:
            body = _check(request, orjson.loads(request.body), self.api_key)
            raw = self._script_of(body)
            recorded.script = raw
            script = Script.model_validate(raw)
        except orjson.JSONDecodeError as exc:
            _refuse(response, 400, f"the body is not JSON: {exc}")
            return
        except _Refused as exc:
            _refuse(response, exc.status, str(exc))
            return
        except ScriptError as exc:
            _refuse(response, 400, str(exc))
            return
        except ValidationError as exc:
            _refuse(response, 400, script_problem(exc))
            return
        extra = list(script.headers.items())
        if script.headers_delay:
            await asyncio.sleep(script.headers_delay)
        if script.status != 200:
            message = script.error_message or f"fake upstream error {script.status}"
            payload = error_body(script.status, message, script.error_type)
            response.send(script.status, [("Content-Type", "application/json"), *extra], payload)
            return
        self._counter += 1
        reply = _Reply(script, body, f"msg_fake_{self._counter}")
        if body.get("stream"):
            await reply.stream(response, extra)
        else:
            headers = [("Content-Type", "application/json"), *extra]
            response.send(200, headers, orjson.dumps(reply.message()))


def _refuse(response: Response, status: int, message: str) -> None:
    response.send(status, [("Content-Type", "application/json")], error_body(status, message))


class _Reply:
    """One answer: the planned text, stop reason and usage, streamed or whole."""

    def __init__(self, script: Script, body: dict[str, Any], message_id: str) -> None:
        self.script = script
        self.body = body
        self.id = message_id
        self.tokens, self.stop_reason, self.stop_sequence = self._plan()
        words = len(_text(body.get("system")).split()) + sum(
            len(_text(m.get("content")).split()) for m in body["messages"]
        )
        usage = script.usage or {}
        self.input_tokens = usage.get("input_tokens", words)
        self.output_tokens = usage.get("output_tokens")

    def _plan(self) -> tuple[list[str], str, str | None]:
        script, body = self.script, self.body
        tokens = script.tokens * script.repeat
        stops = body.get("stop_sequences") or []
        text = ""
        for index, token in enumerate(tokens):
            text += token
            hit = next((stop for stop in stops if stop in text), None)
            if hit is not None:
                # The API never sends the stop sequence itself, even when it spans deltas.
                cut, kept, used = text[: text.index(hit)], [], 0
                for earlier in tokens[: index + 1]:
                    if cut[used : used + len(earlier)]:
                        kept.append(cut[used : used + len(earlier)])
                    used += len(earlier)
                return kept, "stop_sequence", hit
        if body["max_tokens"] < len(tokens):
            return tokens[: body["max_tokens"]], "max_tokens", None
        default = "tool_use" if script.tool_calls else "end_turn"
        return tokens, script.stop_reason or default, None

    def _usage(self, sent: int) -> dict[str, int]:
        output = self.output_tokens if self.output_tokens is not None else sent
        usage = {**(self.script.usage or {}), "input_tokens": self.input_tokens}
        return {**usage, "output_tokens": output}

    def message(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        script = self.script
        if script.thinking:
            thinking = "".join(script.thinking)
            content.append(
                {"type": "thinking", "thinking": thinking, "signature": script.signature}
            )
        content += ({"type": "redacted_thinking", "data": d} for d in script.redacted_thinking)
        if self.tokens or not script.tool_calls:
            content.append({"type": "text", "text": "".join(self.tokens)})
        for call in script.tool_calls:
            arguments = "".join(call.arguments)
            tool = {"type": "tool_use", "id": call.id, "name": call.name}
            content.append({**tool, "input": orjson.loads(arguments) if arguments else {}})
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.body["model"],
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self._usage(len(self.tokens)),
        }

    async def stream(self, response: Response, extra: list[tuple[str, str]]) -> None:
        script = self.script
        await start_stream(response, script, extra)
        start = {**self.message(), "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**self._usage(0), "output_tokens": 1}
        response.write(_event("message_start", {"message": start}))
        if script.first_delay:
            await asyncio.sleep(script.first_delay)
        index = 0
        if script.thinking:
            response.write(self._thinking(index))
            index += 1
        for data in script.redacted_thinking:
            block = {"type": "redacted_thinking", "data": data}
            response.write(
                _event("content_block_start", {"index": index, "content_block": block})
                + _event("content_block_stop", {"index": index})
            )
            index += 1
        text = bool(self.tokens) or not script.tool_calls
        if text:
            block = {"type": "text", "text": ""}
            response.write(
                _event("content_block_start", {"index": index, "content_block": block})
                + _event("ping", {})
            )
        if not await self._deltas(response, index):
            return
        if text:
            response.write(_event("content_block_stop", {"index": index}))
            index += 1
        response.write(
            self._tool_uses(index)
            + _event(
                "message_delta",
                {
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                    "usage": {"output_tokens": self._usage(len(self.tokens))["output_tokens"]},
                },
            )
            + (b"" if script.no_stop else _event("message_stop", {}))
        )
        await self._end(response)

    def _thinking(self, index: int) -> bytes:
        block = {"type": "thinking", "thinking": "", "signature": ""}
        parts = [_event("content_block_start", {"index": index, "content_block": block})]
        for piece in self.script.thinking or []:
            delta = {"type": "thinking_delta", "thinking": piece}
            parts.append(_event("content_block_delta", {"index": index, "delta": delta}))
        delta = {"type": "signature_delta", "signature": self.script.signature}
        parts.append(_event("content_block_delta", {"index": index, "delta": delta}))
        parts.append(_event("content_block_stop", {"index": index}))
        return b"".join(parts)

    def _tool_uses(self, index: int) -> bytes:
        parts: list[bytes] = []
        for offset, call in enumerate(self.script.tool_calls):
            at = index + offset
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            parts.append(_event("content_block_start", {"index": at, "content_block": block}))
            for piece in call.arguments:
                delta = {"type": "input_json_delta", "partial_json": piece}
                parts.append(_event("content_block_delta", {"index": at, "delta": delta}))
            parts.append(_event("content_block_stop", {"index": at}))
        return b"".join(parts)

    async def _end(self, response: Response) -> None:
        if self.script.end_delay:
            await asyncio.sleep(self.script.end_delay)
        response.finish()

    async def _deltas(self, response: Response, index: int) -> bool:
        """Write the text deltas, applying the ``*_after`` faults; False when cut short."""
        script = self.script

        async def cut(sent: int) -> bool:
            if script.error_after == sent:
                kind = script.error_type or "overloaded_error"
                error = {"type": kind, "message": script.error_message or "Overloaded"}
                response.write(_event("error", {"error": error}))
                await self._end(response)
                return True
            if script.truncate_after == sent:
                response.write(b'event: content_block_delta\ndata: {"type":"content_block_delta"')
                response.finish()
                return True
            return False

        frames = self._frames(index)
        return await write_paced(response, script, frames, len(self.tokens), cut)

    def _frames(self, index: int) -> Iterator[bytes]:
        ping_every = self.script.ping_every
        for sent, token in enumerate(self.tokens):
            delta = {"type": "text_delta", "text": token}
            frame = _event("content_block_delta", {"index": index, "delta": delta})
            if ping_every and (sent + 1) % ping_every == 0:
                frame += _event("ping", {})
            yield frame


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(
        "tokenrelay.testing.fake_anthropic",
        "A fake Anthropic Messages API for tests, benchmarks and demos.",
    )
    parser.add_argument("--api-key", default=None, help="require this x-api-key")
    args = parser.parse_args(argv)
    fake = FakeAnthropic(host=args.host, port=args.port, api_key=args.api_key, record=args.record)
    run_until_signalled(fake, "fake-anthropic")


if __name__ == "__main__":
    main()
