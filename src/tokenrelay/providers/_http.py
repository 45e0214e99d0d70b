"""What every HTTP provider does the same way: connect, read, and map failures once.

Foreign exceptions (the client's) become :class:`~tokenrelay.errors.TokenRelayError`
here, at the boundary; upstream text passes through :func:`redact` so the gateway's key never
reaches a log or a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import orjson

from tokenrelay import errors
from tokenrelay.client import Client, ClientError, ConnectFailed, Disconnected, Response
from tokenrelay.telemetry import sending_upstream

MAX_UPSTREAM_TEXT = 500


def redact(text: str, secret: str | None, limit: int = MAX_UPSTREAM_TEXT) -> str:
    """Upstreams echo keys in messages ("Incorrect API key provided: sk-…"); never pass one on.

    The text is cut to ``limit`` characters only after the key is replaced: cut first, a key
    straddling the cut would no longer match and its prefix would pass.
    """
    if secret and secret in text:
        text = text.replace(secret, "[redacted]")
    return text[:limit]


def error_for_status(
    status: int, message: str, *, retry_after: float | None = None
) -> errors.TokenRelayError:
    """The error an upstream HTTP status stands for, when its body says nothing more precise."""
    if status in (400, 422):
        return errors.InvalidRequest(message)
    if status in (401, 403):
        # Not Unauthorized: a 401 to the client would blame the client's own key.
        return errors.UpstreamError(f"the upstream rejected the gateway's credentials: {message}")
    if status == 404:
        return errors.NotFound(message)
    if status == 408:
        return errors.UpstreamTimeout(message)
    if status == 413:
        return errors.PayloadTooLarge(message)
    if status == 429:
        return errors.UpstreamRateLimited(message, retry_after=retry_after)
    if status >= 500:
        # Includes Anthropic's 529 "overloaded": there, but unable to take work now.
        return errors.UpstreamUnavailable(message, retry_after=retry_after)
    return errors.UpstreamError(message)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (RFC 9110 §10.2.3:
    delay-seconds or an HTTP-date)."""
    millis = _seconds(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


async def open_stream(
    http: Client,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connect_timeout: float,
) -> Response:
    """POST ``body``; the response once its head has arrived, whatever its status.

    Only connecting has a limit here: the relay owns the first-token, idle and total limits.
    The request carries the client request's ``X-Request-Id`` and the attempt's trace context.
    """
    sending_upstream(headers)
    try:
        return await http.post(url, body, headers, connect_timeout=connect_timeout)
    except ClientError as exc:
        raise connect_error(exc) from exc


def connect_error(exc: ClientError) -> errors.TokenRelayError:
    # Says what failed, not where: upstream hosts are the operator's business, and the
    # exception chained to this one keeps the details for the logs.
    if isinstance(exc, ConnectFailed):
        if exc.reason == "timeout":
            return errors.UpstreamUnavailable(f"connecting to the upstream timed out ({exc})")
        if exc.reason == "dns":
            return errors.UpstreamUnavailable("cannot reach the upstream: DNS lookup failed")
        if exc.reason == "tls":
            return errors.UpstreamUnavailable("cannot reach the upstream: TLS handshake failed")
        return errors.UpstreamUnavailable("cannot reach the upstream: connection failed")
    if isinstance(exc, Disconnected):
        return errors.UpstreamUnavailable("the upstream closed the connection before answering")
    return errors.UpstreamError(f"the request to the upstream failed: {exc}")


async def read_chunk(response: Response) -> bytes:
    """The next bytes of the body as they arrive; ``b""`` at its end."""
    try:
        return await response.read()
    except ClientError as exc:
        raise errors.UpstreamError("upstream connection lost mid-stream") from exc


async def read_upstream_json(response: Response, limit: int = 64 * 1024) -> object:
    """An error body: JSON if it parses, else its text (at most ``limit`` bytes read)."""
    body = bytearray()
    with contextlib.suppress(ClientError):
        while len(body) < limit and (chunk := await response.read()):
            body += chunk
    del body[limit:]
    try:
        parsed: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()
    return parsed


async def drain(response: Response, timeout: float = 0.5, limit: int = 65536) -> None:
    """Read the little that follows the last event (the chunked terminator) so that
    :meth:`Response.release` can give the connection back to the pool instead of dropping it."""
    received = 0
    with contextlib.suppress(TimeoutError, ClientError):
        async with asyncio.timeout(timeout):
            while received <= limit and (chunk := await response.read()):
                received += len(chunk)
