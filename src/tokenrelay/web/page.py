"""The chat page: ``/`` and ``/static/{name}``, plain files shipped in ``tokenrelay/web``.

Only the files named in :data:`TYPES` are served, each with its own content type, an ETag,
and ``Cache-Control: no-cache`` (revalidate every time: the names carry no version, and a
304 costs one round trip). The page gets a Content-Security-Policy that allows scripts
from this origin only, a second line behind the Markdown renderer that never builds HTML
from a reply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from tokenrelay import errors

TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "tokenrelay.js": "text/javascript; charset=utf-8",
    "tokenrelay.d.ts": "text/plain; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
COMMON_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    # A link may carry a key (the first-run one does, in its fragment): never pass it on.
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class _File:
    mtime_ns: int
    body: bytes
    etag: str


_cache: dict[str, _File] = {}


def _folder() -> Path:
    return Path(str(resources.files("tokenrelay") / "web"))


def _load(name: str) -> _File:
    path = _folder() / name
    # One stat per request keeps an edited file (an editable install) fresh without a restart.
    mtime_ns = path.stat().st_mtime_ns
    cached = _cache.get(name)
    if cached is not None and cached.mtime_ns == mtime_ns:
        return cached
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    _cache[name] = loaded = _File(mtime_ns, body, etag)
    return loaded


def _serve(request: Request, name: str, extra: dict[str, str] | None = None) -> Response:
    file = _load(name)
    headers = {**COMMON_HEADERS, "ETag": file.etag, **(extra or {})}
    if file.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=TYPES[name], headers=headers)


async def index(request: Request) -> Response:
    return _serve(request, "index.html", PAGE_HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in TYPES:
        raise errors.NotFound(f"no file {name!r} here")
    return _serve(request, name)
