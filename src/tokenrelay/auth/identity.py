"""Who is calling: the principal a request authenticated as.

The auth middleware puts the principal's user in ``scope["user"]`` (what the wires read),
its scopes in ``scope["scopes"]``, and the whole principal in :data:`current` for the code
that runs below the wires without a request in hand (admission reads a key's own limits
there).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from tokenrelay.config import Quota


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    scopes: frozenset[str]
    # The API key used, or None for a JWT.
    key_id: str | None = None
    # The key's own limits over the user's; ``None`` fields keep the user's.
    limits: Quota = field(default_factory=Quota)

    def allows(self, scope: str) -> bool:
        # An admin key is also a chat key: the first-run key must work in the chat page.
        return scope in self.scopes or "admin" in self.scopes


current: ContextVar[Principal | None] = ContextVar("tokenrelay_principal", default=None)
