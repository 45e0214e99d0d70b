"""Request bodies in, JSON out: the HTTP edges every wire shares (errors: :mod:`.errors`)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay import errors
from tokenrelay.asgi import header

Model = TypeVar("Model", bound=BaseModel)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body as JSON, refusing bodies over ``max_bytes`` before reading them all.

    Read from the ASGI messages themselves (not ``Request.stream()``): a body that comes in
    one message, as nearly every body does, is parsed as it came, with no copy.
    """
    declared = header(request.scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise errors.PayloadTooLarge(f"the request body is larger than {max_bytes} bytes")
    receive = request.receive
    pieces: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.Cancelled("the client left before its request body had arrived")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise errors.PayloadTooLarge(f"the request body is larger than {max_bytes} bytes")
        pieces.append(chunk)
        more = message.get("more_body", False)
    # Joining one piece hands back that piece itself, not a copy.
    body = b"".join(pieces)
    if not body:
        raise errors.InvalidRequest("the request body is empty; send a JSON object")
    return parse_json(body)


def parse_json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidRequest(f"the body is not valid JSON: {exc}") from None


def validate(model: type[Model], data: Any) -> Model:
    """Validate ``data``; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise errors.InvalidRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.invalid_request(exc) from None
