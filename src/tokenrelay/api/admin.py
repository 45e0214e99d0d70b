"""Admin routes (the ``admin`` scope, checked by the auth middleware): keys and usage.

``POST /v1/admin/keys`` (the key is in this answer and nowhere else, ever) ·
``GET /v1/admin/keys`` (``?owner=``, ``?include_revoked=true``) ·
``DELETE /v1/admin/keys/{id}`` (revoke) ·
``GET /v1/admin/usage`` (tokens per user; ``?since=``, ``?until=`` ISO 8601, ``?user=``).

Admins see who used how much, never what anyone wrote: no route here reads conversations.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay import errors
from tokenrelay.auth.authenticator import valid_user_name
from tokenrelay.auth.keys import issue_key
from tokenrelay.config import Quota
from tokenrelay.http.responses import JSONResponse, read_json, validate
from tokenrelay.services import services_of
from tokenrelay.store.accounts import Accounts, KeyRecord


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: str = Field(min_length=1, max_length=200)
    scopes: list[Literal["chat", "admin"]] = Field(default=["chat"], min_length=1)
    name: str | None = Field(default=None, max_length=200)
    expires_at: AwareDatetime | None = None
    # At most ten years: a larger number overflowed the date arithmetic (a 500).
    expires_in: float | None = Field(
        default=None, gt=0, le=10 * 365 * 86_400, description="seconds from now"
    )
    limits: Quota = Field(default_factory=Quota)


def key_json(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "api_key",
        "prefix": record.prefix,
        "owner": record.owner,
        "name": record.name,
        "scopes": list(record.scopes),
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "limits": record.limits,
    }


def _accounts(request: Request) -> Accounts:
    accounts = services_of(request).accounts
    return accounts


async def create_key(request: Request) -> Response:
    body = validate(KeyRequest, await read_json(request, 64 * 1024))
    if not valid_user_name(body.owner):
        raise errors.InvalidRequest("owner: use printable characters without edge spaces")
    if body.expires_at is not None and body.expires_in is not None:
        raise errors.InvalidRequest("give expires_at or expires_in, not both")
    expires_at = body.expires_at
    if body.expires_in is not None:
        expires_at = datetime.now(UTC) + timedelta(seconds=body.expires_in)
    record, secret = await issue_key(
        _accounts(request),
        body.owner,
        body.scopes,
        name=body.name,
        expires_at=expires_at,
        limits=body.limits.model_dump(),
    )
    return JSONResponse(key_json(record) | {"key": secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    include_revoked = request.query_params.get("include_revoked", "false") == "true"
    records = await _accounts(request).list_keys(
        owner=request.query_params.get("owner"), include_revoked=include_revoked
    )
    return JSONResponse({"object": "list", "data": [key_json(r) for r in records]})


async def revoke_key(request: Request) -> Response:
    key_id = request.path_params["key_id"]
    record = await _accounts(request).revoke_key(key_id)
    if record is None:
        raise errors.NotFound(f"key {key_id!r} does not exist")
    authenticator = services_of(request).authenticator
    authenticator.forget_keys()
    return JSONResponse(key_json(record) | {"revoked": True})


def _when(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise errors.InvalidRequest(f"{name} must be an ISO 8601 date or time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def usage(request: Request) -> Response:
    since, until = _when(request, "since"), _when(request, "until")
    gate = services_of(request).gate
    if gate.ledger is not None:
        # Streams that just ended are in the ledger's next batch: write it first.
        await gate.ledger.flush()
    totals = await _accounts(request).usage(
        since=since, until=until, user=request.query_params.get("user")
    )
    data = [
        {
            "user": row.user,
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.total_tokens,
            "estimated_requests": row.estimated_requests,
        }
        for row in totals
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        }
    )
