"""One exception tree for every failure a client can see.

::

    TokenRelayError                       code                    HTTP  Anthropic type
    ├── InvalidRequest                    invalid_request         400   invalid_request_error
    │   └── ContextLengthExceeded         context_length_exceeded 400   invalid_request_error
    ├── Unauthorized                      unauthorized            401   authentication_error
    ├── Forbidden                         forbidden               403   permission_error
    ├── NotFound                          not_found               404   not_found_error
    ├── PayloadTooLarge                   payload_too_large       413   request_too_large
    ├── RateLimited                       rate_limited            429   rate_limit_error
    ├── ConcurrencyLimited                concurrency_limited     429   rate_limit_error
    ├── BudgetExceeded                    budget_exceeded         429   rate_limit_error
    ├── LimiterUnavailable                limiter_unavailable     503   api_error
    ├── StreamLogUnavailable              stream_log_unavailable  503   api_error
    ├── UpstreamUnavailable               upstream_unavailable    502   overloaded_error
    ├── UpstreamRateLimited               upstream_rate_limited   429   rate_limit_error
    ├── UpstreamTimeout                   upstream_timeout        504   timeout_error
    │   ├── FirstTokenTimeout             first_token_timeout     504   timeout_error
    │   └── IdleTimeout                   idle_timeout            504   timeout_error
    ├── ContentFilter                     content_filter          400   invalid_request_error
    ├── UpstreamError                     upstream_error          502   api_error
    ├── Cancelled                         cancelled               499   api_error
    └── ServerShutdown                    server_shutdown         503   api_error

Each wire turns an error into its own dialect through :func:`body` (the OpenAI shape or
Anthropic's, as :func:`dialect_of` reads it from the path), :func:`header_pairs`,
:attr:`status` and :attr:`ws_close_code`; nothing else decides how an error looks.
:mod:`tokenrelay.http.errors` wraps these as Starlette responses, the auth middleware sends
them as raw ASGI messages, and the stream encoders put :meth:`TokenRelayError.to_payload` /
:meth:`TokenRelayError.to_anthropic_payload` in their error events.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import orjson
from pydantic import ValidationError

Dialect = Literal["openai", "anthropic"]
# The Anthropic Messages API's routes answer errors in Anthropic's shape, every other in OpenAI's.
ANTHROPIC_PATHS = "/v1/messages"
# A bug's answer: a 500 that says nothing of it (the log has the traceback).
INTERNAL_ERROR = {
    "error": {"message": "internal error", "type": "api_error", "code": "internal_error"}
}


class TokenRelayError(Exception):
    code: ClassVar[str] = "upstream_error"
    status: ClassVar[int] = 502
    type: ClassVar[str] = "api_error"
    anthropic_type: ClassVar[str] = "api_error"
    # RFC 6455 §7.4.1: 1008 policy violation, 1009 too big, 1011 internal error, 1013 try later.
    ws_close_code: ClassVar[int] = 1011

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_payload(self) -> dict[str, Any]:
        """The OpenAI-shaped error body: ``{"error": {"message", "type", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    def to_anthropic_payload(self) -> dict[str, Any]:
        """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidRequest(TokenRelayError):
    code = "invalid_request"
    status = 400
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    ws_close_code = 1008


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(TokenRelayError):
    code = "unauthorized"
    status = 401
    type = "authentication_error"
    anthropic_type = "authentication_error"
    ws_close_code = 1008


class Forbidden(TokenRelayError):
    code = "forbidden"
    status = 403
    type = "permission_error"
    anthropic_type = "permission_error"
    ws_close_code = 1008


class NotFound(TokenRelayError):
    code = "not_found"
    status = 404
    type = "not_found_error"
    anthropic_type = "not_found_error"
    ws_close_code = 1008


class PayloadTooLarge(TokenRelayError):
    code = "payload_too_large"
    status = 413
    type = "invalid_request_error"
    anthropic_type = "request_too_large"
    ws_close_code = 1009


class RateLimited(TokenRelayError):
    code = "rate_limited"
    status = 429
    type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    ws_close_code = 1013


class ConcurrencyLimited(RateLimited):
    code = "concurrency_limited"


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"


class LimiterUnavailable(TokenRelayError):
    code = "limiter_unavailable"
    status = 503
    type = "api_error"
    ws_close_code = 1013


class StreamLogUnavailable(TokenRelayError):
    """The shared stream log (Redis) did not answer: a stream elsewhere cannot be reached."""

    code = "stream_log_unavailable"
    status = 503
    ws_close_code = 1013


class UpstreamUnavailable(TokenRelayError):
    code = "upstream_unavailable"
    status = 502
    anthropic_type = "overloaded_error"
    ws_close_code = 1013


class UpstreamRateLimited(TokenRelayError):
    code = "upstream_rate_limited"
    status = 429
    type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    ws_close_code = 1013


class UpstreamTimeout(TokenRelayError):
    code = "upstream_timeout"
    status = 504
    type = "timeout_error"
    anthropic_type = "timeout_error"


class FirstTokenTimeout(UpstreamTimeout):
    code = "first_token_timeout"


class IdleTimeout(UpstreamTimeout):
    code = "idle_timeout"


class ContentFilter(TokenRelayError):
    code = "content_filter"
    status = 400
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class UpstreamError(TokenRelayError):
    code = "upstream_error"
    status = 502


class Cancelled(TokenRelayError):
    code = "cancelled"
    # nginx's "client closed request": there is rarely anyone left to read it.
    status = 499
    type = "cancelled"
    ws_close_code = 1000


class ServerShutdown(TokenRelayError):
    code = "server_shutdown"
    status = 503
    ws_close_code = 1001


def dialect_of(path: str) -> Dialect:
    return "anthropic" if path.startswith(ANTHROPIC_PATHS) else "openai"


def body(exc: TokenRelayError, dialect: Dialect = "openai") -> bytes:
    """The JSON body of an error response in ``dialect``."""
    if dialect == "anthropic":
        return orjson.dumps(exc.to_anthropic_payload())
    return orjson.dumps(exc.to_payload())


def header_pairs(exc: TokenRelayError) -> list[tuple[str, str]]:
    """The headers an error response carries beside its body (``Retry-After``, …)."""
    pairs = list(exc.headers().items())
    if isinstance(exc, Unauthorized):
        # RFC 6750 §3: say which scheme, and nothing about what was wrong.
        pairs.append(("WWW-Authenticate", 'Bearer realm="tokenrelay"'))
    return pairs


def _all_subclasses(cls: type[TokenRelayError]) -> list[type[TokenRelayError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


BY_CODE: dict[str, type[TokenRelayError]] = {
    cls.code: cls for cls in _all_subclasses(TokenRelayError)[1:]
}


def from_code(code: str, message: str, *, retry_after: float | None = None) -> TokenRelayError:
    """Build the error class named by ``code``; unknown codes become ``upstream_error``."""
    return BY_CODE.get(code, UpstreamError)(message, retry_after=retry_after)


def invalid_request(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """A pydantic failure as a 400 naming the offending field (``prefix`` before it).

    A value that fits no member of a union fails once per member, each under that member's
    tag (``content.str``, ``content.list[TextPart].0.text``). The deepest failure got
    furthest, so it is the one named; the failures at the same place are joined ("a valid
    string or a valid list"); member tags never show.
    """
    problems = exc.errors()
    deepest = max(problems, key=lambda problem: len(problem["loc"]))
    where = _field_path(deepest["loc"])
    messages = list(dict.fromkeys(p["msg"] for p in problems if _field_path(p["loc"]) == where))
    where = ".".join(part for part in (prefix, where) if part) or "body"
    return InvalidRequest(f"{where}: {_either(messages)}")


# Tags pydantic puts in a location for a union's members, as opposed to field names and keys.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "dict", "list"})


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts = (str(part) for part in loc)
    return ".".join(p for p in parts if p not in _TYPE_TAGS and "[" not in p)


def _either(messages: list[str]) -> str:
    """``Input should be a valid string or a valid list`` from the two sentences."""
    stem = "Input should be "
    if len(messages) > 1 and all(m.startswith(stem) for m in messages):
        return stem + " or ".join(m.removeprefix(stem) for m in messages)
    return "; or ".join(messages)
