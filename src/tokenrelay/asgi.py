"""Reading an ASGI scope without building Starlette's ``Headers`` for one lookup."""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of the request header ``name`` (lower-case, as servers give them)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
