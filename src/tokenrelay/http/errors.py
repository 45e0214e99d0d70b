"""Errors as HTTP responses, in the client's dialect; only before a response has started.

What an error looks like is decided in :mod:`tokenrelay.errors`; this wraps it for Starlette.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

from tokenrelay import errors


def error_response(
    exc: errors.TokenRelayError, dialect: errors.Dialect = "openai", *, status: int | None = None
) -> Response:
    response = Response(
        errors.body(exc, dialect), status_code=status or exc.status, media_type="application/json"
    )
    for name, value in errors.header_pairs(exc):
        response.headers[name] = value
    return response


def anthropic_error_response(exc: errors.TokenRelayError) -> Response:
    return error_response(exc, "anthropic")


def internal_error_response() -> Response:
    body = orjson.dumps(errors.INTERNAL_ERROR)
    return Response(body, status_code=500, media_type="application/json")
