"""A fake OpenAI-compatible upstream: real HTTP on loopback, scripted per request, recorded.

Use it in-process::

    async with FakeOpenAI() as fake:          # 127.0.0.1, a free port
        base_url = fake.base_url              # "http://127.0.0.1:PORT/v1"
        ...
        fake.requests[0].json["messages"]     # what the client sent
        await fake.requests[0].wait_closed(1) # when the client hung up

or as a process (prints ``fake-openai listening on http://127.0.0.1:PORT`` when ready)::

    python -m tokenrelay.testing.fake_openai --port 0

Routes: ``POST …/chat/completions`` (``stream`` true or false) and ``GET …/models``.

The script
----------
Each request takes a script: the body's ``"fake"`` object, else the last user message when it
is a JSON object with a ``"fake"`` key (``fake_prompt(tokens=[...])`` builds one, so a client
that only forwards messages can still steer the fake), over the server's default script.
Unknown keys are answered with a 400 naming them. Keys:

``tokens``: list[str]
    the content deltas (default: a short reply); ``repeat``: int repeats them.
``delay`` / ``first_delay`` / ``headers_delay`` / ``end_delay``: float seconds
    between deltas (or raw chunks) / before the first one / before the response head /
    between the last event (``[DONE]``) and the end of the body.
``finish_delay``: float seconds
    between the last delta and the finish event: a reply held open once all its text is sent.
``status``: int, ``error_body``: JSON or str, ``headers``: dict[str, str]
    answer with this status and body instead (default body: OpenAI-shaped for the status);
    ``headers`` are added to any response (``{"Retry-After": "3"}``).
``mid_stream_error_after``: n
    after n deltas send ``data: {"error": …}`` (``error_body`` or a server_error), end the body.
``truncate_after``: n
    after n deltas send half an event and end the body cleanly (no blank line, no ``[DONE]``).
``drop_after``: n
    after n deltas drop the connection without ending the body.
``no_done``: true
    end the body cleanly without ``data: [DONE]``.
``hang``: true / ``hang_after``: n
    after the head / after n deltas, send nothing more until the client hangs up.
``chunks``: list of str (latin-1) or ``{"base64": …}``
    the body, verbatim, each item in its own write (``delay`` apart); replaces the events.
``line_ending``: "\\n" | "\\r\\n" | "\\r"
    of the generated events.
``comments``: true
    a ``: keep-alive`` comment before every event (as OpenRouter sends).
``reasoning``: list[str], ``reasoning_field``: "reasoning_content" | "reasoning"
    reasoning deltas sent before the content, under that delta field (vLLM's / OpenRouter's).
``tool_calls``: list of {"id", "name", "arguments": list[str]}
    after the content, each call as OpenAI streams it: id, type and name in its first
    fragment (with ``arguments: ""``), then one fragment per item of ``arguments``.
``finish_reason``: str (default "stop", "tool_calls" with tool calls; "length" if
    ``max_tokens`` cuts the tokens short)
``usage``: bool or an OpenAI usage object (default true: counted)
``framing``: "chunked" (default) | "close"
    end the body with the terminating chunk, or by closing the connection.

What it records
---------------
``fake.requests``: one :class:`RecordedRequest` per request: method, path, lower-cased
headers, raw body, ``json``, the script used, ``received_at``, and from its response and
connection: ``finished`` (body fully written), ``client_closed_early`` (the client closed the
connection before the response finished), ``closed_at`` (``time.monotonic()`` when the
connection closed) and ``wait_closed(timeout)``. ``fake.connections`` lists every
:class:`ConnectionInfo`; ``fake.open_connections`` counts those still open.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any, Literal

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

__all__ = ["FakeOpenAI", "RecordedRequest", "Script", "fake_prompt"]

DEFAULT_TOKENS = ["Hello", "!", " This", " is", " a", " fake", " reply", "."]


class Script(BaseScript):
    tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_TOKENS))
    error_body: Any = None
    mid_stream_error_after: int | None = Field(default=None, ge=0)
    no_done: bool = False
    chunks: list[str | dict[Literal["base64"], str]] | None = None
    line_ending: Literal["\n", "\r\n", "\r"] = "\n"
    comments: bool = False
    finish_reason: str = "stop"
    usage: bool | dict[str, Any] = True
    reasoning: list[str] = Field(default_factory=list)
    reasoning_field: Literal["reasoning_content", "reasoning"] = "reasoning_content"
    tool_calls: list[FakeCall] = Field(default_factory=list)
    finish_delay: float = Field(default=0.0, ge=0)


class FakeCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: list[str] = Field(default_factory=list)


_STATUS_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", "timeout"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "unprocessable"),
    429: ("requests", "rate_limit_exceeded"),
}


def _error_body(status: int, body: Any) -> tuple[bytes, str]:
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    if body is None:
        kind, code = _STATUS_ERRORS.get(status, ("server_error", "server_error"))
        body = {"error": {"message": f"fake upstream error {status}", "type": kind, "code": code}}
    return orjson.dumps(body), "application/json"


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # orjson refuses lone surrogates; scripts use them to split a pair across deltas.
        return json.dumps(value).encode()


class FakeOpenAI(FakeUpstream):
    """The fake upstream server; see the module docstring for scripts and records."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        script: dict[str, Any] | None = None,
        record: bool = True,
        model: str = "fake-model",
    ) -> None:
        super().__init__(host=host, port=port, script=script, record=record)
        self.model = model

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # -- request handling

    async def _respond(
        self, request: Request, response: Response, recorded: RecordedRequest
    ) -> None:
        path = request.path
        if path.endswith("/chat/completions") and request.method == "POST":
            await self._chat(request, response, recorded)
        elif path.endswith("/models") and request.method == "GET":
            body = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            response.send(200, [("Content-Type", "application/json")], orjson.dumps(body))
        else:
            response.send(*_error(404, f"no route for {request.method} {path}"))

    async def _chat(self, request: Request, response: Response, recorded: RecordedRequest) -> None:
        try:
            body = orjson.loads(request.body)
            if not isinstance(body, dict):
                raise ScriptError("body must be a JSON object")
            raw = self._script_of(body)
            recorded.script = raw
            script = Script.model_validate(raw)
        except (orjson.JSONDecodeError, ScriptError) as exc:
            response.send(*_error(400, f"fake: {exc}"))
            return
        except ValidationError as exc:
            response.send(*_error(400, script_problem(exc)))
            return
        extra = list(script.headers.items())
        if script.headers_delay:
            await asyncio.sleep(script.headers_delay)
        if script.status != 200:
            payload, content_type = _error_body(script.status, script.error_body)
            response.send(script.status, [("Content-Type", content_type), *extra], payload)
            return
        self._counter += 1
        model = body.get("model") or self.model
        if body.get("stream"):
            await _Stream(script, body, response, model, self._counter).run(extra)
        else:
            completion = _completion(script, body, model, self._counter)
            headers = [("Content-Type", "application/json"), *extra]
            response.send(200, headers, orjson.dumps(completion))


def _error(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    payload, content_type = _error_body(
        status, {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    )
    return status, [("Content-Type", content_type)], payload


def _planned(script: Script, body: dict[str, Any]) -> tuple[list[str], str]:
    tokens = script.tokens * script.repeat
    finish_reason = script.finish_reason
    if script.tool_calls and finish_reason == "stop":
        finish_reason = "tool_calls"
    limit = body.get("max_tokens")
    if isinstance(limit, int) and 0 <= limit < len(tokens):
        tokens = tokens[:limit]
        finish_reason = "length"
    return tokens, finish_reason


def _usage(script: Script, body: dict[str, Any], sent: int) -> dict[str, Any]:
    if isinstance(script.usage, dict):
        return script.usage
    messages = body.get("messages") or []
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    return {"prompt_tokens": prompt, "completion_tokens": sent, "total_tokens": prompt + sent}


def _completion(script: Script, body: dict[str, Any], model: str, n: int) -> dict[str, Any]:
    tokens, finish_reason = _planned(script, body)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
    if script.reasoning:
        message[script.reasoning_field] = "".join(script.reasoning)
    if script.tool_calls:
        message["content"] = message["content"] or None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": "".join(call.arguments)},
            }
            for call in script.tool_calls
        ]
    completion: dict[str, Any] = {
        "id": f"chatcmpl-fake-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if script.usage:
        completion["usage"] = _usage(script, body, len(tokens))
    return completion


class _Stream:
    """One streamed response: events as the OpenAI API writes them, faults as scripted."""

    def __init__(
        self, script: Script, body: dict[str, Any], response: Response, model: str, n: int
    ) -> None:
        self.script = script
        self.body = body
        self.response = response
        self.end = script.line_ending.encode()
        head = {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        # Every delta event is this prefix, the JSON string, this suffix: one dumps per token.
        self.prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"delta":'
        self.suffix = b',"finish_reason":null}]}' + self.end + self.end

    async def run(self, extra: list[tuple[str, str]]) -> None:
        script, response = self.script, self.response
        await start_stream(response, script, extra)
        if script.first_delay:
            await asyncio.sleep(script.first_delay)
        if script.chunks is not None:
            await self._send(_raw_chunks(script.chunks), len(script.chunks))
        else:
            await self._events()
        if script.end_delay:
            await asyncio.sleep(script.end_delay)
        response.finish()

    async def _send(self, pieces: Iterator[bytes], count: int) -> bool:
        """Write ``pieces`` one per write, applying the ``*_after`` faults; False if cut."""
        return await write_paced(self.response, self.script, pieces, count, self._cut)

    async def _cut(self, sent: int) -> bool:
        script, response = self.script, self.response
        if script.mid_stream_error_after == sent:
            payload, _ = _error_body(500, script.error_body)
            response.write(b"data: " + payload + self.end + self.end)
            return True
        if script.truncate_after == sent:
            response.write(self.prefix + b'{"content":"cut her')
            return True
        return False

    async def _events(self) -> None:
        script, body = self.script, self.body
        tokens, finish_reason = _planned(script, body)
        comment = b": keep-alive" + self.end if script.comments else b""
        self.response.write(
            comment + self.prefix + b'{"role":"assistant","content":""}' + self.suffix
        )
        field = script.reasoning_field.encode()
        thoughts = [b'{"' + field + b'":' + _dumps(t) + b"}" for t in script.reasoning]
        contents = [b'{"content":' + _dumps(t) + b"}" for t in tokens]
        pieces = [*thoughts, *contents, *_call_deltas(script.tool_calls)]
        deltas = (comment + self.prefix + piece + self.suffix for piece in pieces)
        if not await self._send(deltas, len(pieces)):
            return
        if script.finish_delay:
            await asyncio.sleep(script.finish_delay)
        last = self.prefix + b"{}" + self.suffix.replace(b"null", _dumps(finish_reason), 1)
        tail = [comment + last]
        if script.usage:
            usage = {"choices": [], "usage": _usage(script, body, len(tokens))}
            tail.append(comment + b"data: " + orjson.dumps(usage) + self.end + self.end)
        if not script.no_done:
            tail.append(comment + b"data: [DONE]" + self.end + self.end)
        self.response.write(b"".join(tail))


def _call_deltas(calls: list[FakeCall]) -> Iterator[bytes]:
    for index, call in enumerate(calls):
        first = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield b'{"tool_calls":[' + orjson.dumps(first) + b"]}"
        for fragment in call.arguments:
            more = {"index": index, "function": {"arguments": fragment}}
            yield b'{"tool_calls":[' + orjson.dumps(more) + b"]}"


def _raw_chunks(chunks: list[str | dict[Literal["base64"], str]]) -> Iterator[bytes]:
    for chunk in chunks:
        yield (
            chunk.encode("latin-1") if isinstance(chunk, str) else base64.b64decode(chunk["base64"])
        )


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(
        "tokenrelay.testing.fake_openai",
        "A fake OpenAI-compatible upstream for tests, benchmarks and demos.",
    )
    args = parser.parse_args(argv)
    fake = FakeOpenAI(host=args.host, port=args.port, record=args.record)
    run_until_signalled(fake, "fake-openai")


if __name__ == "__main__":
    main()
